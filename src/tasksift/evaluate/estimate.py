"""An up-front estimate of an evaluation's duration from a small measured sample.

On the run's own model, device and settings: fine-tune ``sample_steps`` LoRA steps on random
pool rows (the recipe's batch size, max length, dtype, checkpointing) and score
``sample_items`` test items with every scorer; then multiply: per arm, its optimizer steps
(``steps``, or ``epochs`` x subset size / batch size) x seconds per step + the test items x
seconds per item and scorer. Not included: selection (embedding the pool once, cached across
arms; LM-scoring methods such as LoBaSS, which also trains a reference model, cost more) and
the pool loading/contamination check already done. Selected subsets can have longer or
shorter rows than random pool rows, so this is an estimate, not a promise.
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Any

import numpy as np


def arm_steps(arm: dict[str, Any], recipe: Any, n_pool: int) -> int:
    """Optimizer steps an arm will run (0 for the base model)."""
    if arm["kind"] == "base":
        return 0
    ft = recipe.finetune
    if ft.get("steps") is not None:
        return int(ft["steps"])
    b = arm["budget_value"]
    n = n_pool if arm["kind"] == "full" else (int(round(b * n_pool)) if isinstance(b, float) and b < 1 else min(int(b), n_pool))
    return max(1, int(math.ceil(float(ft["epochs"]) * math.ceil(max(1, n) / int(ft["batch_size"])))))


def estimate_run(ev: Any, *, sample_steps: int = 2, sample_items: int = 8, seed: int = 0) -> dict[str, Any]:
    """Measure a small sample on ``ev`` (a prepared :class:`~.runner.Evaluation`: pool and task
    loaded) and estimate the time of every arm not finished yet. Returns seconds per step / per item and scorer, per-arm
    and total estimates."""
    from ..finetune import finetune_lora
    from .arms import RESULTS, plan_arms, read_results
    from .scorers import PAIR_SCORERS, ModelScorer

    if ev.pool is None or ev.task is None:
        ev.prepare()
    assert ev.pool is not None and ev.task is not None
    recipe = ev.recipe
    model, tok = ev.model()
    ft = recipe.finetune
    bs = int(ft["batch_size"])
    rng = np.random.default_rng(seed)
    rows = [ev.pool.examples[int(i)] for i in rng.choice(len(ev.pool), min(len(ev.pool), bs * sample_steps), replace=False)]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        finetune_lora(model, rows, tokenizer=tok, steps=sample_steps, lr=float(ft["lr"]), r=int(ft["r"]),
                      alpha=int(ft["alpha"]), dropout=float(ft["dropout"]), batch_size=bs,
                      max_length=int(ft["max_length"]), seed=seed, out_dir=d, progress=False,
                      gradient_checkpointing=bool(ft["gradient_checkpointing"]), dtype=str(ft.get("dtype", "float32")))
        step_s = (time.perf_counter() - t) / sample_steps
    items = [ev.task.test[int(i)] for i in rng.choice(len(ev.task.test), min(len(ev.task.test), sample_items), replace=False)]
    g, s = recipe.generation, recipe.scoring
    scorer = ModelScorer(model, tok, max_length=int(s["max_length"]), batch_tokens=int(s["batch_tokens"]),
                         max_new_tokens=int(g["max_new_tokens"]), gen_batch_size=int(g["batch_size"]),
                         dtype=str(s.get("dtype", "float32")))
    per_item: dict[str, float] = {}
    # the likelihood scorers share one pass (ModelScorer.pair_scores), so they are timed together
    likelihood = [sc for sc in recipe.scorers if sc in PAIR_SCORERS]
    for group in ([likelihood] if likelihood else []) + [[sc] for sc in recipe.scorers if sc not in PAIR_SCORERS]:
        t = time.perf_counter()
        scorer.score(items, group)
        per_item["+".join(group)] = (time.perf_counter() - t) / len(items)
    score_s = sum(per_item.values()) * len(ev.task.test)
    done = {r["arm"] for r in read_results(ev.out / RESULTS)}
    arms = [a for a in plan_arms(recipe) if a["id"] not in done]
    per_arm = [{"arm": a["id"], "steps": arm_steps(a, recipe, len(ev.pool)),
                "seconds": arm_steps(a, recipe, len(ev.pool)) * step_s + score_s} for a in arms]
    sweep = recipe.sweep
    if sweep is not None:  # its points train random subsets and score the validation items
        from .arms import safe_name
        from .config import budget_label
        from .sweep import SWEEP_FILE, read_sweep, sweep_points

        t = time.perf_counter()
        scorer.score(items, [sweep["scorer"]])
        val_s = (time.perf_counter() - t) / len(items) * int(sweep["n_val"])
        have = {r.get("point") for r in read_sweep(ev.out / SWEEP_FILE)}
        steps = arm_steps({"kind": "random", "budget_value": sweep["budget"]}, recipe, len(ev.pool))
        todo = [p for p in sweep_points(sweep) if p["id"] not in have]
        # the random arm of a seed still being swept takes the chosen point's adapter (as one
        # whose adapter is already there does): it only scores
        handed = {int(p["seed"]) for p in todo}
        for a in per_arm:
            arm = next(x for x in arms if x["id"] == a["arm"])
            if arm["kind"] == "random" and arm["budget"] == budget_label(sweep["budget"]) and (
                    int(arm["seed"]) in handed or (ev.out / "adapters" / safe_name(arm["id"])).is_dir()):
                a["steps"], a["seconds"] = 0, score_s
        per_arm = [{"arm": f"sweep|{p['id']}", "steps": steps, "seconds": steps * step_s + val_s}
                   for p in todo] + per_arm
    n_sweep = sum(a["arm"].startswith("sweep|") for a in per_arm)
    return {"seconds_per_step": step_s, "seconds_per_item": per_item, "score_seconds_per_arm": score_s,
            "n_test": len(ev.task.test), "arms": per_arm, "n_arms_todo": len(arms), "n_sweep_todo": n_sweep,
            "total_seconds": float(sum(a["seconds"] for a in per_arm)), "sample_steps": sample_steps,
            "sample_items": len(items), "excludes": "selection time (embedding, LM scoring, LoBaSS's reference model)"}


def _hms(sec: float) -> str:
    sec = int(round(sec))
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


def format_estimate(est: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    items = ", ".join(f"{k} {v:.2f}" for k, v in est["seconds_per_item"].items())
    steps = sum(a["steps"] for a in est["arms"])
    sweep = est.get("n_sweep_todo", 0)
    train_s = steps * est["seconds_per_step"]
    return (f"estimate from {est['sample_steps']} LoRA steps and {est['sample_items']} test items: "
            f"{est['seconds_per_step']:.2f} s/step, s/item: {items}; "
            + (f"{sweep} sweep points and " if sweep else "")
            + f"{est['n_arms_todo']} arms to run ({steps} steps in all, {est['n_test']} test items per arm): "
            f"about {_hms(est['total_seconds'])} (training {_hms(train_s)}, scoring "
            f"{_hms(est['total_seconds'] - train_s)}; {est['excludes']} not included)")
