"""Paired per-item statistics: a method against random at the same budget.

Every arm of a run scores the *same* test items, so the comparison with random is made per
item, which removes the (large) between-item variance that a comparison of two means keeps.

Pooling over seeds (the choice made here): for each test item, the method's score is averaged
over its seeds, and so is random's; the per-item difference ``d_i = mean_s m_{s,i} -
mean_s r_{s,i}`` is the unit of analysis. Its mean over items is the mean difference of the
two arms' overall scores (exactly, when no item is missing), and its spread contains both the
item-to-item and the (averaged) seed-to-seed variation. A method and random need not have the
same number of seeds. Items that are NaN (unscorable) in any row are dropped.

* :func:`paired_bootstrap` -- percentile bootstrap CI of the mean of ``d`` (items resampled
  with replacement; seeded; default 10,000 resamples);
* :func:`paired_permutation` -- sign-flip permutation p-value of the mean of ``d`` (exact
  over all 2^n sign patterns when that is at most ``n_resamples``, else seeded Monte Carlo
  with the +1 correction);
* :func:`t_interval` -- the paired t interval (same as ``scipy.stats.ttest_rel``);
* :func:`minimal_detectable_effect` -- the smallest true mean difference a two-sided paired
  test at level ``alpha`` detects with probability ``power``, from the paired SD and n:
  ``(z_{1-alpha/2} + z_{power}) * sd / sqrt(n)`` (normal approximation; 2.80 sd/sqrt(n) at
  alpha 0.05, power 0.8);
* :func:`distance_from_chance` -- a multiple-choice accuracy minus chance (mean of
  1/n_choices over items) with a Wilson binomial interval, and whether it is at chance.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

#: resamples of the bootstrap and the permutation test
N_RESAMPLES = 10_000


def item_means(rows: Sequence[Mapping[str, Any]], scorer: str) -> np.ndarray | None:
    """Per-item mean over ``rows`` (seeds) of ``row["item_scores"][scorer]``; NaN where any
    row has no value; None when no row has the scorer or the rows disagree in length."""
    vals = [r.get("item_scores", {}).get(scorer) for r in rows]
    vals = [v for v in vals if v is not None]
    if not vals or len({len(v) for v in vals}) != 1:
        return None
    a = np.array([[np.nan if x is None else float(x) for x in v] for v in vals], dtype=float)
    out = a.mean(axis=0)            # NaN propagates: an item missing in one seed is dropped
    return out


def paired_differences(method_rows: Sequence[Mapping[str, Any]], random_rows: Sequence[Mapping[str, Any]],
                       scorer: str) -> np.ndarray | None:
    """``d_i`` = per-item mean over the method's seeds minus that over random's, finite items
    only (None when either side lacks per-item scores or the item lists differ in length)."""
    m, r = item_means(method_rows, scorer), item_means(random_rows, scorer)
    if m is None or r is None or len(m) != len(r):
        return None
    d = m - r
    return d[np.isfinite(d)]


def paired_bootstrap(d: Sequence[float], *, n_resamples: int = N_RESAMPLES, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(d)`` (items resampled with replacement)."""
    d = np.asarray(d, dtype=float)
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(1, len(d)))     # bounded memory: chunk x n indices at a time
    for s in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - s)
        means[s:s + k] = d[rng.integers(0, len(d), size=(k, len(d)))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def paired_permutation(d: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of ``mean(d) = 0``: the share of sign patterns
    whose |mean| is at least the observed one (exact enumeration when 2^n <= n_resamples)."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n == 0:
        return float("nan")
    obs = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    if 2 ** n <= n_resamples:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs((signs * d).mean(axis=1))
        return float((stats >= obs - tol).mean())
    rng = np.random.default_rng(seed)
    hits = 0
    chunk = max(1, 2_000_000 // n)
    for s in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - s)
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        hits += int((np.abs((signs * d).mean(axis=1)) >= obs - tol).sum())
    return float((hits + 1) / (n_resamples + 1))


def t_interval(d: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) of the paired t-test of ``mean(d) = 0`` (as ``scipy.stats.ttest_rel``)."""
    from scipy import stats

    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return float("nan"), float("nan"), float("nan")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0:
        return mean, mean, (1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(n)
    q = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    p = float(2 * stats.t.sf(abs(mean / se), n - 1))
    return mean - q * se, mean + q * se, p


def minimal_detectable_effect(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a two-sided paired test at ``alpha`` detects with
    probability ``power``: ``(z_{1-alpha/2} + z_power) * sd / sqrt(n)``."""
    from scipy import stats

    if n < 1 or not np.isfinite(sd):
        return float("nan")
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd / math.sqrt(n))


def verdict(low: float, high: float, higher_is_better: bool) -> str:
    """``better`` (interval on the better side of 0), ``worse`` or ``no detectable difference``."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unknown"
    if low > 0:
        return "better" if higher_is_better else "worse"
    if high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable difference"


def paired_comparison(method_rows: Sequence[Mapping[str, Any]], random_rows: Sequence[Mapping[str, Any]],
                      scorer: str, higher_is_better: bool, *, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict[str, Any] | None:
    """The paired comparison of a method (its rows over seeds) with random at the same budget
    on one scorer: mean difference (method - random, in the scorer's units), bootstrap 95%
    interval, permutation p, paired t interval and p, paired SD, n items, minimal detectable
    effect and the verdict. None without per-item scores on both sides."""
    d = paired_differences(method_rows, random_rows, scorer)
    if d is None or len(d) == 0:
        return None
    lo, hi = paired_bootstrap(d, n_resamples=n_resamples, seed=seed)
    tlo, thi, tp = t_interval(d)
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return {"scorer": scorer, "diff": float(d.mean()), "ci_low": lo, "ci_high": hi, "confidence": 0.95,
            "bootstrap_resamples": n_resamples, "permutation_p": paired_permutation(d, n_resamples=n_resamples, seed=seed),
            "t_low": tlo, "t_high": thi, "t_p": tp, "paired_sd": sd, "n_items": int(len(d)),
            "seeds_method": [r.get("seed") for r in method_rows], "seeds_random": [r.get("seed") for r in random_rows],
            "mde": minimal_detectable_effect(sd, len(d)), "higher_is_better": higher_is_better,
            "verdict": verdict(lo, hi, higher_is_better)}


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    from scipy import stats

    if n <= 0:
        return float("nan"), float("nan")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def distance_from_chance(correct: Sequence[float], n_choices: Sequence[int]) -> dict[str, Any] | None:
    """Accuracy minus chance (mean of 1/n_choices) with the Wilson 95% interval of the
    accuracy shifted by chance; ``at_chance`` when that interval contains 0.
    ``correct``: per-item 1/0 (NaN items dropped together with their ``n_choices``)."""
    c = np.asarray(correct, dtype=float)
    k = np.asarray(n_choices, dtype=float)
    ok = np.isfinite(c) & np.isfinite(k) & (k > 0)
    if not ok.any():
        return None
    c, k = c[ok], k[ok]
    n = len(c)
    chance = float((1.0 / k).mean())
    acc = float(c.mean())
    lo, hi = wilson_interval(float(c.sum()), n)
    return {"accuracy": acc, "chance": chance, "distance": acc - chance, "ci_low": lo - chance,
            "ci_high": hi - chance, "n_items": n, "at_chance": bool(lo <= chance <= hi)}
