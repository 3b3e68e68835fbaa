"""Feature store at scale: a 3-row select's peak memory with 1M unrelated rows cached vs an
empty cache, and the time to read N ids out of the big store.

    flock /work/coord/heavy.lock python bench/store.py [--rows 1000000] [--scratch /work/scratch/store]

Builds (once; reused while present) an embedding store of ``--rows`` synthetic 384-d float32
rows under the default embedding model's cache key, written block by block through
:class:`tasksift.store.FeatureStore` (nothing is embedded). Then, each in a fresh process:

* ``read3``: ``FeatureStore.read`` of 3 ids (cold: segments verified) in the big and an empty store;
* ``select``: ``tasksift select --method knn`` of a 3-row pool (the 3 rows are embedded and
  written into the store) with ``--cache-dir`` the big store vs an empty one;
* ``read N``: median seconds of 3 fresh reads of N random ids of the big store (cold: the
  segments touched are checksummed first) and again in the same process (warm).

Peak RSS is the child's ``ru_maxrss``. Prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DIM = 384
BLOCK = 1024


def build(root: Path, rows: int) -> float:
    import numpy as np

    from tasksift.features.embed import EmbedConfig
    from tasksift.store import FeatureStore

    st = FeatureStore(root, "embed", EmbedConfig().cache_key())
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    for s in range(0, rows, BLOCK):
        n = min(BLOCK, rows - s)
        x = rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        st.write([f"synthetic{i:08d}:text" for i in range(s, s + n)], {"values": x})
    return time.perf_counter() - t


CHILD_READ = """
import json, sys, time
sys.path.insert(0, {src!r})
import numpy as np
from tasksift.features.embed import EmbedConfig
from tasksift.store import FeatureStore
from tasksift.store import store as store_mod
root, n, rows, reps = {root!r}, {n}, {rows}, {reps}
rng = np.random.default_rng(1)
cold, warm = [], []
for _ in range(reps):
    ids = [f"synthetic{{i:08d}}:text" for i in rng.choice(rows, size=min(n, rows), replace=False)] if rows else []
    store_mod._VERIFIED.clear()
    st = FeatureStore(root, "embed", EmbedConfig().cache_key())
    t = time.perf_counter(); st.missing(ids); out = st.read(ids) if ids else {{}}; cold.append(time.perf_counter() - t)
    t = time.perf_counter(); st.read(ids) if ids else None; warm.append(time.perf_counter() - t)
print(json.dumps({{"cold": cold, "warm": warm, "segments": st.segments_read}}))
"""


def child_rss(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd`` and return (stdout, its peak RSS in MB) via wait4."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"})
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"child failed ({status}): {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return out.decode(), usage.ru_maxrss / 1024


def read_child(root: Path, n: int, rows: int, reps: int) -> tuple[dict, float]:
    code = CHILD_READ.format(src=str(ROOT / "src"), root=str(root), n=n, rows=rows, reps=reps)
    out, rss = child_rss([sys.executable, "-c", code])
    return json.loads(out.strip().splitlines()[-1]), rss


def select_child(cache: Path, scratch: Path) -> float:
    pool, target = scratch / "pool3.jsonl", scratch / "target2.jsonl"
    rows = [{"instruction": f"How do I bake bread number {i}?", "output": f"Knead, rise, bake {i}."} for i in range(3)]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    target.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    out = scratch / f"out-{cache.name}.jsonl"
    _, rss = child_rss([sys.executable, "-m", "tasksift.cli", "select", "--pool", str(pool), "--target", str(target),
                        "--method", "knn", "--count", "1", "--out", str(out), "--cache-dir", str(cache),
                        "--no-progress"])
    return rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--scratch", default="/work/scratch/store")
    ap.add_argument("--keep", action="store_true", help="keep the big store for the next run")
    args = ap.parse_args()
    scratch = Path(args.scratch)
    big, empty = scratch / f"big-{args.rows}", scratch / "empty"
    scratch.mkdir(parents=True, exist_ok=True)
    built = None
    if not (big / ".built").exists():
        shutil.rmtree(big, ignore_errors=True)
        built = build(big, args.rows)
        (big / ".built").write_text(str(built))
    size_mb = sum(f.stat().st_size for f in big.rglob("*") if f.is_file()) / 2**20
    table = []
    for label, root, rows in (("empty store", empty, 0), (f"{args.rows:,} rows", big, args.rows)):
        shutil.rmtree(empty, ignore_errors=True)
        r, rss = read_child(root, 3, rows, 1)
        table.append((f"read 3 ids, {label}", rss, statistics.median(r["cold"]) if rows else float("nan")))
    for label, cache in (("empty cache", empty), (f"{args.rows:,} unrelated rows cached", big)):
        shutil.rmtree(empty, ignore_errors=True)
        table.append((f"select knn, 3-row pool, {label}", select_child(cache, scratch), float("nan")))
    reads = []
    for n in (3, 1000, 100_000):
        r, rss = read_child(big, n, args.rows, 3)
        reads.append((n, statistics.median(r["cold"]), statistics.median(r["warm"]), rss))
    print(f"\nstore: {args.rows:,} rows x {DIM} float32 in {BLOCK}-row segments, {size_mb:,.0f} MB on disk"
          + (f", built in {built:.0f} s" if built else ""))
    print("\n| run | peak RSS (MB) |\n|---|---:|")
    for name, rss, _ in table:
        print(f"| {name} | {rss:.0f} |")
    print(f"\n| ids read from the {args.rows:,}-row store | cold (s, median of 3) | warm (s) | peak RSS (MB) |")
    print("|---:|---:|---:|---:|")
    for n, cold, warm, rss in reads:
        print(f"| {n:,} | {cold:.4f} | {warm:.4f} | {rss:.0f} |")
    if not args.keep:
        shutil.rmtree(big, ignore_errors=True)


if __name__ == "__main__":
    main()
