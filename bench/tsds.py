"""TSDS engine benchmark: wall time of neighbour search, KDE and solver, peak memory and ANN
recall, for the vectorised engine and for a straightforward per-query-loop implementation.

    python bench/tsds.py [--sizes 10000,100000,1000000] [--queries 200] [--dim 384]
                         [--naive-max 10000] [--naive-timeout 1200] [--real-rows 0]

Synthetic data: ``--clusters`` cluster centres on the unit sphere, candidates are a centre
plus Gaussian noise (spread drawn per cluster), normalised; the queries (the "task") come
from 5 of the clusters (``--task-clusters``), like a target task that covers a few regions of
a mixed pool.
Each (size, implementation) runs in a fresh process so that its peak memory (VmHWM) is
its own; "mem+" is the peak minus the resident size once the data was generated.
The naive implementation follows the paper's pseudo-code: per-query distance + sort, per-
candidate KDE, and a heap-driven water-filling loop (float64, so its p can be compared).

``--real-rows N`` adds a run on N rows of the real pool (``../shared/data/pool``, seeded
sample) embedded with the default MiniLM model (cached in the feature cache), with 200 GSM8K
train questions as queries; skipped with a note when the data is absent.
"""
from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Peak resident size of this process (VmHWM: unlike ru_maxrss it is not inherited from
    the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, m: int, d: int, clusters: int, seed: int, task_clusters: int = 5
              ) -> tuple[np.ndarray, np.ndarray]:
    """(queries, candidates) float32, unit norm, generated in chunks (no float64 N x d copy)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.01, 0.06, clusters)  # per-dimension noise: cluster radius ~0.2-1.2
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):
        e = min(n, s + 65536)
        lab = rng.integers(0, clusters, e - s)
        blk = centres[lab] + rng.standard_normal((e - s, d)) * spread[lab, None]
        x[s:e] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    task = rng.choice(clusters, min(task_clusters, clusters), replace=False)
    lab = task[rng.integers(0, len(task), m)]
    q = centres[lab] + rng.standard_normal((m, d)) * spread[lab, None]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), x


# ----------------------------------------------------------------------------------------
# straightforward implementation (per-query / per-candidate loops, as the pseudo-code reads)


def naive_tsds(q, x, *, alpha=0.5, C=5.0, sigma=0.75, max_k=5000, kde_k=1000):
    m, n = len(q), len(x)
    L = min(max_k, n)
    t0 = time.perf_counter()
    nbr, dist = [], []
    for i in range(m):
        d = np.sqrt(((x.astype(np.float64) - q[i].astype(np.float64)) ** 2).sum(axis=1))
        o = np.argsort(d, kind="stable")[:L]
        nbr.append(o)
        dist.append(d[o])
    t1 = time.perf_counter()
    U = sorted(set(int(j) for row in nbr for j in row))
    xu = x[U].astype(np.float64)
    rho = {}
    for a, u in enumerate(U):
        if sigma == 0:
            rho[u] = 1.0
            continue
        d2 = ((xu - xu[a]) ** 2).sum(axis=1)
        near = np.sort(d2)[:min(kde_k, len(U))]
        rho[u] = float(np.maximum(0.0, 1.0 - near / sigma ** 2).sum())
    t2 = time.perf_counter()
    # water-filling: raise the threshold over the prefix sums S_ik in increasing order
    S = [np.cumsum([1.0 / rho[int(j)] for j in row]) for row in nbr]
    K = [0] * m
    Ai = [0.0] * m
    A = 0.0
    heap = [(S[i][0], i) for i in range(m)]
    heapq.heapify(heap)
    target = (1 - alpha) * m
    s = None
    while heap:
        sv, i = heapq.heappop(heap)
        K[i] += 1
        k = K[i]
        if k >= len(nbr[i]):
            s = sv
            break
        new = sum((dist[i][k] - dist[i][kk]) / rho[int(nbr[i][kk])] for kk in range(k))
        A += new - Ai[i]
        Ai[i] = new
        if alpha / C * A >= target:
            s = sv
            break
        heapq.heappush(heap, (S[i][k], i))
    p = np.zeros(n)
    for i in range(m):
        k = int(np.searchsorted(S[i], s, side="right"))
        for kk in range(k):
            p[nbr[i][kk]] += 1.0 / (m * s * rho[int(nbr[i][kk])])
        if k < len(nbr[i]):
            p[nbr[i][k]] += (1.0 - (S[i][k - 1] if k else 0.0) / s) / m
    t3 = time.perf_counter()
    return p / p.sum(), {"search": t1 - t0, "kde": t2 - t1, "solve": t3 - t2}


# ----------------------------------------------------------------------------------------


def run_job(job: dict) -> dict:
    import faiss

    faiss.omp_set_num_threads(job["threads"])
    if job["data"] == "real":
        q, x = np.load(job["q_path"]), np.load(job["x_path"])
    else:
        q, x = synthetic(job["n"], job["m"], job["d"], job["clusters"], job["seed"], job["task_clusters"])
    base = rss_mb()
    out = {"n": len(x)}
    t = time.perf_counter()
    if job["impl"] == "fast":
        from tasksift.methods.tsds import tsds

        r = tsds(q, x, seed=job["seed"], index=job["index"])
        tm = r.info["timings"]
        out.update(search=tm["tsds_search"], kde=tm["tsds_kde"], solve=tm["tsds_solve"],
                   recall_search=r.info["ann_recall"]["search"], recall_kde=r.info["ann_recall"]["kde"],
                   index=f"{r.info['index']['search']} / {r.info['index']['kde']}",
                   prefetched=r.info["prefetched"], support=r.info["support_size"])
        p = r.p
    else:
        p, tm = naive_tsds(q, x)
        out.update(tm, recall_search=1.0, recall_kde=1.0, index="loops (exact)", prefetched=None,
                   support=int((p > 0).sum()))
    out["total"] = time.perf_counter() - t
    out["peak_mb"] = peak_mb()
    out["mem_plus_mb"] = peak_mb() - base
    if job.get("p_path"):
        np.save(job["p_path"], p)
    return out


def run_isolated(job: dict, timeout: float | None = None) -> dict | None:
    """Run one job in a fresh process; None if it did not finish within ``timeout`` s."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        res = pool.apply_async(run_job, (job,))
        try:
            return res.get(timeout)
        except mp.TimeoutError:
            pool.terminate()
            return None


def real_data(rows: int, m: int, seed: int, workdir: Path) -> tuple[str, str] | None:
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "pool").is_dir():
        return None
    import json
    import random

    from tasksift.data import load_examples
    from tasksift.features.embed import EmbedConfig, Embedder

    pool = load_examples(shared / "pool").examples
    pool = random.Random(seed).sample(pool, min(rows, len(pool)))
    from tasksift.data.example import Example

    with open(shared / "targets" / "gsm8k" / "train.jsonl") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(m))]
    target = [Example(messages=[{"role": "user", "content": r["question"]},
                                {"role": "assistant", "content": r["answer"]}], raw=r, row=i)
              for i, r in enumerate(rows)]
    emb = Embedder(EmbedConfig(), progress=True)
    x = emb.embed(pool, desc="embedding pool sample")
    q = emb.embed(target, desc="embedding gsm8k queries")
    qp, xp = workdir / "real_q.npy", workdir / "real_x.npy"
    np.save(qp, q)
    np.save(xp, x)
    (workdir / "real_sources.json").write_text(json.dumps([ex.source for ex in pool]))
    return str(qp), str(xp)


def mass_by_source(p: np.ndarray, sources: list[str], top: int = 4) -> str:
    acc: dict[str, float] = {}
    for s, v in zip(sources, p):
        acc[s] = acc.get(s, 0.0) + float(v)
    best = sorted(acc.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{s} {100 * v:.0f}%" for s, v in best)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=200, help="clusters in the synthetic pool")
    ap.add_argument("--task-clusters", type=int, default=5,
                    help="clusters the queries come from (more = larger prefetched set, heavier KDE)")
    ap.add_argument("--naive-max", type=int, default=10000,
                    help="run the loop implementation only up to this many candidates")
    ap.add_argument("--naive-timeout", type=float, default=1200,
                    help="seconds after which a loop-implementation run is killed and reported")
    ap.add_argument("--index", default="auto")
    ap.add_argument("--real-rows", type=int, default=0, help="also run on this many real pool rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the probability (and real embedding) arrays")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    import tempfile

    jobs = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        for impl in ("fast", "naive"):
            if impl == "naive" and n > args.naive_max:
                continue
            jobs.append(dict(data="synthetic", n=n, m=args.queries, d=args.dim, clusters=args.clusters,
                             task_clusters=args.task_clusters, seed=args.seed, impl=impl,
                             index=args.index, threads=args.threads))
    tmp = Path(tempfile.mkdtemp(prefix="tsds-bench-"))
    notes = []
    if args.real_rows:
        paths = real_data(args.real_rows, args.queries, args.seed, tmp)
        if paths is None:
            notes.append("real pool: skipped (../shared/data absent)")
        else:
            notes.append(f"real: {args.real_rows} rows sampled (seed {args.seed}) from ../shared/data/pool, "
                         f"queries = the first {args.queries} GSM8K train question+answer pairs, default "
                         f"MiniLM embeddings (unit norm)")
            for impl in ("fast", "naive"):
                if impl == "naive" and args.real_rows > args.naive_max:
                    continue
                jobs.append(dict(data="real", q_path=paths[0], x_path=paths[1], n=args.real_rows,
                                 seed=args.seed, impl=impl, index=args.index, threads=args.threads))
    print(f"TSDS bench: M={args.queries} queries, d={args.dim}, max_k=5000, kde_k=1000, sigma=0.75, "
          f"alpha=0.5, {args.threads} threads; synthetic: {args.clusters} clusters, queries from "
          f"{args.task_clusters}")
    hdr = (f"{'data':<9} {'N':>8} {'impl':<6} {'search s':>9} {'kde s':>8} {'solve s':>8} {'total s':>8} "
           f"{'peak MB':>8} {'mem+ MB':>8} {'recall@5000':>11} {'kde recall':>10} {'|U|':>8} {'support':>8}  index")
    print(hdr)
    print("-" * len(hdr))
    ps = {}
    for job in jobs:
        key = (job["data"], job["n"])
        job["p_path"] = str(tmp / f"p_{job['data']}_{job['n']}_{job['impl']}.npy")
        r = run_isolated(job, args.naive_timeout if job["impl"] == "naive" else None)
        if r is None:
            print(f"{job['data']:<9} {job['n']:>8} {job['impl']:<6} did not finish within "
                  f"--naive-timeout {args.naive_timeout:.0f} s (killed)", flush=True)
            continue
        ps.setdefault(key, {})[job["impl"]] = job["p_path"]
        print(f"{job['data']:<9} {r['n']:>8} {job['impl']:<6} {r['search']:>9.2f} {r['kde']:>8.2f} "
              f"{r['solve']:>8.2f} {r['total']:>8.2f} {r['peak_mb']:>8.0f} {r['mem_plus_mb']:>8.0f} "
              f"{fmt(r['recall_search'], '.4f'):>11} {fmt(r['recall_kde'], '.4f'):>10} "
              f"{fmt(r['prefetched'], 'd'):>8} {r['support']:>8}  {r['index']}", flush=True)
    for key, d in ps.items():
        if key[0] == "real" and "fast" in d:
            import json

            src = json.loads((tmp / "real_sources.json").read_text())
            notes.append(f"real: TSDS probability mass by pool file: {mass_by_source(np.load(d['fast']), src)}")
        if len(d) == 2:
            a, b = np.load(d["fast"]), np.load(d["naive"])
            notes.append(f"{key[0]} N={key[1]}: L1 distance between fast and naive p = {np.abs(a - b).sum():.2e}")
    for n in notes:
        print(n)
    if args.keep:
        print(f"kept arrays in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
