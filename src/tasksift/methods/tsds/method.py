"""The registered ``tsds`` selection method: TSDS over the pool/target sentence embeddings."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..base import MethodResult, SelectionContext, SelectionMethod
from ..params import Choices, Interval, Option
from ..registry import register
from .engine import tsds
from .inputs import check_params, prepare
from .sampling import SAMPLING_MODES, draw, nearest_query_distance

DEFAULTS: dict[str, Any] = {
    "alpha": 0.5, "C": 5.0, "sigma": 0.75, "max_k": 5000, "kde_k": 1000, "index": "auto",
    "sampling": "without_replacement", "normalize": True, "shard_rows": None,
}


@register("tsds", description="optimal-transport task-specific selection (TSDS, KNN-Uniform / KNN-KDE)",
          needs=("embeddings",), cost="moderate", stochastic=True, survey=dict(llms_trained=0, steps=4))
class TSDSSelection(SelectionMethod):
    """TSDS over the pool/target sentence embeddings. Options: ``alpha`` (0.5), ``C`` (5.0),
    ``sigma`` (0.75; 0 = KNN-Uniform), ``max_k`` (5000), ``kde_k`` (1000), ``index``
    ("auto"), ``sampling`` ("without_replacement" | "with_replacement" | "top"),
    ``normalize`` (True: L2-normalise the embeddings first), ``shard_rows`` (None:
    250000 candidates per search task, fewer where that leaves a worker of the executor
    idle; see :func:`tasksift.methods.tsds.engine.tsds`)."""

    parameters = {
        "alpha": Option(DEFAULTS["alpha"], "weight of alignment to the target (1) against diversity (0)",
                        Interval(float, 0, 1)),
        "C": Option(DEFAULTS["C"], "distance scale of the transport cost", Interval(float, 0, None, "neither")),
        "sigma": Option(DEFAULTS["sigma"], "KDE kernel width for the near-duplicate penalty (0 = KNN-Uniform)",
                        Interval(float, 0, None)),
        "max_k": Option(DEFAULTS["max_k"], "neighbours prefetched per target example", Interval(int, 1)),
        "kde_k": Option(DEFAULTS["kde_k"], "neighbours per pool row in the density estimate", Interval(int, 1)),
        "index": Option(DEFAULTS["index"], "neighbour index of the search: auto, exact, flat, ivf, hnsw or a "
                        "faiss factory string (the KDE is always exact)", str),
        "sampling": Option(DEFAULTS["sampling"], "how k rows are drawn from the probabilities "
                           "(tasksift_rank is the draw order; 'top' = highest probability first)",
                           Choices(*SAMPLING_MODES)),
        "normalize": Option(DEFAULTS["normalize"], "L2-normalise the embeddings first", bool),
        "shard_rows": Option(DEFAULTS["shard_rows"], "pool rows per search task (default: 250000, fewer "
                             "where that leaves a worker idle)", Interval(int, 1), None),
    }

    def __init__(self, **config: Any) -> None:
        super().__init__(**config)
        c = self.config
        check_params(c["alpha"], c["C"], c["sigma"], c["max_k"], c["kde_k"], c["sampling"])

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        q = ctx.embeddings("target")
        x = ctx.embeddings("pool")
        res = tsds(q, x, alpha=c["alpha"], C=c["C"], sigma=c["sigma"], max_k=c["max_k"],
                   kde_k=c["kde_k"], index=c["index"], seed=ctx.seed, normalize=bool(c["normalize"]),
                   timer=ctx.timed, executor=ctx.executor, shard_rows=c["shard_rows"])
        p = res.p
        with ctx.timed("tsds_sample"):
            idx, sinfo = draw(p, k, rng=ctx.rng, sampling=c["sampling"],
                              fill_key=lambda: nearest_query_distance(*prepare(q, x, bool(c["normalize"]))))
        # rho: the KDE density the plan divided each row's capacity by (NaN where not needed)
        columns = {"tsds_prob": p, "tsds_density": res.rho}
        if c["sampling"] == "with_replacement":
            counts = np.bincount(idx, minlength=len(p)).astype(np.float64)
            _, first = np.unique(idx, return_index=True)
            idx = idx[np.sort(first)]
            columns["tsds_draws"] = counts
            sinfo["note"] = (f"{k} draws with replacement gave {len(idx)} distinct rows; the subset "
                             f"holds each once, draw counts are in column tsds_draws")
        info = {k_: v for k_, v in res.info.items() if k_ != "timings"}
        # per-task records stay out of the manifest
        info["execution"] = {k_: v for k_, v in info["execution"].items() if k_ != "tasks"}
        info.update(sinfo)
        info.setdefault("fill_rule", "not needed (support >= budget)" if c["sampling"] != "with_replacement"
                        else "none (with replacement)")
        info["tsds_timings"] = {k_: round(v, 4) for k_, v in res.info["timings"].items()}
        return MethodResult(indices=np.asarray(idx, dtype=np.int64), scores=p, columns=columns,
                            info=info)
