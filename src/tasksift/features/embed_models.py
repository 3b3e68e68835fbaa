"""Building the embedding model: precision, runtime, CPU threads, batch size, static models.

* precision (``dtype``): ``auto`` resolves to bfloat16 on a CPU with native bfloat16
  (``avx512_bf16`` / ``amx_bf16`` on x86, ``bf16`` on ARM), bfloat16 or float16 on a GPU,
  else float32; ``int8`` is dynamic int8 quantisation of the linear layers (torch on CPU, or
  a quantised ONNX export with the ``onnx`` runtime).
* runtime: ``torch`` (default), or ``onnx`` / ``openvino`` through sentence-transformers'
  ``backend=`` option (``pip install 'tasksift[onnx]'`` / ``'tasksift[openvino]'``).
* static models: ``static`` is a model2vec model distilled offline from the default model on
  first use and kept under the cache folder; a model2vec folder, or ``static:<folder or id>``,
  loads one directly. They embed a row by averaging token vectors: ~100x faster than a
  transformer, with lower selection quality (see README "Selecting data").
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .embed_static import StaticEncoder

DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
RUNTIMES = ("torch", "onnx", "openvino")
STATIC = "static"
STATIC_PREFIX = "static:"
#: model2vec distillation settings for ``--embed-model static`` (part of its fingerprint)
STATIC_DISTILL = {"pca_dims": 256, "sif_coefficient": 1e-4, "pooling": "mean"}
CPU_BATCH_SIZE = 64
STATIC_BATCH_SIZE = 2048
#: rows per stored block (one store segment each): transformers / static models
BLOCK_ROWS = 1024
STATIC_BLOCK_ROWS = 16384


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU listed in ``cpuinfo`` (empty if unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_supports_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, ARM BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def gpu_supports_bf16(device: str) -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except Exception:  # pragma: no cover - no usable CUDA
        return False


def is_static_model(model: str) -> bool:
    """``static``, ``static:<...>``, or a local model2vec folder (config.json model_type)."""
    if model == STATIC or model.startswith(STATIC_PREFIX):
        return True
    cfg = Path(model) / "config.json"
    if cfg.is_file():
        with contextlib.suppress(OSError, ValueError):
            return json.loads(cfg.read_text()).get("model_type") == "model2vec"
    return False


def resolve_dtype(dtype: str, device: str, runtime: str = "torch", model: str = "default",
                  flags: set[str] | None = None) -> str | None:
    """The precision actually used: ``auto`` made concrete for ``device``; None for static
    models (their vectors are looked up, not computed in a chosen precision)."""
    if dtype not in DTYPES:
        raise ConfigError(f"embedding dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"embedding runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if is_static_model(model):
        return None
    gpu = device.startswith("cuda")
    if dtype == "auto":
        if runtime != "torch":
            return "float32"
        if gpu:
            return "bfloat16" if gpu_supports_bf16(device) else "float16"
        if device == "cpu":
            return "bfloat16" if cpu_supports_bf16(flags) else "float32"
        return "float32"
    if dtype == "int8" and (gpu or device not in ("cpu",)) and runtime == "torch":
        raise ConfigError(f"embedding dtype int8 (dynamic quantisation) runs on the CPU only, not {device!r}")
    if runtime != "torch" and dtype in ("bfloat16", "float16"):
        raise ConfigError(f"the {runtime} runtime takes dtype float32 or int8, not {dtype}")
    if runtime == "openvino" and dtype == "int8":
        raise ConfigError("openvino int8 needs a calibration data set (static quantisation); "
                          "use --embed-runtime onnx --embed-dtype int8, or torch int8")
    return dtype


def resolve_batch_size(batch_size: int | None, device: str, model: str = "default") -> int:
    """Rows per forward pass: the given one, else 2048 for static models, 64 on a CPU and,
    on a GPU, enough to fill it (64 rows per GiB of free memory, 128 to 1024)."""
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ConfigError(f"embedding batch size must be >= 1, got {batch_size}")
        return int(batch_size)
    if is_static_model(model):
        return STATIC_BATCH_SIZE
    if device.startswith("cuda"):
        try:
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(device))
            return int(min(1024, max(128, 64 * (free // 2 ** 30))))
        except Exception:  # pragma: no cover - no usable CUDA
            return 256
    return CPU_BATCH_SIZE


def resolve_block_rows(model: str = "default") -> int:
    """Rows per stored block: 16,384 for static models (a block takes ~5 s there, and fewer,
    larger store segments cost less per row), 1,024 otherwise."""
    return STATIC_BLOCK_ROWS if is_static_model(model) else BLOCK_ROWS


def set_cpu_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads for torch (None: leave torch's default)."""
    if threads is None:
        return
    if int(threads) < 1:
        raise ConfigError(f"embedding threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(int(threads))


def static_fingerprint(source_fingerprint: str) -> str:
    """Fingerprint of the static model distilled from a model with ``source_fingerprint``."""
    return f"model2vec-distill{json.dumps(STATIC_DISTILL, sort_keys=True)}<-{source_fingerprint}"


def static_model_dir(cache_root: str | os.PathLike, source_fingerprint: str) -> Path:
    """Where the distilled static model of a source model lives in the cache."""
    h = hashlib.sha1(static_fingerprint(source_fingerprint).encode()).hexdigest()[:16]
    return Path(cache_root) / "models" / f"static-{h}"


def distill_static_model(source: str, dest: str | os.PathLike, quiet: bool = True) -> Path:
    """Distil a model2vec static model from the sentence-transformers model at ``source``
    into ``dest``, atomically (a temporary folder renamed into place). Offline: it needs
    only the source model's tokenizer and weights. Returns ``dest``."""
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    try:
        from model2vec.distill import distill
    except ImportError as e:
        raise ConfigError("--embed-model static needs model2vec's distillation "
                          "(pip install 'tasksift[static]')") from e
    dim = _source_dim(source)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        sink = io.StringIO()
        with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
            model = distill(model_name=source, pca_dims=min(STATIC_DISTILL["pca_dims"], dim),
                            sif_coefficient=STATIC_DISTILL["sif_coefficient"],
                            pooling=STATIC_DISTILL["pooling"], device="cpu")
        model.save_pretrained(str(tmp))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished first: keep theirs
            if not (dest / "config.json").is_file():
                raise
    except Exception as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot distil a static model from '{source}': {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _source_dim(source: str) -> int:
    for name in ("config.json", "bert/config.json", "0_Transformer/config.json"):
        cfg = Path(source) / name
        if cfg.is_file():
            d = json.loads(cfg.read_text())
            if "hidden_size" in d:
                return int(d["hidden_size"])
    return STATIC_DISTILL["pca_dims"]


class ReducedPrecisionEncoder:
    """A SentenceTransformer run in bfloat16/float16 whose vectors come back as float32 and
    are L2-normalised in float32 (a norm taken in bfloat16 is off by ~1e-3)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:   # tokenize, max_seq_length, device, ...
        return getattr(self.model, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def encode(self, sentences: Sequence[str], batch_size: int = CPU_BATCH_SIZE, show_progress_bar: bool = False,
               convert_to_numpy: bool = True, normalize_embeddings: bool = False, **kw: Any) -> np.ndarray:
        emb = self.model.encode(list(sentences), batch_size=int(batch_size), show_progress_bar=show_progress_bar,
                                convert_to_tensor=True, normalize_embeddings=False, **kw)
        emb = emb.float().cpu().numpy()
        if normalize_embeddings:
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb


def load_static_model(model: str, default_path: str, cache_root: str | os.PathLike,
                      source_fingerprint: str, max_tokens: int | None = None,
                      threads: int | None = None) -> StaticEncoder:
    """``static`` (distilled from ``default_path`` on first use, cached under
    ``cache_root``), ``static:<folder or id>`` or a model2vec folder."""
    try:
        from model2vec import StaticModel
    except ImportError as e:
        raise ConfigError("static embedding models need model2vec (pip install 'tasksift[static]')") from e
    if model == STATIC:
        dest = static_model_dir(cache_root, source_fingerprint)
        if not (dest / "config.json").is_file():
            distill_static_model(default_path, dest)
        path = str(dest)
    else:
        path = model[len(STATIC_PREFIX):] if model.startswith(STATIC_PREFIX) else model
    try:
        return StaticEncoder(StaticModel.from_pretrained(path, force_download=False), max_tokens, threads)
    except Exception as e:
        raise ConfigError(f"cannot load static embedding model '{model}': {type(e).__name__}: {e}") from e


def _require_optimum(runtime: str) -> None:
    mod = "optimum.onnxruntime" if runtime == "onnx" else "optimum.intel"
    try:
        __import__(mod)
    except ImportError as e:
        raise ConfigError(f"--embed-runtime {runtime} needs {mod.split('.')[0]} "
                          f"(pip install 'tasksift[{runtime}]')") from e


def onnx_int8_dir(cache_root: str | os.PathLike, source_fingerprint: str, config_name: str) -> Path:
    h = hashlib.sha1(f"onnx-int8:{config_name}<-{source_fingerprint}".encode()).hexdigest()[:16]
    return Path(cache_root) / "models" / f"onnx-int8-{h}"


def onnx_quantization_config(flags: set[str] | None = None) -> str:
    """The sentence-transformers int8 preset for this CPU."""
    flags = cpu_flags() if flags is None else flags
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    if "asimd" in flags:
        return "arm64"
    return "avx2"


def _export_onnx_int8(path: str, dest: Path, config_name: str) -> str:
    """Export ``path`` to ONNX, quantise it to int8 (dynamic), atomically into ``dest``;
    returns the ONNX file name inside ``dest``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    name = f"onnx/model_qint8_{config_name}.onnx"
    if not (dest / name).is_file():
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(path, tmp)
            m = SentenceTransformer(str(tmp), device="cpu", backend="onnx")
            m.save(str(tmp))
            export_dynamic_quantized_onnx_model(m, config_name, str(tmp))
            with contextlib.suppress(OSError):
                os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return name


def load_transformer_model(path: str, device: str, dtype: str, runtime: str = "torch",
                           max_tokens: int | None = None, threads: int | None = None,
                           cache_root: str | os.PathLike | None = None,
                           source_fingerprint: str = "") -> Any:
    """A SentenceTransformer in the resolved ``dtype`` on ``runtime``."""
    from sentence_transformers import SentenceTransformer

    if device == "cpu" or runtime != "torch":
        set_cpu_threads(threads)
    if runtime == "torch":
        m = SentenceTransformer(path, device=device)
        if max_tokens:
            m.max_seq_length = int(max_tokens)
        if dtype in ("bfloat16", "float16"):
            import torch

            m = ReducedPrecisionEncoder(m.to(getattr(torch, dtype)))
        elif dtype == "int8":
            import warnings

            import torch

            with warnings.catch_warnings():  # torch marks its eager-mode quantisation deprecated
                warnings.simplefilter("ignore")
                from torch.ao.quantization import quantize_dynamic

                m = quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    else:
        _require_optimum(runtime)
        kw: dict[str, Any] = {}
        if dtype == "int8":
            cfg = onnx_quantization_config()
            dest = onnx_int8_dir(cache_root or Path(path).parent, source_fingerprint, cfg)
            kw["model_kwargs"] = {"file_name": _export_onnx_int8(path, dest, cfg)}
            path = str(dest)
        m = SentenceTransformer(path, device="cpu" if runtime == "onnx" and device == "auto" else device,
                                backend=runtime, **kw)
        if max_tokens:
            m.max_seq_length = int(max_tokens)
    return m


def load_embedding_model(model: str, default_path: str, source_fingerprint: str, *, device: str,
                         dtype: str, runtime: str = "torch", max_tokens: int | None = None,
                         threads: int | None = None, cache_root: str | os.PathLike) -> Any:
    """The model for an :class:`~tasksift.features.embed.EmbedConfig`: a static model
    (:class:`StaticEncoder`) or a SentenceTransformer; ``dtype`` is already resolved.

    ``default_path``: folder of the default model (the source of ``static``);
    ``source_fingerprint``: that model's fingerprint (names the cached distillation)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if is_static_model(model):
        return load_static_model(model, default_path, cache_root, source_fingerprint, max_tokens, threads)
    path = default_path if model == "default" else model
    return load_transformer_model(path, device, dtype or "float32", runtime, max_tokens, threads,
                                  cache_root, source_fingerprint)
