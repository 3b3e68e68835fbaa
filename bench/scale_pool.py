"""Pool-scale benchmark: ``tasksift select`` end to end on generated alpaca pools.

    flock /work/coord/heavy.lock python bench/scale_pool.py [--sizes 1000000,10000000]
        [--methods random,length,dsir[,tsds]] [--formats csv,parquet,json] [--dir /work/scratch/pool]
        [--base /work/scratch/pool/base] [--keep] [--base-max-rows 1000000]

Data: a deterministic generator (``--seed``) writes ``<dir>/alpaca_<N>.jsonl`` (instruction /
input / output rows of words drawn from a Zipf-like vocabulary, ~470 bytes a row) and a
200-row target ``<dir>/target.jsonl`` whose words lean to one slice of the vocabulary; the
files are reused when present and deleted at the end unless ``--keep``.

Each run is a whole process (``python -m tasksift.cli select ... --no-progress``) whose peak
resident memory is its own ``ru_maxrss`` (from ``os.wait4``). A child's ``ru_maxrss`` starts at
its parent's resident size when it is forked, so everything big (generating, converting,
prefilling) runs in child processes and this script stays small; its own RSS at the last fork
is printed under the table. With ``--base`` (a checkout of
today's code, e.g. ``git -C /work/main worktree add /work/scratch/pool/base 70a9998``) the same
command runs with ``PYTHONPATH`` pointing there for pools of at most ``--base-max-rows`` rows,
and the table says whether both wrote the same subset (same ``selected_ids`` in the manifest and
the same rows in ``selected.jsonl`` once the ``tasksift_*`` score and explain columns are set
aside: newer code writes more of those). Goals: random/length <= 600 MB and dsir <= 1.5 GB at 1M
rows; dsir <= 3 GB at 10M rows; tsds <= 3 GB at 1M rows with the embeddings in the store.

``tsds`` measures the select, not the embedding (1M rows of MiniLM take hours on 2 CPUs): a
separate process first fills a fresh ``--cache-dir`` with seeded random unit vectors for every
pool row, written through the store's public API under the embedding featurizer's own store
(``Embedder(cli.embed_config({})).cache``, the key ``select`` uses with default flags) and its
row ids (``Embedder.row_id``). The select then finds the pool cached and embeds only the
200-row target; the table says how many segments the select wrote (1 = the target only).

``--formats`` also writes the first pool size as CSV, Parquet and/or a JSON array (the same
rows, converted a chunk at a time) and runs ``--method random`` on each: the peak memory of
streaming those readers, and whether the selected ids equal the JSONL pool's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHOD_ARGS = {"random": ["--count", "1000"], "length": ["--count", "1000", "-o", "min_words=40"],
               "dsir": ["--count", "10000"], "tsds": ["--count", "1000"]}
GOALS_MB = {(1_000_000, "random"): 600, (1_000_000, "length"): 600, (1_000_000, "dsir"): 1500,
            (10_000_000, "dsir"): 3000, (1_000_000, "tsds"): 3000}


def vocabulary(rng: np.random.Generator, size: int = 20_000) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size)
    return np.array(["".join(rng.choice(letters, n)) for n in lengths], dtype=object)


def write_pool(path: Path, n: int, seed: int) -> None:
    """``n`` alpaca rows, deterministic in ``seed``, written in chunks (atomic rename)."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    p /= p.sum()
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in range(0, n, 50_000):
            m = min(n, s + 50_000) - s
            lens = rng.integers([4, 0, 10], [20, 30, 72], size=(m, 3))
            words = vocab[rng.choice(len(vocab), size=int(lens.sum()), p=p)]
            cuts = np.cumsum(lens.ravel())[:-1]
            parts = np.split(words, cuts)
            lines = []
            for i in range(m):
                ins, inp, out = (" ".join(parts[3 * i + j]) for j in range(3))
                lines.append(json.dumps({"instruction": ins.capitalize() + "?", "input": inp,
                                         "output": out.capitalize() + "."}) + "\n")
            f.write("".join(lines))
    os.replace(tmp, path)


def write_target(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = vocabulary(rng)
    rng2 = np.random.default_rng(seed + 1)
    sl = vocab[1000:1400]   # the task's words: one slice of the pool's vocabulary
    rows = [{"question": " ".join(rng2.choice(sl, 12)) + "?", "answer": " ".join(rng2.choice(sl, 30))}
            for _ in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_formats(jsonl: Path, formats: list[str]) -> list[Path]:
    """The rows of ``jsonl`` also as ``<stem>.csv`` / ``.parquet`` / ``.json`` (one JSON array),
    converted 50,000 rows at a time."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {f: jsonl.with_suffix("." + f) for f in formats}
    tmp = {f: p.with_name(p.name + ".tmp") for f, p in paths.items()}
    files = {f: open(t, "w", encoding="utf-8", newline="") for f, t in tmp.items() if f in ("csv", "json")}
    writer = csv.DictWriter(files["csv"], ["instruction", "input", "output"]) if "csv" in files else None
    if writer:
        writer.writeheader()
    pq_writer = None
    first = True
    with open(jsonl, encoding="utf-8") as f:
        while True:
            lines = [ln for _, ln in zip(range(50_000), f)]
            if not lines:
                break
            rows = [json.loads(ln) for ln in lines]
            if writer:
                writer.writerows(rows)
            if "json" in files:
                files["json"].write(("[\n" if first else ",\n") + ",\n".join(ln.rstrip("\n") for ln in lines))
            if "parquet" in tmp:
                table = pa.Table.from_pylist(rows)
                pq_writer = pq_writer or pq.ParquetWriter(tmp["parquet"], table.schema)
                pq_writer.write_table(table)
            first = False
    if "json" in files:
        files["json"].write("\n]\n")
    for fh in files.values():
        fh.close()
    if pq_writer:
        pq_writer.close()
    for f in formats:
        os.replace(tmp[f], paths[f])
    return [paths[f] for f in formats]


def prefill_embeddings(pool: Path, cache: Path, seed: int) -> None:
    """(Run with the measured source on ``PYTHONPATH``.) Seeded random unit vectors for every
    row of ``pool`` in the embedding store ``select`` uses with default flags under ``cache``."""
    from tasksift.cli import embed_config
    from tasksift.data import load_examples
    from tasksift.features.embed import Embedder

    emb = Embedder(embed_config({}), cache_dir=str(cache), progress=False)
    store = emb.cache
    rng = np.random.default_rng(seed)
    data = load_examples(str(pool), role="pool", pool_dir=str(cache.parent))
    n = 0
    for batch in data.pool.batches(8192):
        v = rng.standard_normal((len(batch), 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        store.write([emb.row_id(ex) for ex in batch], {"values": v})
        n += len(batch)
    print(f"prefilled {n} rows of 384-d seeded vectors into {store.root}", file=sys.stderr)


def own_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def in_child(*argv: str, src: str | None = None) -> None:
    """This script with ``argv`` in a child process (so its memory is not this one's)."""
    env = dict(os.environ, PYTHONPATH=src) if src else None
    subprocess.run([sys.executable, __file__, *argv], env=env, check=True)


def segments(cache: Path) -> set[Path]:
    return set(cache.rglob("seg-*.seg"))


def run_select(src: Path, pool: Path, target: Path, method: str, out: Path,
               extra: list[str] | None = None) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit code) of one ``tasksift select`` process."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(src), TMPDIR=str(out.parent))
    cmd = [sys.executable, "-m", "tasksift.cli", "select", "--pool", str(pool), "--target", str(target),
           "--method", method, *METHOD_ARGS[method], "--out", str(out), "--no-progress", "--seed", "0",
           *(extra or [])]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(f"  {method} via {src}: exit {proc.returncode}: {err.strip()[-400:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, proc.returncode


def selection_of(out: Path) -> tuple[list, str]:
    """The manifest's ``selected_ids`` and a digest of ``selected.jsonl``'s rows without the
    ``tasksift_*`` columns: the input's own fields, in order. (Newer code also writes explain
    columns, e.g. ``tasksift_nearest_target``, that older code did not.)"""
    man = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha1()
    with open(out / "selected.jsonl", encoding="utf-8") as f:
        for line in f:
            row = {k: v for k, v in json.loads(line).items() if not k.startswith("tasksift_")}
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return man["selected_ids"], digest.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--methods", default="random,length,dsir")
    ap.add_argument("--dir", default="/work/scratch/pool")
    ap.add_argument("--base", default=None, help="checkout of today's code to compare selections with")
    ap.add_argument("--base-max-rows", type=int, default=1_000_000)
    ap.add_argument("--methods-10m", default="dsir", help="methods run on pools above 1M rows")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the tasksift source to measure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--formats", default="", help="also run random on the first size as these formats")
    ap.add_argument("--prefill", nargs=2, metavar=("POOL", "CACHE"), help=argparse.SUPPRESS)
    ap.add_argument("--generate", nargs=2, metavar=("N", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--convert", nargs=2, metavar=("JSONL", "FORMATS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prefill:
        prefill_embeddings(Path(args.prefill[0]), Path(args.prefill[1]), args.seed)
        return
    if args.generate:
        write_pool(Path(args.generate[1]), int(args.generate[0]), args.seed)
        return
    if args.convert:
        write_formats(Path(args.convert[0]), args.convert[1].split(","))
        return
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    target = d / "target.jsonl"
    write_target(target, args.seed)
    made: list[Path] = []
    rows_out = []
    sizes = [int(x) for x in args.sizes.split(",")]
    for n in sizes:
        pool = d / f"alpaca_{n}.jsonl"
        if not pool.exists():
            t = time.perf_counter()
            in_child("--generate", str(n), str(pool), "--seed", str(args.seed))
            made.append(pool)
            print(f"generated {pool} ({pool.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
        methods = args.methods.split(",") if n <= 1_000_000 else args.methods_10m.split(",")
        done = []
        notes: dict[str, str] = {}
        for method in methods:   # every measurement of the new code first, then today's for comparison
            out = d / f"out_{n}_{method}"
            extra = None
            if method == "tsds":
                cache = d / f"cache_{n}"
                shutil.rmtree(cache, ignore_errors=True)
                t = time.perf_counter()
                in_child("--prefill", str(pool), str(cache), "--seed", str(args.seed), src=args.src)
                print(f"  prefilled the embedding store in {time.perf_counter() - t:.0f} s", file=sys.stderr)
                before = segments(cache)
                extra = ["--cache-dir", str(cache)]
            wall, peak, rc = run_select(Path(args.src), pool, target, method, out, extra)
            if method == "tsds":
                timings = json.loads((out / "manifest.json").read_text())["timings"] if rc == 0 else {}
                notes[method] = (f"pool embeddings prefilled; the select wrote {len(segments(cache) - before)} "
                                 f"segment(s), embed_pool {timings.get('embed_pool', float('nan')):.1f} s")
                shutil.rmtree(cache, ignore_errors=True)
            print(f"  {n} {method}: {wall:.1f} s, {peak:.0f} MB, rc {rc}", file=sys.stderr)
            done.append((method, out, wall, peak, rc))
        for method, out, wall, peak, rc in done:
            same = "n/a"
            if args.base and n <= args.base_max_rows and rc == 0:
                bout = d / f"base_{n}_{method}"
                bwall, bpeak, brc = run_select(Path(args.base) / "src", pool, target, method, bout)
                if brc == 0:
                    same = "yes" if selection_of(out) == selection_of(bout) else "NO"
                    same += f" (today: {bwall:.0f} s, {bpeak:.0f} MB)"
                print(f"  {n} {method} today: {bwall:.1f} s, {bpeak:.0f} MB, rc {brc}, same {same}", file=sys.stderr)
                shutil.rmtree(bout, ignore_errors=True)
            goal = GOALS_MB.get((n, method))
            met = "n/a" if goal is None else ("yes" if rc == 0 and peak <= goal else "NO")
            same = notes.get(method, same)
            rows_out.append((n, method, wall if rc == 0 else float("nan"), peak, goal, met, same))
        if args.formats and n == sizes[0] and "random" in methods:
            want = selection_of(d / f"out_{n}_random")[0] if (d / f"out_{n}_random").exists() else None
            in_child("--convert", str(pool), args.formats)
            for fpath in (pool.with_suffix("." + f) for f in args.formats.split(",")):
                made.append(fpath)
                fmt = fpath.suffix[1:]
                out = d / f"out_{n}_random_{fmt}"
                wall, peak, rc = run_select(Path(args.src), fpath, target, "random", out)
                same = "n/a" if rc or want is None else (
                    "same ids as jsonl" if json.loads((out / "manifest.json").read_text())["selected_ids"] == want
                    else "ids DIFFER from jsonl")
                if args.base and n <= args.base_max_rows:
                    bout = d / f"base_{n}_random_{fmt}"
                    bwall, bpeak, brc = run_select(Path(args.base) / "src", fpath, target, "random", bout)
                    same += f" (today: {bwall:.0f} s, {bpeak:.0f} MB)" if brc == 0 else f" (today: rc {brc})"
                    shutil.rmtree(bout, ignore_errors=True)
                print(f"  {n} random ({fmt}): {wall:.1f} s, {peak:.0f} MB, rc {rc}, {same}", file=sys.stderr)
                rows_out.append((n, f"random/{fmt}", wall if rc == 0 else float("nan"), peak, None, "n/a", same))
                shutil.rmtree(out, ignore_errors=True)
        for method, out, *_ in done:
            shutil.rmtree(out, ignore_errors=True)
    print(f"{'rows':>10} {'method':>14} {'wall s':>7} {'peak MB':>8} {'goal MB':>8} {'met?':>5}  same as today / note")
    for n, method, wall, peak, goal, met, same in rows_out:
        print(f"{n:>10} {method:>14} {wall:>7.1f} {peak:>8.0f} {goal if goal else '-':>8} {met:>5}  {same}")
    print(f"(this script's own RSS at its last fork: {own_rss_mb():.0f} MB, the floor of every peak above)")
    if not args.keep:
        for p in made:
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
