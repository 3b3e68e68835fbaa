"""Embedding throughput: rows/s for N pool rows, cold (empty cache) and cached (second run).

    python bench/embed.py [--rows 10000] [--model default] [--batch-size 64]

Uses a seeded sample of the real pool in ../shared/data/pool when present, else the built-in
demo rows (repeated with numbering to reach --rows). Prints a table.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tasksift.data import load_examples  # noqa: E402
from tasksift.data.example import Example  # noqa: E402
from tasksift.features.embed import EmbedConfig, Embedder  # noqa: E402
from tasksift.manifest import peak_memory_mb  # noqa: E402


def pool_rows(n: int, seed: int) -> tuple[list[Example], str]:
    shared = ROOT.parent / "shared" / "data" / "pool"
    if shared.is_dir():
        d = load_examples(shared)
        rng = random.Random(seed)
        return rng.sample(d.examples, min(n, len(d))), f"real pool sample ({shared})"
    from tasksift.data.demo import demo_rows

    base = demo_rows()
    exs = [Example(messages=[{"role": "user", "content": f"{r['instruction']} (#{i})"},
                             {"role": "assistant", "content": r["output"]}], raw=r, row=i)
           for i, r in enumerate(base * (n // len(base) + 1))][:n]
    return exs, "built-in demo rows (../shared/data absent)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exs, what = pool_rows(args.rows, args.seed)
    chars = sum(len(e.text[:4000]) for e in exs) / len(exs)
    cfg = EmbedConfig(model=args.model, batch_size=args.batch_size, device=args.device)
    with tempfile.TemporaryDirectory() as cache:
        e = Embedder(cfg, cache_dir=cache, progress=True)
        _ = e.model  # load outside the timing
        t = time.perf_counter()
        emb = e.embed(exs)
        cold = time.perf_counter() - t
        e2 = Embedder(cfg, cache_dir=cache, progress=False)
        t = time.perf_counter()
        emb2 = e2.embed(exs)
        warm = time.perf_counter() - t
        assert (emb == emb2).all()
    print(f"\nembedding {len(exs)} rows of {what}; mean {chars:.0f} chars/row; model {args.model}; "
          f"dim {emb.shape[1]}; batch {args.batch_size}; device {cfg.device}")
    print(f"| run | seconds | rows/s |\n|---|---:|---:|")
    print(f"| cold (empty cache) | {cold:.1f} | {len(exs) / cold:,.0f} |")
    print(f"| cached (second run) | {warm:.2f} | {len(exs) / warm:,.0f} |")
    print(f"peak RSS {peak_memory_mb():,.0f} MiB")


if __name__ == "__main__":
    main()
