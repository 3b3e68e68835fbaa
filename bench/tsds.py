"""TSDS benchmark: tasksift against a user's clone of the authors' reference script, on the
same inputs, as whole processes in alternating runs.

    python bench/tsds.py [--sizes 100000,1000000] [--reference PATH/tsds.py] [--rounds 3]
                         [--dir DIR] [--mmap] [--no-exact] [--queries 200] [--dim 384]
                         [--backend local|processes] [--workers N]

``--reference`` is the path of a runnable copy of ``tsds.py`` from github.com/ZifanL/TSDS
(the project does not ship it, and this bench changes nothing in it). It is run as
``python PATH`` in a fresh folder holding the ``config.yaml`` it reads (the settings below,
absolute input paths); the stage times come from its log lines. If the script also saves its
probability vector as ``<output_folder>/probabilities.npy`` (e.g. a copy patched by the
user), the L1 distances to it are reported; without ``--reference`` (or when the path is not
a file) the reference rows are skipped with the reason.

Inputs: ``--dim``-d float32 unit vectors around ``--clusters`` centres (noise spread drawn
per cluster), the ``--queries`` queries from ``--task-clusters`` of them, written as .npy
files under ``--dir``. Settings: alpha 0.5, C 5, sigma 0.75, max_k 5000, kde_k 1000.
tasksift runs ``tsds(q, x)`` on the arrays loaded with ``np.load`` (``--mmap``: on the
``.npy`` path, read shard by shard). Wall time and peak memory (max RSS) are the operating
system's figures for the whole child process (``os.wait4``; with ``--backend processes`` the
peak is that of the largest process, the driver or a worker, whose pages the forked workers
share); the medians over ``--rounds``
are printed with the ratio tasksift / reference taken round by round.

The exact float64 reference (unless ``--no-exact``) is computed once per size in its own
process: float64 distances to every candidate, a full stable sort of each query's top
``max_k``, densities from float64 BLAS against the whole prefetched set (no pruning), the
water-filling (tested against an LP solver) asking only for the densities it needs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"alpha": 0.5, "C": 5.0, "sigma": 0.75, "max_k": 5000, "kde_k": 1000}
#: the reference script's log lines that open each stage
REF_STAGES = [("index", "Starting building index"), ("search", "Start prefetching"),
              ("kde", "Start computing KDE"), ("solve", "Start computing the probability assignment"),
              ("sample", "Start sampling")]


def write_inputs(folder: Path, n: int, m: int, d: int, clusters: int, task_clusters: int, seed: int
                 ) -> tuple[Path, Path]:
    """Candidates (n, d) written chunk by chunk into ``x.npy`` and queries into ``q.npy``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.01, 0.06, clusters)  # per-dimension noise: cluster radius ~0.2-1.2
    xp, qp = folder / "x.npy", folder / "q.npy"
    with open(xp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, d)})
        for s in range(0, n, 65536):
            lab = rng.integers(0, clusters, min(n, s + 65536) - s)
            blk = centres[lab] + rng.standard_normal((len(lab), d)) * spread[lab, None]
            f.write((blk / np.linalg.norm(blk, axis=1, keepdims=True)).astype(np.float32).tobytes())
    task = rng.choice(clusters, min(task_clusters, clusters), replace=False)
    lab = task[rng.integers(0, len(task), m)]
    q = centres[lab] + rng.standard_normal((m, d)) * spread[lab, None]
    np.save(qp, (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return qp, xp


def run_measured(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` to the end; wall seconds and peak RSS (MiB) of the child, its output."""
    out = open(cwd / "stdout.txt", "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read()
    out.close()
    return {"wall": wall, "peak_mb": usage.ru_maxrss / 1024, "rc": proc.returncode, "output": text}


# ---------------------------------------------------------------------------------------
# children


def child_tasksift(qp: str, xp: str, out: str, mmap: bool, backend: str = "local", workers: int = 0) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from tasksift.exec import make_executor
    from tasksift.methods.tsds import tsds

    q = np.load(qp)
    x = xp if mmap else np.load(xp)
    r = tsds(q, x, seed=0, executor=make_executor(backend, workers=workers or None), **SETTINGS)
    np.save(out, r.p)
    info = {k: r.info[k] for k in ("prefetched", "density_rows", "support_size", "fully_filled_queries",
                                   "search_cut_uncertified", "search_researched_rows")}
    print(json.dumps({"stages": r.info["timings"], "info": info}))


def child_exact(qp: str, xp: str, out: str) -> None:
    """The float64 reference (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "src"))
    from tasksift.methods.tsds import kde_exact, solve_needing_densities

    q = np.load(qp).astype(np.float64)
    x = np.load(xp, mmap_mode="r")
    n, L = len(x), min(SETTINGS["max_k"], len(x))
    qn = np.einsum("ij,ij->i", q, q)
    best_d = np.empty((len(q), 0))
    best_i = np.empty((len(q), 0), dtype=np.int64)
    for s in range(0, n, 32768):
        xb = np.asarray(x[s:s + 32768], dtype=np.float64)
        d2 = qn[:, None] + np.einsum("ij,ij->i", xb, xb)[None, :] - 2.0 * (q @ xb.T)
        cd = np.concatenate([best_d, d2], axis=1)
        ci = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + len(xb)), d2.shape)], axis=1)
        if cd.shape[1] > 2 * L:  # keep a wide margin, sort exactly at the end
            part = np.argpartition(cd, 2 * L - 1, axis=1)[:, :2 * L]
            cd, ci = np.take_along_axis(cd, part, axis=1), np.take_along_axis(ci, part, axis=1)
        best_d, best_i = cd, ci
    order = np.lexsort((best_i, best_d), axis=1)[:, :L]
    ids = np.take_along_axis(best_i, order, axis=1)
    dist = np.sqrt(np.maximum(np.take_along_axis(best_d, order, axis=1), 0.0))
    U = np.unique(ids)
    pos = np.searchsorted(U, ids)
    xu = np.asarray(x[U], dtype=np.float64)
    rho_u = np.full(len(U), np.nan)

    def densities(J: np.ndarray) -> np.ndarray:
        w = int(J.max())
        need = np.unique(pos[:, :w][np.arange(w)[None, :] < J[:, None]])
        need = need[np.isnan(rho_u[need])]
        if len(need):
            rho_u[need], _ = kde_exact(xu, SETTINGS["sigma"], min(SETTINGS["kde_k"], len(U)), rows=need)
        return rho_u[pos[:, :w]]

    gamma, s, K, J = solve_needing_densities(dist, ids, densities, alpha=SETTINGS["alpha"], C=SETTINGS["C"])
    p = np.bincount(ids.ravel(), weights=gamma.ravel(), minlength=n)
    np.save(out, p / p.sum())
    print(json.dumps({"density_rows": int((~np.isnan(rho_u)).sum()), "prefetched": int(len(U))}))


# ---------------------------------------------------------------------------------------
# parent


def reference_config(folder: Path, qp: Path, xp: Path) -> None:
    import yaml

    cfg = {"query_embedding_path": str(qp), "candidate_embedding_path": str(xp),
           "output_folder": str(folder / "output"), "sample_size": 100, "alpha": SETTINGS["alpha"],
           "C": SETTINGS["C"], "sigma": SETTINGS["sigma"], "max_K": SETTINGS["max_k"], "kde_K": SETTINGS["kde_k"]}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


def reference_stages(log: str, wall: float) -> dict[str, float]:
    """Stage seconds from the reference's log timestamps (``%(asctime)s``, ms resolution)."""
    stamps = {}
    for line in log.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - INFO - (.*)", line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for name, prefix in REF_STAGES:
            if m.group(2).startswith(prefix) and name not in stamps:
                stamps[name] = t
        stamps.setdefault("_first", t)
        stamps["_last"] = t
    names = [n for n, _ in REF_STAGES if n in stamps]
    out = {}
    for a, b in zip(names, names[1:] + ["_last"]):
        out[a] = stamps[b] - stamps[a]
    return out


def median(v: list[float]) -> float:
    return float(np.median(v)) if v else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--reference", default=None, help="path of a runnable reference tsds.py (ZifanL/TSDS)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each per size")
    ap.add_argument("--dir", default=None, help="folder for the inputs (default: a temporary folder)")
    ap.add_argument("--mmap", action="store_true", help="give tasksift the .npy path instead of the array")
    ap.add_argument("--no-exact", action="store_true", help="skip the float64 exact reference")
    ap.add_argument("--backend", default="local", choices=["local", "processes"],
                    help="tasksift's executor (processes: worker processes on this machine)")
    ap.add_argument("--workers", type=int, default=0, help="worker processes (default: one per core)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--task-clusters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the inputs and probability vectors")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "tasksift":
            child_tasksift(rest[0], rest[1], rest[2], rest[3] == "1", *(rest[4:5] or ["local"]),
                           *[int(w) for w in rest[5:6]])
        else:
            child_exact(*rest)
        return 0
    ref = Path(args.reference).resolve() if args.reference else None
    skip = None
    if ref is None:
        skip = "no --reference given"
    elif not ref.is_file():
        skip = f"--reference {ref} is not a file"
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="tsds-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    print(f"TSDS bench: M={args.queries}, d={args.dim}, {args.clusters} clusters (queries from "
          f"{args.task_clusters}), {SETTINGS}; {os.cpu_count()} CPUs; tasksift input: "
          f"{'.npy path' if args.mmap else 'array (np.load)'}, executor {args.backend}"
          f"{f' ({args.workers} workers)' if args.workers else ''}; reference: {skip or ref}")
    rows = []
    try:
        for n in [int(float(s)) for s in args.sizes.split(",") if s]:
            work = base / f"n{n}"
            work.mkdir(exist_ok=True)
            t0 = time.perf_counter()
            qp, xp = write_inputs(work, n, args.queries, args.dim, args.clusters, args.task_clusters, args.seed)
            print(f"N={n}: inputs written in {time.perf_counter() - t0:.0f} s ({xp.stat().st_size / 2**30:.2f} GiB)",
                  flush=True)
            res: dict[str, list[dict]] = {"tasksift": [], "reference": []}
            for r in range(args.rounds):
                order = ["reference", "tasksift"] if r % 2 == 0 else ["tasksift", "reference"]
                for impl in order:
                    if impl == "reference" and skip:
                        continue
                    run_dir = work / f"{impl}-{r}"
                    shutil.rmtree(run_dir, ignore_errors=True)
                    run_dir.mkdir()
                    if impl == "tasksift":
                        out = run_measured(me + ["tasksift", str(qp), str(xp), str(run_dir / "p.npy"),
                                                 "1" if args.mmap else "0", args.backend, str(args.workers)], run_dir)
                        if out["rc"] == 0:
                            out.update(json.loads(out["output"].strip().splitlines()[-1]))
                            out["p"] = run_dir / "p.npy"
                    else:
                        reference_config(run_dir, qp, xp)
                        out = run_measured([sys.executable, str(ref)], run_dir)
                        out["stages"] = reference_stages(out["output"], out["wall"])
                        pp = run_dir / "output" / "probabilities.npy"
                        out["p"] = pp if pp.is_file() else None
                    if out["rc"] != 0:
                        tail = out["output"].strip().splitlines()[-1:] or ["(no output)"]
                        print(f"N={n} {impl} round {r}: exit {out['rc']}: {tail[0][:200]}", flush=True)
                    else:
                        print(f"N={n} {impl} round {r}: {out['wall']:.1f} s, peak {out['peak_mb']:.0f} MB", flush=True)
                    res[impl].append(out)
            exact_p = None
            if not args.no_exact:
                ex = run_measured(me + ["exact", str(qp), str(xp), str(work / "p_exact.npy")], work)
                if ex["rc"] == 0:
                    exact_p = np.load(work / "p_exact.npy")
                    print(f"N={n}: exact float64 reference in {ex['wall']:.0f} s", flush=True)
                else:
                    print(f"N={n}: exact reference failed: {ex['output'][-300:]}", flush=True)
            rows.append(summarise(n, res, exact_p, skip))
            if not args.keep:
                for f in (qp, xp):
                    f.unlink()
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    report(rows)
    return 0


def summarise(n: int, res: dict, exact_p, skip) -> dict:
    row: dict = {"n": n, "skip": skip}
    for impl, runs in res.items():
        ok = [r for r in runs if r["rc"] == 0]
        if not ok:
            continue
        stages: dict[str, list[float]] = {}
        for r in ok:
            for k, v in r.get("stages", {}).items():
                stages.setdefault(k.replace("tsds_", ""), []).append(v)
        p = np.load(ok[-1]["p"]) if ok[-1].get("p") else None
        row[impl] = {"wall": median([r["wall"] for r in ok]), "peak_mb": median([r["peak_mb"] for r in ok]),
                     "stages": {k: median(v) for k, v in stages.items()}, "runs": len(ok), "p": p,
                     "l1_exact": None if (p is None or exact_p is None) else float(np.abs(p - exact_p).sum()),
                     "info": ok[-1].get("info")}
    pairs = [(a["wall"], b["wall"]) for a, b in zip(res["tasksift"], res["reference"])
             if a["rc"] == 0 and b["rc"] == 0]
    row["ratio"] = median([a / b for a, b in pairs]) if pairs else None
    t, r = row.get("tasksift"), row.get("reference")
    row["l1_between"] = (float(np.abs(t["p"] - r["p"]).sum())
                         if t and r and t["p"] is not None and r["p"] is not None else None)
    return row


def report(rows: list[dict]) -> None:
    fmt = lambda v, s=".3g": "-" if v is None else format(v, s)  # noqa: E731
    print()
    hdr = (f"{'N':>9} {'impl':<10} {'runs':>4} {'wall s':>8} {'peak MB':>8} {'ratio':>6} "
           f"{'L1 to exact':>11} {'L1 ts-ref':>10}  stages (median s)")
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        for impl in ("tasksift", "reference"):
            r = row.get(impl)
            if r is None:
                if impl == "reference":
                    print(f"{row['n']:>9} {impl:<10} skipped: {row['skip'] or 'every run failed'}")
                continue
            st = "  ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
            print(f"{row['n']:>9} {impl:<10} {r['runs']:>4} {r['wall']:>8.2f} {r['peak_mb']:>8.0f} "
                  f"{fmt(row['ratio'] if impl == 'tasksift' else None, '.3f'):>6} {fmt(r['l1_exact']):>11} "
                  f"{fmt(row['l1_between'] if impl == 'tasksift' else None):>10}  {st}")
            if impl == "tasksift" and r.get("info"):
                print(f"{'':>9} {'':<10} {r['info']}")


if __name__ == "__main__":
    sys.exit(main())
