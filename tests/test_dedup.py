"""dedup (exact + near-duplicate) and length filters."""
from __future__ import annotations

import numpy as np
import pytest

from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.methods.base import SelectionContext
from tasksift.methods.dedup import DedupFilter, LengthFilter, near_duplicate_mask, near_duplicate_pairs
from tasksift.methods.registry import get_method


def make_ctx(texts: list[str], x: np.ndarray | None = None, seed: int = 0) -> SelectionContext:
    pool = [Example(messages=[{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}],
                    raw={"t": t}, row=i) for i, t in enumerate(texts)]
    target = [Example(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], raw={}, row=0)]
    ctx = SelectionContext(pool, target, seed=seed)
    if x is not None:
        ctx.set_embeddings("pool", x)
    return ctx


def planted(n: int = 60, d: int = 32, seed: int = 0) -> tuple[np.ndarray, dict[int, int]]:
    """Random vectors (pairwise cosine well below 0.95) with planted near-copies: copy -> original."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    dups = {10: 3, 25: 3, 40: 7, 55: 50}
    for c, o in dups.items():
        x[c] = x[o] + 0.01 * rng.normal(size=d)
    return x, dups


def test_near_duplicates_removes_planted_copies_and_nothing_else():
    x, dups = planted()
    ctx = make_ctx([f"row {i}" for i in range(len(x))], x)
    keep = DedupFilter().keep_mask(ctx)
    assert np.flatnonzero(~keep).tolist() == sorted(dups)
    for search in ("range", "knn"):
        for mode in ("greedy", "cluster"):
            assert np.flatnonzero(~DedupFilter(search=search, mode=mode).keep_mask(ctx)).tolist() == sorted(dups)


def test_exact_duplicates_by_id_keep_the_first():
    texts = ["a", "b", "a", "c", "b", "a"]
    ctx = make_ctx(texts)
    f = DedupFilter(threshold=None)
    keep = f.keep_mask(ctx)
    assert keep.tolist() == [True, True, False, True, False, False]
    assert f.last_info["exact_duplicates"] == 3
    assert ctx._emb == {}  # exact-only dedup never embeds


def test_exact_and_near_together():
    x, dups = planted(seed=1)
    texts = [f"row {i}" for i in range(len(x))]
    texts[30] = texts[2]  # exact duplicate with an unrelated embedding
    keep = DedupFilter().keep_mask(make_ctx(texts, x))
    assert np.flatnonzero(~keep).tolist() == sorted(list(dups) + [30])


def test_greedy_vs_cluster_on_a_chain():
    r = np.radians([0.0, 16.0, 32.0])          # cos 16 deg = 0.961, cos 32 deg = 0.848
    x = np.stack([np.cos(r), np.sin(r)], axis=1).astype(np.float32)
    later, earlier = near_duplicate_pairs(x, 0.95)
    assert sorted(zip(later.tolist(), earlier.tolist())) == [(1, 0), (2, 1)]
    assert near_duplicate_mask(3, later, earlier, "greedy").tolist() == [True, False, True]
    assert near_duplicate_mask(3, later, earlier, "cluster").tolist() == [True, False, False]
    assert near_duplicate_pairs(x, 0.5)[0].size == 3


def test_dedup_as_selector():
    x, dups = planted()
    ctx = make_ctx([f"row {i}" for i in range(len(x))], x, seed=0)
    res = get_method("dedup")().select(ctx, 20)
    assert len(res.indices) == 20 and not set(res.indices.tolist()) & set(dups)
    again = get_method("dedup")().select(make_ctx([f"row {i}" for i in range(len(x))], x, seed=0), 20)
    assert res.indices.tolist() == again.indices.tolist()
    first = DedupFilter(order="first").select(ctx, 12).indices
    assert first.tolist() == [i for i in range(60) if i not in dups][:12]
    short = DedupFilter(order="first").select(ctx, 59)
    assert len(short.indices) == 56 and "short" in short.info


def test_dedup_bad_options():
    x, _ = planted()
    ctx = make_ctx([f"row {i}" for i in range(len(x))], x)
    for opts in ({"threshold": 2.0}, {"threshold": "x"}, {"mode": "fuzzy"}, {"search": "lsh"}):
        with pytest.raises(ConfigError):
            DedupFilter(**opts).keep_mask(ctx)
    with pytest.raises(ConfigError):
        DedupFilter(order="best").select(ctx, 3)


def test_length_filter():
    texts = ["one", "one two three", "one two three four five six", "x" * 50]
    ctx = make_ctx(texts)
    # text = prompt + "\n\n" + response ("ok"): word counts 2, 4, 7, 2
    assert LengthFilter(min_words=3).keep_mask(ctx).tolist() == [False, True, True, False]
    assert LengthFilter(min_words=3, max_words=5).keep_mask(ctx).tolist() == [False, True, False, False]
    assert LengthFilter(max_chars=10, field="prompt").keep_mask(ctx).tolist() == [True, False, False, False]
    res = LengthFilter(min_words=3, order="first").select(ctx, 5)
    assert res.indices.tolist() == [1, 2] and "short" in res.info
    with pytest.raises(ConfigError):
        LengthFilter().keep_mask(ctx)
    with pytest.raises(ConfigError):
        LengthFilter(min_words="many").keep_mask(ctx)
    with pytest.raises(ConfigError):
        LengthFilter(min_words=1, field="title").keep_mask(ctx)
