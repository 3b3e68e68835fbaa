"""``dsir``: Data Selection with Importance Resampling (Xie, Santurkar, Ma, Liang 2023).

Two bag-of-hashed-n-gram categorical models over ``num_buckets`` buckets (unigrams and
bigrams, :mod:`tasksift.features.ngram`) are fitted with additive smoothing:

    p_target(b) = (c_target(b) + smoothing) / (sum_b c_target(b) + smoothing * B)
    p_raw(b)    = (c_pool(b)   + smoothing) / (sum_b c_pool(b)   + smoothing * B)

and each pool row x gets the importance weight

    log w(x) = sum_b count_x(b) * (log p_target(b) - log p_raw(b)).

``k`` rows are then drawn without replacement with probability proportional to w by the
Gumbel top-k trick: the k largest ``log w + Gumbel(0, 1)`` (noise from ``ctx.rng``, so the
seed fixes the draw). ``sampling="top"`` takes the k largest weights instead (deterministic).
The score column ``dsir_log_weight`` is log w.

As in the paper the weight is not length-normalised (long rows get extreme weights);
``length_normalize=True`` divides log w by the row's n-gram count.

The pool is tokenized in one streaming pass over its texts (bucket totals for the raw model),
whose per-batch counts are spilled to a temporary file and read back for each row's log
weight, so no whole-pool count matrix is ever held in memory.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import ConfigError
from ..data.pool import Pool
from ..features.ngram import CountSpill, NgramConfig, example_ngram_counts, iter_text_ngram_counts
from .base import MethodResult, SelectionContext, SelectionMethod, top_k
from .params import Choices, Interval, Option
from .registry import register


def fit_ngram_model(counts: sp.spmatrix, smoothing: float) -> np.ndarray:
    """Log-probabilities of the smoothed categorical model fitted to the rows of ``counts``."""
    return log_probs_from_totals(np.asarray(counts.sum(axis=0), dtype=np.float64).ravel(), smoothing)


def log_probs_from_totals(totals: np.ndarray, smoothing: float) -> np.ndarray:
    """Log-probabilities of the smoothed categorical model with per-bucket counts ``totals``."""
    b = len(totals)
    denom = totals.sum() + smoothing * b
    if denom <= 0:
        raise ConfigError("dsir: no n-grams to fit (empty texts) and smoothing is 0")
    with np.errstate(divide="ignore"):
        return np.log(totals + smoothing) - np.log(denom)


def dsir_log_weights(pool_counts: sp.spmatrix, target_counts: sp.spmatrix, smoothing: float = 1.0
                     ) -> np.ndarray:
    """log w(x) = sum_b count_x(b) * (log p_target(b) - log p_raw(b)), one per pool row.

    The raw model is fitted on the pool itself. With ``smoothing`` 0 a bucket seen in the
    pool but never in the target gives -inf (the row is never drawn)."""
    diff = weight_diff(fit_ngram_model(target_counts, smoothing), fit_ngram_model(pool_counts, smoothing),
                       smoothing)
    pool_counts = sp.csr_matrix(pool_counts)
    return np.asarray(pool_counts @ diff, dtype=np.float64).ravel()


def weight_diff(log_target: np.ndarray, log_raw: np.ndarray, smoothing: float) -> np.ndarray:
    """log p_target - log p_raw per bucket (0 where the raw model is -inf, smoothing 0)."""
    with np.errstate(invalid="ignore"):   # -inf - -inf where neither model saw a bucket
        diff = log_target - log_raw
    if smoothing == 0:  # avoid 0 * -inf = nan for buckets the row does not have
        diff = np.where(np.isfinite(log_raw), diff, 0.0)
    return diff


def pool_log_weights(pool: Pool, target_counts: sp.spmatrix, config: NgramConfig, smoothing: float = 1.0,
                     length_normalize: bool = False) -> np.ndarray:
    """:func:`dsir_log_weights` of every pool row, tokenizing the pool once: one pass over
    its texts (:meth:`Pool.text_batches`) sums the bucket totals (the raw model) and spills
    each batch's counts to a temporary file (:class:`CountSpill`); a second pass over the
    spilled counts multiplies them by the weight diff. Same numbers as hashing twice."""
    totals = np.zeros(config.num_buckets, dtype=np.float64)
    spill = CountSpill(config.num_buckets)
    try:
        for counts in iter_text_ngram_counts(pool.text_batches(config.text), config):
            totals += np.asarray(counts.sum(axis=0), dtype=np.float64).ravel()
            spill.add(counts)
        diff = weight_diff(fit_ngram_model(target_counts, smoothing), log_probs_from_totals(totals, smoothing),
                           smoothing)
        logw = np.empty(len(pool), dtype=np.float64)
        start = 0
        for counts in spill:
            w = np.asarray(counts @ diff, dtype=np.float64).ravel()
            if length_normalize:
                n = np.asarray(counts.sum(axis=1)).ravel()
                w = np.where(n > 0, w / np.maximum(n, 1), 0.0)
            logw[start:start + len(w)] = w
            start += len(w)
    finally:
        spill.close()
    return logw


def gumbel_top_k(log_weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices drawn without replacement with probability proportional to exp(log_weights)
    (Gumbel top-k), in draw order. Rows with -inf weight are never drawn."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    keys = rng.gumbel(size=len(log_weights))
    keys += log_weights                           # in place: one pool-sized array, not two
    keys[~np.isfinite(log_weights)] = np.nan
    return top_k(keys, k)


@register("dsir", description="hashed n-gram importance resampling towards the target (DSIR, Xie et al. 2023)",
          needs=("ngrams",), cost="cheap", stochastic=True, survey=dict(llms_trained=0, steps=3))
class DSIRSelection(SelectionMethod):
    parameters = {
        "num_buckets": Option(10_000, "hash buckets of the n-gram features", Interval(int, 1)),
        "ngrams": Option([1, 2], "n-gram orders counted (a list, or one integer)", list, Interval(int, 1)),
        "smoothing": Option(1.0, "additive smoothing of the bucket counts", Interval(float, 0, None)),
        "text": Option("text", "what is hashed", Choices("text", "prompt", "response")),
        "max_chars": Option(20_000, "characters of each row read (null: all)", Interval(int, 1), None),
        "sampling": Option("gumbel", "'gumbel': importance resampling without replacement; 'top': highest weights",
                           Choices("gumbel", "top")),
        "length_normalize": Option(False, "divide each row's log-weight by its n-gram count", bool),
    }

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        if c["sampling"] not in ("gumbel", "top"):
            raise ConfigError(f"dsir option sampling must be 'gumbel' or 'top', got {c['sampling']!r}")
        try:
            smoothing = float(c["smoothing"])
        except (TypeError, ValueError):
            raise ConfigError(f"dsir option smoothing must be a number, got {c['smoothing']!r}") from None
        if smoothing < 0:
            raise ConfigError(f"dsir option smoothing must be >= 0, got {smoothing}")
        ngrams = c["ngrams"]
        ngrams = (int(ngrams),) if isinstance(ngrams, (int, float)) else tuple(int(n) for n in ngrams)
        cfg = NgramConfig(num_buckets=int(c["num_buckets"]), ngrams=ngrams, text=str(c["text"]),
                          max_chars=None if c["max_chars"] is None else int(c["max_chars"]))
        with ctx.timed("ngram_features"):
            target_counts = example_ngram_counts(ctx.target, cfg)
            logw = pool_log_weights(ctx.pool, target_counts, cfg, smoothing, bool(c["length_normalize"]))
        with ctx.timed("dsir_select"):
            if c["sampling"] == "gumbel":
                idx = gumbel_top_k(logw, k, ctx.rng)
            else:
                idx = top_k(logw, k)
        w = logw[np.isfinite(logw)]                # one pool-sized copy, then in place
        if len(w):
            w -= w.max()
            np.exp(w, out=w)
        info = {"ngram_features": cfg.describe(), "smoothing": smoothing, "sampling": c["sampling"],
                "length_normalize": bool(c["length_normalize"]),
                "effective_sample_size": float(w.sum() ** 2 / max(float(np.dot(w, w)), 1e-300)) if len(w) else 0.0}
        if len(idx) < k:
            info["short"] = f"only {len(idx)} rows have a finite weight, fewer than the budget of {k}"
        return MethodResult(indices=idx.astype(np.int64), scores=logw, columns={"dsir_log_weight": logw},
                            info=info)
