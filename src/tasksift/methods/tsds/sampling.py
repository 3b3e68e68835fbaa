"""Drawing the subset from the TSDS probabilities: without replacement (Gumbel-top-k), with
replacement (the paper) or the top probabilities, with the nearest rule filling a budget
larger than the support."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...errors import ConfigError
from ..base import top_k

SAMPLING_MODES = ("without_replacement", "with_replacement", "top")
FILL_RULE = "nearest: unselected rows by increasing L2 distance to the nearest query (ties: lower index)"


def nearest_query_distance(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Each candidate's L2 distance to its nearest query (float64; the fill rule's key)."""
    from ...neighbors import min_distance

    return min_distance(candidates, query)


def draw(p: np.ndarray, k: int, *, rng: np.random.Generator | int | None = None,
         sampling: str = "without_replacement",
         fill_key: Callable[[], np.ndarray] | np.ndarray | None = None
         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw ``k`` candidate indices from ``p``.

    sampling: ``without_replacement`` (k distinct rows, successive draws proportional to
    ``p``, in draw order: the k largest log p_j + G_j, with one Gumbel variate G_j per row, so
    that the draw is stable to small changes of ``p``), ``with_replacement`` (k i.i.d. draws, repeats possible, as in the
    paper) or ``top`` (the k highest ``p``, ties by lower index).
    When a mode without replacement needs more rows than ``p`` supports, all supported rows
    come first and the remaining ones are filled by ascending ``fill_key`` (lower = better,
    ties by lower index; e.g. :func:`nearest_query_distance`), or left out if ``fill_key`` is
    None. Returns (indices int64, info with support size, fill rule and count filled).
    """
    if sampling not in SAMPLING_MODES:
        raise ConfigError(f"tsds: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    p = np.asarray(p, dtype=np.float64)
    n = len(p)
    k = int(k)
    if k < 0:
        raise ConfigError(f"tsds: cannot select {k} rows")
    support = np.flatnonzero(p > 0)
    info: dict[str, Any] = {"sampling": sampling, "support_size": int(len(support)), "budget": k}
    if sampling == "with_replacement":
        out = rng.choice(n, size=k, replace=True, p=p / p.sum())
        info["distinct"] = int(len(np.unique(out)))
        info["filled"] = 0
        return out.astype(np.int64), info
    if k > n:
        raise ConfigError(f"tsds: cannot select {k} distinct rows out of {n} without replacement")
    take = min(k, len(support))
    if sampling == "top":
        chosen = top_k(np.where(p > 0, p, -np.inf), take) if take else np.empty(0, np.int64)
    else:
        # one Gumbel variate per row (not per supported row), so a row's key depends on its own
        # probability only: a small change of p (another precision of the vectors, a row
        # entering the support) moves only rows near the cut instead of reshuffling the draw
        keys = np.log(p[support]) + rng.gumbel(size=n)[support]
        if take < len(support):
            part = np.argpartition(-keys, take - 1)[:take] if take else np.empty(0, np.int64)
        else:
            part = np.arange(len(support))
        part = part[np.lexsort((support[part], -keys[part]))]
        chosen = support[part]
    chosen = np.asarray(chosen, dtype=np.int64)
    info["filled"] = 0
    if k > len(support):
        info["support_smaller_than_budget"] = True
        if fill_key is None:
            info["fill_rule"] = "none: fewer rows returned than asked"
        else:
            key = np.asarray(fill_key() if callable(fill_key) else fill_key, dtype=np.float64)
            rest = np.flatnonzero(p <= 0)
            rest = rest[np.lexsort((rest, key[rest]))][:k - len(chosen)]
            chosen = np.concatenate([chosen, rest.astype(np.int64)])
            info["fill_rule"] = FILL_RULE
            info["filled"] = int(len(rest))
    return chosen, info
