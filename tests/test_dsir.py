"""DSIR: hashed n-gram features, importance weights against a hand computation, Gumbel top-k."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.features.ngram import NgramConfig, hashed_ngram_counts, tokenize
from tasksift.methods.base import SelectionContext
from tasksift.methods.dsir import DSIRSelection, dsir_log_weights, fit_ngram_model, gumbel_top_k
from tasksift.methods.registry import get_method


def ex(q: str, a: str, i: int = 0) -> Example:
    return Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], raw={"q": q}, row=i)


def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Hello, World! 3 apples") == ["hello", ",", "world", "!", "3", "apples"]


def test_hashed_counts_unigrams_and_bigrams_within_documents():
    cfg = NgramConfig(num_buckets=1 << 20)
    m = hashed_ngram_counts(["a b a", "b", "A B A"], cfg)
    assert sp.issparse(m) and m.shape == (3, 1 << 20)
    # "a b a": unigrams a, a, b + bigrams (a b), (b a) = 5 counts in 4 distinct buckets
    assert m[0].sum() == 5 and m[0].nnz == 4 and m[0].max() == 2
    # one token, no bigram; bigrams never span two documents
    assert m[1].sum() == 1
    # case-insensitive and independent of the row position
    assert (m[0] != m[2]).nnz == 0
    uni = hashed_ngram_counts(["a b a"], NgramConfig(num_buckets=1 << 20, ngrams=(1,)))
    assert uni.sum() == 3 and uni.nnz == 2


def test_hashing_is_stable_and_bucketed():
    a = hashed_ngram_counts(["the cat sat on the mat"], NgramConfig(num_buckets=50))
    b = hashed_ngram_counts(["the cat sat on the mat"], NgramConfig(num_buckets=50))
    assert (a != b).nnz == 0 and a.shape[1] == 50 and a.sum() == 6 + 5
    with pytest.raises(ConfigError):
        NgramConfig(ngrams=(3,))
    with pytest.raises(ConfigError):
        NgramConfig(text="title")


def test_log_weights_match_hand_computation():
    # 3 buckets. pool rows: [2,0,0] and [0,1,1]; target: [1,0,0]; smoothing 1.
    pool = sp.csr_matrix(np.array([[2, 0, 0], [0, 1, 1]], dtype=float))
    target = sp.csr_matrix(np.array([[1, 0, 0]], dtype=float))
    # p_target = ([1,0,0] + 1) / (1 + 3) = [1/2, 1/4, 1/4]
    # p_raw    = ([2,1,1] + 1) / (4 + 3) = [3/7, 2/7, 2/7]
    np.testing.assert_allclose(np.exp(fit_ngram_model(target, 1.0)), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(np.exp(fit_ngram_model(pool, 1.0)), [3 / 7, 2 / 7, 2 / 7])
    w = dsir_log_weights(pool, target, smoothing=1.0)
    hand = [2 * math.log(0.5 / (3 / 7)), math.log(0.25 / (2 / 7)) + math.log(0.25 / (2 / 7))]
    np.testing.assert_allclose(w, hand, rtol=1e-12)
    # smoothing 0.5: p_target = [1.5, .5, .5] / 2.5, p_raw = [2.5, 1.5, 1.5] / 5.5
    w = dsir_log_weights(pool, target, smoothing=0.5)
    np.testing.assert_allclose(w[0], 2 * math.log((1.5 / 2.5) / (2.5 / 5.5)), rtol=1e-12)
    # no smoothing: a bucket the target never saw makes the row impossible
    w = dsir_log_weights(pool, target, smoothing=0.0)
    assert w[0] == pytest.approx(2 * math.log(1.0 / 0.5)) and w[1] == -np.inf


def test_gumbel_top_k_samples_proportionally_without_replacement():
    rng = np.random.default_rng(0)
    logw = np.log(np.array([1.0, 3.0]))
    first = np.array([gumbel_top_k(logw, 1, rng)[0] for _ in range(4000)])
    assert abs(first.mean() - 0.75) < 0.03
    rng = np.random.default_rng(1)
    draw = gumbel_top_k(np.log(np.arange(1, 101, dtype=float)), 100, rng)
    assert sorted(draw.tolist()) == list(range(100))
    assert gumbel_top_k(np.array([0.0, -np.inf, 0.0]), 3, rng).tolist() in ([0, 2], [2, 0])


def _pool() -> tuple[list[Example], list[Example]]:
    math_rows = [ex(f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?",
                    f"He has {2 * i + 2} apples.", i) for i in range(10)]
    other = [ex(f"Translate sentence number {i} into French please", f"Voici la phrase {i} en francais.", 10 + i)
             for i in range(30)]
    target = [ex("Sara has 3 apples and buys 4 more. How many apples does she have?", "She has 7 apples.")]
    return math_rows + other, target


def test_dsir_method_prefers_target_like_rows_and_is_seeded():
    pool, target = _pool()
    ctx = SelectionContext(pool, target, seed=0)
    res = DSIRSelection(sampling="top").select(ctx, 10)
    assert sorted(res.indices.tolist()) == list(range(10))
    assert res.columns["dsir_log_weight"][:10].min() > res.columns["dsir_log_weight"][10:].max()
    # Gumbel sampling: same seed, same draw; mostly math rows
    a = get_method("dsir")().select(SelectionContext(pool, target, seed=3), 10).indices
    b = get_method("dsir")().select(SelectionContext(pool, target, seed=3), 10).indices
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 10
    assert (a < 10).sum() >= 8


def test_dsir_options_are_checked():
    pool, target = _pool()
    ctx = SelectionContext(pool, target)
    with pytest.raises(ConfigError):
        DSIRSelection(sampling="best").select(ctx, 3)
    with pytest.raises(ConfigError):
        DSIRSelection(smoothing=-1).select(ctx, 3)
    with pytest.raises(ConfigError):
        DSIRSelection(buckets=5)
    res = DSIRSelection(length_normalize=True, num_buckets=64, ngrams=[1]).select(ctx, 5)
    assert len(res.indices) == 5 and res.info["ngram_features"]["num_buckets"] == 64


def _matrix_dsir(pool, target, seed, smoothing=1.0, length_normalize=False, sampling="gumbel"):
    """DSIR as it was before streaming: the whole pool's count matrix at once."""
    from tasksift.features.ngram import example_ngram_counts
    from tasksift.methods.base import top_k

    cfg = NgramConfig()
    counts = example_ngram_counts(pool, cfg)
    logw = dsir_log_weights(counts, example_ngram_counts(target, cfg), smoothing)
    if length_normalize:
        n = np.asarray(counts.sum(axis=1)).ravel()
        logw = np.where(n > 0, logw / np.maximum(n, 1), 0.0)
    if sampling == "top":
        return logw, top_k(np.where(np.isfinite(logw), logw, np.nan), 10)
    return logw, gumbel_top_k(logw, 10, np.random.default_rng(seed))


@pytest.mark.parametrize("opts", [{}, {"smoothing": 0.0}, {"length_normalize": True}, {"sampling": "top"}])
def test_streamed_dsir_equals_whole_matrix_dsir(tmp_path, monkeypatch, opts):
    """Hashing the pool batch by batch (two passes) gives bit-identical weights and the same
    draw as one matrix of the whole pool."""
    import json

    import tasksift.data.loading as loading
    import tasksift.data.pool as pool_mod
    from tasksift.data import load_examples

    monkeypatch.setattr(pool_mod, "BATCH_ROWS", 7)
    monkeypatch.setattr(loading, "BATCH_ROWS", 7)
    pool, target = _pool()
    rng = np.random.default_rng(1)
    words = "apples buys more how many she has the cat sat on a mat stock prices fell".split()
    rows = [{"question": " ".join(rng.choice(words, 8)), "answer": " ".join(rng.choice(words, 5))}
            for _ in range(60)] + [{"question": e.prompt, "answer": e.response} for e in pool]
    p = tmp_path / "pool.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    d = load_examples(p)
    want_w, want_idx = _matrix_dsir(list(d.examples), target, seed=5, **opts)
    res = get_method("dsir")(**opts).select(SelectionContext(d.pool, target, seed=5), 10)
    assert np.array_equal(res.columns["dsir_log_weight"], want_w)
    assert res.indices.tolist() == want_idx.tolist()


@pytest.mark.parametrize("buckets", [10, 70_000])
def test_count_spill_gives_back_the_same_matrices(buckets):
    import scipy.sparse as sp

    from tasksift.features.ngram import CountSpill

    rng = np.random.default_rng(0)
    mats = [sp.random(n, buckets, density=0.01, random_state=s, format="csr") for s, n in enumerate([5, 0, 40, 1])]
    mats = [sp.csr_matrix((np.ceil(m.data * 9), m.indices, m.indptr), shape=m.shape) for m in mats]
    mats[2] = mats[2] * 70_000.0 if mats[2].nnz else mats[2]      # counts beyond uint16: stored as floats
    mats.append(sp.csr_matrix(np.where(rng.random((3, buckets)) < .2, 2.5, 0)))   # non-integer values
    spill = CountSpill(buckets)
    for m in mats:
        spill.add(m)
    got = list(spill)
    spill.close()
    assert len(got) == len(mats)
    for g, m in zip(got, mats):
        assert g.shape == m.shape and g.dtype == np.float64
        assert np.array_equal(g.indptr, m.indptr) and np.array_equal(g.indices, m.indices)
        assert np.array_equal(g.data, m.data)
