"""The cost of report.html and the nearest-target columns: `tasksift select` with and without
`--no-report`, as whole processes, alternating, on a pool sampled from the shared data.

    .venv/bin/python bench/select_report.py [--rows 20000] [--targets 100] [--ratio 0.05]
        [--methods random,tsds] [--rounds 3] [--sources flan_v2_cot,gpteacher] [--work DIR] [--cache-dir DIR] [--data ../shared/data]

`random` explains by hashed TF-IDF (no embeddings), `tsds` by the embeddings it computed (the
first run fills the feature cache, --cache-dir; it is not counted). Prints one row per method:
median wall seconds and peak RSS of each variant, their difference, the in-process `explain`
and `report` stage times from manifest.json and the size of report.html. Exits cleanly (code
0, with a message) when the shared data is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def write_inputs(work: Path, rows: int, targets: int, seed: int, sources: list[str] | None
                 ) -> tuple[Path, Path]:
    """A pool folder (``rows`` rows sampled from the shared pool, or from its ``sources``
    subfolders, one ``<source>.jsonl`` of messages per source: same content ids as the
    originals) and ``target.jsonl`` (the first ``targets`` GSM8K train questions) under ``work``."""
    sys.path.insert(0, str(ROOT / "src"))
    from tasksift.data import load_examples

    pool_dir, target_path = work / f"pool{rows}", work / "target.jsonl"
    if not pool_dir.is_dir():
        exs = [(src or Path(ex.source or "pool").parts[0], ex)
               for src in (sources or [""]) for ex in load_examples(SHARED / "pool" / src).examples]
        picked = sorted(random.Random(seed).sample(range(len(exs)), min(rows, len(exs))))
        tmp = work / f".pool{rows}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        files: dict[str, object] = {}
        for i in picked:
            top, ex = exs[i]
            f = files.get(top) or files.setdefault(top, open(tmp / f"{top}.jsonl", "w", encoding="utf-8"))
            f.write(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n")
        for f in files.values():
            f.close()
        tmp.rename(pool_dir)
    with open(SHARED / "targets" / "gsm8k" / "train.jsonl", encoding="utf-8") as src, \
            open(target_path, "w", encoding="utf-8") as f:
        for _, line in zip(range(targets), src):
            f.write(line)
    return pool_dir, target_path


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--targets", type=int, default=100)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--methods", default="random,tsds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="shared data folder (default ../shared/data beside the repo)")
    ap.add_argument("--sources", default=None,
                    help="comma-separated subfolders of the shared pool to sample from (default: all of it)")
    ap.add_argument("--work", default=None, help="folder for the inputs and outputs (default: temporary)")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default: WORK/cache)")
    args = ap.parse_args()
    global SHARED
    SHARED = Path(args.data) if args.data else SHARED
    if not (SHARED / "pool").is_dir() or not (SHARED / "targets" / "gsm8k" / "train.jsonl").is_file():
        print(f"bench/select_report.py: real data not found under {SHARED}; nothing to run (skipped)")
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="tasksift-bench-report-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = [x.strip() for x in args.sources.split(",")] if args.sources else None
    pool, target = write_inputs(work, args.rows, args.targets, args.seed, sources)
    print(f"pool: {args.rows:,} rows sampled (seed {args.seed}) from {SHARED / 'pool'} "
          f"({', '.join(sources) if sources else 'all sources'}); target: {args.targets} GSM8K "
          f"train questions; ratio {args.ratio}; {args.rounds} rounds per variant, alternating")
    print("| method | similarity | with report: wall s | --no-report: wall s | difference s | explain s | report s "
          "| peak RSS MiB with / without | report.html KiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        base = [sys.executable, "-m", "tasksift.cli", "select", "--pool", str(pool), "--target", str(target),
                "--method", method, "--ratio", str(args.ratio), "--seed", str(args.seed),
                "--cache-dir", args.cache_dir or str(work / "cache"), "--no-progress"]
        with_cmd = base + ["--out", str(work / f"out-{method}")]
        without_cmd = base + ["--out", str(work / f"out-{method}-none"), "--no-report"]
        run(with_cmd)                      # warm-up: fills the feature cache, not counted
        walls: dict[str, list[float]] = {"with": [], "without": []}
        peaks: dict[str, list[float]] = {"with": [], "without": []}
        explain, report = [], []
        for _ in range(args.rounds):
            for name, cmd in (("with", with_cmd), ("without", without_cmd)):
                wall, peak = run(cmd)
                walls[name].append(wall)
                peaks[name].append(peak)
                if name == "with":
                    man = json.loads((work / f"out-{method}" / "manifest.json").read_text())
                    explain.append(man["timings"].get("explain", 0.0))
                    report.append(man["timings"].get("report", 0.0))
        med = {k: statistics.median(v) for k, v in walls.items()}
        size = (work / f"out-{method}" / "report.html").stat().st_size / 1024
        sim = man["info"]["nearest_target"]["similarity"]
        print(f"| {method} | {sim} | {med['with']:.1f} | {med['without']:.1f} | {med['with'] - med['without']:+.1f} "
              f"| {statistics.median(explain):.2f} | {statistics.median(report):.2f} "
              f"| {statistics.median(peaks['with']):.0f} / {statistics.median(peaks['without']):.0f} | {size:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
