"""``less``: LESS-style gradient similarity (Xia et al. 2024, "LESS: Selecting Influential Data
for Targeted Instruction Tuning").

1. **Warm-up checkpoint.** With peft's default LoRA init (B = 0) the gradient w.r.t. A is
   zero, so LESS first trains LoRA briefly on a random sample of the pool and takes gradients
   there. Here: ``warmup_adapter`` (a user-supplied PEFT adapter folder) or, by default, a LoRA
   fine-tune of the base model made with :func:`tasksift.finetune.finetune_lora` on a seeded
   random sample of ``warmup_sample`` of the pool (a fraction < 1, or a row count; default 5%
   as in the paper, at most ``warmup_max_rows`` = 1000), ``warmup_epochs`` 1 (the paper: 4;
   or ``warmup_steps``), lr 2e-4, LoRA r 8 / alpha 16 on ``q_proj,v_proj``, batch 8. It is
   cached under ``<cache>/less-warmup/<key>`` with its AdamW moments. The manifest
   (``info["warmup"]``) records which was used. ``warmup_gradient_checkpointing`` ("auto" =
   on when the model is on the CPU) recomputes activations in the backward pass (same
   numbers, ~1/3 more compute): 8 rows of ~470 tokens peaked at 4.4 GB RSS with it, over
   8.3 GB without.
2. **Gradient features** (:mod:`tasksift.features.grads`): per-example gradients of the LoRA
   weights, computed batched (one forward and one backward per batch; per-example weight
   gradients from layer inputs and output gradients captured by hooks, equivalent to
   ``torch.func.vmap(grad)``), randomly projected to ``proj_dim`` (8192) dimensions
   (``rademacher`` or ``gaussian``, generated block-wise from ``proj_seed``, float32 BLAS per
   block summed in float64; or the much cheaper ``countsketch``), cached per example. Gradient
   rows are buffered (``proj_buffer_mb``, 512 MB = 291 rows of the default model's 460,800
   LoRA parameters; at most ``flush_every`` = 256 rows per cache shard) and projected
   together, so the matrix is generated once per buffer: ~0.14 s/row on one CPU core at 256
   rows (0.8 s/row before).
   Targets always use the plain (SGD) gradient, as in LESS. Candidates use
   ``candidate_grad``: ``"adam"`` = LESS's Adam-preconditioned gradient from the warm-up's
   optimizer state, ``"sgd"`` = the plain gradient, ``"auto"`` (default) = adam when the
   optimizer state is there (always for the warm-up made here; a user adapter only if its
   folder holds ``optimizer_state.safetensors``), else sgd.
3. **Score** = cosine similarity of a candidate's (unit-normalised) feature to the targets',
   aggregated by ``aggregate``: ``"max"`` (default) over target examples, or ``"mean"``
   (LESS's per-task average). Top-k, never an unscorable row, optionally per group.

Differences from the paper, on purpose: one warm-up checkpoint instead of the
learning-rate-weighted sum over the checkpoints of every warm-up epoch; LoRA r 8 on q/v of the
small default model instead of r 128; max length 512 tokens.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..features.lm_select import cache_dir_for, group_labels, select_top
from .base import MethodResult, SelectionContext, SelectionMethod
from .lm_options import GROUP_PARAMETERS, LM_PARAMETERS
from .params import Choices, Interval, Option, PathLike
from .registry import register

LESS_PARAMETERS: dict[str, Option] = {
    "max_length": Option(512, "tokens per example (LESS used 2048; a gradient costs ~3x a loss)", Interval(int, 1)),
    "warmup_adapter": Option(None, "a PEFT LoRA adapter folder to take gradients at (skips the warm-up)", PathLike(), None),
    "warmup_sample": Option(0.05, "pool rows for the warm-up: a fraction (< 1) or a count",
                            Interval(float, 0, None, "neither")),
    "warmup_max_rows": Option(1000, "at most this many warm-up rows", Interval(int, 1)),
    "warmup_epochs": Option(1.0, "epochs of the warm-up", Interval(float, 0, None, "neither")),
    "warmup_steps": Option(None, "optimizer steps of the warm-up (overrides warmup_epochs)", Interval(int, 1), None),
    "warmup_lr": Option(2e-4, "learning rate of the warm-up", Interval(float, 0, None, "neither")),
    "warmup_batch_size": Option(8, "rows per warm-up batch", Interval(int, 1)),
    "warmup_gradient_checkpointing": Option("auto", "recompute activations in the warm-up's backward "
                                            "('auto': on for CPU, off for GPU)", Choices("auto"), bool),
    "lora_r": Option(8, "LoRA rank", Interval(int, 1)),
    "lora_alpha": Option(16, "LoRA alpha", Interval(int, 1)),
    "lora_modules": Option("q_proj,v_proj", "modules given LoRA weights (comma-separated or a list)", str, list),
    "candidate_grad": Option("auto", "pool-row gradient: Adam-preconditioned or plain SGD (targets: always SGD)",
                             Choices("auto", "adam", "sgd")),
    "proj_dim": Option(8192, "dimension of the random projection", Interval(int, 1)),
    "proj_type": Option("rademacher", "random projection kind (countsketch is fast on CPU)",
                        Choices("rademacher", "gaussian", "countsketch")),
    "proj_seed": Option(0, "seed of the projection", Interval(int, 0)),
    "proj_batch": Option(None, "rows projected together (null: as many as fit in proj_buffer_mb)",
                         Interval(int, 1), None),
    "proj_buffer_mb": Option(512, "MB of gradient rows buffered per projection", Interval(float, 0, None, "neither")),
    "proj_cache_mb": Option(256, "MB of generated projection blocks kept in memory",
                            Interval(float, 0, None, "neither")),
    "aggregate": Option("max", "how the similarities to the target examples combine", Choices("max", "mean")),
    "flush_every": Option(256, "rows per cache shard (resume granularity)", Interval(int, 1)),
}


def _pos_int(c: dict, name: str, allow_none: bool = False) -> None:
    v = c[name]
    if allow_none and v is None:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ConfigError(f"less option {name} must be a positive integer, got {v!r}")


def _pos_float(c: dict, name: str) -> float:
    v = c[name]
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, bool) or not f > 0:
        raise ConfigError(f"less option {name} must be a positive number, got {v!r}")
    return f


def aggregate_similarity(cand: np.ndarray, targ: np.ndarray, how: str = "max", chunk: int = 8192) -> np.ndarray:
    """max (or mean) over target rows of the cosine similarity of each candidate row (both
    unit-normalised; NaN candidate rows give NaN; NaN target rows are ignored)."""
    targ = targ[np.all(np.isfinite(targ), axis=1)]
    out = np.full(len(cand), np.nan)
    if len(targ) == 0:
        return out
    t = targ.astype(np.float32)
    for s in range(0, len(cand), chunk):
        sim = cand[s:s + chunk].astype(np.float32) @ t.T
        out[s:s + chunk] = sim.max(axis=1) if how == "max" else sim.mean(axis=1, dtype=np.float64)
    return out


@register("less", description="LESS: cosine similarity of randomly projected LoRA gradients (after a short "
          "LoRA warm-up) to the target examples' gradients, top-k", needs=("lm", "gradients"),
          cost="expensive", stochastic=True,
          survey=dict(llms_trained=1, steps=4, model_dependent=True, dataset_dependent=True))
class LESSSelection(SelectionMethod):
    parameters = {**LM_PARAMETERS, **GROUP_PARAMETERS, **LESS_PARAMETERS}

    # -- options ---------------------------------------------------------------------------
    def _validate(self) -> None:
        c = self.config
        for name in ("warmup_max_rows", "warmup_batch_size", "lora_r", "lora_alpha", "proj_dim",
                     "flush_every", "max_length"):
            _pos_int(c, name)
        _pos_int(c, "warmup_steps", allow_none=True)
        _pos_int(c, "proj_batch", allow_none=True)
        for name in ("warmup_sample", "warmup_epochs", "warmup_lr", "proj_cache_mb", "proj_buffer_mb"):
            _pos_float(c, name)
        wgc = c["warmup_gradient_checkpointing"]
        if not (wgc == "auto" or isinstance(wgc, bool)):
            raise ConfigError(f"less option warmup_gradient_checkpointing must be 'auto', true or false, "
                              f"got {c['warmup_gradient_checkpointing']!r}")
        if not isinstance(c["proj_seed"], int) or isinstance(c["proj_seed"], bool) or c["proj_seed"] < 0:
            raise ConfigError(f"less option proj_seed must be a non-negative integer, got {c['proj_seed']!r}")
        if c["proj_type"] not in ("rademacher", "gaussian", "countsketch"):
            raise ConfigError(f"less option proj_type must be 'rademacher', 'gaussian' or 'countsketch', "
                              f"got {c['proj_type']!r}")
        if c["aggregate"] not in ("max", "mean"):
            raise ConfigError(f"less option aggregate must be 'max' or 'mean', got {c['aggregate']!r}")
        if c["candidate_grad"] not in ("auto", "adam", "sgd"):
            raise ConfigError(f"less option candidate_grad must be 'auto', 'adam' or 'sgd', got {c['candidate_grad']!r}")
        if c["warmup_adapter"] and not (Path(str(c["warmup_adapter"])) / "adapter_config.json").is_file():
            raise ConfigError(f"less option warmup_adapter '{c['warmup_adapter']}' not found (no adapter_config.json)")
        mods = c["lora_modules"]
        if isinstance(mods, str):
            mods = [m.strip() for m in mods.split(",") if m.strip()]
        if not isinstance(mods, (list, tuple)) or not mods or not all(isinstance(m, str) for m in mods):
            raise ConfigError(f"less option lora_modules must be a comma-separated list of module names, got {c['lora_modules']!r}")
        self._modules = list(mods)

    # -- warm-up ---------------------------------------------------------------------------
    def _warmup(self, ctx: SelectionContext, base_fp: str, loader, cache_dir) -> tuple[str, dict]:
        from ..store import default_cache_root
        from ..finetune import adapter_ready, finetune_lora, publish_adapter, read_train_log

        c = self.config
        if c["warmup_adapter"]:
            a = str(c["warmup_adapter"])
            return a, {"kind": "user_adapter", "adapter": a,
                       "optimizer_state": (Path(a) / "optimizer_state.safetensors").is_file()}
        n = len(ctx.pool)
        frac = float(c["warmup_sample"])
        m = int(round(frac * n)) if frac < 1 else int(frac)
        m = max(1, min(m, int(c["warmup_max_rows"]), n))
        rng = np.random.default_rng(ctx.seed)
        sample = np.sort(rng.choice(n, size=m, replace=False))
        examples = [ctx.pool[i] for i in sample]
        hp = {"base": base_fp, "ids": hashlib.sha1("\n".join(sorted(ex.id for ex in examples)).encode()).hexdigest(),
              "epochs": c["warmup_epochs"], "steps": c["warmup_steps"], "lr": c["warmup_lr"], "r": c["lora_r"],
              "alpha": c["lora_alpha"], "modules": self._modules, "batch_size": c["warmup_batch_size"],
              "max_length": c["max_length"], "seed": ctx.seed, "dtype": c["dtype"], "v": 1}
        key = hashlib.sha1(json.dumps(hp, sort_keys=True, default=str).encode()).hexdigest()[:16]
        root = Path(cache_dir) if cache_dir is not None else default_cache_root()
        out = root / "less-warmup" / key
        reused = adapter_ready(out)
        if not reused:
            model, tok = loader()
            ckpt = c["warmup_gradient_checkpointing"]
            if ckpt == "auto":     # CPU runs are memory-bound beside other jobs; GPUs have room
                ckpt = next(model.parameters()).device.type == "cpu"
            tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            with ctx.timed("less_warmup"):
                finetune_lora(model, examples, steps=c["warmup_steps"], epochs=float(c["warmup_epochs"]),
                              lr=float(c["warmup_lr"]), r=c["lora_r"], alpha=c["lora_alpha"],
                              batch_size=c["warmup_batch_size"], max_length=c["max_length"], seed=ctx.seed,
                              out_dir=tmp, tokenizer=tok, progress=ctx.progress, target_modules=self._modules,
                              save_optimizer_state=True, gradient_checkpointing=bool(ckpt))
            publish_adapter(tmp, out)   # another run may have finished the same adapter meanwhile
        log = read_train_log(out)
        losses = log.get("loss", [])
        k = max(1, len(losses) // 10)
        return str(out), {
            "kind": "lora_warmup_here", "adapter": str(out), "reused_cached_adapter": reused,
            "sample_rows": m, "steps": log.get("steps"), "epochs": log.get("epochs"), "lr": c["warmup_lr"],
            "r": c["lora_r"], "alpha": c["lora_alpha"], "target_modules": self._modules,
            "batch_size": c["warmup_batch_size"], "optimizer_state": True,
            "gradient_checkpointing": log.get("gradient_checkpointing"),
            "train_loss_first": float(np.mean(losses[:k])) if losses else None,
            "train_loss_last": float(np.mean(losses[-k:])) if losses else None,
            "seconds": log.get("seconds"),
            "note": "gradients taken at a LoRA warm-up on a seeded random sample of the pool "
                    "(LESS: 5% of the data, 4 epochs, one checkpoint per epoch)"}

    # -- selection -------------------------------------------------------------------------
    def select(self, ctx: SelectionContext, k: int) -> MethodResult:
        from ..features.grads import OPTIMIZER_STATE_FILE, GradConfig, GradScorer
        from ..features.lm import load_causal_lm, load_tokenizer, model_fingerprint

        self._validate()
        c = self.config
        groups = group_labels(ctx.pool, c["group_by"])
        cache_dir = cache_dir_for(ctx, c)
        base_fp = model_fingerprint(c["model"], c["gguf_file"])
        loaded: dict[str, Any] = {}

        def loader():
            if "model" not in loaded:
                t = time.perf_counter()
                loaded["model"], loaded["tok"] = load_causal_lm(c["model"], c["gguf_file"], c["device"], c["dtype"])
                loaded["seconds"] = time.perf_counter() - t
                ctx.timings["less_load"] = ctx.timings.get("less_load", 0.0) + loaded["seconds"]
            return loaded["model"], loaded["tok"]

        tok = load_tokenizer(c["model"], c["gguf_file"])
        adapter, warm_info = self._warmup(ctx, base_fp, loader, cache_dir)
        has_state = (Path(adapter) / OPTIMIZER_STATE_FILE).is_file()
        cand_grad = c["candidate_grad"]
        if cand_grad == "auto":
            cand_grad = "adam" if has_state else "sgd"
        elif cand_grad == "adam" and not has_state:
            raise ConfigError(f"less option candidate_grad=adam needs the warm-up's optimizer state "
                              f"({OPTIMIZER_STATE_FILE}), absent in {adapter}")

        def scorer(grad_type: str) -> GradScorer:
            cfg = GradConfig(model=c["model"], gguf_file=c["gguf_file"], adapter=adapter, max_length=c["max_length"],
                             truncation=c["truncation"], grad_type=grad_type, proj_dim=c["proj_dim"],
                             proj_type=c["proj_type"], proj_seed=c["proj_seed"], batch_tokens=c["batch_tokens"],
                             proj_batch=c["proj_batch"], proj_buffer_mb=float(c["proj_buffer_mb"]),
                             proj_cache_mb=float(c["proj_cache_mb"]), device=c["device"],
                             dtype=c["dtype"])
            return GradScorer(cfg, cache_dir=cache_dir, progress=ctx.progress, tokenizer=tok, fingerprint=base_fp,
                              model_factory=lambda: loader()[0], executor=ctx.executor)

        results = {}
        n_params = None
        for which, examples, gt in (("pool", ctx.pool, cand_grad), ("target", ctx.target, "sgd")):
            sc = scorer(gt)
            loader_before = loaded.get("seconds", 0.0)
            try:
                with ctx.timed(f"less_grads_{which}"):
                    results[which] = sc.features(examples, flush_every=c["flush_every"],
                                                 desc=f"LESS gradients ({which})")
                n_params = results[which].info.get("lora_params", n_params)
            finally:
                sc.close()
            if sc.load_seconds:     # model loading and adapter set-up are not gradient time
                ctx.timings[f"less_grads_{which}"] -= sc.load_seconds
                setup = sc.load_seconds - (loaded.get("seconds", 0.0) - loader_before)
                ctx.timings["less_load"] = ctx.timings.get("less_load", 0.0) + max(0.0, setup)
        pool_g, targ_g = results["pool"], results["target"]
        usable_targets = int(np.isfinite(targ_g.features).all(axis=1).sum())
        if usable_targets == 0:
            raise ConfigError("no target example has a response token to take a gradient of "
                              f"({targ_g.info['unscorable']['by_reason']})")
        with ctx.timed("less_select"):
            scores = aggregate_similarity(pool_g.normalized(), targ_g.normalized(), c["aggregate"])
            eligible = np.isfinite(scores)
            idx, sel_info = select_top(scores, k, eligible, groups, c["quotas"])
        info = {
            "score": f"{c['aggregate']} over target examples of cos(projected candidate gradient, projected target "
                     "gradient)",
            "warmup": warm_info,
            "candidate_grad": cand_grad, "target_grad": "sgd",
            "per_example_gradients": "batched: one forward+backward per batch, per-example LoRA weight gradients "
                                     "from hooked layer inputs and output gradients",
            "projection": {"type": c["proj_type"], "dim": c["proj_dim"], "seed": c["proj_seed"],
                           "lora_params": n_params},
            "pool_grads": {k2: v for k2, v in pool_g.info.items() if k2 != "unscorable"},
            "target_grads": {k2: v for k2, v in targ_g.info.items() if k2 != "unscorable"},
            "unscorable": pool_g.info["unscorable"],
            "target_unscorable": targ_g.info["unscorable"]["count"],
            **sel_info,
        }
        fin = scores[np.isfinite(scores)]
        if len(fin):
            info["score_quantiles"] = {q: float(np.quantile(fin, float(q))) for q in ("0.1", "0.5", "0.9")}
        return MethodResult(indices=idx, scores=scores, info=info,
                            columns={"less_score": scores, "grad_norm": pool_g.grad_norm})
