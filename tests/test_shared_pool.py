"""Integration: every pool source in ../shared/data loads without error (skipped when absent)."""
from __future__ import annotations

from conftest import SHARED_DATA, needs_shared_data

from tasksift.data import load_examples

EXPECTED = {  # rows per source: README of ../shared/data, less rows that cannot be examples
    "alpaca_eval": 805, "codealpaca": 2017, "flan_v2_cot": 33443, "gpteacher": 14131,
    "hh_rlhf_harmless_test": 2312, "lima": 1029, "llamafactory_alpaca_demo": 1999,
    "oasst1_en_validation": 1213,  # 1243 replies: 28 deleted by moderators, 2 without their prompt
    "oasst1_zh_llamafactory": 766, "self_instruct": 427, "t0_train_50k": 55185,
}


@needs_shared_data()
def test_every_pool_source_loads():
    d = load_examples(SHARED_DATA / "pool")
    counts = d.counts_by_source()
    print("\nrows per source:", counts, "skipped:", len(d.skipped))
    assert counts == EXPECTED
    assert len(d.skipped) == 30 and all(s["file"].endswith("en-validation.jsonl") for s in d.skipped)
    assert {d.layouts[k] for k in d.layouts} == {"alpaca", "flan_cot", "hh_rlhf", "oasst_tree",
                                                 "self_instruct", "prompt_completion"}
    assert all(ex.response is not None and ex.messages[-1]["role"] == "assistant" for ex in d.examples)
    assert len({ex.id for ex in d.examples}) > 0.95 * len(d)


@needs_shared_data()
def test_targets_load():
    t = SHARED_DATA / "targets"
    assert load_examples(t / "gsm8k" / "train.jsonl").layout == "question_answer"
    assert load_examples(t / "bbh" / "date_understanding.json").layout == "input_target"
    assert load_examples(t / "zscot_strategyqa" / "task.json").layout == "input_target"
    csqa = load_examples(t / "zscot_commonsenseqa" / "dev_rand_split.jsonl",
                         fields="prompt=question.stem,response=answerKey")
    assert len(csqa) == 1221
