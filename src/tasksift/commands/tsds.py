"""``tasksift tsds``: TSDS on embeddings you already have (``.npy`` files).

Writes into ``--out``: ``probabilities.npy`` (float64, one per candidate row), and with
``--count N`` also ``selected.npy`` (int64 row numbers, in draw order) and ``indices.txt``
(the same, one per line), plus ``summary.json`` (settings, support size, fill rule, index
used, ANN recall, timings). Every file is written atomically.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path, write_json, write_text
from ..errors import ConfigError, DataError

HELP = """\
Run TSDS (optimal-transport task-specific selection) on precomputed embeddings.
--query is an (M, d) .npy array of target-task embeddings, --candidates an (N, d) array of
pool embeddings. Distances are L2 on the embeddings as given; the default --C 5.0 and
--sigma 0.75 assume unit-norm embeddings, so pass --normalize if yours are not unit-norm
(sentence-transformers embeddings usually are when normalize_embeddings=True).
--sigma 0 gives the KNN-Uniform variant (no density penalty on near-duplicates).
When the support of the probabilities is smaller than --count (without replacement), all
supported rows are taken and the rest are the unselected rows nearest to any query
(L2, ties by lower row number); summary.json says how many were filled that way.
The candidates file is memory-mapped and read shard by shard, so it may exceed memory."""


def register(subparsers: Any) -> None:
    """Add the ``tsds`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("tsds", help="TSDS selection probabilities from .npy embeddings",
                              description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--query", required=True, help="(M, d) .npy array of target-task embeddings")
    p.add_argument("--candidates", required=True, help="(N, d) .npy array of candidate embeddings")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--count", type=int, default=None,
                   help="number of rows to select (omit to write only the probabilities)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="in [0, 1]: large = close to the queries, small = diverse (default 0.5)")
    p.add_argument("--C", type=float, default=5.0, dest="C",
                   help="distance scale; 5.0 suits unit-norm embeddings (default 5.0)")
    p.add_argument("--sigma", type=float, default=0.75,
                   help="KDE kernel width; 0 = KNN-Uniform; 0.75 suits unit-norm embeddings (default 0.75)")
    p.add_argument("--max-k", type=int, default=5000, help="neighbours prefetched per query (default 5000)")
    p.add_argument("--kde-k", type=int, default=1000, help="neighbours per candidate in the KDE (default 1000)")
    p.add_argument("--index", default="auto",
                   help="auto (default), exact, flat, ivf, hnsw or a faiss factory string")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--normalize", dest="normalize", action="store_true",
                   help="L2-normalise both arrays first (needed unless they are unit-norm)")
    g.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="use the embeddings as given (default)")
    p.set_defaults(normalize=False)
    p.add_argument("--sampling", default="without_replacement",
                   choices=["without_replacement", "with_replacement", "top"],
                   help="without_replacement (default, seeded), with_replacement (the paper; "
                        "repeats possible) or top (deterministic, highest probability first)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=handler)


def load_npy(path: str, what: str, *, mmap: bool = False) -> np.ndarray:
    """Load a 2-d numeric array from ``path`` (``mmap``: as a read-only memory map); DataError
    (naming the file) otherwise."""
    f = Path(path)
    if not f.is_file():
        raise DataError(f"{what} file not found", file=path)
    try:
        a = np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"not a readable .npy array ({str(e).splitlines()[0][:100]})", file=path) from None
    if not isinstance(a, np.ndarray):
        raise DataError("expected a single .npy array, got an archive", file=path)
    return a


def handler(args: argparse.Namespace) -> int:
    """Run ``tasksift tsds`` with parsed ``args``; returns the exit code."""
    from ..methods.tsds import check_embeddings, check_params, draw, nearest_query_distance, prepare, tsds

    check_params(args.alpha, args.C, args.sigma, args.max_k, args.kde_k, args.sampling)
    if args.count is not None and args.count < 0:
        raise ConfigError(f"--count must be >= 0, got {args.count}")
    q = load_npy(args.query, "query")
    # the candidates stay on disk: the engine reads them shard by shard and checks their values
    x = load_npy(args.candidates, "candidates", mmap=True)
    check_embeddings(q, x if (x.ndim != 2 or x.size == 0) else x[:1], query_name=args.query,
                     candidates_name=args.candidates)
    source = args.candidates if x.flags.c_contiguous else x
    if args.count is not None and args.sampling != "with_replacement" and args.count > len(x):
        raise ConfigError(f"--count {args.count} is larger than the {len(x)} candidate rows in {args.candidates}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out exists and is not a folder", file=args.out)
    t0 = time.perf_counter()
    try:
        res = tsds(q, source, alpha=args.alpha, C=args.C, sigma=args.sigma, max_k=args.max_k,
                   kde_k=args.kde_k, index=args.index, seed=args.seed, normalize=args.normalize)
    except DataError as e:
        if e.file != "candidates":
            raise
        raise DataError(str(e).split(": ", 1)[-1], file=args.candidates) from None
    summary: dict[str, Any] = {
        "query": str(args.query), "candidates": str(args.candidates),
        "settings": {"alpha": args.alpha, "C": args.C, "sigma": args.sigma, "max_k": args.max_k,
                     "kde_k": args.kde_k, "index": args.index, "normalize": args.normalize,
                     "sampling": args.sampling, "seed": args.seed, "count": args.count},
        **{k: v for k, v in res.info.items()},
    }
    norms = np.linalg.norm(np.asarray(q, dtype=np.float64), axis=1)
    if not args.normalize and (abs(norms.mean() - 1.0) > 0.05):
        summary["warning"] = (f"query embeddings have mean norm {norms.mean():.3g}, not 1: the default "
                              f"C and sigma assume unit-norm embeddings (use --normalize)")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "probabilities.npy", suffix=".npy") as tmp:
        np.save(tmp, res.p)
    if args.count is not None:
        t1 = time.perf_counter()
        idx, sinfo = draw(res.p, args.count, rng=np.random.default_rng(args.seed), sampling=args.sampling,
                          fill_key=lambda: nearest_query_distance(*prepare(q, x, args.normalize)))
        sinfo["fill_rule"] = sinfo.get("fill_rule", "not needed")
        summary["selection"] = sinfo
        summary["timings"]["tsds_sample"] = time.perf_counter() - t1
        with atomic_path(out / "selected.npy", suffix=".npy") as tmp:
            np.save(tmp, idx)
        write_text(out / "indices.txt", "".join(f"{int(i)}\n" for i in idx))
    summary["timings"]["total"] = time.perf_counter() - t0
    write_json(out / "summary.json", summary)
    msg = (f"tasksift tsds: {len(q)} queries, {len(x)} candidates, support {res.info['support_size']} "
           f"({res.info['variant']}, index {res.info['index']['search']}")
    if res.info["ann_recall"]["search"] is not None and res.info["ann_recall"]["search"] < 1.0:
        msg += f", recall {res.info['ann_recall']['search']:.3f}"
    msg += ")"
    if args.count is not None:
        s = summary["selection"]
        msg += f"; selected {len(idx)} rows ({args.sampling})"
        if s.get("filled"):
            msg += f", {s['filled']} filled by the nearest-to-query rule (support < count)"
    print(msg)
    if "warning" in summary:
        print(f"  warning: {summary['warning']}")
    print(f"  wrote {out / 'probabilities.npy'}" + (f", {out / 'selected.npy'}, {out / 'indices.txt'}"
                                                    if args.count is not None else "")
          + f", {out / 'summary.json'}")
    return 0
