"""Checking and normalising TSDS inputs: settings, embedding matrices, blocks of candidate rows."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, DataError
from .sampling import SAMPLING_MODES


def check_params(alpha: float, C: float, sigma: float, max_k: int, kde_k: int,
                 sampling: str | None = None) -> None:
    """Raise :class:`ConfigError` for out-of-range TSDS settings."""
    try:
        alpha, C, sigma = float(alpha), float(C), float(sigma)
    except (TypeError, ValueError):
        raise ConfigError(f"tsds: alpha, C and sigma must be numbers, got {alpha!r}, {C!r}, {sigma!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"tsds: alpha must be in [0, 1], got {alpha}")
    if not (np.isfinite(C) and C > 0):
        raise ConfigError(f"tsds: C must be > 0, got {C}")
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"tsds: sigma must be >= 0 (0 = KNN-Uniform), got {sigma}")
    for name, v in (("max_k", max_k), ("kde_k", kde_k)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"tsds: {name} must be an integer >= 1, got {v!r}")
    if sampling is not None and sampling not in SAMPLING_MODES:
        raise ConfigError(f"tsds: sampling must be one of {SAMPLING_MODES}, got {sampling!r}")


def check_embeddings(query: Any, candidates: Any, *, query_name: str = "query",
                     candidates_name: str = "candidates") -> tuple[np.ndarray, np.ndarray]:
    """Validate two embedding matrices (2-d, non-empty, same width, finite) and return them as
    arrays (not copied when already ndarrays). Raises :class:`DataError` naming the input."""
    out = []
    for a, name in ((query, query_name), (candidates, candidates_name)):
        a = np.asarray(a)
        if a.ndim != 2:
            raise DataError(f"expected a 2-d array (rows x dims), got shape {a.shape}", file=name)
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise DataError(f"empty embedding matrix, shape {a.shape}", file=name)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise DataError(f"embeddings must be real numbers, got dtype {a.dtype}", file=name)
        bad = ~np.isfinite(a).all(axis=1) if np.issubdtype(a.dtype, np.floating) else np.zeros(len(a), bool)
        if bad.any():
            raise DataError(f"{int(bad.sum())} row(s) hold NaN or inf, first at row {int(np.argmax(bad))}",
                            file=name)
        out.append(a)
    if out[0].shape[1] != out[1].shape[1]:
        raise DataError(f"dimension mismatch: {query_name} has {out[0].shape[1]} columns, "
                        f"{candidates_name} has {out[1].shape[1]}", file=candidates_name)
    return out[0], out[1]


def float_dtype(a: np.ndarray) -> type:
    """float64 for float64 arrays, float32 for anything else."""
    return np.float64 if a.dtype == np.float64 else np.float32


def l2_normalize(a: np.ndarray) -> np.ndarray:
    """Row-wise L2-normalised copy (float64 input stays float64, anything else becomes
    float32; norms computed in float64; all-zero rows stay zero)."""
    a = np.array(a, dtype=float_dtype(np.asarray(a)), copy=True)
    n = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))[:, None]
    a /= np.maximum(n, 1e-12).astype(a.dtype)
    return a


def prepare(query: Any, candidates: Any, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validated query/candidate matrices (float64 kept as is, other types as float32),
    L2-normalised when ``normalize``."""
    q, x = check_embeddings(query, candidates)
    if normalize:
        return l2_normalize(q), l2_normalize(x)
    return (np.ascontiguousarray(q, dtype=float_dtype(q)),
            np.ascontiguousarray(x, dtype=float_dtype(x)))


def normalize_block(x: np.ndarray, dtype: np.dtype, normalize: bool, owned: bool = False
                    ) -> tuple[np.ndarray, int]:
    """A block of candidate rows as ``dtype``, L2-normalised when ``normalize`` (the same
    arithmetic as :func:`l2_normalize`), and the position of its first row holding NaN/inf
    (-1 if none). ``owned``: ``x`` may be modified in place (else it is copied first)."""
    x, bad, _ = checked_block(x, dtype, normalize, owned)
    return x, bad


def checked_block(x: np.ndarray, dtype: np.dtype, normalize: bool, owned: bool = False
                  ) -> tuple[np.ndarray, int, float]:
    """:func:`normalize_block`, and an upper bound on the largest squared norm of the rows it
    returns (1.0 when normalised; 0.0 for an empty block or one with a bad row)."""
    if x.dtype != dtype or (normalize and not (owned and x.flags.writeable)):
        x = np.array(x, dtype=dtype, copy=True)
    # the norms that normalise are float64 (as l2_normalize's); for the check and the largest
    # norm alone, sums in x's own dtype (a float32 sum is within (d + 1) eps of the true one)
    sq = np.einsum("ij,ij->i", x, x, dtype=np.float64) if normalize else np.einsum("ij,ij->i", x, x)
    bad = ~np.isfinite(sq)
    if bad.any():  # a non-finite norm: confirm row-wise (squares may overflow)
        rows = np.flatnonzero(bad)
        really = rows[~np.isfinite(x[rows]).all(axis=1)]
        if len(really):
            return x, int(really[0]), 0.0
    if normalize:
        x /= np.maximum(np.sqrt(sq)[:, None], 1e-12).astype(x.dtype)
        return x, -1, 1.0
    slack = 1.0 + (x.shape[1] + 1) * float(np.finfo(sq.dtype).eps) if len(sq) else 1.0
    return x, -1, float(sq.max(initial=0.0)) * slack
