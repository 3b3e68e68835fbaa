"""Paired statistics (against scipy and hand-computed cases), answer-style heuristics and the
survey's efficiency/feasibility (against the TEDD-Ranker page's published numbers)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tasksift.evaluate import paired as P
from tasksift.data.style import answer_style, is_rationale_first, word_count
from tasksift.evaluate.summary import base_chance, paired_vs_random, publishable, style_table
from tasksift.evaluate.survey import (PUBLISHED_POINTS, reference_line, survey_efficiency, survey_feasibility,
                                      simplicity_penalty)
from tasksift.methods.registry import SurveyTraits, available_methods


# -- paired statistics ---------------------------------------------------------------
def test_bootstrap_interval_matches_scipy():
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 1.0, 400)
    lo, hi = P.paired_bootstrap(d, n_resamples=10_000, seed=1)
    ref = stats.bootstrap((d,), np.mean, n_resamples=10_000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(2)).confidence_interval
    se = d.std(ddof=1) / math.sqrt(len(d))
    assert abs(lo - ref.low) < 0.1 * se and abs(hi - ref.high) < 0.1 * se
    # and both agree with the paired t interval for a near-normal mean
    t_lo, t_hi, _ = P.t_interval(d)
    assert abs(lo - t_lo) < 0.15 * se and abs(hi - t_hi) < 0.15 * se


def test_bootstrap_is_seeded_and_handles_empty():
    d = np.arange(10.0)
    assert P.paired_bootstrap(d, seed=5) == P.paired_bootstrap(d, seed=5)
    assert all(math.isnan(x) for x in P.paired_bootstrap([]))
    assert P.paired_bootstrap([2.0, 2.0, 2.0]) == (2.0, 2.0)


def test_t_interval_equals_ttest_rel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 50), rng.normal(1.2, 1, 50)
    lo, hi, p = P.t_interval(a - b)
    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(0.95)
    assert p == pytest.approx(res.pvalue, rel=1e-10)
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_exact_permutation_equals_scipy_exact():
    d = np.array([0.5, -0.1, 0.8, 0.3, 0.0, 1.2, -0.4, 0.9, 0.2])
    ours = P.paired_permutation(d, n_resamples=10_000)          # 2^9 = 512 patterns: exact
    x, y = d, np.zeros_like(d)
    ref = stats.permutation_test((x, y), lambda a, b: np.mean(a - b), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided").pvalue
    assert ours == pytest.approx(ref, abs=1e-12)


def test_monte_carlo_permutation_close_to_t_test():
    rng = np.random.default_rng(1)
    d = rng.normal(0.15, 1.0, 300)
    p = P.paired_permutation(d, n_resamples=20_000, seed=0)
    assert abs(p - stats.ttest_1samp(d, 0).pvalue) < 0.02
    assert P.paired_permutation(np.zeros(50)) == 1.0


def test_minimal_detectable_effect_formula_and_power():
    sd, n = 0.5, 400
    mde = P.minimal_detectable_effect(sd, n)
    assert mde == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / 20, rel=1e-12)
    assert mde == pytest.approx(2.8016 * sd / 20, rel=1e-3)
    # by simulation: a true effect of one MDE is detected about 80% of the time
    rng = np.random.default_rng(0)
    hits = sum(stats.ttest_1samp(rng.normal(mde, sd, n), 0).pvalue < 0.05 for _ in range(400))
    assert 0.72 < hits / 400 < 0.88


def test_verdicts_follow_the_scorer_direction():
    assert P.verdict(0.1, 0.3, True) == "better" and P.verdict(0.1, 0.3, False) == "worse"
    assert P.verdict(-0.3, -0.1, False) == "better" and P.verdict(-0.3, 0.1, True) == "no detectable difference"
    assert P.verdict(float("nan"), 1, True) == "unknown"


def _row(kind, method, seed, items, budget="ratio=0.01", scorer="mc"):
    return {"arm": f"{method}|{budget}|seed={seed}", "kind": kind, "method": method, "budget": budget, "seed": seed,
            "item_scores": {scorer: items}}


def test_seed_pooling_averages_per_item_then_differences():
    m = [_row("method", "knn", 0, [1, 0, 1, None]), _row("method", "knn", 1, [1, 1, 0, 1])]
    r = [_row("random", "random", 0, [0, 0, 1, 1]), _row("random", "random", 1, [0, 1, 0, 1])]
    d = P.paired_differences(m, r, "mc")
    # per item: method (1, .5, .5, nan), random (0, .5, .5, 1) -> the NaN item is dropped
    assert d.tolist() == [1.0, 0.0, 0.0]
    c = P.paired_comparison(m, r, "mc", True, n_resamples=2000)
    assert c["diff"] == pytest.approx(1 / 3) and c["n_items"] == 3
    assert c["seeds_method"] == [0, 1] and c["seeds_random"] == [0, 1]
    assert P.paired_differences(m, [_row("random", "random", 0, [1, 0])], "mc") is None   # other item list
    assert P.paired_comparison(m, r, "loss", False) is None


def test_paired_vs_random_pairs_same_budget_only():
    rows = [_row("random", "random", 0, [0, 1, 0, 1] * 10), _row("method", "knn", 0, [1, 1, 0, 1] * 10),
            _row("method", "knn", 0, [1, 1, 1, 1] * 10, budget="ratio=0.05")]
    out = paired_vs_random(rows, ["mc"], n_resamples=500)
    assert [(c["method"], c["budget"]) for c in out] == [("knn", "ratio=0.01")]
    assert out[0]["diff"] == pytest.approx(0.25) and out[0]["verdict"] == "better"


def test_distance_from_chance_wilson():
    c = [1] * 30 + [0] * 70
    d = P.distance_from_chance(c, [4] * 100)
    lo, hi = P.wilson_interval(30, 100)
    ref = stats.binomtest(30, 100).proportion_ci(confidence_level=0.95, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert d["chance"] == 0.25 and d["distance"] == pytest.approx(0.05) and d["at_chance"] is True
    far = P.distance_from_chance([1] * 60 + [0] * 40, [5] * 100)
    assert far["at_chance"] is False and far["ci_low"] > 0
    assert P.distance_from_chance([float("nan")], [4]) is None


def test_base_chance_per_test_set():
    base = {"kind": "base", "item_scores": {"mc": [1, 0, 0, 0, 1, 1, 1, 1]}}
    out = base_chance(base, [4, 4, 4, 4, 2, 2, 2, 2], ["a"] * 4 + ["b"] * 4)
    assert out["a"]["chance"] == 0.25 and out["b"]["chance"] == 0.5 and out["all"]["chance"] == pytest.approx(0.375)
    assert base_chance(base, None, None) == {} and base_chance({"item_scores": {}}, [4], None) == {}


# -- answer style --------------------------------------------------------------------
def test_rationale_first_heuristic():
    cot = ("Bloody mess is covered or stained with blood. A person might see a bloody mess at the scene of a "
           "brutal killing.\nSo the answer is bloody mess.")
    gsm = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"
    assert is_rationale_first(cot) and is_rationale_first(gsm)
    assert not is_rationale_first("(B) bedroom")
    assert not is_rationale_first("The answer is 72.")                    # no rationale before it
    essay = "Paris is the capital of France. " * 10
    assert not is_rationale_first(essay)                                   # long but no final answer
    one_line = "First we add five and seven to get twelve, then we halve it to get six. The answer is 6."
    assert is_rationale_first(one_line)
    assert not is_rationale_first("") and word_count("a  b\nc") == 3


def test_answer_style_summary():
    s = answer_style(["(A) yes", "one two three four five six seven eight nine ten eleven\nSo the answer is 4."])
    assert s["n"] == 2 and s["rationale_first_share"] == 0.5 and s["bare_share"] == 0.5
    assert s["words_mean"] == pytest.approx((2 + 16) / 2) and s["words_median"] == pytest.approx(9)
    assert answer_style([])["words_mean"] is None
    rows = [{"method": "knn", "budget": "b", "answer_style": {"words_mean": 10, "words_median": 8,
                                                             "rationale_first_share": 0.2, "bare_share": 0.5}},
            {"method": "knn", "budget": "b", "answer_style": {"words_mean": 20, "words_median": 8,
                                                             "rationale_first_share": 0.4, "bare_share": 0.5}},
            {"method": "random", "budget": "b"}]                           # an old row without the field
    t = style_table(rows)
    assert len(t) == 1 and t[0]["words_mean"] == 15 and t[0]["rationale_first_share"] == pytest.approx(0.3)


# -- the survey's metrics ------------------------------------------------------------
def test_survey_reference_line_and_efficiency():
    a, b = reference_line()
    assert a + b * 0.025 == pytest.approx(1.400) and a + b * 0.058 == pytest.approx(1.443)
    assert survey_efficiency(0.025, 1.400) == pytest.approx(0, abs=1e-12)
    assert survey_efficiency(0.058, 1.443) == pytest.approx(0, abs=1e-12)
    assert survey_efficiency(0.05, 1.747) > 0 > survey_efficiency(0.173, 1.284)   # IFD above, AlpaGasus below
    # distance, not vertical gap: (0, 1) from the line y = a + b x
    assert survey_efficiency(0.0, 1.0) == pytest.approx((1.0 - a) / math.sqrt(1 + b * b))
    assert math.isnan(survey_efficiency(0.1, float("nan")))
    assert len(PUBLISHED_POINTS) == 12


def test_survey_feasibility_published_ranks():
    """Ranks of the twelve published methods alone, by the page's own algorithm (dense ranks
    of simplicity and flexibility penalties, then of their sum), computed by hand here."""
    f = survey_feasibility([], {})
    assert len(f) == 12 and all(v["published"] for v in f.values())
    assert f["AlpaGasus"]["simplicity_penalty"] == 3 and f["Superfiltering"]["simplicity_penalty"] == 4.5
    assert f["SHED"]["simplicity_penalty"] == 200 and f["InstructionGPT-4"]["simplicity_penalty"] == 64
    assert f["DEITA"]["flexibility_penalty"] == 6 and f["CaR"]["flexibility_penalty"] == 0
    # simplicity penalties: AlpaGasus 3, InsTag 4, CaR/Nuggets/SelectIT 4, Superfiltering 4.5, IFD 5, LESS 6,
    # DEITA 9, InstructionGPT-4 64, SHED 200, Instruction-Mining 200 -> dense ranks 1..8
    assert [f[m]["simplicity_rank"] for m in ("AlpaGasus", "InsTag", "CaR", "Superfiltering", "IFD", "LESS",
                                              "DEITA", "InstructionGPT-4", "SHED", "Instruction-Mining")] == \
        [1, 2, 2, 3, 4, 5, 6, 7, 8, 8]
    # flexibility penalties 0 (CaR, Nuggets, SelectIT), 1 (AlpaGasus, InsTag), 4 (IG4, IM), 5 (SF, IFD, LESS, SHED), 6 (DEITA)
    assert f["CaR"]["flexibility_rank"] == 1 and f["AlpaGasus"]["flexibility_rank"] == 2
    assert f["InstructionGPT-4"]["flexibility_rank"] == 3 and f["IFD"]["flexibility_rank"] == 4
    assert f["DEITA"]["flexibility_rank"] == 5
    # sums: CaR 3, AlpaGasus 3, InsTag 4, Superfiltering 7, IFD 8, LESS 9, InstructionGPT-4 10, DEITA 11,
    # Instruction-Mining 11, SHED 12
    assert f["CaR"]["feasibility_rank"] == f["AlpaGasus"]["feasibility_rank"] == 1
    assert f["InsTag"]["feasibility_rank"] == 2 and f["SHED"]["feasibility_rank"] == 8
    assert f["DEITA"]["feasibility_rank"] == f["Instruction-Mining"]["feasibility_rank"] == 7


def test_survey_feasibility_places_our_methods():
    infos = {i.name: i for i in available_methods()}
    for name in ("random", "knn", "tsds", "dsir", "lobass"):
        assert isinstance(infos[name].survey, SurveyTraits), name
    f = survey_feasibility(["random", "knn", "lobass", "dedup -> knn", "unknown-method"], infos)
    assert not f["knn"]["published"] and "unknown-method" not in f
    assert f["dedup -> knn"]["steps"] == infos["dedup"].survey.steps + infos["knn"].survey.steps
    assert f["lobass"]["model_dependent"] and f["lobass"]["feasibility_rank"] > f["knn"]["feasibility_rank"]
    assert f["random"]["feasibility_rank"] == 1
    assert simplicity_penalty(1, 4, False) == 7


def test_registry_survey_keyword_validates():
    from tasksift.methods.registry import register

    with pytest.raises(TypeError):
        register("bogus-survey", description="x", survey={"llms": 1})


def test_publishable_drops_matches_and_machine_data():
    summary = {"name": "t", "table": [{"method": "knn", "peak_rss_mb": 5, "sdf": 0.01}],
               "pool": {"rows": 10, "contamination_before_drop": {"exact": 1, "near": 0, "checked": 10,
                                                                  "matches": [{"pool_id": "x", "test_id": "y"}]}},
               "report": "/abs/report.html", "arms_run": ["a"],
               "recipe": {"seeds": [0], "cache_dir": "/work/x/cache", "out": "/o"}}
    pub = publishable(summary)
    assert "matches" not in str(pub) and "report" not in pub and "arms_run" not in pub
    assert pub["recipe"] == {"seeds": [0]}
    assert pub["table"] == [{"method": "knn", "sdf": 0.01}] and pub["pool"]["contamination_before_drop"]["exact"] == 1
