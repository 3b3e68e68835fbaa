"""The learning-rate / warm-up sweep of an evaluation: the fine-tuning settings every arm
uses, chosen on random subsets and validation items, never on the test items.

A recipe's optional ``sweep`` mapping::

    sweep:
      lr: [1.0e-4, 2.0e-4, 5.0e-4]   # learning rates to try (default: the finetune lr alone)
      warmup_ratio: [0.0, 0.1]       # warm-up shares to try (default: the finetune one alone)
      budget: 0.01                   # size of the random subsets (default: the first budget)
      seeds: [0]                     # one random subset and fine-tune per seed and setting
      n_val: 100                     # validation items, from the task's target side
      scorer: loss                   # loss | loss_answer | mc | em, on the validation items

(checked by :func:`tasksift.evaluate.config.parse_sweep`)
Before the arms, each point (lr, warmup_ratio, seed) of the grid draws the seed's random
subset of ``budget`` rows (the same draw as the random arm of that seed and budget),
fine-tunes the base model on it exactly as the arms train (:meth:`.runner.Evaluation.train`,
:meth:`~.runner.Evaluation.run_sweep`) and
scores the validation items (:func:`tasksift.evaluate.tasks.load_task` with ``n_val``:
disjoint from the target examples and the test items). Each point appends one row to
``<out>/sweep.jsonl`` (atomically; a killed sweep resumes after its last finished point;
rows of another sweep are refused). The setting with the best mean score over the seeds is
chosen (:func:`choose`; ties go to the earlier point, learning rates in the order given,
then warm-ups) and every arm trains with it; the arms' rows (``train.lr``,
``train.warmup_ratio``), ``summary.json``, the publishable summary and ``report.html`` carry
the sweep's table and the choice. Out dirs of other seeds of the same recipe can reuse a
finished sweep: copy ``sweep.jsonl`` in before their run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .config import comparable_recipe, recipe_hash
from .scorers import HIGHER_IS_BETTER

SWEEP_FILE = "sweep.jsonl"
#: recipe parts the sweep's outcome does not depend on (the sweep has its own scorer and budget)
_NOT_SWEPT = ("methods", "method_options", "seeds", "budgets", "full", "scorers", "primary_scorer", "name")


def sweep_points(sweep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The grid in run order (learning rate, then warm-up, then seed), each with its id."""
    return [{"id": point_id(lr, w, s), "lr": lr, "warmup_ratio": w, "seed": s}
            for lr in sweep["lr"] for w in sweep["warmup_ratio"] for s in sweep["seeds"]]


def point_id(lr: float, warmup: float, seed: int) -> str:
    """The resume key of one sweep point."""
    return f"lr={lr:g}|warmup_ratio={warmup:g}|seed={seed}"


def setting_id(lr: float, warmup: float) -> str:
    return f"lr={lr:g}|warmup_ratio={warmup:g}"


def sweep_fingerprint(recipe: Mapping[str, Any]) -> str:
    """Hash of what a sweep's rows depend on: the recipe (a dict) less its methods, seeds,
    budgets, scorers and output settings, the finetune settings less those the sweep sets
    (:func:`.config.comparable_recipe` otherwise)."""
    d = comparable_recipe(recipe, drop=_NOT_SWEPT)
    d["finetune"] = {k: v for k, v in (d.get("finetune") or {}).items() if k not in ("lr", "warmup_ratio")}
    return recipe_hash(d)


def read_sweep(path: str | Path, fingerprint: str | None = None) -> list[dict[str, Any]]:
    """The rows of a ``sweep.jsonl`` (none when absent); with ``fingerprint``, a ConfigError
    when any row belongs to another sweep."""
    from .arms import read_results

    rows = read_results(path)
    if fingerprint is not None:
        other = [r.get("point") for r in rows if r.get("sweep_fingerprint") != fingerprint]
        if other:
            raise ConfigError(f"{path} holds rows of another sweep (recipe changed?): {', '.join(map(str, other[:3]))}; "
                              "move it away to sweep again")
    return rows


def choose(rows: Sequence[Mapping[str, Any]], sweep: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep's table and choice from its rows: per setting (grid order) the mean score
    over its seeds; the best mean wins (lower for losses, higher for mc/em), ties and NaNs
    to the earlier setting. Every point of the grid must have a row."""
    scorer = sweep["scorer"]
    higher = HIGHER_IS_BETTER[scorer]
    by_point = {r["point"]: r for r in rows}
    missing = [p["id"] for p in sweep_points(sweep) if p["id"] not in by_point]
    if missing:
        raise ConfigError(f"the sweep lacks point(s) {', '.join(missing)}")
    table = []
    for lr in sweep["lr"]:
        for w in sweep["warmup_ratio"]:
            vals = [by_point[point_id(lr, w, s)]["score"] for s in sweep["seeds"]]
            finite = [v for v in vals if v is not None and np.isfinite(v)]
            table.append({"setting": setting_id(lr, w), "lr": lr, "warmup_ratio": w, "scores": vals,
                          "mean": float(np.mean(finite)) if len(finite) == len(vals) else None})
    best = None
    for e in table:
        if e["mean"] is None:
            continue
        if best is None or (e["mean"] > best["mean"] if higher else e["mean"] < best["mean"]):
            best = e
    if best is None:
        raise ConfigError(f"no sweep setting got a finite {scorer} on the validation items")
    return {"scorer": scorer, "higher_is_better": higher, "budget": sweep["budget"], "seeds": list(sweep["seeds"]),
            "n_val": sweep["n_val"], "table": table,
            "chosen": {"lr": best["lr"], "warmup_ratio": best["warmup_ratio"], "mean": best["mean"]}}
