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

Before the arms, each point (lr, warmup_ratio, seed) of the grid draws the seed's random
subset of ``budget`` rows (the same draw as the random arm of that seed and budget),
fine-tunes the base model on it exactly as the arms train (:meth:`Evaluation.train`) and
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

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from .scorers import HIGHER_IS_BETTER

SWEEP_FILE = "sweep.jsonl"
SWEEP_KEYS = ("lr", "warmup_ratio", "budget", "seeds", "n_val", "scorer")
#: recipe parts the sweep's outcome does not depend on (the sweep has its own scorer and budget)
_NOT_SWEPT = ("methods", "method_options", "seeds", "budgets", "full", "scorers", "primary_scorer", "out",
              "progress", "keep_adapters", "cache_dir", "name")


def _numbers(v: Any, what: str, positive: bool, source: str) -> list[float]:
    """A sweep list (or one value) of learning rates (``positive``: > 0) or warm-up shares
    (in [0, 1)), distinct."""
    vals = v if isinstance(v, list) else [v]
    out = []
    for x in vals:
        ok = not isinstance(x, bool) and isinstance(x, (int, float)) and bool(np.isfinite(x))
        ok = ok and (x > 0 if positive else 0 <= x < 1)
        if not ok:
            raise ConfigError(f"sweep.{what}: {x!r} is not a number {'> 0' if positive else 'in [0, 1)'}", file=source)
        out.append(float(x))
    if not out:
        raise ConfigError(f"sweep.{what} must list at least one value", file=source)
    if len(set(out)) != len(out):
        raise ConfigError(f"sweep.{what} lists a value twice: {out}", file=source)
    return out


def parse_sweep(d: Any, finetune: Mapping[str, Any], budgets: Sequence[Any], source: str) -> dict[str, Any] | None:
    """The recipe's ``sweep`` mapping validated, with its defaults filled in (None: no sweep)."""
    if d is None:
        return None
    if not isinstance(d, Mapping):
        raise ConfigError(f"'sweep' must be a mapping with keys {', '.join(SWEEP_KEYS)}", file=source)
    unknown = sorted(set(d) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"unknown 'sweep' setting(s) {unknown}; known: {list(SWEEP_KEYS)}", file=source)
    lrs = _numbers(d.get("lr", finetune["lr"]), "lr", True, source)
    warm = _numbers(d.get("warmup_ratio", finetune["warmup_ratio"]), "warmup_ratio", False, source)
    budget = d.get("budget", budgets[0])
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0 or \
            (isinstance(budget, float) and budget >= 1 and not budget.is_integer()):
        raise ConfigError(f"sweep.budget {budget!r}: use a ratio in (0, 1) or a positive row count", file=source)
    budget = int(budget) if isinstance(budget, float) and budget >= 1 else budget
    seeds = d.get("seeds", [0])
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError("sweep.seeds must be a non-empty list of distinct integers", file=source)
    n_val = d.get("n_val", 100)
    if isinstance(n_val, bool) or not isinstance(n_val, int) or n_val < 1:
        raise ConfigError(f"sweep.n_val must be a positive integer, got {n_val!r}", file=source)
    scorer = d.get("scorer", "loss")
    if scorer not in HIGHER_IS_BETTER:
        raise ConfigError(f"sweep.scorer must be one of {', '.join(HIGHER_IS_BETTER)}, got {scorer!r}", file=source)
    if len(lrs) * len(warm) < 2:
        raise ConfigError("a sweep needs at least two settings (several lr or warmup_ratio values)", file=source)
    return {"lr": lrs, "warmup_ratio": warm, "budget": budget, "seeds": list(seeds), "n_val": n_val,
            "scorer": scorer}


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
    budgets, scorers and output settings, the finetune settings less those the sweep sets."""
    d = {k: v for k, v in recipe.items() if k not in _NOT_SWEPT}
    d["finetune"] = {k: v for k, v in (d.get("finetune") or {}).items()
                     if k not in ("lr", "warmup_ratio", "gradient_checkpointing")}
    if d["finetune"].get("dtype") == "float32":
        d["finetune"].pop("dtype")
    if isinstance(d.get("scoring"), dict) and d["scoring"].get("dtype") == "float32":
        d["scoring"] = {k: v for k, v in d["scoring"].items() if k != "dtype"}
    if d.get("embed_dtype") in (None, "auto"):
        d.pop("embed_dtype", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


def run_sweep(ev: Any) -> dict[str, Any]:
    """Run the unfinished points of ``ev.recipe.sweep`` on a prepared
    :class:`~.runner.Evaluation` (rows to ``<out>/sweep.jsonl``) and return :func:`choose`'s
    result."""
    from .arms import json_line
    from .config import budget_label
    from .runner import _log, _safe, append_row
    from .scorers import aggregate

    sweep = ev.recipe.sweep
    assert sweep is not None and ev.task is not None and ev.pool is not None
    fp = sweep_fingerprint(ev.recipe.to_dict())
    path = ev.out / SWEEP_FILE
    rows = read_sweep(path, fp)
    done = {r["point"] for r in rows}
    points = sweep_points(sweep)
    if len(ev.task.validation) < int(sweep["n_val"]):
        raise ConfigError(f"the sweep needs {sweep['n_val']} validation items, the task gave {len(ev.task.validation)}")
    items = ev.task.validation
    todo = [p for p in points if p["id"] not in done]
    if todo:
        _log(f"sweep: {len(todo)} of {len(points)} points to run ({sweep['scorer']} on {len(items)} validation items)",
             ev.progress)
    for k, p in enumerate(todo, 1):
        _log(f"sweep point {k}/{len(todo)}: {p['id']}", ev.progress)
        arm = {"id": f"sweep|{p['id']}", "kind": "random", "method": "random", "spec": "random",
               "budget": budget_label(sweep["budget"]), "budget_value": sweep["budget"], "seed": p["seed"]}
        t = time.perf_counter()
        idx, _, _ = ev._select(arm)
        subset = [ev.pool.examples[int(i)] for i in idx]
        timings = {"select": time.perf_counter() - t}
        t = time.perf_counter()
        adir = ev.out / "adapters" / _safe("sweep|" + p["id"])
        train = ev.train(subset, seed=p["seed"], adapter_dir=adir, lr=p["lr"], warmup_ratio=p["warmup_ratio"])
        timings["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        per_item = ev.score_adapter(adir, items, [sweep["scorer"]])
        timings["score"] = time.perf_counter() - t
        score = aggregate(items, per_item, [sweep["scorer"]]).get(sweep["scorer"], {}).get("all")
        row = {"point": p["id"], "sweep_fingerprint": fp, "lr": p["lr"], "warmup_ratio": p["warmup_ratio"],
               "seed": p["seed"], "budget": budget_label(sweep["budget"]), "n_selected": len(subset),
               "n_val": len(items), "scorer": sweep["scorer"], "score": score,
               "val_overlap": ev.validation_overlap(idx), "train": train,
               "timings": {k2: round(v, 4) for k2, v in timings.items()},
               "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        json_line(row)  # serialisable before the write
        append_row(path, row)
        rows.append(row)
    result = choose(rows, sweep)
    c = result["chosen"]
    _log(f"sweep: chose lr {c['lr']:g}, warmup_ratio {c['warmup_ratio']:g} ({sweep['scorer']} {c['mean']:.4f} "
         "on the validation items)", ev.progress)
    return result
