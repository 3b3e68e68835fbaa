"""``tsds``: task-specific data selection by optimal transport (Liu, Karbasi, Rekatsinas,
NeurIPS 2024), KNN-Uniform and KNN-KDE variants.

Given query (target) embeddings ``q_1..q_M`` and candidate embeddings ``x_1..x_N``, find the
transport plan ``gamma`` (M x N, ``gamma >= 0``, rows sum to ``1/M``) minimising::

    (alpha / C) * sum_ij ||q_i - x_j|| * gamma_ij  +  (1 - alpha) * M * max_ij rho_j * gamma_ij

and select candidates from ``p_j = sum_i gamma_ij``. ``rho_j`` is a kernel density estimate
over the prefetched candidates (``sigma = 0``: ``rho = 1``, KNN-Uniform).

How it is solved. Fix ``t = max rho_j gamma_ij``: the queries decouple, and each fills its
nearest candidates greedily up to capacity ``t / rho_j``. Writing ``t = 1 / (M s)``, query
``i`` fills its first ``K_i = #{k : S_ik <= s}`` neighbours completely, where
``S_ik = sum_{k' <= k} 1/rho_ik'``, and neighbour ``K_i + 1`` takes the rest of ``1/M``. The
objective is convex piecewise-linear in ``t``; its slope changes sign at the first breakpoint
(``s`` = one of the ``S_ik``, taken in increasing order) where
``(alpha / C) * A >= (1 - alpha) * M`` with
``A = sum_i sum_{k' <= K_i} (d_i,K_i+1 - d_ik') / rho_ik'``. This "water-filling" is done for
all queries at once with one sort of the ``M * max_k`` breakpoints (no per-query loop).
When a query's whole prefetched list is filled (``K_i = max_k``) the threshold cannot rise
further (the problem restricted to ``max_k`` neighbours is then solved exactly).

Differences from the public reference code (all deliberate):

- float64 accumulation throughout (distances of the returned pairs are recomputed in float64);
- a query the threshold never reaches (``K_i = 0``) gives its whole ``1/M`` to its nearest
  neighbour (the reference code crashes on such a query);
- approximate-search results with id ``-1`` are dropped;
- seeded sampling: ``without_replacement`` (default; Gumbel-top-k, i.e. successive draws
  proportional to ``p``), ``with_replacement`` (the paper; ``k`` i.i.d. draws) or ``top``
  (deterministic: highest ``p`` first, ties by lower index);
- when the support of ``p`` is smaller than the budget, every supported row is taken and the
  rest is filled by the **nearest rule**: the unselected rows in increasing order of their L2
  distance to the nearest query (ties by lower index); the result info says how many;
- neighbour search is exact by default (float32 BLAS blocks, the cut decided in float64);
  ``index="ivf"``/``"hnsw"``/a faiss factory string searches approximately, with recall
  measured against exact search on a sample of queries;
- the densities are exact range sums (the kernel is zero beyond ``sigma``), computed only for
  the neighbours the plan depends on (the first ``K_i + 1`` of each query), no k-NN search.

Layout: :mod:`.engine` (stages, executor tasks), :mod:`.solver` (water-filling),
:mod:`.kde` (range densities), :mod:`.inputs` (checks, normalisation), :mod:`.sampling`,
:mod:`.method` (the registered method).

The default ``sigma = 0.75`` and ``C = 5.0`` assume unit-norm embeddings (``normalize=True``
makes sure of it; the pool/target embeddings of :class:`SelectionContext` already are).
"""
from __future__ import annotations

from .engine import TSDSResult, selection_probabilities, transport_plan, tsds
from .inputs import check_embeddings, check_params, l2_normalize, prepare
from .kde import kde_exact, range_density
from .method import DEFAULTS, TSDSSelection
from .sampling import FILL_RULE, SAMPLING_MODES, draw, nearest_query_distance
from .solver import objective, solve_needing_densities, water_filling

__all__ = ["DEFAULTS", "FILL_RULE", "SAMPLING_MODES", "TSDSResult", "TSDSSelection", "check_embeddings",
           "check_params", "draw", "kde_exact", "l2_normalize", "nearest_query_distance", "objective",
           "prepare", "range_density", "selection_probabilities", "solve_needing_densities", "transport_plan",
           "tsds", "water_filling"]
