"""Driver memory with ``--backend ray`` vs in-process, on a generated pool.

    flock /work/coord/heavy.lock python bench/ray_pool.py [--mode pipeline|select]
        [--rows 1000000] [--repeats 2] [--workers 2] [--model static|default] [--count 1000]
        [--dir /work/scratch/ray] [--keep]

Data: bench/scale_pool.py's generator (``alpaca_<N>.jsonl`` and its 200-row target, reused
when present). Modes (each run one process, the two backends alternating):

* ``pipeline``: ``load_examples(pool)`` then ``compute_features`` with :class:`TextFingerprint`
  (a model-free featurizer: 64 bytes of BLAKE2b of each row's text as a float vector, so the
  run measures the pipeline, not a model) into a fresh store, and the features read back.
  ``same`` compares the SHA-1 of the feature matrix with the first in-process run's.
* ``select``: ``tasksift select --method knn --count 1000`` with embeddings of ``--model``
  (default ``static``: the static model, distilled once into ``<dir>/static-model``; or e.g.
  ``default``, the bundled MiniLM), fresh ``--cache-dir``; ``same`` compares the selected ids (manifest) with the first in-process run's.

``driver MB`` is the measured process's own peak resident memory (``VmHWM``, read at exit);
``tree MB`` the peak of the summed RSS of it and every process below it (the Ray cluster:
GCS, raylet, workers; sampled every 0.2 s; pages shared between processes are counted in
each, so it overstates). The table gives medians of the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from scale_pool import write_pool, write_target  # noqa: E402

import numpy as np  # noqa: E402

#: prefix of every measured process: writes its peak RSS (kB) to argv[1] at exit
PEAK = ("import atexit, sys\n"
        "out = sys.argv.pop(1)\n"
        "def peak():\n"
        "    with open('/proc/self/status') as f:\n"
        "        kb = next(l for l in f if l.startswith('VmHWM')).split()[1]\n"
        "    with open(out, 'w') as g:\n"
        "        g.write(kb)\n"
        "atexit.register(peak)\n")
SELECT = PEAK + "sys.argv[0] = 'tasksift'\nfrom tasksift.cli import main\nmain()\n"
PIPELINE = PEAK + """
import hashlib, json
from tasksift.data import load_examples
from tasksift.exec import make_executor
from tasksift.features.pipeline import compute_features, open_store
from ray_pool import TextFingerprint
pool, cache, backend, workers = sys.argv[1:5]
executor = make_executor(backend, workers=int(workers))
rows = load_examples(pool, role="pool", executor=executor).pool   # with Ray, the workers parse it
f = TextFingerprint()
res = compute_features(f, rows, open_store(f, cache), executor, progress=False)
print(json.dumps({"same": hashlib.sha1(memoryview(res.values["values"])).hexdigest(),
                  "computed": res.rows_computed}))
"""


class TextFingerprint:
    """A model-free featurizer: the 64 bytes of BLAKE2b of each row's text, as floats in [0, 1]."""

    kind = "bench-fingerprint"
    accelerator = None

    def cache_key(self) -> dict:
        return {"v": 1}

    def row_id(self, ex) -> str:
        return ex.id

    def content_row_id(self, content_id: str) -> str:
        return content_id

    def block_item(self, ex) -> str:
        return ex.text

    def compute_block(self, texts: list) -> dict:
        import hashlib

        raw = b"".join(hashlib.blake2b(t.encode(), digest_size=64).digest() for t in texts)
        return {"values": np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), 64).astype(np.float32) / 255}


def static_model(folder: Path) -> Path:
    """The static model distilled from the bundled default model (once)."""
    if not (folder / "config.json").exists():
        sys.path.insert(0, str(ROOT / "src"))
        from tasksift.features.embed import default_embed_model_path
        from tasksift.features.embed_models import distill_static_model

        distill_static_model(default_embed_model_path(), folder)
    return folder


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict, peak_file: Path) -> tuple[float, float, float, str]:
    """(wall s, own peak MB, tree peak MB, stdout) of one process."""
    peak_file.unlink(missing_ok=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    tree = [0]

    def sample():
        while proc.poll() is None:
            try:
                tree[0] = max(tree[0], tree_rss(ps))
            except psutil.Error:
                pass
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"run failed (exit {proc.returncode}): {err.decode(errors='replace').strip()[-2000:]}")
    return wall, int(peak_file.read_text()) / 1024, tree[0] / 2**20, out.decode()


def run(mode: str, backend: str, pool: Path, target: Path, work: Path, workers: int, count: int,
        model: str) -> dict:
    out, cache = work / f"out-{backend}", work / f"cache-{backend}"
    for p in (out, cache):
        shutil.rmtree(p, ignore_errors=True)
    (work / "tmp").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(HERE)]), TMPDIR=str(work / "tmp"),
               RAY_ADDRESS="")
    peak = work / f"peak-{backend}"
    if mode == "pipeline":
        cmd = [sys.executable, "-c", PIPELINE, str(peak), str(pool), str(cache), backend, str(workers)]
        wall, driver, tree, stdout = measure(cmd, env, peak)
        same = json.loads(stdout.strip().splitlines()[-1])["same"]
    else:
        cmd = [sys.executable, "-c", SELECT, str(peak), "select", "--pool", str(pool), "--target", str(target),
               "--method", "knn", "--count", str(count), "--embed-model", model,
               "--cache-dir", str(cache), "--out", str(out), "--no-progress", "--seed", "0", "--backend", backend]
        if backend == "ray":
            cmd += ["--workers", str(workers)]
        wall, driver, tree, _ = measure(cmd, env, peak)
        same = json.loads((out / "manifest.json").read_text())["selected_ids"]
    shutil.rmtree(cache, ignore_errors=True)
    return {"backend": backend, "wall": wall, "driver": driver, "tree": tree, "same": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["pipeline", "select"], default="pipeline")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--count", type=int, default=1000, help="rows to select (select mode)")
    ap.add_argument("--model", default="static", help="select mode: 'static' (distilled once) or an --embed-model")
    ap.add_argument("--dir", default="/work/scratch/ray")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the generated pool")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    pool, target = d / f"alpaca_{args.rows}.jsonl", d / "target.jsonl"
    write_target(target, args.seed)
    made = not pool.exists()
    if made:
        write_pool(pool, args.rows, args.seed)
    model = str(static_model(d / "static-model")) if args.mode == "select" and args.model == "static" else args.model
    results = []
    try:
        for r in range(args.repeats):
            for backend in ("local", "ray"):
                res = run(args.mode, backend, pool, target, d, args.workers, args.count, model)
                print(f"  run {r + 1} {backend}: {res['wall']:.1f} s, driver {res['driver']:.0f} MB, "
                      f"tree {res['tree']:.0f} MB", file=sys.stderr, flush=True)
                results.append(res)
    finally:
        if made and not args.keep:
            pool.unlink(missing_ok=True)
    first = next(r["same"] for r in results if r["backend"] == "local")
    what = ("compute_features(TextFingerprint)" if args.mode == "pipeline"
            else f"select --method knn --count {args.count}, --embed-model {args.model}")
    print(f"{args.rows} rows, {what}, {args.workers} Ray workers, median of {args.repeats}")
    print(f"{'backend':>8} {'wall s':>7} {'driver MB':>10} {'tree MB':>8}  same output as local")
    for backend in ("local", "ray"):
        rs = [r for r in results if r["backend"] == backend]
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "driver", "tree")}
        same = "yes" if all(r["same"] == first for r in rs) else "NO"
        print(f"{backend:>8} {med['wall']:>7.1f} {med['driver']:>10.0f} {med['tree']:>8.0f}  {same}")


if __name__ == "__main__":
    main()
