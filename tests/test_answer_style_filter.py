"""answer-style filter: the target's length band and rationale style, hand-computed cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tasksift.api import select
from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.methods.answer_style import AnswerStyleFilter, target_band
from tasksift.methods.base import SelectionContext

COT = ("First, a bookstore sells printed works of many kinds, and magazines are printed works too, "
       "so they are found there. So the answer is (B) bookstore.")
SOLUTION = "She sold 48 / 2 = 24 clips in May and 48 + 24 = 72 clips in all. #### 72"


def ex(prompt: str, response: str, row: int = 0) -> Example:
    return Example(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                   raw={"prompt": prompt, "response": response}, row=row)


def ctx_of(pool_responses: list[str], target_responses: list[str]) -> SelectionContext:
    pool = [ex(f"question {i}", r, i) for i, r in enumerate(pool_responses)]
    target = [ex(f"target {i}", r, i) for i, r in enumerate(target_responses)]
    return SelectionContext(pool, target, seed=0)


POOL = ["(B) bookstore", "B", COT, "An essay " + "word " * 60, "", "Paris is the capital of France.", SOLUTION]
BARE_TARGET = ["B. bookstore", "A. bank", "D. mall", "C. department store"]


def test_band_is_the_target_percentiles_stretched():
    w = np.array([2, 2, 2, 3], dtype=float)          # p10 = 2, p90 = 2.7
    assert target_band(w, 3.0, 12) == (1, 12)         # floor(2/3) -> at least 1; ceil(8.1) = 9 -> at least 12
    w = np.array([20, 30, 40, 50, 60], dtype=float)   # p10 = 24, p90 = 56
    assert target_band(w, 2.0, 12) == (12, 112)


def test_bare_answer_target_keeps_short_plain_answers_only():
    f = AnswerStyleFilter()
    keep = f.keep_mask(ctx_of(POOL, BARE_TARGET))
    # kept: "(B) bookstore", "B", the one-sentence answer; dropped: the chain of thought (rationale-first
    # and long), the essay (long), the empty response, the worked solution (rationale-first)
    assert keep.tolist() == [True, True, False, False, False, True, False]
    assert f.last_info["band_words"] == [1, 12] and f.last_info["rationale"] == "not rationale-first"
    assert f.last_info["target_rationale_first_share"] == 0.0


def test_rationale_first_target_keeps_rationale_first_rows_in_its_band():
    f = AnswerStyleFilter()
    keep = f.keep_mask(ctx_of(POOL, [SOLUTION, COT, SOLUTION]))
    assert keep.tolist() == [False, False, True, False, False, False, True]
    assert f.last_info["rationale"] == "rationale-first only"
    # rationale=any: the length band alone (SOLUTION has 20 words, COT 24: band [6, 72])
    keep_any = AnswerStyleFilter(rationale="any").keep_mask(ctx_of(POOL, [SOLUTION, COT, SOLUTION]))
    assert keep_any.tolist() == [False, False, True, True, False, False, True]


def test_as_a_filter_before_a_selector(tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"q{i}", "response": r} for i, r in enumerate(POOL * 3)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target = tmp_path / "target.jsonl"
    target.write_text("".join(json.dumps({"prompt": f"t{i}", "response": r}) + "\n" for i, r in enumerate(BARE_TARGET)))
    sel = select(str(pool), str(target), method="answer-style -> random", count=3, seed=1, progress=False,
                 cache_dir=tmp_path / "cache", explain=False)
    kept = {"(B) bookstore", "B", "Paris is the capital of France."}
    assert {rows[i]["response"] for i in sel.indices} <= kept and len(sel.indices) == 3


def test_target_without_responses_is_refused():
    ctx = ctx_of(POOL, ["", "  "])
    with pytest.raises(ConfigError, match="target examples with responses"):
        AnswerStyleFilter().keep_mask(ctx)
    with pytest.raises(ConfigError):
        AnswerStyleFilter(rationale="sometimes")
