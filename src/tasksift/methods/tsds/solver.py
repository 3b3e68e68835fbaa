"""The TSDS transport problem on each query's prefetched neighbours: the exact water-filling
solve, the objective, and the solve that asks for densities only where the plan needs them."""
from __future__ import annotations

from typing import Callable

import numpy as np


def water_filling(dist: np.ndarray, ids: np.ndarray, rho_nb: np.ndarray, *, alpha: float,
                  C: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Solve the TSDS transport problem restricted to each query's prefetched neighbours.

    dist: (M, L) float64 L2 distances, ascending per row, valid entries first.
    ids: (M, L) candidate ids (-1 = no neighbour; dropped).
    rho_nb: (M, L) density of each neighbour (ignored where ids == -1).
    Returns (gamma (M, L) plan entries, threshold s, K (M,) filled counts). Every query with at
    least one neighbour ships exactly 1/M (up to rounding); a query with K_i = 0 ships it all to
    its nearest neighbour.
    """
    dist = np.asarray(dist, dtype=np.float64)
    m, L = dist.shape
    valid = np.asarray(ids) >= 0
    if not valid[:, 0].all() or (np.diff(valid.astype(np.int8), axis=1) > 0).any():
        raise ValueError("each row of ids needs its valid neighbours first and at least one")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        w = np.where(valid, 1.0 / np.where(valid, rho_nb, 1.0), 0.0)
        dsafe = np.where(valid, dist, 0.0)
        S = np.cumsum(w, axis=1)
        P = np.cumsum(w * dsafe, axis=1)
        dnext = np.full_like(dist, np.inf)
        dnext[:, :-1] = np.where(valid[:, 1:], dist[:, 1:], np.inf)
        # A_i after filling k neighbours; inf once the whole list is filled (t cannot drop further)
        A = np.where(np.isinf(dnext), np.inf, dnext * S - P)
        A_prev = np.zeros_like(A)
        A_prev[:, 1:] = A[:, :-1]
        delta = A - A_prev
    s_ev = S[valid]
    d_ev = delta[valid]
    order = np.argsort(s_ev, kind="stable")
    cum = np.cumsum(d_ev[order])
    target = np.inf if alpha == 0 else (1.0 - alpha) * m * C / alpha
    hit = cum >= target
    e = int(np.argmax(hit))  # a terminal event (A = inf) always exists
    s = float(s_ev[order[e]])
    S_valid = np.where(valid, S, np.inf)
    K = (S_valid <= s).sum(axis=1)
    cols = np.arange(L)[None, :]
    gamma = np.where(cols < K[:, None], w / (m * s), 0.0)
    n_valid = valid.sum(axis=1)
    has_rest = K < n_valid
    S_before = np.where(K > 0, np.take_along_axis(S, np.maximum(K - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    rest = np.maximum(0.0, (1.0 - S_before / s) / m)
    r = np.flatnonzero(has_rest)
    gamma[r, K[r]] = rest[r]
    return gamma, s, K


def solve_needing_densities(dist: np.ndarray, ids: np.ndarray, densities: Callable[[np.ndarray], np.ndarray],
                            *, alpha: float, C: float, first: int = 128, slack: float = 1.1,
                            cap: float = 2.0
                            ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """:func:`water_filling` on the full lists, asking ``densities`` only for the neighbours
    the plan depends on.

    The solution depends on the densities of each query's first ``K_i + 1`` neighbours only
    (the water level never reaches further along a list, whose prefix sums increase). So the
    lists are solved on prefixes of ``J_i`` neighbours (``first`` to begin with) until every
    query stops inside its prefix (``K_i < J_i``) or has its whole list: then no event beyond
    the prefixes lies below the water level and the prefix solution is the full one, exactly.
    The next prefixes come from a guess: the full lists solved with each unknown density set
    to the mean of its query's known ones; a query grows to ``slack`` times its guessed
    ``K_i + 1``, at most twice its prefix (and, when its prefix was filled, by half at least). The guess only decides
    how many densities are asked for per round, never the result.

    densities(J): receives the (M,) prefix lengths and returns the (M, max(J)) densities of
    the neighbours (values beyond a query's prefix are ignored).
    Returns (gamma (M, L), s, K, J the prefix lengths used).
    """
    m, L = ids.shape
    valid = ids >= 0
    n_valid = valid.sum(axis=1)
    J = np.minimum(n_valid, max(1, int(first)))
    while True:
        w = int(J.max())
        inside = np.arange(w)[None, :] < J[:, None]
        rho_nb = densities(J)
        gamma, s, K = water_filling(dist[:, :w], np.where(inside, ids[:, :w], -1), rho_nb, alpha=alpha, C=C)
        grow = (K >= J) & (J < n_valid)
        if not grow.any():
            full = np.zeros((m, L))
            full[:, :w] = gamma
            return full, s, K, J
        tail = inside & (np.arange(w)[None, :] >= (J // 2)[:, None])  # the later half of each prefix
        mean = np.where(tail, rho_nb, 0.0).sum(axis=1) / np.maximum(tail.sum(axis=1), 1)
        wg = int(min(L, np.ceil(cap * w) + 1))  # no query grows beyond cap times its prefix this round
        guess = np.broadcast_to(mean[:, None], (m, wg)).copy()
        guess[:, :w] = np.where(inside, rho_nb, guess[:, :w])
        _, _, K_guess = water_filling(dist[:, :wg], ids[:, :wg], guess, alpha=alpha, C=C)
        want = np.ceil(slack * (K_guess + 1)).astype(np.int64)
        floor = np.where(grow, J + (J + 1) // 2, J)
        J = np.minimum(n_valid, np.maximum(floor, np.minimum(want, np.ceil(cap * J).astype(np.int64))))


def objective(gamma, dist: np.ndarray, rho: np.ndarray, *, alpha: float, C: float) -> float:
    """``(alpha / C) * sum_ij d_ij gamma_ij + (1 - alpha) * M * max_ij rho_j gamma_ij`` for a
    plan ``gamma`` (dense or scipy sparse, M x N), distances ``dist`` (M x N) and densities
    ``rho`` (N,)."""
    from scipy import sparse

    g = gamma.toarray() if sparse.issparse(gamma) else np.asarray(gamma, dtype=np.float64)
    m = g.shape[0]
    dist = np.asarray(dist, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    return float(alpha / C * np.sum(dist * g) + (1.0 - alpha) * m * np.max(rho[None, :] * g))
