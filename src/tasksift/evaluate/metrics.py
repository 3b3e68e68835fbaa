"""Comparison metrics from the survey "Take the essence and discard the dross":

* **SDF** (selected data fraction) = |subset| / |pool|.
* **PIR** (performance improvement ratio) = mean over test sets of
  score(subset model) / score(baseline model), for scores where higher is better (accuracy,
  exact match). For loss-type scores (lower is better) the ratio is inverted,
  baseline / score, so that **PIR > 1 always means better than the baseline**. Two baselines:
  the base model without fine-tuning (``pir``) and random selection at the same budget
  (``pir_random``, the mean score of the random arms over seeds). PIR is undefined (NaN,
  shown as "–") where the baseline score is 0, e.g. a base model with no exact match at all;
  pick the loss or multiple choice as ``primary_scorer`` then.
* **Efficiency** = signed distance of the arm's (SDF, PIR) point from the *random line*:
  the least-squares line through the random arms' (SDF, mean PIR) points of the same run
  (with two budgets, the line through both; with a single budget, the horizontal line through
  that point). Positive = above the line = better than random selection for its data size.
  Distance is Euclidean: (PIR - line(SDF)) / sqrt(1 + slope^2).
* **Feasibility**: a penalty per method from its registry entry
  (:func:`feasibility_penalty`), then a dense rank (1 = most feasible).
* **Seed noise**: per method x budget, mean and std of the primary score over seeds, compared
  with random at the same budget: ``exceeds_noise`` when |mean difference| > 2 x pooled std,
  and Welch's t-test p-value (``scipy.stats.ttest_ind(equal_var=False)``) when both sides
  have >= 2 seeds.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .scorers import HIGHER_IS_BETTER
from .variants import method_parts

#: Penalty per declared cost class.
COST_PENALTY = {"cheap": 0.0, "moderate": 1.0, "expensive": 2.0}
#: Penalty per declared need (what the method depends on).
NEED_PENALTY = {"embeddings": 0.5, "ngrams": 0.0, "lm": 1.0, "gradients": 2.0, "training": 2.0,
                "api": 3.0, "external_api": 3.0}
#: Methods that train a model of their own (LoBaSS trains a reference model, LESS a warm-up).
TRAINS_MODELS = {"lobass", "less"}
#: Methods that never look at the target (so need no redoing per target data set).
TARGET_AGNOSTIC = {"random", "perplexity", "ifd", "dedup", "diversity", "kcenter", "facility-location", "length",
                   "full", "base"}
TRAIN_PENALTY = 2.0
PER_DATASET_PENALTY = 1.0


def sdf(n_selected: int, n_pool: int) -> float:
    """Selected data fraction."""
    return n_selected / n_pool if n_pool else float("nan")


def ratio(score: float, baseline: float, higher_is_better: bool) -> float:
    """score/baseline (higher is better) or baseline/score (lower is better); >1 = better."""
    num, den = (score, baseline) if higher_is_better else (baseline, score)
    if den is None or num is None or not np.isfinite(den) or not np.isfinite(num) or den == 0:
        return float("nan")
    return float(num / den)


def pir(scores: Mapping[str, float], baseline: Mapping[str, float], higher_is_better: bool) -> float:
    """Mean over test sets (keys other than ``all`` when there are several, else ``all``)."""
    sets = [k for k in scores if k != "all" and k in baseline] or (["all"] if "all" in scores and "all" in baseline else [])
    vals = [ratio(scores[k], baseline[k], higher_is_better) for k in sets]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def random_line(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of the reference line through random-selection (SDF, PIR) points:
    least squares over distinct SDFs; one SDF -> horizontal line; no finite point -> None."""
    pts = [(x, y) for x, y in points if np.isfinite(x) and np.isfinite(y)]
    if not pts:
        return None
    xs = np.array([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    if len(np.unique(xs)) < 2:
        return float(ys.mean()), 0.0
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def efficiency(sdf_value: float, pir_value: float, line: tuple[float, float] | None) -> float:
    """Signed distance of (SDF, PIR) above ``line``; positive = better than random."""
    if line is None or not np.isfinite(pir_value) or not np.isfinite(sdf_value):
        return float("nan")
    a, b = line
    return float((pir_value - (a + b * sdf_value)) / math.sqrt(1.0 + b * b))


def feasibility_penalty(method: str, infos: Mapping[str, Any]) -> dict[str, Any]:
    """Penalty of a method (a recipe string sums its parts) from the registry's declared cost
    and needs, plus whether it trains a model and needs redoing per target data set.

    ``infos``: name -> MethodInfo (or any object with ``cost`` and ``needs``). Unknown parts
    count as ``expensive``.
    """
    total, parts = 0.0, []
    for p in method_parts(method):
        info = infos.get(p)
        cost = getattr(info, "cost", "expensive")
        needs = tuple(getattr(info, "needs", ()))
        pen = COST_PENALTY.get(cost, 2.0) + sum(NEED_PENALTY.get(n, 1.0) for n in needs)
        trains = p in TRAINS_MODELS or "training" in needs
        per_ds = p not in TARGET_AGNOSTIC
        pen += (TRAIN_PENALTY if trains else 0.0) + (PER_DATASET_PENALTY if per_ds else 0.0)
        total += pen
        parts.append({"method": p, "cost": cost, "needs": list(needs), "trains_model": trains,
                      "per_dataset": per_ds, "penalty": pen})
    return {"penalty": total, "parts": parts}


def dense_rank(values: Mapping[str, float]) -> dict[str, int]:
    """1 = smallest value; equal values share a rank."""
    uniq = sorted(set(values.values()))
    return {k: uniq.index(v) + 1 for k, v in values.items()}


def seed_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Compare per-seed scores ``a`` (method) with ``b`` (random): mean difference, pooled
    std, whether |diff| > 2 x pooled std, and Welch's t-test p-value (None with < 2 seeds)."""
    a = np.asarray([x for x in a if np.isfinite(x)], dtype=float)
    b = np.asarray([x for x in b if np.isfinite(x)], dtype=float)
    if not len(a) or not len(b):
        return {"diff": None, "pooled_std": None, "exceeds_noise": None, "welch_p": None}
    diff = float(a.mean() - b.mean())
    va = a.var(ddof=1) if len(a) > 1 else 0.0
    vb = b.var(ddof=1) if len(b) > 1 else 0.0
    dof = max(1, len(a) + len(b) - 2)
    pooled = float(math.sqrt(((len(a) - 1) * va + (len(b) - 1) * vb) / dof)) if len(a) + len(b) > 2 else 0.0
    p = None
    if len(a) >= 2 and len(b) >= 2:
        from scipy import stats

        if va == 0 and vb == 0:
            p = 1.0 if diff == 0 else 0.0
        else:
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    exceeds = (abs(diff) > 2 * pooled) if (len(a) > 1 or len(b) > 1) else None
    return {"diff": diff, "pooled_std": pooled, "exceeds_noise": exceeds, "welch_p": p,
            "significant": (p is not None and p < 0.05)}


def _primary_value(row: Mapping[str, Any], scorer: str) -> float:
    return float(row.get("scores", {}).get(scorer, {}).get("all", float("nan")))


def compute_metrics(rows: list[dict[str, Any]], scorers: Sequence[str], primary: str,
                    infos: Mapping[str, Any]) -> dict[str, Any]:
    """Fill ``sdf``, ``pir`` (vs base), ``pir_random`` (vs random at equal size), ``pir_by_scorer``
    and ``efficiency`` into every row (in place), and return the run summary: the random line,
    per method x budget means/stds over seeds, seed-noise tests against random, feasibility
    penalties and ranks."""
    hib = HIGHER_IS_BETTER
    base = next((r for r in rows if r["kind"] == "base"), None)
    base_scores = base["scores"] if base else {}
    rand_by_budget: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "random":
            rand_by_budget.setdefault(r["budget"], []).append(r)

    def mean_scores(rs: Iterable[dict]) -> dict[str, dict[str, float]]:
        acc: dict[str, dict[str, list[float]]] = {}
        for r in rs:
            for s, d in r.get("scores", {}).items():
                for k, v in d.items():
                    acc.setdefault(s, {}).setdefault(k, []).append(v)
        return {s: {k: float(np.nanmean(v)) for k, v in d.items()} for s, d in acc.items()}

    rand_mean = {b: mean_scores(rs) for b, rs in rand_by_budget.items()}
    for r in rows:
        r["sdf"] = sdf(r["n_selected"], r["n_pool"]) if r["kind"] != "base" else 0.0
        by = {}
        by_rand = {}
        for s in scorers:
            sc = r.get("scores", {}).get(s)
            if not sc:
                continue
            if s in base_scores:
                by[s] = pir(sc, base_scores[s], hib[s])
            rm = rand_mean.get(r["budget"], {}).get(s)
            if rm:
                by_rand[s] = pir(sc, rm, hib[s])
        r["pir_by_scorer"] = by
        r["pir_random_by_scorer"] = by_rand
        r["pir"] = by.get(primary, float("nan"))
        r["pir_random"] = by_rand.get(primary, None)
    # random line from per-budget means of random arms
    pts = []
    for b, rs in rand_by_budget.items():
        p_ = [x["pir"] for x in rs if x["pir"] is not None and np.isfinite(x["pir"])]
        pts.append((float(np.mean([x["sdf"] for x in rs])), float(np.mean(p_)) if p_ else float("nan")))
    line = random_line(pts)
    for r in rows:
        r["efficiency"] = efficiency(r["sdf"], r["pir"], line) if r["kind"] != "base" else None
    # per method x budget over seeds
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["kind"] != "base":
            groups.setdefault((r["method"], r["budget"]), []).append(r)
    table = []
    for (m, b), rs in groups.items():
        entry: dict[str, Any] = {"method": m, "budget": b, "kind": rs[0]["kind"], "seeds": [x["seed"] for x in rs],
                                 "n_selected": float(np.mean([x["n_selected"] for x in rs])),
                                 "sdf": float(np.mean([x["sdf"] for x in rs]))}
        for s in scorers:
            v = [_primary_value(x, s) for x in rs]
            if np.isfinite(v).any():
                entry[f"{s}_mean"] = float(np.nanmean(v))
                entry[f"{s}_std"] = float(np.nanstd(v, ddof=1)) if sum(np.isfinite(v)) > 1 else 0.0
        for key in ("pir", "pir_random", "efficiency"):
            v = [x[key] for x in rs if x.get(key) is not None and np.isfinite(x[key])]
            entry[key] = float(np.mean(v)) if v else None
            entry[f"{key}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        rss = [x["peak_rss_mb"] for x in rs if isinstance(x.get("peak_rss_mb"), (int, float))]
        entry["peak_rss_mb"] = max(rss) if rss else None
        for st in ("select", "finetune", "score"):
            v = [x.get("timings", {}).get(st) for x in rs]
            v = [t for t in v if isinstance(t, (int, float))]
            entry[f"{st}_seconds"] = float(np.mean(v)) if v else None
        cont = [x.get("contamination", {}) for x in rs]
        entry["contaminated_exact"] = float(np.mean([c.get("exact", 0) for c in cont]))
        entry["contaminated_near"] = float(np.mean([c.get("near", 0) for c in cont]))
        if rs[0]["kind"] in ("method", "random") and b in rand_by_budget:
            rv = [_primary_value(x, primary) for x in rand_by_budget[b]]
            mv = [_primary_value(x, primary) for x in rs]
            cmp = seed_comparison(mv, rv)
            if cmp["diff"] is not None and not hib[primary]:
                cmp["better"] = cmp["diff"] < 0
            elif cmp["diff"] is not None:
                cmp["better"] = cmp["diff"] > 0
            entry["vs_random"] = cmp
        table.append(entry)
    # feasibility
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] in ("method", "random")))
    feas = {m: feasibility_penalty(m, infos) for m in methods}
    ranks = dense_rank({m: f["penalty"] for m, f in feas.items()})
    for m in feas:
        feas[m]["rank"] = ranks[m]
    for e in table:
        if e["method"] in feas:
            e["feasibility_penalty"] = feas[e["method"]]["penalty"]
            e["feasibility_rank"] = feas[e["method"]]["rank"]
    for r in rows:
        if r["method"] in feas:
            r["feasibility_penalty"] = feas[r["method"]]["penalty"]
            r["feasibility_rank"] = feas[r["method"]]["rank"]
    return {"primary_scorer": primary, "higher_is_better": {s: hib[s] for s in scorers},
            "random_line": {"intercept": line[0], "slope": line[1]} if line else None,
            "random_points": pts, "base_scores": base_scores, "table": table, "feasibility": feas}
