"""LoRA fine-tuning of a causal LM on examples, with the same rendering and response masking
as the loss engine (:mod:`tasksift.features.lm`): the model learns the response tokens (every
assistant turn of a chat, all tokens of plain text) and never the prompt.

Used by LoBaSS to build its reference model and reusable by the evaluation harness.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import write_json
from .data.example import Example
from .errors import ConfigError
from .memory import return_freed_memory

#: Modules LoRA adapts when none are given: attention and MLP projections of llama-style
#: models, falling back to whatever peft picks for the architecture.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _pick_target_modules(model, wanted: Sequence[str] | None) -> list[str] | str | None:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if wanted:
        missing = [w for w in wanted if w not in names]
        if missing:
            raise ConfigError(f"LoRA target modules {missing} not in the model")
        return list(wanted)
    hit = [m for m in DEFAULT_TARGET_MODULES if m in names]
    return hit or None   # None: peft's per-architecture default


def training_head(peft_model: Any, ids: Any, att: Any):
    """``(decoder, output layer)`` of the model under ``peft_model`` when the output layer on
    the decoder's hidden state gives the model's own logits, checked once on the probe batch
    ``ids``/``att`` in eval mode (no dropout) by
    :func:`tasksift.features.lm.verified_decoder_and_head`; None: train on the full logits."""
    from .features.lm import verified_decoder_and_head

    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    was_training = peft_model.training
    peft_model.eval()
    try:
        return verified_decoder_and_head(base, ids, att)
    finally:
        peft_model.train(was_training)


def response_logits(model: Any, ids: Any, att: Any, sel: Any, head: Any = None) -> Any:
    """Next-token logits at the positions where ``sel`` (batch x length-1) is true, shape
    (positions, vocabulary). With ``head`` (a verified ``(decoder, output layer)``, see
    :func:`training_head`) the output layer runs on those positions only; otherwise the
    model's full logits are sliced."""
    if head is not None:
        decoder, out_layer = head
        return out_layer(decoder(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1][sel])
    return model(input_ids=ids, attention_mask=att).logits[:, :-1][sel]


#: response positions per chunk of the output layer + cross-entropy in training (each chunk's
#: logits are recomputed in the backward pass instead of kept: chunk x vocabulary floats)
LOSS_CHUNK_POSITIONS = 1024


def response_loss(model: Any, ids: Any, att: Any, sel: Any, targets: Any, head: Any = None,
                  chunk: int = LOSS_CHUNK_POSITIONS) -> Any:
    """Mean next-token cross-entropy over the positions where ``sel`` is true (``targets``:
    the tokens there), the same value as ``cross_entropy(response_logits(...), targets)``.

    With ``head`` (a verified ``(decoder, output layer)``, see :func:`training_head`) the
    output layer and the loss run in chunks of ``chunk`` positions under activation
    checkpointing, so that at most one chunk's logits (chunk x vocabulary, float32) are in
    memory, not all of them plus their log-softmax and gradient (about 2.4 GB for 8 x 512
    response tokens and a 49k vocabulary)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    if head is None:
        return F.cross_entropy(response_logits(model, ids, att, sel).float(), targets)
    decoder, out_layer = head
    hidden = decoder(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1][sel]

    def chunk_sum(h, t):
        return F.cross_entropy(out_layer(h).float(), t, reduction="sum")

    n = hidden.shape[0]
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        h, t = hidden[s:s + chunk], targets[s:s + chunk]
        total = total + (checkpoint(chunk_sum, h, t, use_reentrant=False) if torch.is_grad_enabled()
                         else chunk_sum(h, t))
    return total / max(n, 1)


def _set_checkpointing(model: Any, on: bool) -> None:
    """Turn activation (gradient) checkpointing on or off, non-reentrant, across transformers
    versions (``activation_checkpointing_*`` from v5.2x, ``gradient_checkpointing_*`` before)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def finetune_lora(model_name_or_path: Any, examples: Sequence[Example], *, steps: int | None = None,
                  epochs: float = 1.0, lr: float = 2e-4, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                  batch_size: int = 8, max_length: int = 1024, seed: int = 0, out_dir: str | os.PathLike,
                  gguf_file: str | None = None, progress: bool = True, tokenizer=None,
                  target_modules: Sequence[str] | None = None, device: str = "auto",
                  warmup_ratio: float = 0.03, weight_decay: float = 0.0, grad_clip: float = 1.0,
                  save_optimizer_state: bool = False, gradient_checkpointing: bool = False,
                  dtype: str = "float32", resume: bool = False) -> Path:
    """Fine-tune a LoRA adapter on ``examples`` and save it to ``out_dir``; returns that path.

    ``model_name_or_path``: ``"default"``, a hub id, a local path or ``.gguf`` file, or an
    already loaded ``PreTrainedModel`` (then pass ``tokenizer``; the model is returned to its
    original state afterwards: LoRA layers removed, weights untouched, eval mode).
    Training: AdamW, linear warm-up (``warmup_ratio``) then linear decay, batches of
    ``batch_size`` rows in a seeded shuffle, loss = mean NLL over the batch's response tokens.
    Runs ``steps`` optimizer steps if given, else ``epochs`` passes over the examples.
    ``out_dir`` also gets ``train_log.json`` (settings, per-step loss, time) and, with
    ``save_optimizer_state``, ``optimizer_state.safetensors``: AdamW's first and second moments
    per LoRA weight (``<parameter name>.exp_avg`` / ``.exp_avg_sq``; betas and step in the
    metadata), used by LESS's Adam-preconditioned gradients.

    Memory: the output layer runs only on response positions where the architecture allows
    (no batch x length x vocabulary logits); ``gradient_checkpointing`` recomputes each
    layer's activations in the backward pass instead of keeping them (about a third more
    compute, activation memory of one layer instead of all; same numbers).
    ``dtype="bfloat16"`` runs the forward pass under bfloat16 autocast (weights, LoRA
    parameters, optimizer state and the loss stay float32); ``"float32"`` (default) does not
    (a bfloat16/float16 model on a GPU is autocast either way).

    ``resume=True``: when ``out_dir`` already holds a finished adapter (see
    :func:`adapter_ready`) whose ``train_log.json`` records the same settings and the same
    examples (:func:`training_settings`: every argument that changes the weights, the base
    model, and :func:`examples_digest` of ``examples``), return it without training: a run
    killed after a fine-tune but before its scoring finished does not train again.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from .features.lm import load_causal_lm, resolve_device, set_cpu_threads, tokenize_examples
    from .features.lm.threads import ThreadRetuner

    if not examples:
        raise ConfigError("fine-tuning needs at least one example")
    if steps is not None and steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if steps is None and not epochs > 0:
        raise ConfigError(f"epochs must be > 0, got {epochs}")
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if batch_size < 1 or r < 1 or lr <= 0:
        raise ConfigError("batch_size and r must be >= 1 and lr > 0")
    out = Path(out_dir)
    owned = isinstance(model_name_or_path, (str, os.PathLike))
    if owned:
        model_label = str(model_name_or_path)
    else:
        model_label = getattr(getattr(model_name_or_path, "config", None), "_name_or_path",
                              type(model_name_or_path).__name__)
    settings = training_settings(examples, base_model=model_label, gguf_file=gguf_file, steps=steps, epochs=epochs,
                                 lr=lr, r=r, alpha=alpha, dropout=dropout, batch_size=batch_size,
                                 max_length=max_length, seed=seed, target_modules=target_modules,
                                 warmup_ratio=warmup_ratio, weight_decay=weight_decay, grad_clip=grad_clip,
                                 save_optimizer_state=save_optimizer_state, dtype=dtype)
    if resume and adapter_ready(out) and read_train_log(out).get("settings") == settings:
        if progress:
            tqdm.write(f"LoRA fine-tune: reusing the finished adapter in {out} (same settings and examples)")
        return out
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    if owned:
        model, tok = load_causal_lm(str(model_name_or_path), gguf_file, device=device,
                                    dtype="float32" if resolve_device(device) == "cpu" else "auto")
    else:
        model, tok = model_name_or_path, tokenizer
        if tok is None:
            raise ConfigError("pass tokenizer= together with a loaded model")
    dev = next(model.parameters()).device
    retune = ThreadRetuner(60.0, cpu=dev.type == "cpu")   # re-chosen every minute of training
    if dev.type == "cpu":
        set_cpu_threads()
        return_freed_memory()      # freed activations go back to the system (see tasksift.memory)
    low_precision = next(model.parameters()).dtype in (torch.float16, torch.bfloat16)

    rendered = tokenize_examples(tok, examples, max_length=max_length, truncation=True)
    usable = [x for x in rendered if x.status == 0]
    if not usable:
        raise ConfigError("no example has a response token to train on")
    n = len(usable)
    per_epoch = math.ceil(n / batch_size)
    total = int(steps) if steps is not None else max(1, int(math.ceil(epochs * per_epoch)))

    lcfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", task_type="CAUSAL_LM",
                      target_modules=_pick_target_modules(model, target_modules))
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    peft_model = get_peft_model(model, lcfg)
    peft_model.train()
    if gradient_checkpointing:
        _set_checkpointing(peft_model.get_base_model(), True)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(round(warmup_ratio * total))) if warmup_ratio > 0 else 0

    def lr_at(step: int) -> float:
        if warm and step < warm:
            return lr * (step + 1) / warm
        return lr * max(0.0, (total - step) / max(1, total - warm))

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    probe = torch.tensor([usable[0].ids], dtype=torch.long, device=dev)
    head = training_head(peft_model, probe, torch.ones_like(probe))
    order: list[int] = []
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="LoRA fine-tune", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for step in range(total):
            if len(order) < batch_size:
                order.extend(rng.permutation(n).tolist())
            batch = [usable[i] for i in order[:batch_size]]
            del order[:batch_size]
            L = max(len(x.ids) for x in batch)
            ids = torch.full((len(batch), L), pad, dtype=torch.long)
            att = torch.zeros((len(batch), L), dtype=torch.long)
            labels = torch.full((len(batch), L), -100, dtype=torch.long)
            for b, x in enumerate(batch):
                t = torch.tensor(x.ids, dtype=torch.long)
                m = torch.tensor(x.mask, dtype=torch.bool)
                ids[b, :len(t)] = t
                att[b, :len(t)] = 1
                labels[b, :len(t)] = torch.where(m, t, torch.full_like(t, -100))
            ids, att, labels = ids.to(dev), att.to(dev), labels.to(dev)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            shift_labels = labels[:, 1:]
            sel = shift_labels != -100          # only response positions: no full-vocab copies
            autocast = dtype == "bfloat16" or (low_precision and dev.type == "cuda")
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
                loss = response_loss(peft_model, ids, att, sel, shift_labels[sel], head=head)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            retune()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        out.mkdir(parents=True, exist_ok=True)
        peft_model.save_pretrained(str(out))
        if save_optimizer_state:
            _save_optimizer_state(out, peft_model, opt, total)
    finally:
        bar.close()
        if gradient_checkpointing:
            _set_checkpointing(peft_model.get_base_model(), False)
        if not owned:
            peft_model.unload()   # remove LoRA layers, leaving the caller's model as it was
            model.train(was_training)
            for p, flag in zip(model.parameters(), grad_flags):
                p.requires_grad_(flag)
    write_json(out / "train_log.json", {
        "base_model": model_label, "gguf_file": gguf_file, "examples": len(examples),
        "trained_examples": n, "skipped_examples": len(examples) - n,
        "truncated_examples": int(sum(x.truncated for x in usable)),
        "steps": total, "epochs": total / per_epoch, "lr": lr, "r": r, "alpha": alpha,
        "dropout": dropout, "gradient_checkpointing": gradient_checkpointing, "dtype": dtype,
        "output_layer_on_response_only": head is not None,
        "batch_size": batch_size, "max_length": max_length, "seed": seed,
        "warmup_steps": warm, "target_modules": lcfg.target_modules if isinstance(lcfg.target_modules, str)
        else sorted(lcfg.target_modules or []), "loss": losses, "seconds": time.perf_counter() - t0,
        "settings": settings,
    })
    return out


def examples_digest(examples: Sequence[Example]) -> str:
    """SHA-256 of the examples' messages, in order: which rows a fine-tune saw, for
    :func:`finetune_lora`'s ``resume`` (ids alone would miss an edited row)."""
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps(ex.messages, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\x00")
    return h.hexdigest()


def training_settings(examples: Sequence[Example], *, base_model: str, gguf_file: str | None,
                      steps: int | None, epochs: float, lr: float, r: int, alpha: int, dropout: float,
                      batch_size: int, max_length: int, seed: int, target_modules: Sequence[str] | None,
                      warmup_ratio: float, weight_decay: float, grad_clip: float,
                      save_optimizer_state: bool, dtype: str) -> dict[str, Any]:
    """What decides a fine-tune's weights, as ``train_log.json`` records it under ``settings``
    (JSON types, so a log read back compares equal); gradient checkpointing and progress are
    left out (same numbers)."""
    return {"base_model": str(base_model), "gguf_file": gguf_file, "examples": len(examples),
            "examples_digest": examples_digest(examples), "steps": None if steps is None else int(steps),
            "epochs": float(epochs), "lr": float(lr), "r": int(r), "alpha": int(alpha), "dropout": float(dropout),
            "batch_size": int(batch_size), "max_length": int(max_length), "seed": int(seed),
            "target_modules": None if target_modules is None else sorted(target_modules),
            "warmup_ratio": float(warmup_ratio), "weight_decay": float(weight_decay), "grad_clip": float(grad_clip),
            "save_optimizer_state": bool(save_optimizer_state), "dtype": str(dtype)}


def _save_optimizer_state(out: Path, peft_model, opt, step: int) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for name, p in peft_model.named_parameters():
        st = opt.state.get(p)
        if p.requires_grad and st:
            tensors[f"{name}.exp_avg"] = st["exp_avg"].detach().float().cpu().contiguous()
            tensors[f"{name}.exp_avg_sq"] = st["exp_avg_sq"].detach().float().cpu().contiguous()
    b1, b2 = opt.param_groups[0]["betas"]
    save_file(tensors, str(out / "optimizer_state.safetensors"),
              metadata={"beta1": str(b1), "beta2": str(b2), "eps": str(opt.param_groups[0]["eps"]),
                        "step": str(step)})


def adapter_ready(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished adapter (its config and ``train_log.json``)."""
    p = Path(path)
    return (p / "adapter_config.json").is_file() and (p / "train_log.json").is_file()


def publish_adapter(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move an adapter trained into ``tmp`` to ``out`` in one rename; if another run finished
    ``out`` meanwhile, keep that one and drop ``tmp``."""
    import shutil

    if adapter_ready(out):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)


def read_train_log(adapter_dir: str | os.PathLike) -> dict:
    """The ``train_log.json`` written by :func:`finetune_lora` ({} if absent)."""
    p = Path(adapter_dir) / "train_log.json"
    return json.loads(p.read_text()) if p.is_file() else {}
