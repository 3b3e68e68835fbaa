"""The fast static encoder (features/embed_static.py) against model2vec's own encode."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("model2vec")
from model2vec import StaticModel  # noqa: E402
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers  # noqa: E402

from tasksift.features import embed_static as es  # noqa: E402

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "math", "sum", "two", "three"]


def tiny_static(dtype=np.float16, normalize=True, max_length=12, dim=8, seed=0, **kw) -> StaticModel:
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}, "##s": len(WORDS) + 2}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vectors = np.random.default_rng(seed).normal(size=(len(vocab), dim)).astype(dtype)
    return StaticModel(vectors, tok, normalize=normalize, max_length=max_length, **kw)


def texts(n: int = 700, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    pool = WORDS + ["cats", "zebra", "qq", "!", "Dogs"]          # unknown words and punctuation too
    out = [" ".join(rng.choice(pool, size=int(rng.integers(0, 40)))) for _ in range(n)]
    return out + ["", "   ", "zebra qq", "cat " * 50, "the"]      # empty, all-unknown, truncated


@pytest.mark.parametrize("dtype,normalize,threads", [(np.float16, True, 1), (np.float16, True, 3),
                                                     (np.float32, False, 2), (np.float32, True, 1)])
def test_fast_path_equals_model2vec_encode(dtype, normalize, threads):
    m = tiny_static(dtype=dtype, normalize=normalize)
    t = texts()
    enc = es.StaticEncoder(m, threads=threads)
    assert enc.fast
    want = m.encode(t, use_multiprocessing=False)
    got = enc.encode_static(t)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    # the truncation model2vec sets while encoding is restored
    assert m.tokenizer.truncation["max_length"] == 12


def test_max_tokens_override_and_sentence_transformers_signature():
    m = tiny_static()
    t = texts(300, seed=2)
    enc = es.StaticEncoder(m, max_tokens=5, threads=2)
    want = m.encode(t, max_length=5, use_multiprocessing=False).astype(np.float32)
    want /= np.maximum(np.linalg.norm(want, axis=1, keepdims=True), 1e-12)
    got = enc.encode(t, normalize_embeddings=True)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert enc.encode([]).shape == (0, m.dim)


def test_no_truncation_model():
    m = tiny_static(max_length=None)
    t = texts(200, seed=3)
    assert np.array_equal(es.StaticEncoder(m).encode_static(t), m.encode(t, use_multiprocessing=False))


def test_weighted_model_falls_back_to_model2vec():
    m = tiny_static(weights=np.linspace(0.5, 2.0, len(WORDS) + 3))
    enc = es.StaticEncoder(m)
    assert not enc.fast
    t = texts(50)
    assert np.array_equal(enc.encode(t), m.encode(t, use_multiprocessing=False).astype(np.float32))


def test_mean_pool_by_hand():
    v = np.arange(12, dtype=np.float32).reshape(6, 2)
    flat = np.array([1, 2, 5, 0, 0, 3], dtype=np.int64)
    lens = np.array([3, 0, 1, 2], dtype=np.int64)            # a row with no tokens: zeros
    got = es.mean_pool(v, flat, lens, np.float32)
    want = np.array([[(2 + 4 + 10) / 3, (3 + 5 + 11) / 3], [0, 0], [0, 1], [3, 4]], dtype=np.float32)
    assert np.allclose(got, want)


def test_mean_pool_slices_rows(monkeypatch):
    monkeypatch.setattr(es, "POOL_ROWS", 3)
    m = tiny_static()
    t = texts(100, seed=4)
    assert np.array_equal(es.StaticEncoder(m, threads=1).encode_static(t), m.encode(t, use_multiprocessing=False))


def test_token_ids_threads_and_unknown_tokens():
    m = tiny_static()
    t = ["the cat", "zebra", "", "dogs ran"]
    flat, lens = es.token_ids(m.tokenizer, t, m.unk_token_id, threads=1)
    assert lens.tolist() == [2, 0, 0, 3] and m.unk_token_id not in flat.tolist()
    many = texts(2000, seed=5)
    a = es.token_ids(m.tokenizer, many, m.unk_token_id, threads=1)
    b = es.token_ids(m.tokenizer, many, m.unk_token_id, threads=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
