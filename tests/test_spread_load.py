"""Loading JSON lines with an executor's workers (tasksift.data.spread_load) gives exactly the
in-process load: same examples, ids, row numbers, layouts and sources; bad rows, skipped rows,
non-JSONL inputs and layouts the first batch cannot settle are loaded in-process, with the
in-process errors and reports; a killed Ray worker is retried."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import tasksift.data.loading as loading
import tasksift.data.pool as pool_mod
import tasksift.data.spread_load as spread
from tasksift.data import load_examples
from tasksift.data.readers import count_lines, iter_jsonl, iter_jsonl_range, jsonl_split_points
from tasksift.errors import DataError
from tasksift.exec import LocalExecutor

from test_data import LAYOUT_ROWS
from test_pool import as_tuples, many


class OutOfProcess(LocalExecutor):
    """Runs tasks here but says its workers are other processes (so loading spreads), and
    counts the tasks."""

    in_process = False

    def __init__(self) -> None:
        super().__init__()
        self.tasks = 0

    def map_tasks(self, fn, calls, *, shared=None):
        for key, res in super().map_tasks(fn, calls, shared=shared):
            self.tasks += 1
            yield key, res


@pytest.fixture()
def small(monkeypatch):
    """Batches of 3 rows and ranges of 40 bytes, so every fixture spans many of both."""
    for mod in (pool_mod, loading, spread):
        monkeypatch.setattr(mod, "BATCH_ROWS", 3)
    monkeypatch.setattr(spread, "RANGE_BYTES", 40)


def loaded(d):
    return (as_tuples(d.pool), d.path, d.format, d.layout, d.skipped, d.layouts,
            {k: (v.format, v.path, v.header, v.wrapper, v.json_safe) for k, v in d.sources.items()},
            d.pool.words.tolist(), d.pool.chars.tolist(), d.fingerprint())


def write_lines(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_text("\n".join(lines) + end)
    return path


def test_ranges_cover_every_line_once(tmp_path):
    p = write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "x" * i}) for i in range(30)] + ["", "  "], end="")
    for size in (1, 7, 40, 10_000):
        cuts = jsonl_split_points(p, size)
        assert cuts[0] == 0 and cuts[-1] == p.stat().st_size and cuts == sorted(set(cuts))
        rows, lines = [], 0
        for a, b in zip(cuts[:-1], cuts[1:]):
            rows += [(n + lines, r) for c in iter_jsonl_range(p, a, b, chunk_rows=4) for n, r in zip(c.row_numbers, c.rows)]
            lines += count_lines(p, a, b)
        whole = [(n, r) for c in iter_jsonl(p) for n, r in zip(c.row_numbers, c.rows)]
        assert rows == whole and lines == 32


@pytest.mark.parametrize("layout", ["alpaca", "sharegpt", "messages", "question_answer", "text"])
def test_spread_equals_in_process(tmp_path, small, layout):
    rows = many(LAYOUT_ROWS[layout], n=25)
    lines = [json.dumps(r) for r in rows]
    lines[4:4] = ["", "   "]                      # blank lines count in row numbers
    p = write_lines(tmp_path / "pool.jsonl", lines, end="")   # no final newline
    ex = OutOfProcess()
    got = load_examples(str(p), role="pool", executor=ex)
    assert ex.tasks > 5
    assert loaded(got) == loaded(load_examples(str(p), role="pool"))
    assert not list(tmp_path.glob("tasksift-*"))


def test_folder_of_mixed_layouts_and_explicit_layout(tmp_path, small):
    d = tmp_path / "pool"
    (d / "sub").mkdir(parents=True)
    write_lines(d / "a.jsonl", [json.dumps(r) for r in many(LAYOUT_ROWS["alpaca"], 10)])
    mixed = many(LAYOUT_ROWS["alpaca"], 4) + many(LAYOUT_ROWS["messages"], 5)
    write_lines(d / "sub" / "b.jsonl", [json.dumps(r) for r in mixed])
    for kw in ({}, {"layout": "alpaca", "fields": None}):
        if kw:
            (d / "sub" / "b.jsonl").unlink()
        ex = OutOfProcess()
        got = load_examples(str(d), role="pool", executor=ex, **kw)
        assert ex.tasks and loaded(got) == loaded(load_examples(str(d), role="pool", **kw))
    assert got.layouts == {"a.jsonl": "alpaca"}


@pytest.mark.parametrize("bad", ["{not json", '"just a string"', json.dumps({"zzz": 1})])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_bad_rows_are_reported_as_in_process(tmp_path, small, bad, skip_bad):
    lines = [json.dumps(r) for r in many(LAYOUT_ROWS["alpaca"], 20)]
    lines[13] = bad
    p = write_lines(tmp_path / "pool.jsonl", lines)
    kw = dict(role="pool", skip_bad=skip_bad)
    if not skip_bad:
        with pytest.raises(DataError) as here:
            load_examples(str(p), **kw)
        with pytest.raises(DataError) as spread_err:
            load_examples(str(p), executor=OutOfProcess(), **kw)
        assert str(spread_err.value) == str(here.value)
        return
    got = load_examples(str(p), executor=OutOfProcess(), **kw)
    assert got.skipped and loaded(got) == loaded(load_examples(str(p), **kw))


def test_inputs_that_load_in_process(tmp_path, small, monkeypatch):
    """gzip, CSV, a first batch with no object, an empty file and a limit never reach a worker."""
    import gzip

    rows = many(LAYOUT_ROWS["alpaca"], 8)
    gz = tmp_path / "a.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    strings = write_lines(tmp_path / "s.jsonl", [json.dumps("a string")] * 4 + [json.dumps(r) for r in rows])
    empty = write_lines(tmp_path / "e.jsonl", ["", ""])
    plain = write_lines(tmp_path / "p.jsonl", [json.dumps(r) for r in rows])
    csv_file = write_lines(tmp_path / "c.csv", ["instruction,input,output"] + [
        ",".join(json.dumps(r.get(k, "")) for k in ("instruction", "input", "output")) for r in rows])
    for path, kw in ((gz, {}), (csv_file, {}), (strings, {"skip_bad": True}), (empty, {}), (plain, {"limit": 3})):
        ex = OutOfProcess()
        try:
            want = loaded(load_examples(str(path), role="pool", **kw))
        except DataError as e:
            with pytest.raises(DataError) as err:
                load_examples(str(path), role="pool", executor=ex, **kw)
            assert str(err.value) == str(e)
        else:
            assert loaded(load_examples(str(path), role="pool", executor=ex, **kw)) == want
        assert ex.tasks == 0, path


def test_parts_not_visible_here_fall_back_with_one_warning(tmp_path, small, monkeypatch, capsys):
    p = write_lines(tmp_path / "pool.jsonl", [json.dumps(r) for r in many(LAYOUT_ROWS["alpaca"], 9)])
    real = spread.parse_range

    def elsewhere(path, start, end, dest, *a):   # a worker whose folder the driver cannot see
        out = real(path, start, end, str(tmp_path / "other" / Path(dest).name), *a)
        return out

    (tmp_path / "other").mkdir()
    monkeypatch.setattr(spread, "parse_range", elsewhere)
    got = load_examples(str(p), role="pool", executor=OutOfProcess())
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not visible here" in err[0]
    assert loaded(got) == loaded(load_examples(str(p), role="pool"))


def test_a_spread_pool_is_shared_with_workers_file_by_file(tmp_path, small):
    from tasksift.data.blocks import share_pool

    p = write_lines(tmp_path / "pool.jsonl", [json.dumps(r) for r in many(LAYOUT_ROWS["sharegpt"], 30)])
    pool = load_examples(str(p), role="pool", executor=OutOfProcess()).pool
    shared = share_pool(pool, tmp_path / "share")
    assert len(json.loads((Path(shared.path).parent / "row_files.json").read_text())) > 3
    idx = np.array([29, 0, 5, 17, 3, 24])
    assert as_tuples(shared.block(pool, idx).examples()) == as_tuples(pool.examples(idx))
    assert as_tuples(shared.block(pool.take([4, 2]), [1, 0]).examples()) == as_tuples(pool.examples([2, 4]))


class DyingOnce:
    """An executor whose first task kills its own worker process (once: ``marker``)."""

    def __init__(self, inner, marker: str) -> None:
        self.inner, self.marker = inner, marker
        self.name, self.workers, self.in_process = inner.name, inner.workers, inner.in_process

    def map_tasks(self, fn, calls, *, shared=None):
        return self.inner.map_tasks(die_once_then, ((k, (self.marker, fn, *args)) for k, args in calls),
                                    shared=shared)


def die_once_then(marker, fn, *args):
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    return fn(*args)


@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    from tasksift.exec import make_executor

    here = str(Path(__file__).parent)   # workers import die_once_then from this module
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield make_executor("ray", workers=2)
    ray.shutdown()


def test_ray_workers_parse_the_pool_and_a_killed_worker_is_retried(tmp_path, monkeypatch, ray_executor):
    monkeypatch.setattr(spread, "RANGE_BYTES", 2000)
    rows = many(LAYOUT_ROWS["alpaca"], 60)
    p = write_lines(tmp_path / "pool.jsonl", [json.dumps(r) for r in rows])
    here = load_examples(str(p), role="pool")
    want = loaded(here)

    def refuse(*a, **k):
        raise AssertionError("the driver normalised rows")

    monkeypatch.setattr(loading, "normalise", refuse)   # the in-process loader's row parsing
    marker = tmp_path / "died"
    got = load_examples(str(p), role="pool", executor=DyingOnce(ray_executor, str(marker)), pool_dir=str(tmp_path))
    assert marker.exists() and loaded(got) == want
    assert not list(tmp_path.glob("tasksift-*"))
    # the workers read the spread pool's blocks (its part files) and compute what in-process does
    from test_ray_pool import TextStats
    from tasksift.features.pipeline import compute_features, open_store

    f = TextStats()
    res = compute_features(f, got.pool, open_store(f, tmp_path / "c1"), ray_executor, block_rows=7, progress=False)
    ref = compute_features(f, here.pool, open_store(f, tmp_path / "c2"), progress=False)
    assert {k: v.tolist() for k, v in res.values.items() if k != "pid"} == \
        {k: v.tolist() for k, v in ref.values.items() if k != "pid"}
