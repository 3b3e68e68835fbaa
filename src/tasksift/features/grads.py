"""LESS-style gradient features: per-example gradients of a model's LoRA parameters, randomly
projected to a few thousand dimensions, batched, cached per example and resumable.

Per-example gradients (batched, one forward and one backward per batch)
-----------------------------------------------------------------------
Each example's loss is the mean negative log-likelihood of its response tokens (the same
rendering and masking as :mod:`tasksift.features.lm`). A batch of rows (right-padded, sorted
by length into ``batch_tokens`` batches) is run forward once and the *sum* of the per-example
losses is back-propagated once. Rows never interact (causal attention within a row, padding
after the row's last token and masked), so the gradient reaching a layer's output at row b's
positions is exactly the gradient of row b's own loss. Every LoRA factor is a bias-free
``nn.Linear`` (``lora_A``, ``lora_B``), whose per-example weight gradient is then

    dL_b/dW = sum_t  grad_out[b, t]^T  x[b, t]      (t over row b's positions)

computed with one ``einsum`` from the layer inputs and output gradients captured by hooks
(the per-sample-gradient trick of Goodfellow 2015 / Opacus). This is equivalent to
``torch.func.vmap(grad(loss))`` over the batch but works with any Hugging Face / PEFT model
unchanged; the test suite checks it against one-at-a-time autograd to 1e-5.

Gradient variants (LESS, Xia et al. 2024)
-----------------------------------------
``grad_type="sgd"``: the plain gradient (LESS uses it for the target examples).
``grad_type="adam"``: the Adam-preconditioned gradient LESS uses for training candidates,
from the warm-up's optimizer state (``m``, ``v`` saved by
:func:`tasksift.finetune.finetune_lora` with ``save_optimizer_state=True``), as in LESS's
``obtain_gradients_with_adam``: ``m' = b1 m + (1-b1) g``, ``v' = b2 v + (1-b2) g^2``,
``G = m' / sqrt(v' + 1e-8)`` (no bias correction).

Random projection (memory-bounded, batch-size independent)
----------------------------------------------------------
The gradient (``n_params`` values) is multiplied by a random ``n_params x proj_dim`` matrix
with entries +-1/sqrt(proj_dim) (``rademacher``, default) or N(0, 1/proj_dim) (``gaussian``),
so inner products are preserved in expectation (Johnson-Lindenstrauss). ``countsketch`` is a
much cheaper alternative: every parameter is added, with a random sign, to one random output
coordinate (feature hashing; unbiased inner products with JL-like error for gradients whose
mass is spread over many parameters), O(n_params) per row instead of O(n_params x proj_dim)
multiply-adds plus the generation of the dense matrix. The matrix is never materialised
whole: it is generated in blocks of ``PROJ_BLOCK_ROWS`` parameter rows, block j from
``numpy.random.PCG64([seed, j, kind])`` (Rademacher entries: the stream's bits, turned into
float32 +-1 by a byte -> 8 entries table look-up), so every block is the same whatever the
batch, machine or process; blocks are kept in memory up to ``proj_cache_mb`` and regenerated
otherwise. Each block's product is one float32 BLAS multiply; the block products are summed
in float64 (CPU) and rounded to float32 at the end, so a row's features depend on which other
rows share its batch only through the BLAS kernel's rounding within a block: equal within
1e-6 relative (not bit-identical) whatever the batch size.

Cost on CPU: generating the dense matrix (3.8G entries for SmolLM2-135M with LoRA r 8 on q/v,
460,800 parameters, to 8192 dimensions) costs about as much as multiplying it by ~100 rows, so
gradient rows are buffered and projected together: up to ``proj_buffer_mb`` (512 MB: 291 rows
of 460,800 float32 values) or ``proj_batch`` rows, and at most the rows of one cache shard
(``flush_every``). Measured on 2 busy Sapphire Rapids cores (1 torch thread), random
gradients of that shape: 0.79 s/row before this scheme (64 rows per float64 pass), 0.35 s/row
at 64 rows and 0.14 s/row at 256 rows per pass now; ``countsketch`` is nearly free.

Memory: the forward+backward with hooks keeps every layer's activations, so on CPU batches
hold at most ``CPU_GRAD_BATCH_TOKENS`` (512) padded tokens: ~0.9 GB above the loaded
SmolLM2-135M for 512-token rows (1024 tokens: ~1.9 GB), at the same speed.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data.example import Example
from ..errors import ConfigError
from ..exec import Executor
from ..memory import return_freed_memory
from .device import accelerator_for, resolve_device
from .fingerprint import file_digest
from .lm import (DEFAULT_LM, STATUS_OK, Rendered, LazyLM, length_batches, verified_decoder_and_head,
                 model_fingerprint, resolve_dtype, set_cpu_threads, template_fingerprint,
                 padded_batch, tokenize_examples, unscorable_summary)
from .pipeline import compute_features, open_store

#: Parameter rows per generated block of the projection matrix (part of the cache key).
PROJ_BLOCK_ROWS = 2048
PROJ_TYPES = ("rademacher", "gaussian", "countsketch")
GRAD_TYPES = ("sgd", "adam")
#: Bumped when the gradient or projection computation changes (cached features recomputed).
GRADS_VERSION = "grads-v1"
#: File with the warm-up's Adam moments (written by finetune_lora(save_optimizer_state=True)).
OPTIMIZER_STATE_FILE = "optimizer_state.safetensors"
#: Default padded tokens per forward+backward batch on CPU and GPU.
CPU_GRAD_BATCH_TOKENS = 512
GPU_GRAD_BATCH_TOKENS = 8192


# ---------------------------------------------------------------------------------------
# Per-example gradients
# ---------------------------------------------------------------------------------------
def lora_linears(model) -> list[tuple[str, Any]]:
    """The trainable bias-free ``nn.Linear`` modules (LoRA factors) of ``model`` in module
    order, as (name, module). A trainable parameter outside such a module is a ConfigError
    (e.g. an adapter with ``bias="all"`` or ``modules_to_save``)."""
    import torch

    mods = []
    covered = set()
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.weight.requires_grad:
            if m.bias is not None and m.bias.requires_grad:
                raise ConfigError(f"gradient features support bias-free LoRA layers only ({name} has a trainable bias)")
            mods.append((name, m))
            covered.add(id(m.weight))
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise ConfigError(f"gradient features need an adapter whose only trainable weights are LoRA "
                          f"factors; also trainable: {stray[:3]}")
    if not mods:
        raise ConfigError("the model has no trainable LoRA layers to take gradients of")
    return mods


def n_lora_params(mods: Sequence[tuple[str, Any]]) -> int:
    return int(sum(m.weight.numel() for _, m in mods))


class PerExampleGrads:
    """Per-example gradients of the LoRA weights of ``model`` (a PEFT model in eval mode with
    trainable LoRA factors), for right-padded batches of :class:`Rendered` rows."""

    def __init__(self, model, pad_id: int = 0) -> None:
        self.model = model
        self.pad_id = int(pad_id)
        self.mods = lora_linears(model)
        self.names = [f"{n}.weight" for n, _ in self.mods]
        self.sizes = [m.weight.numel() for _, m in self.mods]
        self.n_params = int(sum(self.sizes))
        self._base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._fast = None
        self._checked = False      # the output-layer shortcut is verified on the first row seen

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _tensors(self, rows: Sequence[Rendered]):
        return padded_batch(rows, self.pad_id, self.device)

    def _losses(self, ids, att, msk):
        """Per-row mean response NLL (B,) and response-token counts."""
        import torch
        import torch.nn.functional as F

        pred = msk[:, 1:] & att[:, 1:].bool()
        targets = ids[:, 1:][pred]
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(pred)[pred]
        if self._fast is not None:
            dec, head = self._fast
            hidden = dec(input_ids=ids, attention_mask=att).last_hidden_state
            logits = head(hidden[:, :-1][pred]).float()
        else:
            logits = self.model(input_ids=ids, attention_mask=att).logits[:, :-1][pred].float()
        nll = F.cross_entropy(logits, targets, reduction="none")
        counts = pred.sum(dim=1)
        sums = torch.zeros(ids.shape[0], dtype=nll.dtype, device=ids.device).index_add(0, rows, nll)
        return sums / counts.clamp(min=1), counts

    def __call__(self, rows: Sequence[Rendered]):
        """(grads (B, n_params) float32 tensor, response-token counts (B,)) for one batch of
        scorable rows (each with at least one response token)."""
        import torch

        ids, att, msk = self._tensors(rows)
        if not self._checked:
            n = len(rows[0].ids)
            self._fast = verified_decoder_and_head(self._base, ids[:1, :n], att[:1, :n])
            self._checked = True
        saved: dict[int, list] = {}
        handles = []

        def fwd_hook(idx):
            def hook(module, inp, out):
                x = inp[0].detach()
                saved[idx] = [x, None]

                def grad_hook(g):
                    saved[idx][1] = g.detach()
                out.register_hook(grad_hook)
            return hook

        for i, (_, m) in enumerate(self.mods):
            handles.append(m.register_forward_hook(fwd_hook(i)))
        try:
            with torch.enable_grad():
                loss, counts = self._losses(ids, att, msk)
                params = [m.weight for _, m in self.mods]
                torch.autograd.grad(loss.sum(), params, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        B = ids.shape[0]
        out = torch.empty((B, self.n_params), dtype=torch.float32, device=ids.device)
        off = 0
        for i, (_, m) in enumerate(self.mods):
            size = self.sizes[i]
            x, g = saved.get(i, (None, None))
            if x is None or g is None:     # layer unused by the loss: zero gradient
                out[:, off:off + size] = 0
            else:
                x = x.reshape(B, -1, x.shape[-1]).float()
                g = g.reshape(B, -1, g.shape[-1]).float()
                out[:, off:off + size] = torch.einsum("bto,bti->boi", g, x).reshape(B, -1)
            off += size
        return out, counts


def load_optimizer_state(adapter_dir: str | os.PathLike, names: Sequence[str], sizes: Sequence[int]):
    """The warm-up's Adam moments flattened in ``names`` order: ``(m, v, beta1, beta2)`` as
    float32 tensors; None when the adapter folder has no optimizer state."""
    import torch
    from safetensors import safe_open

    p = Path(adapter_dir) / OPTIMIZER_STATE_FILE
    if not p.is_file():
        return None
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        keys = set(f.keys())
        ms, vs = [], []
        for name, size in zip(names, sizes):
            if f"{name}.exp_avg" not in keys:
                raise ConfigError(f"optimizer state in {adapter_dir} has no entry for {name}")
            ms.append(f.get_tensor(f"{name}.exp_avg").reshape(-1).float())
            vs.append(f.get_tensor(f"{name}.exp_avg_sq").reshape(-1).float())
    m, v = torch.cat(ms), torch.cat(vs)
    if m.numel() != sum(sizes):
        raise ConfigError(f"optimizer state in {adapter_dir} does not match the adapter's parameters")
    return m, v, float(meta.get("beta1", 0.9)), float(meta.get("beta2", 0.999))


def adam_precondition(g, m, v, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """LESS's Adam gradient: one more Adam moment update with ``g``, then m'/sqrt(v' + eps)."""
    m2 = beta1 * m + (1 - beta1) * g
    v2 = beta2 * v + (1 - beta2) * g * g
    return m2 / (v2 + eps).sqrt()


# ---------------------------------------------------------------------------------------
# Random projection
# ---------------------------------------------------------------------------------------
class BlockProjector:
    """x (B, n) -> x @ P (B, dim) with P (n x dim) generated block by block from a seed.

    Block j (rows j*block_rows ...) is drawn from ``PCG64([seed, j, kind])`` on the CPU, so P
    is the same for any batch size, device or process. Dense blocks hold the unscaled entries
    (+-1 for ``rademacher``, N(0, 1) for ``gaussian``) in float32; each block's product is one
    float32 matrix multiply (BLAS), and the block products are summed in ``accum_dtype``
    (float64 by default) and scaled by 1/sqrt(dim) at the end. A row's result therefore
    depends on its batch only through the BLAS kernel's rounding inside one block product:
    equal within 1e-6 relative (L2 per row) whatever the batch size.

    Generating a dense block (2,048 x 8,192 entries) costs about as much as multiplying it by
    100 rows on a CPU, so project many rows per call (see :func:`proj_batch_rows`).
    Generated dense blocks are kept, in float32, while they fit in ``cache_mb``; countsketch
    blocks (bucket and sign per parameter) are always kept.
    """

    def __init__(self, n: int, dim: int = 8192, kind: str = "rademacher", seed: int = 0, *,
                 block_rows: int = PROJ_BLOCK_ROWS, cache_mb: float = 1024, device: str = "cpu",
                 accum_dtype: str = "float64") -> None:
        import torch

        if kind not in PROJ_TYPES:
            raise ConfigError(f"proj_type must be one of {PROJ_TYPES}, got {kind!r}")
        if not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"proj_dim must be a positive integer, got {dim!r}")
        self.n, self.dim, self.kind, self.seed = int(n), int(dim), kind, int(seed)
        self.block_rows = int(block_rows)
        self.n_blocks = (self.n + self.block_rows - 1) // self.block_rows
        self.device = torch.device(device)
        self.dtype = {"float64": torch.float64, "float32": torch.float32}[accum_dtype]
        self.scale = 1.0 if kind == "countsketch" else 1.0 / float(np.sqrt(self.dim))
        self.cache_bytes = float(cache_mb) * 2 ** 20
        self._cache: dict[int, Any] = {}
        self._cached_bytes = 0
        self.generated_blocks = 0

    def _rng(self, j: int):
        return np.random.Generator(np.random.PCG64([self.seed, j, PROJ_TYPES.index(self.kind)]))

    def _raw_block(self, j: int):
        """Block j unscaled: (rows, dim) float32 on the projector's device (+-1 or N(0, 1)),
        or (bucket, sign) for countsketch."""
        import torch

        if j in self._cache:
            return self._cache[j]
        rows = min(self.block_rows, self.n - j * self.block_rows)
        rng = self._rng(j)
        if self.kind == "countsketch":   # (bucket, sign) per parameter row
            bucket = torch.from_numpy(rng.integers(0, self.dim, size=rows, dtype=np.int64))
            sign = torch.from_numpy(rng.integers(0, 2, size=rows).astype(np.float64) * 2 - 1).to(self.dtype)
            t = (bucket.to(self.device), sign.to(self.device))
            self.generated_blocks += 1
            self._cache[j] = t          # rows x 16 bytes: always kept
            return t
        if self.kind == "rademacher":
            # bit k of the stream (most significant bit of each byte first) is entry k: one
            # table look-up turns each random byte into its 8 float32 entries (copied as 4
            # int64 words: ~3x faster than a float gather). The bytes are drawn on the CPU (the
            # same stream everywhere) and expanded on the projector's device: a GPU is sent
            # 1/32 of the block's float32 bytes and does the look-up itself.
            nbytes = (rows * self.dim + 7) // 8
            idx = torch.frombuffer(bytearray(rng.bytes(nbytes)), dtype=torch.uint8).to(self.device).long()
            t = _sign_table(self.device).index_select(0, idx).view(torch.float32).reshape(-1)[:rows * self.dim]
            t = t.reshape(rows, self.dim)
        else:
            t = torch.from_numpy(rng.standard_normal((rows, self.dim))).float()
        t = t.to(self.device)
        self.generated_blocks += 1
        nbytes = t.numel() * t.element_size()
        if self._cached_bytes + nbytes <= self.cache_bytes:
            self._cache[j] = t
            self._cached_bytes += nbytes
        return t

    def block(self, j: int):
        """Block j of P (scaled), (rows, dim) float32; (bucket, sign) for countsketch."""
        b = self._raw_block(j)
        return b if self.kind == "countsketch" else b * self.scale

    def __call__(self, x):
        """Project (B, n) -> (B, dim) float32."""
        import torch

        x = torch.as_tensor(x)
        if x.shape[-1] != self.n:
            raise ValueError(f"expected {self.n} columns, got {x.shape[-1]}")
        out = torch.zeros((x.shape[0], self.dim), dtype=self.dtype, device=self.device)
        if x.shape[0] == 0:
            return out.float()
        for j in range(self.n_blocks):
            s = j * self.block_rows
            if self.kind == "countsketch":
                bucket, sign = self._raw_block(j)
                xb = x[:, s:s + self.block_rows].to(device=self.device, dtype=self.dtype)
                out.index_add_(1, bucket, xb * sign)
            else:
                xb = x[:, s:s + self.block_rows].to(device=self.device, dtype=torch.float32)
                prod = xb @ self._raw_block(j)          # float32 BLAS
                out += prod if self.dtype == torch.float32 else prod.to(self.dtype)
        if self.scale != 1.0:
            out.mul_(self.scale)
        return out.float()


_SIGN_TABLES: dict[str, Any] = {}


def _sign_table(device: Any = "cpu"):
    """(256, 4) int64 on ``device`` holding, per byte value, the 8 float32 entries +-1 of its
    bits (most significant bit first)."""
    key = str(device)
    if key not in _SIGN_TABLES:
        import torch

        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
        table = torch.from_numpy(np.ascontiguousarray(bits.astype(np.float32) * 2 - 1).view(np.int64))
        _SIGN_TABLES[key] = table.to(device)
    return _SIGN_TABLES[key]


def proj_batch_rows(n_params: int, buffer_mb: float = 512) -> int:
    """Rows whose float32 gradients fit in ``buffer_mb`` (at least 1): the rows buffered and
    projected together, so that each generated block of the projection matrix serves them all."""
    return max(1, int(float(buffer_mb) * 2 ** 20 // (4 * max(1, int(n_params)))))


# ---------------------------------------------------------------------------------------
# Cached featurizer
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradConfig:
    """Everything that selects a model, adapter and gradient projection."""

    model: str = DEFAULT_LM          # "default" (SmolLM2-135M-Instruct), hub id, folder or .gguf
    gguf_file: str | None = None
    adapter: str | None = None       # the LoRA adapter (warm-up checkpoint) whose gradients are taken
    max_length: int = 512
    truncation: bool = True
    grad_type: str = "sgd"           # "sgd" or "adam" (needs the adapter's optimizer state)
    proj_dim: int = 8192
    proj_type: str = "rademacher"
    proj_seed: int = 0
    batch_tokens: int | None = None  # padded tokens per forward+backward; None = 512 CPU / 8192 GPU
    proj_batch: int | None = None    # rows whose gradients are projected together; None = as many
                                     # as fit in proj_buffer_mb
    proj_buffer_mb: float = 512      # gradient rows buffered for one projection (rows x params x 4 B)
    proj_cache_mb: float = 256       # generated projection blocks kept in memory (float32)
    device: str = "auto"
    dtype: str = "auto"

    def validate(self) -> None:
        if not self.adapter:
            raise ConfigError("gradient features need a LoRA adapter (a warm-up checkpoint)")
        if not (Path(self.adapter) / "adapter_config.json").is_file():
            raise ConfigError(f"adapter path '{self.adapter}' not found (no adapter_config.json)")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if self.grad_type not in GRAD_TYPES:
            raise ConfigError(f"grad_type must be one of {GRAD_TYPES}, got {self.grad_type!r}")
        if self.proj_type not in PROJ_TYPES:
            raise ConfigError(f"proj_type must be one of {PROJ_TYPES}, got {self.proj_type!r}")
        for name in ("proj_dim", "proj_batch"):
            v = getattr(self, name)
            if name == "proj_batch" and v is None:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("proj_buffer_mb", "proj_cache_mb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or (name == "proj_buffer_mb" and v == 0):
                raise ConfigError(f"{name} must be a {'positive' if name == 'proj_buffer_mb' else 'non-negative'} "
                                  f"number, got {v!r}")
        if not isinstance(self.proj_seed, int) or isinstance(self.proj_seed, bool) or self.proj_seed < 0:
            raise ConfigError(f"proj_seed must be a non-negative integer, got {self.proj_seed!r}")
        if self.batch_tokens is not None and (not isinstance(self.batch_tokens, int) or self.batch_tokens < 1):
            raise ConfigError(f"batch_tokens must be a positive integer, got {self.batch_tokens!r}")


@dataclass
class GradResult:
    """Projected gradient features, row-aligned with the examples passed in."""

    features: np.ndarray            # (n, proj_dim) float32, NaN rows where status != 0
    status: np.ndarray              # 0 = ok, else a key of lm.STATUS_REASONS
    n_response_tokens: np.ndarray
    grad_norm: np.ndarray           # L2 norm of the (preconditioned) gradient before projection
    truncated: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def normalized(self) -> np.ndarray:
        """Unit-norm rows (NaN rows stay NaN)."""
        f = self.features.astype(np.float32, copy=True)
        nrm = np.linalg.norm(f, axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(nrm > 0, f / nrm, np.nan).astype(np.float32)


class GradScorer:
    """Computes and caches projected LoRA-gradient features for one configuration.

    The base model is loaded (or ``model``/``tokenizer`` reused) only when rows are missing
    from the cache; the adapter is applied unmerged on top, and removed again by
    :meth:`close` (so a caller's model is left as it was). ``executor``: where missing blocks
    are computed (default: this process; on Ray each worker loads the model from the config).
    """

    def __init__(self, config: GradConfig, cache_dir: str | os.PathLike | None = None, progress: bool = True,
                 model=None, tokenizer=None, fingerprint: str | None = None, executor: Executor | None = None,
                 model_factory=None) -> None:
        config.validate()
        self.executor = executor
        self.config = config
        self.cache_dir = cache_dir
        self.progress = progress
        # the base model (no adapter): loaded on first use, or shared through model/model_factory
        self._lm = LazyLM(config.model, config.gguf_file, config.device, config.dtype, model=model,
                          tokenizer=tokenizer, model_factory=model_factory)
        self._setup_seconds = 0.0
        self._fingerprint = fingerprint
        self._full_fp: str | None = None
        self._peft = None
        self._grads: PerExampleGrads | None = None
        self._proj: BlockProjector | None = None
        self._adam = None
        self.computed_rows = 0
        self.compute_seconds = 0.0

    # -- lazy pieces ----------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self._lm.tokenizer

    @property
    def base_model(self):
        return self._lm.model

    @property
    def load_seconds(self) -> float:
        """Seconds spent loading the base model and setting up the adapter and projection."""
        return self._lm.load_seconds + self._setup_seconds

    @property
    def fingerprint(self) -> str:
        """Base model + adapter (+ optimizer state for Adam) fingerprint."""
        if self._full_fp is None:
            if self._fingerprint is None:
                self._fingerprint = model_fingerprint(self.config.model, self.config.gguf_file)
            fp = self._fingerprint + "|adapter:" + adapter_fingerprint(self.config.adapter)
            if self.config.grad_type == "adam":
                p = Path(self.config.adapter) / OPTIMIZER_STATE_FILE
                fp += "|adam:" + (hashlib.sha1(p.read_bytes()).hexdigest()[:16] if p.is_file() else "none")
            self._full_fp = fp
        return self._full_fp

    def _device(self) -> str:
        return "cuda" if resolve_device(self.config.device).startswith("cuda") else "cpu"

    def cache_key(self) -> dict:
        c = self.config
        dev = self._device()
        return {"model": self.fingerprint, "template": template_fingerprint(self.tokenizer),
                "max_length": c.max_length, "truncation": c.truncation, "grad_type": c.grad_type,
                "proj_dim": c.proj_dim, "proj_type": c.proj_type, "proj_seed": c.proj_seed,
                "proj_block": PROJ_BLOCK_ROWS, "accum": self._accum_dtype(),
                "dtype": str(resolve_dtype(c.dtype, dev)).replace("torch.", ""), "v": GRADS_VERSION}

    def _accum_dtype(self) -> str:
        return "float64" if self._device() == "cpu" else "float32"

    def _setup(self) -> None:
        """Apply the adapter (trainable, unmerged) and build the gradient and projection parts."""
        if self._grads is not None:
            return
        from peft import PeftModel

        base = self.base_model
        t = time.perf_counter()
        if base.device.type == "cpu":
            set_cpu_threads()
            return_freed_memory()  # a backward pass per batch: freed activations go back (tasksift.memory)
        self._peft = PeftModel.from_pretrained(base, self.config.adapter, is_trainable=True)
        self._peft.eval()
        for n, p in self._peft.named_parameters():
            p.requires_grad_("lora_" in n)
        tok = self.tokenizer
        self._grads = PerExampleGrads(self._peft, tok.pad_token_id if tok.pad_token_id is not None else 0)
        if self.config.grad_type == "adam":
            st = load_optimizer_state(self.config.adapter, self._grads.names, self._grads.sizes)
            if st is None:
                raise ConfigError(f"grad_type 'adam' needs the warm-up's optimizer state "
                                  f"({OPTIMIZER_STATE_FILE}) in {self.config.adapter}")
            m, v, b1, b2 = st
            dev = self._grads.device
            self._adam = (m.to(dev), v.to(dev), b1, b2)
        self._proj = BlockProjector(self._grads.n_params, self.config.proj_dim, self.config.proj_type,
                                    self.config.proj_seed, cache_mb=self.config.proj_cache_mb,
                                    device=str(self._grads.device), accum_dtype=self._accum_dtype())
        self._setup_seconds += time.perf_counter() - t

    @property
    def n_params(self) -> int:
        self._setup()
        return self._grads.n_params

    def close(self) -> None:
        """Remove the adapter layers from the base model (it is left as it was loaded)."""
        if self._peft is not None:
            self._peft.unload()
            for p in self._lm.model.parameters():
                p.requires_grad_(False)
            self._peft = None
            self._grads = None
            self._proj = None

    # -- computing ------------------------------------------------------------------------
    def compute_rows(self, items: Sequence[Example] | Sequence[Sequence[dict]], on_rows=None) -> dict[str, np.ndarray]:
        """Features of ``items`` (examples or message lists), no cache: a dict with
        ``features`` (n, proj_dim) float32, ``grad_norm``, ``n_response_tokens``,
        ``n_tokens``, ``truncated``, ``status``."""
        import torch

        self._setup()
        c = self.config
        t0 = time.perf_counter()
        rendered = tokenize_examples(self.tokenizer, items, max_length=c.max_length, truncation=c.truncation)
        n = len(rendered)
        feats = np.full((n, c.proj_dim), np.nan, dtype=np.float32)
        gnorm = np.full(n, np.nan, dtype=np.float64)
        n_resp = np.zeros(n, dtype=np.int64)
        ok = [i for i, r in enumerate(rendered) if r.status == STATUS_OK]
        dev = self._grads.device
        bt = c.batch_tokens or (CPU_GRAD_BATCH_TOKENS if dev.type == "cpu" else GPU_GRAD_BATCH_TOKENS)
        pb = c.proj_batch or proj_batch_rows(self._grads.n_params, c.proj_buffer_mb)
        for s in range(0, len(ok), pb):
            group = ok[s:s + pb]
            G = torch.empty((len(group), self._grads.n_params), dtype=torch.float32, device=dev)
            for b in length_batches([len(rendered[i].ids) for i in group], bt):
                g, cnt = self._grads([rendered[group[j]] for j in b])
                if self._adam is not None:
                    m, v, b1, b2 = self._adam
                    g = adam_precondition(g, m, v, b1, b2)
                G[b] = g
                rows = [group[j] for j in b]
                gnorm[rows] = g.double().norm(dim=1).cpu().numpy()
                n_resp[rows] = cnt.cpu().numpy()
                del g
                if on_rows is not None:
                    on_rows(len(b))
            feats[group] = self._proj(G).cpu().numpy()
            del G
        if on_rows is not None:
            on_rows(n - len(ok))
        self.computed_rows += n
        self.compute_seconds += time.perf_counter() - t0
        return {"features": feats, "grad_norm": gnorm, "n_response_tokens": n_resp,
                "n_tokens": np.array([r.n_full for r in rendered], dtype=np.int64),
                "truncated": np.array([r.truncated for r in rendered], dtype=bool),
                "status": np.array([r.status for r in rendered], dtype=np.int8)}

    def features(self, examples: Sequence[Example], *, flush_every: int = 128, desc: str = "gradients") -> GradResult:
        """Projected gradient features of ``examples``, from the cache where possible."""
        n = len(examples)
        c = self.config
        if n == 0:
            z = np.zeros(0)
            return GradResult(np.zeros((0, c.proj_dim), np.float32), z.astype(np.int64), z.astype(np.int64), z,
                              z.astype(bool))
        t0 = time.perf_counter()
        featurizer = GradFeaturizer(c, scorer=self)
        out = compute_features(featurizer, examples, open_store(featurizer, self.cache_dir), self.executor,
                               block_rows=flush_every, progress=self.progress, desc=desc)
        f = out.values
        elapsed = time.perf_counter() - t0
        res = GradResult(features=f["features"], status=f["status"].astype(np.int64),
                         n_response_tokens=f["n_response_tokens"], grad_norm=f["grad_norm"],
                         truncated=f["truncated"].astype(bool))
        computed = out.rows_computed
        res.info = {
            "grad_type": c.grad_type, "proj_type": c.proj_type, "proj_dim": c.proj_dim, "proj_seed": c.proj_seed,
            "max_length": c.max_length, "n_truncated": int(res.truncated.sum()),
            "unscorable": unscorable_summary(res.status, examples=examples),
            "rows_computed": computed, "rows_from_cache": n - computed,
            "seconds": round(elapsed, 3),
            "rows_per_second": round(computed / elapsed, 3) if computed and elapsed > 0 else None,
        }
        if self._grads is not None:
            res.info["lora_params"] = self._grads.n_params
        return res


class GradFeaturizer:
    """The gradient featurizer of :func:`tasksift.features.pipeline.compute_features`: one
    block of message lists -> :meth:`GradScorer.compute_rows`. Pickled (shipped to a worker)
    it carries only the :class:`GradConfig`; the worker builds its own scorer."""

    kind = "grads"

    def __init__(self, config: GradConfig, *, scorer: "GradScorer | None" = None) -> None:
        self.config = config
        self._scorer = scorer

    @property
    def accelerator(self) -> str | None:
        return accelerator_for(self.config.device)

    @property
    def scorer(self) -> "GradScorer":
        if self._scorer is None:
            self._scorer = GradScorer(self.config, cache_dir=None, progress=False)
        return self._scorer

    def cache_key(self) -> dict:
        return self.scorer.cache_key()

    def row_id(self, ex: Example) -> str:
        return ex.id

    def content_row_id(self, content_id: str) -> str:
        """:meth:`row_id` from the pool's content-id column (no row is read for ids)."""
        return content_id

    def block_item(self, ex: Example) -> list:
        return list(ex.messages)

    def compute_block(self, items: list) -> dict[str, np.ndarray]:
        return self.scorer.compute_rows(items)

    def __getstate__(self) -> dict:
        return {"config": self.config, "_scorer": None}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GradFeaturizer) and self.config == other.config

    def __hash__(self) -> int:
        return hash(self.config)


def adapter_fingerprint(adapter: str | os.PathLike) -> str:
    """Digest of an adapter folder's weight and config files."""
    a = Path(adapter)
    parts = [f"{f.name}:{file_digest(f)}" for f in sorted(a.glob("*"))
             if f.is_file() and f.suffix in {".safetensors", ".bin", ".json"} and f.name != "train_log.json"
             and f.name != OPTIMIZER_STATE_FILE]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def config_dict(cfg: GradConfig) -> dict:
    return asdict(cfg)


__all__ = ["BlockProjector", "GradConfig", "GradResult", "GradFeaturizer", "GradScorer", "PerExampleGrads",
           "adam_precondition", "adapter_fingerprint", "lora_linears", "load_optimizer_state", "proj_batch_rows"]
