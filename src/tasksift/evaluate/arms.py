"""The arms of an evaluation and their results file: ids, run order, results.jsonl rows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import json_default
from .config import EvalRecipe, budget_label, method_label

RESULTS = "results.jsonl"


def arm_id(method: str, budget: str, seed: int | None) -> str:
    """Stable id of an arm, the resume key."""
    return f"{method}|{budget}|seed={seed}" if seed is not None else f"{method}|{budget}"


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl (a torn last line, impossible with atomic writes, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def json_line(row: dict[str, Any]) -> str:
    """One results.jsonl line (JSON of ``row`` and a newline)."""
    return json.dumps(row, ensure_ascii=False, default=json_default) + "\n"


def plan_arms(recipe: EvalRecipe) -> list[dict[str, Any]]:
    """Every arm in run order: base, random at each budget x seed, methods, then full."""
    arms = [{"id": arm_id("base", "none", None), "method": "base", "kind": "base", "budget": "none",
             "budget_value": 0, "seed": None}]
    for m in ["random"] + [method_label(x) for x in recipe.methods]:
        spec = next((x for x in recipe.methods if method_label(x) == m), m)
        for b in recipe.budgets:
            for s in recipe.seeds:
                arms.append({"id": arm_id(m, budget_label(b), s), "method": m, "spec": spec,
                             "kind": "random" if m == "random" else "method", "budget": budget_label(b),
                             "budget_value": b, "seed": s})
    if recipe.full:
        for s in recipe.seeds:
            arms.append({"id": arm_id("full", "ratio=1", s), "method": "full", "kind": "full", "budget": "ratio=1",
                         "budget_value": 1.0, "seed": s})
    return arms


def safe_name(s: str) -> str:
    """``s`` as a folder name (an arm's adapter folder): characters other than letters,
    digits and ``-_.=`` become ``_``."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in s)
