"""Combine several ``tasksift evaluate`` out dirs of one recipe that differ only in their seeds
(e.g. one dir per seed, run in parallel) into one summary.json / report.html, and write the
publishable summary (``bench/results/<task>.json``, see :func:`.summary.publishable`).

Each dir needs ``run.json`` (the recipe) and ``results.jsonl``. The recipes must agree on
everything but ``seeds``, ``methods`` (a dir may add methods to the others': the combined
recipe lists the union) and output settings. The base model's arm, identical in every dir,
is taken from the first dir that has it; an arm present in two dirs is an error (two runs of
the same seed) unless the two rows are equal (a row copied so that a run of added methods
skips its base and random arms). Rows lacking fields added after a run started (answer style, per-item choice
counts, the target's answer style) are tolerated; with the task's data at hand (the recipe's
``task`` paths) the task-level ones are recomputed from it. A recipe with a ``sweep``: the table and choice come from the dirs'
``sweep.jsonl`` (:mod:`.sweep`); dirs whose finished sweeps chose differently are refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ..atomic import write_json, write_text
from ..errors import ConfigError
from .config import comparable_recipe, recipe_from_dict
from .arms import RESULTS, json_line, read_results

def _comparable(recipe: dict[str, Any]) -> dict[str, str]:
    """What seed dirs of one recipe share (the recipe less its seeds and methods), per key as
    sorted JSON."""
    d = comparable_recipe(recipe, drop=("seeds", "methods"))
    return {k: json.dumps(v, sort_keys=True, default=str) for k, v in d.items()}


def read_run_dir(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(recipe dict, results rows, summary.json or {}) of one out dir."""
    p = Path(path)
    run = p / "run.json"
    if not run.is_file():
        raise ConfigError(f"{p} is not a tasksift evaluate out dir (no run.json)")
    recipe = json.loads(run.read_text(encoding="utf-8")).get("recipe")
    if not isinstance(recipe, dict):
        raise ConfigError(f"{run} holds no recipe")
    summ = p / "summary.json"
    summary = json.loads(summ.read_text(encoding="utf-8")) if summ.is_file() else {}
    return recipe, read_results(p / RESULTS), summary


def combine_rows(dirs: Sequence[str | Path]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Check the dirs belong together and merge them: (combined recipe with the union of the
    seeds, rows in a stable order, the first dir's summary.json for pool information)."""
    if not dirs:
        raise ConfigError("--summarize needs at least one out dir")
    named = [Path(d).resolve() for d in dirs]
    again = sorted({str(d) for d in dirs if named.count(Path(d).resolve()) > 1})
    if again:
        raise ConfigError(f"out dir(s) given twice: {', '.join(again)}")
    recipes, all_rows, summaries = [], [], []
    for d in dirs:
        r, rows, s = read_run_dir(d)
        recipes.append(r)
        all_rows.append((str(d), rows))
        summaries.append(s)
    first = _comparable(recipes[0])
    for d, r in zip(dirs[1:], recipes[1:]):
        mine = _comparable(r)
        if mine != first:
            diff = sorted(k for k in set(mine) | set(first) if mine.get(k) != first.get(k))
            raise ConfigError(f"{d} was run with another recipe than {dirs[0]} (differs in: {', '.join(diff)})")
    seen: dict[str, str] = {}
    seen_rows: dict[str, dict[str, Any]] = {}
    merged: list[dict[str, Any]] = []
    for d, rows in all_rows:
        for row in rows:
            if row["kind"] == "base":
                if row["arm"] in seen:
                    continue
            elif row["arm"] in seen:
                if json_line(row) == json_line(seen_rows[row["arm"]]):
                    continue   # the same row, copied into a second dir
                raise ConfigError(f"arm {row['arm']} is in both {seen[row['arm']]} and {d}: the same seed twice")
            seen[row["arm"]] = d
            seen_rows[row["arm"]] = row
            merged.append(row)
    seeds = sorted({s for r in recipes for s in r.get("seeds", [])})
    methods: list[Any] = []
    for r in recipes:
        methods += [m for m in r.get("methods", []) if m not in methods]
    recipe = {**recipes[0], "seeds": seeds, "methods": methods}
    order = {"base": 0, "random": 1, "method": 2, "full": 3}
    merged.sort(key=lambda r: (order.get(r["kind"], 9), r["method"], str(r["budget"]), r["seed"] if r["seed"] is not None else -1))
    first_summary = next((s for s in summaries if s), {})
    return recipe, merged, first_summary


def combined_sweep(recipe: dict[str, Any], dirs: Sequence[str | Path]) -> dict[str, Any] | None:
    """The sweep's table and choice (:func:`.sweep.choose`) from the first dir whose
    ``sweep.jsonl`` covers the grid (None: no sweep in the recipe, or none finished); a
    ConfigError when two finished sweeps chose different settings."""
    from .sweep import SWEEP_FILE, choose, read_sweep, sweep_fingerprint, sweep_points

    sweep = recipe.get("sweep")
    if not sweep:
        return None
    fp = sweep_fingerprint(recipe)
    found: list[tuple[str, dict[str, Any]]] = []
    for d in dirs:
        rows = read_sweep(Path(d) / SWEEP_FILE, fp)
        if {p["id"] for p in sweep_points(sweep)} <= {r["point"] for r in rows}:
            found.append((str(d), choose(rows, sweep)))
    for d, res in found[1:]:
        a, b = found[0][1]["chosen"], res["chosen"]
        if (a["lr"], a["warmup_ratio"]) != (b["lr"], b["warmup_ratio"]):
            raise ConfigError(f"{found[0][0]} and {d} chose different sweep settings (lr {a['lr']:g} / "
                              f"warmup {a['warmup_ratio']:g} against {b['lr']:g} / {b['warmup_ratio']:g})")
    return found[0][1] if found else None


def _task_meta(recipe: dict[str, Any]) -> dict[str, Any]:
    """Task-level metadata recomputed from the task's data when it is at hand ({} otherwise)."""
    from ..errors import TasksiftError
    from ..data.style import answer_style, example_responses
    from .tasks import load_task

    try:
        task = load_task(recipe["task"])
    except (TasksiftError, OSError, KeyError):
        return {}
    return {"item_n_choices": [len(t.choices) if t.choices and t.label is not None else None for t in task.test],
            "item_subtasks": [t.subtask for t in task.test],
            "target_answer_style": answer_style(example_responses(task.target))}


def summarize_dirs(dirs: Sequence[str | Path], out: str | Path, *, publish: str | Path | None = None,
                   report: bool = True) -> dict[str, Any]:
    """Combine ``dirs`` into ``out`` (results.jsonl, summary.json, report.html, and the
    publishable ``published.json``, also written to ``publish`` when given)."""
    from ..methods.registry import available_methods
    from .metrics import compute_metrics
    from .report import write_report
    from .summary import enrich_summary, publishable

    recipe, rows, first = combine_rows(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scorers = list(recipe.get("scorers") or [])
    primary = recipe.get("primary_scorer") or scorers[0]
    infos = {i.name: i for i in available_methods()}
    summary = compute_metrics(rows, scorers, primary, infos)
    base = next((r for r in rows if r["kind"] == "base"), {})
    meta = {} if base.get("item_n_choices") is not None and base.get("target_answer_style") else _task_meta(recipe)
    enrich_summary(summary, rows, scorers, infos, n_choices=base.get("item_n_choices", meta.get("item_n_choices")),
                   subtasks=base.get("item_subtasks", meta.get("item_subtasks")),
                   target_style=base.get("target_answer_style") or meta.get("target_answer_style"))
    if meta:
        summary["recomputed_from_task_data"] = sorted(k for k in meta if k not in base)
    sweep = combined_sweep(recipe, dirs)
    if sweep is not None:
        summary["sweep"] = sweep
    try:
        fingerprint = recipe_from_dict(recipe).fingerprint()
    except ConfigError:
        fingerprint = None
    summary.update({"name": recipe.get("name", "eval"), "fingerprint": fingerprint, "pool": first.get("pool", {}),
                    "n_arms": len(rows), "recipe": recipe, "test_sets": first.get("test_sets")
                    or sorted({s for s in (base.get("item_subtasks") or meta.get("item_subtasks") or [])}),
                    "combined_from": [str(d) for d in dirs], "arms_run": [], "arms_skipped": []})
    write_text(out / RESULTS, "".join(json_line(r) for r in rows))
    write_json(out / "summary.json", summary)
    if report:
        summary["report"] = str(write_report(out / "report.html", rows, summary))
    pub = publishable(summary)
    pub["combined_from"] = [Path(d).name for d in dirs]
    write_json(out / "published.json", pub)
    if publish:
        Path(publish).parent.mkdir(parents=True, exist_ok=True)
        write_json(publish, pub)
    return summary
