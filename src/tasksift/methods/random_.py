"""``random``: a uniform random subset, the baseline every method must beat."""
from __future__ import annotations

import numpy as np

from .base import MethodResult, SelectionContext, SelectionMethod
from .registry import register


@register("random", description="uniform random subset (seeded): the baseline to beat",
          needs=(), cost="cheap", stochastic=True, survey=dict(llms_trained=0, steps=1))
class RandomSelection(SelectionMethod):
    parameters: dict = {}

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        idx = ctx.rng.choice(len(ctx.pool), size=k, replace=False)
        scores = np.zeros(len(ctx.pool))
        scores[idx] = 1.0
        return MethodResult(indices=idx.astype(np.int64), scores=scores)
