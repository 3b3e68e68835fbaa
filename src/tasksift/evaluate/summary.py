"""The run summary beyond :func:`.metrics.compute_metrics`: paired per-item comparisons with
random (:mod:`.paired`), the base model's distance from chance, answer-style diagnostics
(:mod:`.style`), the survey's own efficiency and feasibility (:mod:`.survey`); and the
*publishable* form of a summary (``bench/results/<task>.json``: scores and statistics, the
recipe, no pool rows, no test items, no texts).

Rows from runs made before these fields existed (no ``answer_style``, no ``item_n_choices``,
no ``target_answer_style``, no ``loss_answer``) are tolerated: what cannot be computed is left
out and named in ``summary["missing_fields"]``.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .paired import N_RESAMPLES, distance_from_chance, paired_comparison
from .scorers import HIGHER_IS_BETTER
from .survey import PUBLISHED_POINTS, REFERENCE, reference_line, survey_efficiency, survey_feasibility

#: answer-style fields averaged over seeds per method x budget
STYLE_FIELDS = ("words_mean", "words_median", "rationale_first_share", "bare_share")


def paired_vs_random(rows: Sequence[Mapping[str, Any]], scorers: Sequence[str], *,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> list[dict[str, Any]]:
    """For each method x budget (and full) and scorer: the paired comparison with random at the
    same budget, seeds pooled by per-item means (see :mod:`.paired`)."""
    rand: dict[str, list] = {}
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        if r["kind"] == "random":
            rand.setdefault(r["budget"], []).append(r)
        elif r["kind"] in ("method", "full"):
            groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (m, b), rs in groups.items():
        ref = rand.get(b) or (sum(rand.values(), []) if rs[0]["kind"] == "full" and len(rand) == 1 else None)
        if not ref:
            continue
        for s in scorers:
            c = paired_comparison(rs, ref, s, HIGHER_IS_BETTER.get(s, True), n_resamples=n_resamples, seed=seed)
            if c is not None:
                out.append({"method": m, "budget": b, **c})
    return out


def base_chance(base: Mapping[str, Any] | None, n_choices: Sequence[int | None] | None,
                subtasks: Sequence[str] | None) -> dict[str, Any]:
    """The base model's multiple-choice accuracy minus chance, per test set and ``all``."""
    if not base or n_choices is None or "mc" not in base.get("item_scores", {}):
        return {}
    mc = np.array([np.nan if x is None else x for x in base["item_scores"]["mc"]], dtype=float)
    k = np.array([np.nan if x is None else x for x in n_choices], dtype=float)
    if len(mc) != len(k):
        return {}
    out: dict[str, Any] = {}
    subs = np.array(list(subtasks)) if subtasks is not None and len(subtasks) == len(mc) else None
    if subs is not None:
        for s in dict.fromkeys(subs.tolist()):
            d = distance_from_chance(mc[subs == s], k[subs == s])
            if d:
                out[s] = d
    d = distance_from_chance(mc, k)
    if d:
        out["all"] = d
    return out


def style_table(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds of each method x budget's answer-style fields (rows that have them)."""
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        if r.get("answer_style"):
            groups.setdefault((r["method"], r["budget"]), []).append(r["answer_style"])
    out = []
    for (m, b), st in groups.items():
        e: dict[str, Any] = {"method": m, "budget": b, "seeds": len(st)}
        for f in STYLE_FIELDS:
            v = [x[f] for x in st if x.get(f) is not None]
            e[f] = float(np.mean(v)) if v else None
        out.append(e)
    return out


def survey_section(table: Sequence[Mapping[str, Any]], infos: Mapping[str, Any]) -> dict[str, Any]:
    """Survey efficiency of every method x budget (mean PIR vs base), the published points and
    the survey feasibility of our methods ranked among the published ones."""
    a, b = reference_line()
    eff = []
    for e in table:
        if e["kind"] in ("method", "random", "full") and e.get("pir") is not None:
            eff.append({"method": e["method"], "budget": e["budget"], "sdf": e["sdf"], "pir": e["pir"],
                        "survey_efficiency": survey_efficiency(e["sdf"], e["pir"])})
    methods = list(dict.fromkeys(e["method"] for e in table if e["kind"] in ("method", "random")))
    return {"reference_line": {"through": list(REFERENCE), "intercept": a, "slope": b},
            "published_points": {k: {"sdf": v[0], "pir": v[1], "survey_efficiency": survey_efficiency(*v)}
                                 for k, v in PUBLISHED_POINTS.items()},
            "efficiency": eff, "feasibility": survey_feasibility(methods, infos),
            "note": "PIRs from different setups (models, pools, benchmarks) are only roughly comparable."}


def missing_fields(rows: Sequence[Mapping[str, Any]], scorers: Sequence[str]) -> dict[str, list[str]]:
    """Per field the arms that lack it (fields added after a run started)."""
    miss: dict[str, list[str]] = {}
    for r in rows:
        need = ["item_scores"] + (["answer_style"] if r["kind"] in ("method", "random", "full") else [])
        if r["kind"] == "base":
            need += ["item_n_choices", "target_answer_style"]
        for f in need:
            if f not in r:
                miss.setdefault(f, []).append(r["arm"])
        for s in scorers:
            if s not in r.get("item_scores", {}):
                miss.setdefault(f"item_scores.{s}", []).append(r["arm"])
    return miss


def enrich_summary(summary: dict[str, Any], rows: Sequence[Mapping[str, Any]], scorers: Sequence[str],
                   infos: Mapping[str, Any], *, n_choices: Sequence[int | None] | None = None,
                   subtasks: Sequence[str] | None = None, target_style: Mapping[str, Any] | None = None,
                   n_resamples: int = N_RESAMPLES) -> dict[str, Any]:
    """Add ``paired``, ``base_chance``, ``answer_style``, ``target_answer_style``, ``survey``
    and ``missing_fields`` to a summary from :func:`.metrics.compute_metrics` (in place)."""
    base = next((r for r in rows if r["kind"] == "base"), None)
    if n_choices is None and base is not None:
        n_choices = base.get("item_n_choices")
    if subtasks is None and base is not None:
        subtasks = base.get("item_subtasks")
    if target_style is None and base is not None:
        target_style = base.get("target_answer_style")
    summary["paired"] = paired_vs_random(rows, scorers, n_resamples=n_resamples)
    chance = base_chance(base, n_choices, subtasks)
    summary["base_chance"] = chance
    summary["base_at_chance"] = sorted(k for k, v in chance.items() if v["at_chance"])
    summary["answer_style"] = style_table(rows)
    summary["target_answer_style"] = dict(target_style) if target_style else None
    summary["survey"] = survey_section(summary.get("table", []), infos)
    summary["missing_fields"] = missing_fields(rows, scorers)
    return summary


#: keys of a summary kept in its publishable form
PUBLIC_KEYS = ("name", "fingerprint", "primary_scorer", "higher_is_better", "random_line", "random_points",
               "base_scores", "table", "feasibility", "paired", "base_chance", "base_at_chance", "answer_style",
               "target_answer_style", "survey", "missing_fields", "test_sets", "n_arms", "recipe", "combined_from",
               "recomputed_from_task_data", "sweep")
#: per-table-entry keys dropped (none hold texts; these are machine-specific)
_ENTRY_DROP = ("peak_rss_mb",)


def publishable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary as it may be committed (``bench/results/<task>.json``): scores, paired
    differences with their intervals, SDF/PIR/efficiency/feasibility (ours and the survey's),
    answer style, the recipe and pool/test *counts*; no pool rows, test items, ids or texts
    (contamination matches, generated outputs); the recipe without its output and cache
    folders (data paths stay as the recipe gave them)."""
    out = {k: summary[k] for k in PUBLIC_KEYS if k in summary}
    if isinstance(out.get("recipe"), dict):
        out["recipe"] = {k: v for k, v in out["recipe"].items() if k not in ("out", "cache_dir")}
    pool = summary.get("pool") or {}
    cb = pool.get("contamination_before_drop") or {}
    out["pool"] = {"rows": pool.get("rows"), "rows_before_drop": pool.get("rows_before_drop"),
                   "dropped_contaminated": pool.get("dropped_contaminated"),
                   "contamination_before_drop": {k: cb.get(k) for k in ("checked", "exact", "near", "test_items_hit")},
                   "sources": pool.get("sources"), "task": pool.get("task")}
    out["table"] = [{k: v for k, v in e.items() if k not in _ENTRY_DROP} for e in summary.get("table", [])]
    return out
