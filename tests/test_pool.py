"""The columnar pool: the same examples as reading a whole file at once, batches, lazy rows,
and the streaming writer against an in-memory reference writer."""
from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import tasksift.data.loading as loading
import tasksift.data.pool as pool_mod
from tasksift.data import load_examples
from tasksift.data.layouts import normalise
from tasksift.data.pool import ArrowRows, MemoryRows
from tasksift.data.readers import read_file
from tasksift.data.writers import write_subset

from test_data import LAYOUT_ROWS, _write


@pytest.fixture()
def tiny_batches(monkeypatch):
    """Batches of 3 rows, so that every small fixture spans several batches."""
    monkeypatch.setattr(pool_mod, "BATCH_ROWS", 3)
    monkeypatch.setattr(loading, "BATCH_ROWS", 3)


def whole_file_examples(path: Path, skip_bad: bool = False):
    """The loader before the pool: the whole file read, then normalised at once."""
    raw = read_file(path, skip_bad=skip_bad)
    exs, layout = normalise(raw, "auto", None, skip_bad=skip_bad)
    return exs, layout, raw.skipped


def as_tuples(exs):
    return [(e.id, e.messages, e.raw, e.row, e.source, e.layout) for e in exs]


def many(rows, n=8):
    """``n`` distinct rows cycling through ``rows`` (a numbered suffix on every string field)."""
    out = []
    for i in range(n):
        r = json.loads(json.dumps(rows[i % len(rows)]))
        for k, v in r.items():
            if isinstance(v, str) and k not in ("role", "from"):
                r[k] = f"{v} #{i}"
        out.append(r)
    return out


LAYOUTS = ["alpaca", "sharegpt", "messages", "prompt_completion", "question_answer", "input_target", "text",
           "hh_rlhf", "self_instruct"]


@pytest.mark.parametrize("fmt", ["json", "jsonl", "jsonl.gz", "csv", "parquet"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_pool_matches_whole_file_loading(tmp_path, tiny_batches, fmt, layout):
    rows = many(LAYOUT_ROWS[layout])
    if fmt == "csv" and layout in ("sharegpt", "messages", "self_instruct"):
        pytest.skip("nested rows in CSV need --fields")
    if fmt == "parquet":
        keys = sorted({k for r in rows for k in r})
        rows = [{k: r.get(k, 0 if k == "extra" else None) for k in keys} for r in rows]
    src = _write(tmp_path / f"in.{fmt}", rows, fmt)
    want, want_layout, _ = whole_file_examples(src)
    d = load_examples(src, pool_dir=tmp_path)
    assert isinstance(d.pool._store, ArrowRows)
    assert d.layout == want_layout == layout
    assert as_tuples(d.examples) == as_tuples(want)
    assert d.pool.id_list() == [e.id for e in want]
    assert list(d.pool.words) == [len(e.text.split()) for e in want]
    assert list(d.pool.chars) == [len(e.text) for e in want]
    assert d.fingerprint() == hashlib.sha1("".join(e.id for e in want).encode()).hexdigest()[:16]
    assert not list(tmp_path.glob("tasksift-pool-*")), "the pool's file is removed once opened"


def test_oasst_tree_and_skipped_rows_across_batches(tmp_path, tiny_batches):
    msgs = [{"message_id": "a", "parent_id": None, "role": "prompter", "text": "Q1"},
            {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "A1"},
            {"message_id": "c", "parent_id": "b", "role": "prompter", "text": "Q2"},
            {"message_id": "d", "parent_id": "c", "role": "assistant", "text": "A2"},
            {"message_id": "e", "parent_id": "zz", "role": "assistant", "text": "orphan"},
            {"message_id": "f", "parent_id": "a", "role": "assistant", "text": "gone", "deleted": True},
            {"message_id": "g", "parent_id": "a", "role": "assistant", "text": "A1b"}]
    p = tmp_path / "oasst.jsonl"
    p.write_text("".join(json.dumps(m) + "\n" for m in msgs))
    want, _, want_skipped = whole_file_examples(p)
    d = load_examples(p)
    assert as_tuples(d.examples) == as_tuples(want) and d.skipped == want_skipped and len(d) == 3


def test_skip_bad_rows_keep_order_and_reasons(tmp_path, tiny_batches):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)]
    lines[1] = "{not json"
    lines[4] = json.dumps({"instruction": "no output"})
    lines[7] = json.dumps([1, 2])
    lines.insert(5, "")
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    want, _, want_skipped = whole_file_examples(p, skip_bad=True)
    d = load_examples(p, skip_bad=True)
    assert as_tuples(d.examples) == as_tuples(want)
    assert d.skipped == want_skipped and len(d.skipped) == 3


def test_non_object_rows_before_the_first_object(tmp_path, tiny_batches):
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(["[1]", "2", "\"s\"", "[3]", json.dumps({"text": "doc"})]) + "\n")
    d = load_examples(p, skip_bad=True)
    want, _, want_skipped = whole_file_examples(p, skip_bad=True)
    assert d.layout == "text" and as_tuples(d.examples) == as_tuples(want) and d.skipped == want_skipped


def test_folder_limit_and_sources(tmp_path, tiny_batches):
    (tmp_path / "pool" / "a").mkdir(parents=True)
    _write(tmp_path / "pool" / "a" / "x.jsonl", many(LAYOUT_ROWS["alpaca"], 5), "jsonl")
    _write(tmp_path / "pool" / "b.json", many(LAYOUT_ROWS["sharegpt"], 4), "json")
    d = load_examples(tmp_path / "pool")
    assert len(d) == 9 and list(d.pool.sources) == ["a/x.jsonl"] * 5 + ["b.json"] * 4
    assert [e.source for e in d.examples] == list(d.pool.sources)
    assert d.counts_by_source() == {"a": 5, "b.json": 4}
    assert len(load_examples(tmp_path / "pool", limit=4)) == 4
    assert len(load_examples(tmp_path / "pool", limit=7)) == 7


def test_lazy_access_views_and_bounded_batches(tmp_path, tiny_batches):
    src = _write(tmp_path / "in.jsonl", many(LAYOUT_ROWS["question_answer"], 10), "jsonl")
    p = load_examples(src).pool
    want = as_tuples(whole_file_examples(src)[0])
    assert as_tuples([p[i] for i in range(10)]) == want
    assert as_tuples([p[-1]]) == want[-1:] and as_tuples(p[2:5]) == want[2:5]
    assert as_tuples(p.examples([7, 0, 7, 3])) == [want[7], want[0], want[7], want[3]]
    sizes = [len(b) for b in p.batches(size=2)]
    assert max(sizes) <= 2 and sum(sizes) == 10
    view = p.take([9, 2, 4])
    assert len(view) == 3 and as_tuples(view) == [want[9], want[2], want[4]]
    assert view.id_list() == [want[9][0], want[2][0], want[4][0]]
    assert as_tuples(view.take([2, 0])) == [want[4], want[9]]
    assert list(view.words) == [len(p[i].text.split()) for i in (9, 2, 4)]
    with pytest.raises(IndexError):
        p[10]


def test_memory_pool_for_examples_and_values_json_cannot_carry(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasksift.api import _as_loaded

    d = _as_loaded(LAYOUT_ROWS["alpaca"], "pool", "auto", None, False, None)
    assert isinstance(d.pool._store, MemoryRows) and d.examples[1].raw["extra"] == 7
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["x", "y"], "when": [when, when]}),
                   tmp_path / "t.parquet")
    d = load_examples(tmp_path / "t.parquet")
    assert isinstance(d.pool._store, MemoryRows) and d.examples[0].raw["when"] == when


# --- the streaming writer against the writer that built everything in memory ----------

def reference_rows(d, indices, columns):
    out = []
    for rank, i in enumerate(indices, start=1):
        ex = d.examples[int(i)]
        cells = {"tasksift_id": ex.id, "tasksift_rank": rank}
        for name, col in columns.items():
            cells[f"tasksift_{name}"] = float(col[int(i)])
        if ex.source is not None:
            cells["tasksift_source"] = ex.source
        out.append({**(dict(ex.raw) if isinstance(ex.raw, dict) else {"row": ex.raw}), **cells})
    return out


def reference_text(d, rows, fmt):
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if fmt == "json":
        single = next(iter(d.sources.values()))
        w = single.wrapper
        obj = {**w["rest"], w["key"]: rows} if w and w.get("key") else (
            {k: [r.get(k) for r in rows] for k in (list(rows[0]) if rows else [])} if w else rows)
        return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n",
                   quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                   escapechar=None if fmt == "csv" else "\\")
    if next(iter(d.sources.values())).header:
        w.writerow(keys)
    for r in rows:
        w.writerow(["" if r.get(k) is None else (json.dumps(r[k], ensure_ascii=False)
                    if isinstance(r[k], (dict, list)) else str(r[k])) for k in keys])
    return buf.getvalue()


def _inputs(tmp_path):
    rows = many(LAYOUT_ROWS["alpaca"], 11)
    rows[3]["note"] = "ünïcode, \"quoted\"\nline"
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"canary": "x", "n": [1, {"a": 2}], "examples": rows}))
    columnar = tmp_path / "columnar.json"
    columnar.write_text(json.dumps({k: [r.get(k, "") for r in rows] for k in rows[0]}))
    tsv = tmp_path / "gsm8k.tsv"
    tsv.write_text("".join(f"Q {i}\\nmore\t{i}\tbecause {i}\n" for i in range(7)))
    return {"jsonl": _write(tmp_path / "in.jsonl", rows, "jsonl"), "json": _write(tmp_path / "in.json", rows, "json"),
            "wrapped": wrapped, "columnar": columnar, "csv": _write(tmp_path / "in.csv", rows, "csv"), "tsv": tsv}


@pytest.mark.parametrize("kind", ["jsonl", "json", "wrapped", "columnar", "csv", "tsv"])
@pytest.mark.parametrize("picked", [[5, 0, 9, 2, 10, 1], [], [3]])
def test_streaming_writer_is_byte_identical(tmp_path, monkeypatch, tiny_batches, kind, picked):
    import tasksift.data.writers as writers

    monkeypatch.setattr(writers, "WRITE_BATCH", 2)
    src = _inputs(tmp_path)[kind]
    d = load_examples(src)
    picked = [i for i in picked if i < len(d)]
    score = {"score": np.linspace(0.0, 1.0, len(d))}
    path, cols = write_subset(d, picked, score, tmp_path / "out")
    fmt = path.suffix.lstrip(".")
    assert path.read_text(encoding="utf-8") == reference_text(d, reference_rows(d, picked, score), fmt)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]   # no temp file left
    if picked:
        assert cols == ["tasksift_id", "tasksift_rank", "tasksift_score"]


def test_streaming_writer_parquet_and_hf_rows(tmp_path, monkeypatch, tiny_batches):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    import tasksift.data.writers as writers

    monkeypatch.setattr(writers, "WRITE_BATCH", 2)
    rows = [{"question": f"q{i}", "answer": f"a{i}", "n": i if i % 3 else None, "x": 0.5 * i,
             "tags": [f"t{i}"] * (i % 2)} for i in range(9)]
    src = _write(tmp_path / "in.parquet", rows, "parquet")
    d = load_examples(src)
    picked = [4, 8, 0, 3, 6]
    score = {"score": np.arange(len(d), dtype=float)}
    path, _ = write_subset(d, picked, score, tmp_path / "out")
    want = pa.Table.from_pylist(reference_rows(d, picked, score))
    got = pq.read_table(path)
    assert got.schema == want.schema and got.to_pylist() == want.to_pylist()
    path, _ = write_subset(d, picked, score, tmp_path / "out_hf", fmt="hf")
    assert datasets.load_from_disk(str(path)).to_list() == datasets.Dataset.from_list(
        reference_rows(d, picked, score)).to_list()


def test_pool_iteration_holds_one_batch(tmp_path):
    """Iterating a pool builds each Example once and drops it: no list of the whole pool."""
    import gc
    import weakref

    src = _write(tmp_path / "in.jsonl", many(LAYOUT_ROWS["text"], 5000), "jsonl")
    p = load_examples(src).pool
    alive = []
    for batch in p.batches():
        alive = [weakref.ref(e) for e in batch] + [r for r in alive if r() is not None]
        gc.collect()
    assert sum(r() is not None for r in alive) <= pool_mod.BATCH_ROWS


@pytest.mark.parametrize("method,config", [("random", {}), ("length", {"min_words": 4}), ("dsir", {})])
def test_select_on_a_file_equals_select_on_its_rows(tmp_path, tiny_batches, method, config):
    """The Arrow pool (a file) and the in-memory pool (the same rows as dicts) select the same
    rows and write the same subset."""
    import tasksift

    rows = many(LAYOUT_ROWS["alpaca"], 40)
    src = _write(tmp_path / "pool.jsonl", rows, "jsonl")
    target = [{"question": "Add 2 and 3.", "answer": "5"}]
    kw = dict(method=method, count=7, seed=3, config=config, progress=False)
    a = tasksift.select(src, target, **kw)
    b = tasksift.select(rows, target, **kw)
    assert isinstance(a.pool.pool._store, ArrowRows) and isinstance(b.pool.pool._store, MemoryRows)
    assert a.indices.tolist() == b.indices.tolist() and a.ids == b.ids
    assert as_tuples(a.subset) == as_tuples(b.subset)
    pa_, pb = a.save(tmp_path / "a"), b.save(tmp_path / "b")
    assert pa_.read_bytes() == pb.read_bytes()
    assert a.manifest()["pool"]["fingerprint"] == b.manifest()["pool"]["fingerprint"]


def test_text_batches_equal_the_examples_texts(tmp_path):
    import json as _json

    from tasksift.data import load_examples

    rows = [{"instruction": f"Q{i} ünï?", "input": "" if i % 3 else f"ctx {i}", "output": f"A {i}."} for i in range(5000)]
    rows += [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
    rows += [{"text": "plain row"}]
    (tmp_path / "p.jsonl").write_text("".join(_json.dumps(r) + "\n" for r in rows))
    pool = load_examples(tmp_path / "p.jsonl", role="pool").pool
    view = pool.take(np.random.default_rng(0).permutation(len(pool))[:3001])
    for p in (pool, view, pool_mod.Pool.from_examples(pool.examples(range(50)))):
        for field in ("text", "prompt", "response"):
            got = [t for b in p.text_batches(field, size=777) for t in b]
            assert got == [getattr(ex, field) for ex in p]
    with pytest.raises(ValueError, match="field"):
        next(pool.text_batches("raw"))


def test_pool_source_counts_match_counting_the_source_column(tmp_path):
    d = tmp_path / "pool"
    for name, n in (("a", 5), ("b", 3)):
        (d / name).mkdir(parents=True)
        (d / name / "x.jsonl").write_text("".join(json.dumps({"text": f"{name} row {i}"}) + "\n" for i in range(n)))
    pool = load_examples(str(d), role="pool").pool
    assert pool.source_counts() == Counter(pool.sources.tolist()) == {"a/x.jsonl": 5, "b/x.jsonl": 3}
    idx = np.array([0, 6, 6, 7])
    assert pool.source_counts(idx) == Counter(pool.sources[idx].tolist()) == {"a/x.jsonl": 1, "b/x.jsonl": 3}
    assert pool.sources_at(idx).tolist() == pool.sources[idx].tolist()
    view = pool.take([7, 1])
    assert view.source_counts() == {"b/x.jsonl": 1, "a/x.jsonl": 1}
    assert view.sources_at([1, 0]).tolist() == ["a/x.jsonl", "b/x.jsonl"]
    assert pool.source_counts([]) == {} and pool.sources_at([]).tolist() == []
