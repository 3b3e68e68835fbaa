"""Fast encoding with a model2vec static model: the same vectors as ``StaticModel.encode``.

model2vec embeds a text by tokenising it and averaging its tokens' vectors. Its ``encode``
tokenises on one core and averages bucket by bucket in the embedding's own precision
(float16 for a distilled model), which costs ~80% of a static run's time. :class:`StaticEncoder`
computes the same arithmetic faster:

* tokenisation in ``threads`` threads (the Rust tokenizer releases the GIL), each on its own
  slice of the texts, with the token ids gathered into one array (no per-row Python lists
  kept, the unknown-token filter done in numpy);
* the mean per row as float32 sums over the tokens in order (a float32 copy of the vectors,
  one gather-and-add per token position over many rows at once), divided by the token count
  and rounded to the embedding's precision, then model2vec's own normalisation.

Those are the operations ``StaticModel.encode`` does, in the same order, so the vectors are
bit-identical (tests check this against ``StaticModel.encode``). A model this path does not
cover (vocabulary-quantised: a token mapping or per-token weights; an int8 embedding) is
encoded by ``StaticModel.encode`` itself.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np

from ..exec.processes import available_cores

#: rows pooled at once (their float32 sums: POOL_ROWS x dim x 4 bytes)
POOL_ROWS = 4096
#: fewest texts per tokenising thread
MIN_TEXTS_PER_THREAD = 256


def fast_path_supported(model: Any) -> bool:
    """True when :func:`encode_static` reproduces ``model.encode`` (plain mean pooling of a
    float vector table, one vector per token)."""
    emb = getattr(model, "embedding", None)
    return (getattr(model, "token_mapping", None) is None and getattr(model, "weights", None) is None
            and isinstance(emb, np.ndarray) and emb.ndim == 2 and emb.dtype.kind == "f"
            and hasattr(model, "tokenizer") and hasattr(model, "median_token_length"))


def token_ids(tokenizer: Any, texts: Sequence[str], unk_token_id: int | None,
              threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The token ids of every text, concatenated (int64), and each text's token count, as
    model2vec tokenises (no special tokens; the tokenizer's truncation; unknown tokens
    dropped). ``threads`` threads tokenise slices of ``texts`` at once."""
    texts = list(texts)
    n = len(texts)
    threads = max(1, min(int(threads), n // MIN_TEXTS_PER_THREAD or 1))

    def one(part: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = tokenizer.encode_batch_fast(part, add_special_tokens=False)
        ids = [e.ids for e in encs]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        return flat, lens

    if threads == 1:
        flat, lens = one(texts)
    else:
        step = -(-n // threads)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(one, [texts[s:s + step] for s in range(0, n, step)]))
        flat = np.concatenate([p[0] for p in parts])
        lens = np.concatenate([p[1] for p in parts])
    if unk_token_id is not None and flat.size:
        keep = flat != unk_token_id
        if not keep.all():
            owner = np.repeat(np.arange(n), lens)
            lens = np.bincount(owner[keep], minlength=n).astype(np.int64)
            flat = flat[keep]
    return flat, lens


def mean_pool(vectors32: np.ndarray, flat: np.ndarray, lens: np.ndarray, out_dtype: np.dtype) -> np.ndarray:
    """Each row's mean token vector (rows of no tokens: zeros), rounded to ``out_dtype``.

    As ``ndarray.mean`` over the tokens does for model2vec: the float32 sum adds the tokens'
    vectors in token order, then divides by the token count. Rows go longest first, a slice of
    :data:`POOL_ROWS` at a time; token position ``l`` adds the ``l``-th vector of every row
    that long, so each step is one gather and one add over many rows."""
    n, dim = len(lens), vectors32.shape[1]
    out = np.zeros((n, dim), dtype=out_dtype)
    starts = np.cumsum(lens) - lens
    order = np.argsort(-lens, kind="stable")
    order = order[lens[order] > 0]
    for s in range(0, len(order), POOL_ROWS):
        rows = order[s:s + POOL_ROWS]
        length = lens[rows]                          # descending
        first = starts[rows]
        acc = vectors32[flat[first]]                 # position 0 (every row has a token)
        active = np.searchsorted(-length, -np.arange(1, int(length[0])), side="left")
        for pos, a in enumerate(active, start=1):    # a: rows longer than pos
            acc[:a] += vectors32[flat[first[:a] + pos]]
        out[rows] = (acc / length[:, None].astype(np.float32)).astype(out_dtype)
    return out


class StaticEncoder:
    """A model2vec StaticModel behind sentence-transformers' ``encode`` signature, on the
    fast path where it reproduces ``StaticModel.encode`` (see the module docstring)."""

    def __init__(self, model: Any, max_tokens: int | None = None, threads: int | None = None) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.threads = available_cores() if threads is None else max(1, int(threads))
        self.fast = fast_path_supported(model)
        self._vectors32 = np.asarray(model.embedding, dtype=np.float32) if self.fast else None

    def _max_length(self) -> int | None:
        return int(self.max_tokens) if self.max_tokens else self.model.max_length

    def encode_static(self, sentences: Sequence[str]) -> np.ndarray:
        """``StaticModel.encode(sentences)`` (the model's own normalisation), computed fast."""
        m = self.model
        max_length = self._max_length()
        texts = list(sentences)
        if max_length is not None:
            cut = max_length * m.median_token_length
            texts = [t[:cut] for t in texts]
        tok = m.tokenizer
        if max_length is None:
            tok.no_truncation()
        else:
            tok.enable_truncation(max_length)
        try:
            flat, lens = token_ids(tok, texts, m.unk_token_id, self.threads)
        finally:   # as model2vec leaves it
            if m.max_length is None:
                tok.no_truncation()
            else:
                tok.enable_truncation(m.max_length)
        dtype = m.embedding.dtype
        out = mean_pool(self._vectors32, flat, lens, dtype)
        if m.normalize:
            out32 = out.astype(np.float32)
            norm = np.linalg.norm(out32, axis=1, keepdims=True) + 1e-32
            out = (out32 / norm).astype(dtype)
        return out

    def encode(self, sentences: Sequence[str], batch_size: int = 2048,
               show_progress_bar: bool = False, convert_to_numpy: bool = True,
               normalize_embeddings: bool = False, **_: Any) -> np.ndarray:
        sentences = list(sentences)
        if self.fast:
            emb = self.encode_static(sentences) if sentences else np.zeros((0, self.model.dim), np.float32)
        else:
            kw = {"max_length": int(self.max_tokens)} if self.max_tokens else {}
            emb = self.model.encode(sentences, batch_size=int(batch_size), show_progress_bar=False,
                                    use_multiprocessing=False, **kw)
        emb = np.asarray(emb, dtype=np.float32)
        if normalize_embeddings:
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb
