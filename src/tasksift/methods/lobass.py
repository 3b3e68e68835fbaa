"""``lobass``: learnability-based selection (LoBaSS / DavIR, Zhou et al. 2023/2024).

For every pool row, with L the mean response-token NLL:

    S = (L_base - L_ref) / L_base = 1 - L_ref / L_base

``base`` is the model to be fine-tuned; ``ref`` is that model after fine-tuning on the pool.
Rows the base already knows (both losses low) and rows too hard to learn (both high) get a
low S; rows whose loss falls a lot relative to where it started get a high S. The top-k by S
are kept (optionally per group, as the paper keeps chat and math data with quotas).

The reference model comes from, in order of precedence:

* ``ref_model``: a user-supplied fine-tuned model (hub id, folder or .gguf), optionally with
  ``ref_adapter`` on top;
* ``ref_adapter``: a user-supplied PEFT adapter folder applied to the base model;
* otherwise a LoRA fine-tune of the base made here (the paper fine-tunes on the full pool;
  this cheaper default is explicit): ``ref_sample`` rows (default 1000) drawn from the pool
  with the run's seed, ``ref_epochs`` epochs (default 1; or ``ref_steps`` optimizer steps),
  lr ``ref_lr`` 2e-4, LoRA r 8 / alpha 16, batch 8, max length ``ref_max_length`` 512,
  activation checkpointing on CPU (``ref_gradient_checkpointing`` "auto"; batch 8 x 512 tokens
  otherwise holds ~15 GB of activations for the 135M default).
  The adapter is cached under ``<cache>/lobass-ref/<key>`` and reused by later runs.

The manifest (``info["reference"]``) records which of the three was used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..features.lm import LMConfig, apply_adapter, lm_losses, model_fingerprint
from ..features.lm_select import cache_dir_for, group_labels, select_top
from .base import MethodResult, SelectionContext, SelectionMethod
from .lm_options import GROUP_PARAMETERS, LM_PARAMETERS
from .params import Choices, Interval, Option, PathLike
from .registry import register

REF_PARAMETERS: dict[str, Option] = {
    "ref_model": Option(None, "a fine-tuned model (hub id, folder or .gguf) to use as the reference", PathLike(), None),
    "ref_gguf_file": Option(None, "GGUF file inside the ref_model folder", PathLike(), None),
    "ref_adapter": Option(None, "a PEFT adapter folder for the reference (on the base, or on ref_model)", PathLike(), None),
    "ref_sample": Option(1000, "pool rows the reference LoRA is trained on", Interval(int, 1)),
    "ref_epochs": Option(1.0, "epochs of the reference fine-tune", Interval(float, 0, None, "neither")),
    "ref_steps": Option(None, "optimizer steps of the fine-tune (overrides ref_epochs)", Interval(int, 1), None),
    "ref_lr": Option(2e-4, "learning rate of the fine-tune", Interval(float, 0, None, "neither")),
    "ref_r": Option(8, "LoRA rank", Interval(int, 1)),
    "ref_alpha": Option(16, "LoRA alpha", Interval(int, 1)),
    "ref_batch_size": Option(8, "rows per fine-tune batch", Interval(int, 1)),
    "ref_max_length": Option(512, "tokens per row in the fine-tune", Interval(int, 1)),
    "ref_gradient_checkpointing": Option("auto", "recompute activations in the fine-tune's backward "
                                         "('auto': on for CPU, to save memory)", Choices("auto"), bool),
}


def learnability(loss_base: np.ndarray, loss_ref: np.ndarray) -> np.ndarray:
    """S = 1 - L_ref / L_base; NaN where either loss is missing or L_base <= 0."""
    lb = np.asarray(loss_base, dtype=np.float64)
    lr = np.asarray(loss_ref, dtype=np.float64)
    out = np.full(lb.shape, np.nan)
    ok = np.isfinite(lb) & np.isfinite(lr) & (lb > 0)
    out[ok] = 1.0 - lr[ok] / lb[ok]
    return out


@register("lobass", description="learnability 1 - L_ref/L_base of base vs a pool-fine-tuned reference "
          "(LoBaSS/DavIR), top-k", needs=("lm",), cost="expensive", stochastic=True,
          survey=dict(llms_trained=1, steps=4, model_dependent=True, dataset_dependent=True))
class LoBaSSSelection(SelectionMethod):
    parameters = {**LM_PARAMETERS, **GROUP_PARAMETERS, **REF_PARAMETERS}

    def _reference(self, ctx: SelectionContext, base_cfg: LMConfig, base_scorer, cache_dir) -> tuple[LMConfig, Any, dict]:
        """(ref LMConfig, model factory or None, manifest info)."""
        c = self.config
        if c["ref_model"]:
            cfg = LMConfig.from_options(c, model=c["ref_model"], gguf_file=c["ref_gguf_file"],
                                        adapter=c["ref_adapter"])
            return cfg, None, {"kind": "user_model", "model": str(c["ref_model"]), "adapter": c["ref_adapter"]}
        if c["ref_adapter"]:
            if not (Path(c["ref_adapter"]) / "adapter_config.json").is_file():
                raise ConfigError(f"ref_adapter '{c['ref_adapter']}' not found (no adapter_config.json)")
            cfg = LMConfig.from_options(c, adapter=str(c["ref_adapter"]))
            return cfg, self._factory(base_scorer, str(c["ref_adapter"])), {
                "kind": "user_adapter", "adapter": str(c["ref_adapter"])}
        return self._finetune_reference(ctx, base_cfg, base_scorer, cache_dir)

    @staticmethod
    def _factory(base_scorer, adapter: str):
        # The base losses are computed before the reference is needed, so the loaded base
        # model can take the adapter in place (no second 25 s load).
        return lambda: apply_adapter(base_scorer.model, adapter, merge=True)

    def _finetune_reference(self, ctx: SelectionContext, base_cfg: LMConfig, base_scorer, cache_dir):
        from ..store import default_cache_root
        from ..finetune import adapter_ready, finetune_lora, publish_adapter, read_train_log

        c = self.config
        for name in ("ref_sample", "ref_r", "ref_alpha", "ref_batch_size", "ref_max_length"):
            if not isinstance(c[name], int) or c[name] < 1:
                raise ConfigError(f"lobass option {name} must be a positive integer, got {c[name]!r}")
        if c["ref_steps"] is not None and (not isinstance(c["ref_steps"], int) or c["ref_steps"] < 1):
            raise ConfigError(f"lobass option ref_steps must be a positive integer, got {c['ref_steps']!r}")
        ckpt = c["ref_gradient_checkpointing"]
        if not (ckpt == "auto" or isinstance(ckpt, bool)):
            raise ConfigError(f"lobass option ref_gradient_checkpointing must be 'auto', true or false, got {ckpt!r}")
        if ckpt == "auto":
            ckpt = next(base_scorer.model.parameters()).device.type == "cpu"
        n = len(ctx.pool)
        m = min(int(c["ref_sample"]), n)
        rng = np.random.default_rng(ctx.seed)
        sample = np.sort(rng.choice(n, size=m, replace=False))
        examples = [ctx.pool[i] for i in sample]
        hp = {"base": base_scorer.fingerprint, "ids": hashlib.sha1(
                  "\n".join(sorted(ex.id for ex in examples)).encode()).hexdigest(),
              "epochs": c["ref_epochs"], "steps": c["ref_steps"], "lr": c["ref_lr"], "r": c["ref_r"],
              "alpha": c["ref_alpha"], "batch_size": c["ref_batch_size"], "max_length": c["ref_max_length"],
              "seed": ctx.seed, "dtype": base_cfg.dtype, "v": 1}
        key = hashlib.sha1(json.dumps(hp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir is not None else default_cache_root()
        out = root / "lobass-ref" / key
        reused = adapter_ready(out)
        if not reused:
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            with ctx.timed("lobass_ref_finetune"):
                finetune_lora(base_scorer.model, examples, steps=c["ref_steps"], epochs=c["ref_epochs"],
                              lr=c["ref_lr"], r=c["ref_r"], alpha=c["ref_alpha"],
                              batch_size=c["ref_batch_size"], max_length=c["ref_max_length"],
                              seed=ctx.seed, out_dir=tmp, tokenizer=base_scorer.tokenizer,
                              progress=ctx.progress, gradient_checkpointing=bool(ckpt))
            publish_adapter(tmp, out)   # another run may have finished the same adapter meanwhile
        log = read_train_log(out)
        losses = log.get("loss", [])
        k = max(1, len(losses) // 10)
        info = {"kind": "lora_finetuned_here", "adapter": str(out), "reused_cached_adapter": reused,
                "sample_rows": m, "steps": log.get("steps"), "epochs": log.get("epochs"),
                "lr": c["ref_lr"], "r": c["ref_r"], "alpha": c["ref_alpha"],
                "batch_size": c["ref_batch_size"], "max_length": c["ref_max_length"],
                "gradient_checkpointing": log.get("gradient_checkpointing"),
                "train_loss_first": float(np.mean(losses[:k])) if losses else None,
                "train_loss_last": float(np.mean(losses[-k:])) if losses else None,
                "seconds": log.get("seconds"),
                "note": "reference = base + LoRA trained on a seeded random sample of the pool "
                        "(the paper fine-tunes on the full pool)"}
        cfg = LMConfig.from_options(c, adapter=str(out))
        return cfg, self._factory(base_scorer, str(out)), info

    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        c = self.config
        groups = group_labels(ctx.pool, c["group_by"])
        cache_dir = cache_dir_for(ctx, c)
        base_cfg = LMConfig.from_options(c)
        base = lm_losses(ctx, ctx.pool, base_cfg, stage="lm_base_loss", cache_dir=cache_dir)
        ref_cfg, factory, ref_info = self._reference(ctx, base_cfg, base.scorer, cache_dir)
        tok = base.scorer.tokenizer if ref_cfg.model == base_cfg.model else None
        fp = None
        if factory is not None:
            fp = model_fingerprint(ref_cfg.model, ref_cfg.gguf_file, ref_cfg.adapter)
        ref = lm_losses(ctx, ctx.pool, ref_cfg, stage="lm_ref_loss", cache_dir=cache_dir,
                        tokenizer=tok, model_factory=factory, fingerprint=fp)
        with ctx.timed("lobass_select"):
            scores = learnability(base.loss, ref.loss)
            eligible = np.isfinite(scores)
            idx, sel_info = select_top(scores, k, eligible, groups, c["quotas"])
        info = {
            "score": "S = 1 - L_ref / L_base (mean response-token NLL)",
            "reference": ref_info,
            "base": {k2: v for k2, v in base.info.items() if k2 != "unscorable"},
            "ref": {k2: v for k2, v in ref.info.items() if k2 != "unscorable"},
            "unscorable": {"count": int((~eligible).sum()),
                           "base": base.info["unscorable"], "ref": ref.info["unscorable"]},
            "n_truncated": int(base.truncated.sum()),
            **sel_info,
        }
        fin = scores[np.isfinite(scores)]
        if len(fin):
            info["score_quantiles"] = {q: float(np.quantile(fin, float(q))) for q in ("0.1", "0.5", "0.9")}
        return MethodResult(indices=idx, scores=scores, info=info,
                            columns={"lobass_score": scores, "loss_base": base.loss, "loss_ref": ref.loss})
