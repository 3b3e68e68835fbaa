"""Budgets: how many rows to select (count, ratio of the pool or total tokens) and
per-group quotas (e.g. by source or domain, as LoBaSS keeps both chat and math ability)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """Exactly one of ``count``, ``ratio`` (fraction of the pool, in (0, 1]) or ``tokens``."""

    count: int | None = None
    ratio: float | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.count, self.ratio, self.tokens)]
        if sum(given) != 1:
            raise ConfigError("give exactly one budget: a count, a ratio or a token total")
        if self.count is not None and self.count < 1:
            raise ConfigError(f"budget count must be >= 1, got {self.count}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"budget ratio must be in (0, 1], got {self.ratio}")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"budget tokens must be >= 1, got {self.tokens}")

    def rows(self, n_pool: int, n_tokens: np.ndarray | None = None) -> int:
        """Number of rows for a pool of ``n_pool``. For a token budget: the most rows that can
        fit (:func:`max_rows_within`, given the rows' ``n_tokens``; the whole pool without
        them), to be cut by :func:`cut_to_tokens` after ranking."""
        if self.count is not None:
            if self.count > n_pool:
                raise ConfigError(f"budget of {self.count} rows is larger than the pool ({n_pool} rows)")
            return self.count
        if self.ratio is not None:
            return max(1, int(round(self.ratio * n_pool)))
        return n_pool if n_tokens is None else max_rows_within(n_tokens, self.tokens)

    def describe(self) -> dict:
        return {k: v for k, v in (("count", self.count), ("ratio", self.ratio),
                                  ("tokens", self.tokens)) if v is not None}


def cut_to_tokens(ranked: np.ndarray, n_tokens: np.ndarray, tokens: int) -> np.ndarray:
    """The longest prefix of ``ranked`` whose token total stays within ``tokens`` (at least
    one row)."""
    csum = np.cumsum(np.asarray(n_tokens, dtype=np.int64)[ranked])
    n = int(np.searchsorted(csum, tokens, side="right"))
    return ranked[:max(1, n)]


def _quota_weights(quotas: Mapping | str, capacity: Mapping[str, float]) -> dict[str, float]:
    """Weight per group (the keys of ``capacity``: rows or tokens each group holds):
    ``"proportional"`` to its capacity, ``"equal"``, or a mapping group -> weight (groups left
    out weigh 0; a group the pool lacks is an error)."""
    if quotas == "proportional":
        return {g: float(capacity[g]) for g in capacity}
    if quotas == "equal":
        return {g: 1.0 for g in capacity}
    if isinstance(quotas, Mapping):
        unknown = set(map(str, quotas)) - set(capacity)
        if unknown:
            raise ConfigError(f"quota names group(s) {sorted(unknown)} not in the pool; groups: {sorted(capacity)}")
        vals = {str(g): float(v) for g, v in quotas.items()}
        return {g: vals.get(g, 0.0) for g in capacity}
    raise ConfigError(f"quotas must be 'proportional', 'equal' or a mapping, got {quotas!r}")


def max_rows_within(n_tokens: np.ndarray, tokens: int) -> int:
    """The most rows whose token total can stay within ``tokens``: the count of the shortest
    rows that fit (at least one, at most all). No selection of more rows fits, so a method
    asked for this many rows ranks every row :func:`cut_to_tokens` can keep: a greedy method
    (k-center, facility location) need not rank the whole pool for a token budget."""
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    if len(n_tokens) == 0:
        return 0
    csum = np.cumsum(np.sort(n_tokens))
    return max(1, int(np.searchsorted(csum, tokens, side="right")))


def allocate_token_quotas(groups: Sequence, n_tokens: np.ndarray, tokens: int,
                          quotas: Mapping | str = "proportional") -> dict:
    """Token budget per group summing to at most ``tokens``.

    ``quotas``: ``"proportional"`` (to each group's token total), ``"equal"``, or a mapping
    group -> weight (normalised; groups left out get none). A group never gets more than its
    own token total; what it cannot use goes to the other groups by their weights.
    """
    glabels = np.asarray([str(g) for g in groups])
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    labels = sorted(set(glabels.tolist()))
    total = {g: int(n_tokens[glabels == g].sum()) for g in labels}
    weights = _quota_weights(quotas, total)
    if isinstance(quotas, Mapping) and (any(w < 0 for w in weights.values())
                                        or not any(w > 0 for w in weights.values())):
        raise ConfigError("quota weights must be >= 0, with at least one > 0")
    alloc = {g: 0 for g in labels}
    remaining = int(tokens)
    open_groups = {g for g in labels if weights[g] > 0 and total[g] > 0}
    while remaining > 0 and open_groups:
        w = sum(weights[g] for g in open_groups)
        give = {g: min(total[g] - alloc[g], int(remaining * weights[g] / w)) for g in open_groups}
        if not any(give.values()):
            break
        for g, n in give.items():
            alloc[g] += n
            remaining -= n
        open_groups = {g for g in open_groups if alloc[g] < total[g]}
    return alloc


def allocate_quotas(groups: Sequence, k: int, quotas: Mapping | str = "proportional") -> dict:
    """Rows per group summing to ``k``.

    ``quotas`` is ``"proportional"`` (to group sizes, largest remainders), ``"equal"``, or a
    mapping group -> fraction (normalised) or group -> count. A group's quota never exceeds
    its size; what a group cannot use goes to the others in proportion to their sizes.
    """
    labels, sizes = np.unique(np.asarray([str(g) for g in groups]), return_counts=True)
    size = dict(zip(labels.tolist(), sizes.tolist()))
    if k > sum(size.values()):
        raise ConfigError(f"budget of {k} rows is larger than the pool ({sum(size.values())} rows)")
    weights = _quota_weights(quotas, size)
    if isinstance(quotas, Mapping):
        vals = {str(g): float(v) for g, v in quotas.items()}
        if all(v >= 1 and float(v).is_integer() for v in vals.values()) and sum(vals.values()) == k:
            alloc = {g: int(vals.get(g, 0)) for g in size}
            over = [g for g in alloc if alloc[g] > size[g]]
            if over:
                raise ConfigError(f"quota for group '{over[0]}' ({alloc[over[0]]}) exceeds its {size[over[0]]} rows")
            return alloc
    alloc = {g: 0 for g in size}
    remaining, open_groups = k, {g for g in size if weights[g] > 0}
    while remaining > 0 and open_groups:
        total_w = sum(weights[g] for g in open_groups)
        share = {g: remaining * weights[g] / total_w for g in open_groups}
        give = {g: min(size[g] - alloc[g], math.floor(share[g])) for g in open_groups}
        # largest remainders for the rows floor() left over
        left = remaining - sum(give.values())
        for g in sorted(open_groups, key=lambda g: (-(share[g] - math.floor(share[g])), g)):
            if left <= 0:
                break
            if alloc[g] + give[g] < size[g]:
                give[g] += 1
                left -= 1
        for g, n in give.items():
            alloc[g] += n
            remaining -= n
        open_groups = {g for g in open_groups if alloc[g] < size[g]}
        if all(n == 0 for n in give.values()):
            break
    if remaining > 0:
        raise ConfigError(f"quotas leave {remaining} of {k} rows unassignable (groups with weight 0)")
    return alloc


def grouped_top_k(scores: np.ndarray, k: int, groups: Sequence, quotas: Mapping | str = "proportional") -> np.ndarray:
    """Top rows by score within each group, per :func:`allocate_quotas`; merged best first."""
    from .methods.base import top_k

    scores = np.asarray(scores, dtype=np.float64)
    glabels = np.asarray([str(g) for g in groups])
    alloc = allocate_quotas(glabels, k, quotas)
    picked = []
    for g, n in alloc.items():
        members = np.flatnonzero(glabels == g)
        picked.append(members[top_k(scores[members], n)])
    sel = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return sel[np.lexsort((sel, -np.nan_to_num(scores[sel], nan=-np.inf)))]
