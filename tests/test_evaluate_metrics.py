"""Evaluation harness pieces without models: metrics on a hand-computed table, answer
extractors, contamination detection, recipe validation and the real-data task loaders."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tasksift.errors import ConfigError
from tasksift.evaluate import metrics as M
from tasksift.evaluate.config import recipe_from_dict
from tasksift.evaluate.contamination import find_overlaps, normalise
from tasksift.evaluate.scorers import (aggregate, answers_match, extract_bbh, extract_gsm8k, extract_last_number,
                                       extract_mc_letter, extract_yesno, score_em_text)
from tasksift.evaluate.tasks import TestItem

from conftest import SHARED_DATA, needs_shared_data

REPO = Path(__file__).resolve().parents[1]


def _row(method, kind, budget, seed, n, acc, loss, n_pool=100):
    return {"arm": f"{method}|{budget}|{seed}", "method": method, "kind": kind, "budget": budget, "seed": seed,
            "n_selected": n, "n_pool": n_pool, "scores": {"mc": {"all": acc}, "loss": {"all": loss}},
            "contamination": {"exact": 0, "near": 0}}


INFOS = {"random": SimpleNamespace(cost="cheap", needs=()),
         "knn": SimpleNamespace(cost="cheap", needs=("embeddings",)),
         "perplexity": SimpleNamespace(cost="moderate", needs=("lm",)),
         "lobass": SimpleNamespace(cost="expensive", needs=("lm",))}


def _table():
    return [
        _row("base", "base", "none", None, 0, 0.5, 2.0),
        _row("random", "random", "ratio=0.1", 0, 10, 0.55, 1.8),
        _row("random", "random", "ratio=0.1", 1, 10, 0.65, 1.6),
        _row("random", "random", "ratio=0.5", 0, 50, 0.70, 1.6),
        _row("random", "random", "ratio=0.5", 1, 50, 0.70, 1.6),
        _row("knn", "method", "ratio=0.1", 0, 10, 0.80, 1.6),
        _row("knn", "method", "ratio=0.1", 1, 10, 0.90, 1.0),
        _row("perplexity", "method", "ratio=0.1", 0, 10, 0.50, 2.5),
        _row("perplexity", "method", "ratio=0.1", 1, 10, 0.60, 2.5),
        _row("lobass", "method", "ratio=0.1", 0, 10, 0.60, 1.7),
    ]


def test_metrics_on_hand_computed_table():
    rows = _table()
    s = M.compute_metrics(rows, ["mc", "loss"], "mc", INFOS)
    by = {r["arm"]: r for r in rows}
    # SDF
    assert by["knn|ratio=0.1|0"]["sdf"] == pytest.approx(0.1)
    assert by["random|ratio=0.5|1"]["sdf"] == pytest.approx(0.5)
    assert by["base|none|None"]["sdf"] == 0.0
    # PIR vs base: accuracy score/baseline; loss baseline/score (PIR > 1 = better)
    assert by["knn|ratio=0.1|0"]["pir"] == pytest.approx(0.8 / 0.5)
    assert by["knn|ratio=0.1|1"]["pir_by_scorer"]["loss"] == pytest.approx(2.0 / 1.0)
    assert by["perplexity|ratio=0.1|0"]["pir_by_scorer"]["loss"] == pytest.approx(2.0 / 2.5)
    # PIR vs random at equal size (random mean acc at 0.1 = 0.6, loss 1.7)
    assert by["knn|ratio=0.1|0"]["pir_random"] == pytest.approx(0.8 / 0.6)
    assert by["knn|ratio=0.1|0"]["pir_random_by_scorer"]["loss"] == pytest.approx(1.7 / 1.6)
    # random line through (0.1, 1.2) and (0.5, 1.4): slope 0.5, intercept 1.15
    assert s["random_line"]["slope"] == pytest.approx(0.5)
    assert s["random_line"]["intercept"] == pytest.approx(1.15)
    assert by["knn|ratio=0.1|0"]["efficiency"] == pytest.approx((1.6 - 1.2) / math.sqrt(1.25))
    assert by["knn|ratio=0.1|0"]["efficiency"] > 0
    assert by["perplexity|ratio=0.1|0"]["efficiency"] < 0
    assert by["random|ratio=0.1|0"]["efficiency"] < 0 < by["random|ratio=0.1|1"]["efficiency"]
    assert by["base|none|None"]["efficiency"] is None
    # feasibility: random 0 < knn 0.5+1 < perplexity 1+1 < lobass 2+1+2+1
    feas = s["feasibility"]
    assert [feas[m]["penalty"] for m in ("random", "knn", "perplexity", "lobass")] == [0.0, 1.5, 2.0, 6.0]
    assert [feas[m]["rank"] for m in ("random", "knn", "perplexity", "lobass")] == [1, 2, 3, 4]
    # mean/std over seeds, seed noise vs random
    knn = next(e for e in s["table"] if e["method"] == "knn")
    assert knn["mc_mean"] == pytest.approx(0.85) and knn["mc_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert knn["vs_random"]["diff"] == pytest.approx(0.25)
    assert knn["vs_random"]["pooled_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert knn["vs_random"]["exceeds_noise"] is True and knn["vs_random"]["better"] is True
    ppl = next(e for e in s["table"] if e["method"] == "perplexity")
    assert ppl["vs_random"]["exceeds_noise"] is False
    lob = next(e for e in s["table"] if e["method"] == "lobass")
    assert lob["vs_random"]["welch_p"] is None   # one seed: no t-test


def test_random_line_rules():
    assert M.random_line([(0.1, 1.3), (0.1, 1.1)]) == (pytest.approx(1.2), 0.0)   # one SDF: horizontal
    assert M.random_line([]) is None
    a, b = M.random_line([(0.0, 1.0), (1.0, 2.0), (0.5, 1.5)])
    assert (a, b) == (pytest.approx(1.0), pytest.approx(1.0))
    assert M.efficiency(0.5, 1.0, (1.0, 0.0)) == pytest.approx(0.0)
    assert M.efficiency(0.5, 0.9, (1.0, 0.0)) == pytest.approx(-0.1)
    assert math.isnan(M.efficiency(0.5, float("nan"), (1.0, 0.0)))


def test_ratio_and_pir_over_test_sets():
    assert M.ratio(0.6, 0.5, True) == pytest.approx(1.2)
    assert M.ratio(1.5, 2.0, False) == pytest.approx(4 / 3)
    assert math.isnan(M.ratio(0.5, 0.0, True))
    # mean over test sets (not the pooled 'all')
    assert M.pir({"a": 0.6, "b": 0.2, "all": 0.4}, {"a": 0.3, "b": 0.4, "all": 0.35}, True) == pytest.approx((2.0 + 0.5) / 2)
    assert M.pir({"all": 0.4}, {"all": 0.2}, True) == pytest.approx(2.0)


def test_recipe_feasibility_sums_parts():
    f = M.feasibility_penalty("random -> knn", INFOS)
    assert f["penalty"] == pytest.approx(1.5)
    assert M.feasibility_penalty("nosuch", {})["penalty"] == pytest.approx(3.0)  # unknown = expensive + per dataset


def test_seed_comparison_welch():
    c = M.seed_comparison([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])
    assert c["diff"] == pytest.approx(1.0) and c["exceeds_noise"] and c["welch_p"] < 0.01 and c["significant"]
    c = M.seed_comparison([0.5, 0.7], [0.6, 0.4])
    assert not c["exceeds_noise"] and c["welch_p"] > 0.05


@pytest.mark.parametrize("text,expected", [
    ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("... so the total is $1,250.\n#### 1,250", "1250"),
    ("The answer is 42.", "42"),
    ("I think 3 then 5 and finally 12.5", "12.5"),
    ("no numbers here", None),
    ("Step: 18.0 dollars", "18"),
])
def test_gsm8k_extractor(text, expected):
    assert extract_gsm8k(text) == expected


def test_other_extractors():
    assert extract_last_number("a 1 b -2") == "-2"
    assert extract_bbh("Let's think. So the answer is (B).") == "(B)"
    assert extract_bbh("(C) 12/11/1937") == "(C)"
    assert extract_bbh("True\nbecause ...") == "True"
    assert extract_bbh("So the answer is No.") == "No"
    assert extract_mc_letter("B. library") == "(B)"
    assert extract_mc_letter("the answer is (E) new york") == "(E)"
    assert extract_mc_letter("maybe a bank") is None
    assert extract_yesno("yes, because frost happens in December") == "Yes"
    assert extract_yesno("Hmm. NO.") == "No"
    assert answers_match("1,000", "1000", "gsm8k") and not answers_match("100", "1000", "gsm8k")
    assert answers_match("yes", "Yes", "bbh") and not answers_match(None, "Yes", "bbh")
    item = TestItem(id="t", prompt="q", answer="...#### 18", gold="18", extractor="gsm8k")
    assert score_em_text("She makes 9 * 2 = 18 dollars.\n#### 18", item)
    assert not score_em_text("#### 17", item)


def test_aggregate_by_test_set():
    items = [TestItem(id=str(i), prompt="p", answer="a", gold="a", subtask="x" if i < 2 else "y") for i in range(4)]
    agg = aggregate(items, {"mc": np.array([1.0, 0.0, 1.0, 1.0]), "em": np.array([np.nan] * 4)}, ["mc", "em"])
    assert agg == {"mc": {"x": 0.5, "y": 1.0, "all": 0.75}}


def test_contamination_finds_planted_overlaps():
    tests = ["A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?",
             "Janet's ducks lay 16 eggs per day and she eats three for breakfast every morning.",
             "not ( True ) and ( True ) is"]
    pool = [
        # exact, wrapped FLAN-style with options and a literal backslash-n
        "A revolving door is convenient for two direction travel, but it also serves as a security measure at a what?"
        "\\nOptions:\\n- bank\\n- library",
        # near: a couple of words changed
        "Janet's ducks lay 16 eggs each day and she eats three for breakfast every morning.",
        # clean
        "Write a poem about the sea and the sky.",
        # short key inside a longer text
        "Evaluate: not ( True ) and ( True ) is what?",
        # same words, different question
        "What is a revolving door?",
    ]
    r = find_overlaps(pool, tests)
    assert r.flag.tolist() == [2, 1, 0, 2, 0]
    assert r.test_index.tolist() == [0, 1, -1, 2, -1]
    s = r.summary(indices=[0, 1, 2], ids=["p0", "p1", "p2", "p3", "p4"], test_ids=["t0", "t1", "t2"])
    assert (s["exact"], s["near"], s["test_items_hit"]) == (1, 1, 2)
    assert {m["pool_id"]: m["kind"] for m in s["matches"]} == {"p0": "exact", "p1": "near"}
    assert normalise("Hello,\\nWorld!") == "hello world"
    # a short question sharing one common phrase with a pool row is not a near duplicate
    short = find_overlaps(["What do people do when they are bored at home on a rainy day?"],
                          ["What do people do when networking?"])
    assert short.flag.tolist() == [0]


def test_recipe_validation_errors():
    base = {"pool": "p", "task": {"kind": "gsm8k", "path": "x"}, "methods": ["knn"]}
    r = recipe_from_dict(base)
    assert r.scorers == ["loss", "mc", "em"] and r.primary == "loss" and r.method_names() == ["random", "knn"]
    for bad, msg in [({"scorers": ["bleu"]}, "scorer"), ({"budgets": [0]}, "budget"), ({"budgets": [1.5]}, "budget"),
                     ({"seeds": "x"}, "seeds"), ({"task": {"kind": "nope"}}, "task.kind"), ({"methods": []}, "methods"),
                     ({"finetune": {"stepz": 3}}, "finetune"), ({"colour": 1}, "unknown recipe key"),
                     ({"primary_scorer": "em", "scorers": ["loss"]}, "primary_scorer")]:
        with pytest.raises(ConfigError, match=msg):
            recipe_from_dict({**base, **bad})
    assert recipe_from_dict({**base, "budgets": [0.01, 200, 300.0]}).budgets == [0.01, 200, 300]
    assert recipe_from_dict({**base, "methods": ["random", "knn"]}).methods == ["knn"]


RECIPES = sorted((REPO / "bench" / "recipes").glob("*.yaml"))


def test_bench_recipes_are_valid():
    from tasksift.evaluate.config import load_recipe

    names = {p.stem for p in RECIPES}
    assert {"gsm8k", "commonsenseqa", "xcopa", "bbh"} <= names
    for p in RECIPES:
        r = load_recipe(p)
        assert str(r.pool).startswith("../shared/data")


@needs_shared_data()
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_bench_recipe_tasks_load_disjoint(path, monkeypatch):
    from tasksift.evaluate.config import load_recipe
    from tasksift.evaluate.tasks import load_task

    monkeypatch.chdir(REPO)
    r = load_recipe(path)
    spec = {**r.task, "n_test": min(40, r.task.get("n_test") or 40)}
    task = load_task(spec)
    assert task.target and task.test
    tgt = {normalise(e.prompt) for e in task.target}
    assert not tgt & {normalise(t.prompt) for t in task.test}
    if "mc" in r.scorers:
        assert all(t.choices and t.label is not None for t in task.test)
    if "em" in r.scorers:
        assert all(t.gold for t in task.test)


@needs_shared_data()
def test_real_ecqa_overlap_with_commonsenseqa_dev():
    """FLAN ecqa_train.tsv holds ~794 of the 1,221 CommonsenseQA dev questions (data README)."""
    from tasksift.data import load_examples
    from tasksift.evaluate.contamination import pool_text
    from tasksift.evaluate.tasks import load_task

    task = load_task({"kind": "csqa", "path": str(SHARED_DATA / "targets" / "zscot_commonsenseqa"), "n_target": 5})
    pool = load_examples(SHARED_DATA / "pool" / "flan_v2_cot" / "ecqa_train.tsv").examples
    r = find_overlaps([pool_text(e) for e in pool], [t.key for t in task.test])
    hit = len(set(r.test_index[r.flag > 0].tolist()))
    assert 700 <= hit <= 900


@needs_shared_data()
def test_real_strategyqa_and_gsm8k_overlaps():
    """FLAN strategyqa_train.tsv holds 2,061 of the 2,290 StrategyQA questions; FLAN
    gsm8k_train.tsv holds none of GSM8K test exactly (3 templated variants are near)."""
    from tasksift.data import load_examples
    from tasksift.evaluate.contamination import pool_text
    from tasksift.evaluate.tasks import load_task

    flan = SHARED_DATA / "pool" / "flan_v2_cot"
    t = load_task({"kind": "strategyqa", "path": str(SHARED_DATA / "targets" / "zscot_strategyqa"), "n_target": 1})
    pool = load_examples(flan / "strategyqa_train.tsv").examples
    r = find_overlaps([pool_text(e) for e in pool], [x.key for x in t.test])
    assert 2000 <= len(set(r.test_index[r.flag > 0].tolist())) <= 2061
    g = load_task({"kind": "gsm8k", "path": str(SHARED_DATA / "targets" / "gsm8k"), "n_target": 1, "n_test": None})
    pool = load_examples(flan / "gsm8k_train.tsv").examples
    r = find_overlaps([pool_text(e) for e in pool], [x.key for x in g.test])
    assert len(g.test) == 1319 and int((r.flag == 2).sum()) == 0 and int((r.flag == 1).sum()) <= 10
