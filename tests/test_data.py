"""Layouts x file types: loading, normalisation, ids, and writing subsets back."""
from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from tasksift.data import load_examples
from tasksift.data.example import content_id
from tasksift.data.writers import write_subset

LAYOUT_ROWS = {
    "alpaca": [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
               {"instruction": "Translate", "input": "the cat", "output": "le chat", "extra": 7}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Add 2 and 3."}, {"from": "gpt", "value": "5"}]},
                 {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                    {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                                    {"from": "gpt", "value": "Bye!"}]}],
    "messages": [{"messages": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": "5"}]},
                 {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                               {"role": "user", "content": "unanswered"}]}],
    "prompt_completion": [{"prompt": "Add 2 and 3.", "completion": "5<|endoftext|>"},
                          {"prompt": "Capital of France?", "completion": " Paris"}],
    "question_answer": [{"question": "Add 2 and 3.", "answer": "5"}, {"question": "2+2?", "answer": "4"}],
    "input_target": [{"input": "Add 2 and 3.", "target": "5"}, {"input": "not ( True )", "target": "False"}],
    "text": [{"text": "A plain document about cats."}, {"text": "Another one about dogs."}],
    "hh_rlhf": [{"chosen": "\n\nHuman: Add 2 and 3.\n\nAssistant: 5", "rejected": "\n\nHuman: x\n\nAssistant: y"},
                {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How are you?\n\nAssistant: Fine.",
                 "rejected": "-"}],
    "self_instruct": [{"id": "t0", "instruction": "Add 2 and 3.", "instances": [{"input": "", "output": "5"}]},
                      {"id": "t1", "instruction": "Sort", "instances": [{"input": "b a", "output": "a b"}]}],
}


def _write(path: Path, rows: list[dict], fmt: str) -> Path:
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif fmt == "csv":
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys)
            for r in rows:
                w.writerow([json.dumps(r[k]) if isinstance(r.get(k), (list, dict)) else r.get(k, "") for k in keys])
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_first_example_of_each_layout_is_add_2_and_3():
    ids = set()
    for layout, rows in LAYOUT_ROWS.items():
        if layout == "text":
            continue
        from tasksift.api import _as_loaded

        d = _as_loaded(rows, "pool", "auto", None, False, None)
        assert d.layout == layout
        ex = d.examples[0]
        assert ex.prompt == "Add 2 and 3." and ex.response == "5", layout
        ids.add(ex.id)
    # the same content has the same id whatever the layout
    assert len(ids) == 1


def test_multi_turn_and_trailing_user_turn():
    from tasksift.api import _as_loaded

    ex = _as_loaded(LAYOUT_ROWS["sharegpt"], "pool", "auto", None, False, None).examples[1]
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert ex.response == "Bye!"
    ex = _as_loaded(LAYOUT_ROWS["messages"], "pool", "auto", None, False, None).examples[1]
    assert ex.messages[-1] == {"role": "assistant", "content": "Hello"}  # unanswered turn dropped
    ex = _as_loaded(LAYOUT_ROWS["hh_rlhf"], "pool", "auto", None, False, None).examples[1]
    assert [m["content"] for m in ex.messages] == ["Hi", "Hello", "How are you?", "Fine."]
    ex = _as_loaded(LAYOUT_ROWS["text"], "pool", "auto", None, False, None).examples[0]
    assert ex.prompt == "" and not ex.is_chat and ex.response == "A plain document about cats."


@pytest.mark.parametrize("fmt", ["json", "jsonl", "jsonl.gz", "csv", "parquet"])
@pytest.mark.parametrize("layout", ["alpaca", "prompt_completion", "question_answer", "text", "messages"])
def test_file_round_trip(tmp_path, fmt, layout):
    rows = LAYOUT_ROWS[layout]
    if fmt == "csv" and layout == "messages":
        pytest.skip("nested conversations in CSV need --fields")
    if fmt == "parquet" and layout == "alpaca":
        rows = [dict(r, extra=r.get("extra", 0)) for r in rows]  # parquet needs one schema
    src = _write(tmp_path / f"in.{fmt}", rows, fmt)
    d = load_examples(src)
    assert d.layout == layout and len(d) == 2
    out_fmt = "jsonl" if fmt == "jsonl.gz" else fmt
    path, cols = write_subset(d, [1], {"score": np.array([0.25, 0.75])}, tmp_path / "out")
    assert path.name == f"selected.{out_fmt}"
    back = load_examples(path)
    assert back.layout == layout
    assert back.examples[0].id == d.examples[1].id  # same content -> same id
    row = back.examples[0].raw
    assert row["tasksift_score"] in (0.75, "0.75") and str(row["tasksift_rank"]) == "1"
    original = {k: v for k, v in row.items() if not k.startswith("tasksift_")}
    expect = d.examples[1].raw
    if fmt == "csv":
        expect = {k: str(v) for k, v in expect.items()}
        original = {k: v for k, v in original.items() if k in expect}
    assert original == expect  # the row itself is untouched


def test_hf_dataset_and_load_from_disk(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list(LAYOUT_ROWS["question_answer"])
    d = load_examples(ds)
    assert d.format == "hf" and d.layout == "question_answer"
    ds.save_to_disk(str(tmp_path / "ds"))
    d2 = load_examples(tmp_path / "ds")
    assert [e.id for e in d2.examples] == [e.id for e in d.examples]
    path, _ = write_subset(d2, [0], {}, tmp_path / "out")
    back = datasets.load_from_disk(str(path))
    assert back[0]["question"] == "Add 2 and 3." and back[0]["tasksift_rank"] == 1
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([0])})
    assert len(load_examples(dd, split="test")) == 1


def test_wrapped_json_keeps_wrapper(tmp_path):
    p = tmp_path / "bbh.json"
    p.write_text(json.dumps({"canary": "x", "examples": LAYOUT_ROWS["input_target"]}))
    d = load_examples(p)
    assert d.layout == "input_target"
    path, _ = write_subset(d, [1, 0], {}, tmp_path / "out")
    obj = json.loads(path.read_text())
    assert obj["canary"] == "x" and [r["target"] for r in obj["examples"]] == ["False", "5"]


def test_headerless_tsv_flan_cot(tmp_path):
    p = tmp_path / "gsm8k_train.tsv"
    p.write_text("Tom has 3 apples.\\nHow many?\t3\tHe has 3.\nSecond q\t7\tBecause 7.\n")
    d = load_examples(p)
    assert d.layout == "flan_cot"
    assert d.examples[0].prompt == "Tom has 3 apples.\nHow many?"
    assert d.examples[0].response == "He has 3.\nSo the answer is 3."
    path, cols = write_subset(d, [1], {"score": np.array([1.0, 2.0])}, tmp_path / "out")
    line = path.read_text().splitlines()
    assert len(line) == 1 and line[0].split("\t")[:3] == ["Second q", "7", "Because 7."]


def test_oasst_tree(tmp_path):
    msgs = [{"message_id": "a", "parent_id": None, "role": "prompter", "text": "Q1"},
            {"message_id": "b", "parent_id": "a", "role": "assistant", "text": "A1"},
            {"message_id": "c", "parent_id": "b", "role": "prompter", "text": "Q2"},
            {"message_id": "d", "parent_id": "c", "role": "assistant", "text": "A2"},
            {"message_id": "e", "parent_id": "zz", "role": "assistant", "text": "orphan"},
            {"message_id": "f", "parent_id": "a", "role": "assistant", "text": "gone", "deleted": True}]
    p = tmp_path / "oasst.jsonl"
    p.write_text("".join(json.dumps(m) + "\n" for m in msgs))
    d = load_examples(p)
    assert d.layout == "oasst_tree" and len(d) == 2
    assert [m["content"] for m in d.examples[1].messages] == ["Q1", "A1", "Q2", "A2"]
    assert sorted(s["row"] for s in d.skipped) == [5, 6]  # orphan and deleted are counted


def test_user_named_fields(tmp_path):
    rows = [{"q": {"stem": "Where?", "choices": ["a", "b"]}, "gold": "a"}]
    p = _write(tmp_path / "x.jsonl", rows, "jsonl")
    d = load_examples(p, fields="prompt=q.stem,response=gold")
    assert d.layout == "fields" and d.examples[0].prompt == "Where?" and d.examples[0].response == "a"


def test_folder_of_mixed_files(tmp_path):
    (tmp_path / "pool" / "a").mkdir(parents=True)
    _write(tmp_path / "pool" / "a" / "x.json", LAYOUT_ROWS["alpaca"], "json")
    _write(tmp_path / "pool" / "b.jsonl", LAYOUT_ROWS["sharegpt"], "jsonl")
    (tmp_path / "pool" / "LICENSE").write_text("not data")
    d = load_examples(tmp_path / "pool")
    assert d.format == "mixed" and len(d) == 4
    assert d.counts_by_source() == {"a": 2, "b.jsonl": 2}
    path, _ = write_subset(d, [3, 0], {}, tmp_path / "out")
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert rows[0]["tasksift_source"] == "b.jsonl" and "conversations" in rows[0]
    assert rows[1]["instruction"] == "Add 2 and 3."


def test_ids_are_stable_and_content_based():
    a = content_id([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert a == content_id([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert a != content_id([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y "}])
    assert a != content_id([{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}])
    # pinned: ids must not change between versions, or every cache would be invalidated
    assert a == "32f108cba4d535d2f8fc"
