"""Every registered selection method on the same pool sample and target: time, memory, overlap.

    python bench/methods.py [--rows 20000] [--ratio 0.05] [--targets 50] [--with-lm]
                            [--less-rows 500] [--lm-dtype bfloat16] [--recipe "dedup -> knn"]
                            [--cache-dir DIR] [--json OUT] [--cold-json RUN.json ...]

Pool: a seeded sample of ``--rows`` rows of the real pool in ../shared/data/pool; target:
the first ``--targets`` GSM8K train examples (../shared/data/targets/gsm8k/train.jsonl).
Exits cleanly (code 0, with a message) when the shared data is absent.

Pool and target embeddings are computed once (feature cache) and given to every method, so
a method's time is its own work. Methods that need the language model (``needs`` "lm" or
"gradients") are skipped unless ``--with-lm`` (minutes to hours on CPU). Per method it
prints wall time, peak RSS above the pre-method baseline (psutil, sampled every 10 ms) and
the rows selected, then the pairwise Jaccard overlap of the selections.

The LM methods can take hours on a CPU; run them once each with ``--json`` (their features
go to the cache, resumable), then run everything with ``--cold-json those.json``: the table
then gives those methods' cold-run time, memory and stages (their selections are checked to
be the same), and the overlaps of all selections. Each row also names its top sources.

``less`` (a 1,000-row LoRA warm-up, ~25 min, then per-example LoRA gradients + the dense
8192-d Rademacher projection at ~1.5 rows/s in bfloat16 on 2 CPU cores: ~4 hours for 20k
rows; resumable) runs on a seeded sub-sample of
``--less-rows`` pool rows (default 500; 0 = the whole sample) with the same ratio; its row
says what it ran on and an extrapolated time for the whole sample (linear in rows).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from tasksift.data.example import Example  # noqa: E402
from tasksift.errors import TasksiftError  # noqa: E402
from tasksift.manifest import peak_memory_mb  # noqa: E402
from tasksift.methods.base import SelectionContext  # noqa: E402
from tasksift.methods.registry import available_methods, get_method  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LM_NEEDS = {"lm", "gradients"}
#: options for methods that need some to run as selectors at all
BENCH_OPTIONS = {"length": {"min_words": 20, "max_words": 400}}


class PeakRSS:
    """Peak resident memory (MiB) of this process while the block runs, sampled by a thread."""

    def __init__(self, every: float = 0.01) -> None:
        self.every, self.proc = every, psutil.Process()

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def above_base_mb(self) -> float:
        return (self.peak - self.base) / 2 ** 20


def options_for(name: str, args: argparse.Namespace) -> dict:
    """The options the bench gives method ``name``: BENCH_OPTIONS, plus ``--lm-dtype`` for LM methods."""
    opts = dict(BENCH_OPTIONS.get(name, {}))
    info = next((i for i in available_methods() if i.name == name), None)
    if args.lm_dtype and info is not None and LM_NEEDS & set(info.needs):
        opts["dtype"] = args.lm_dtype
    return opts


def top_sources(pool: list[Example], idx: np.ndarray, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` most frequent sources of the selected rows (the pool file, less the folder
    and extension), with their shares."""
    names = [Path(pool[i].source or "?").with_suffix("").as_posix().split("/pool/")[-1] for i in idx]
    if not names:
        return []
    vals, counts = np.unique(np.asarray(names), return_counts=True)
    order = np.lexsort((vals, -counts))[:n]
    return [(str(vals[i]), float(counts[i] / len(names))) for i in order]


def load_pool(rows: int, seed: int) -> list[Example]:
    from tasksift.data import load_examples

    d = load_examples(SHARED / "pool")
    rng = random.Random(seed)
    return rng.sample(d.examples, min(rows, len(d.examples)))


def load_target(n: int) -> list[Example]:
    path = SHARED / "targets" / "gsm8k" / "train.jsonl"
    try:
        from tasksift.data import load_examples

        return load_examples(path, limit=n).examples
    except ImportError:  # the loader is not there: build the examples from the JSON rows
        out = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if len(out) == n:
                    break
                row = json.loads(line)
                out.append(Example(messages=[{"role": "user", "content": row["question"]},
                                             {"role": "assistant", "content": row["answer"]}],
                                   raw=row, row=i, source=str(path)))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-lm", action="store_true", help="also run methods that need the language model")
    ap.add_argument("--only", nargs="*", default=None, help="run only these methods")
    ap.add_argument("--less-rows", type=int, default=500,
                    help="run less on a seeded sub-sample of this many pool rows (0 = all; default 500)")
    ap.add_argument("--recipe", action="append", default=None,
                    help="also run this recipe (repeatable; default: 'dedup -> knn')")
    ap.add_argument("--lm-dtype", default=None,
                    help="dtype option for the methods that need the language model (e.g. bfloat16: AMX on recent "
                         "x86 CPUs, ~2.9x the float32 loss engine; default: each method's own, float32 on CPU)")
    ap.add_argument("--cache-dir", default=None, help="feature cache (default $TASKSIFT_CACHE or ~/.cache/tasksift)")
    ap.add_argument("--mark", default="gsm8k",
                    help="report the share of selected rows whose source path contains this (default gsm8k: "
                         "the FLAN copy of GSM8K train, the on-task rows)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    ap.add_argument("--cold-json", nargs="*", default=[],
                    help="JSON files of earlier runs (--json) whose time, memory and stages to report for "
                         "their methods: the cold run that computed the LM features, when this run reads "
                         "them from the feature cache. A method's selection must be the same in both")
    args = ap.parse_args()
    if not (SHARED / "pool").is_dir() or not (SHARED / "targets" / "gsm8k" / "train.jsonl").is_file():
        print(f"bench/methods.py: real data not found under {SHARED}; nothing to run (skipped)")
        return 0

    t = time.perf_counter()
    pool = load_pool(args.rows, args.seed)
    target = load_target(args.targets)
    t_load = time.perf_counter() - t
    k = max(1, int(round(args.ratio * len(pool))))
    marked = np.array([args.mark in (ex.source or "") for ex in pool])
    base = SelectionContext(pool, target, seed=args.seed, cache_dir=args.cache_dir, progress=True)
    t = time.perf_counter()
    xp = base.embeddings("pool")
    xt = base.embeddings("target")
    t_embed = time.perf_counter() - t
    print(f"\npool: {len(pool)} rows sampled (seed {args.seed}) from {SHARED / 'pool'}; target: {len(target)} "
          f"GSM8K train examples; budget k = {k} ({100 * args.ratio:g}%)")
    print(f"load {t_load:.1f}s; embeddings (pool + target, feature cache) {t_embed:.1f}s; dim {xp.shape[1]}")

    runs: list[tuple[str, object]] = []
    for info in available_methods():
        if args.only is not None and info.name not in args.only:
            continue
        if LM_NEEDS & set(info.needs) and not args.with_lm:
            print(f"skip {info.name} (needs {', '.join(info.needs)}; use --with-lm)")
            continue
        runs.append((info.name, info.name))
    for r in (args.recipe if args.recipe is not None else ["dedup -> knn"]):
        runs.append((r, r))

    cold_runs: dict[str, dict] = {}
    for f in args.cold_json:
        for name, r in json.loads(Path(f).read_text())["methods"].items():
            if "error" not in r:
                cold_runs[name] = {**r, "file": Path(f).name}
    results: dict[str, dict] = {}
    selections: dict[str, set] = {}
    for label, spec in runs:
        # progress bars (to stderr) only for the slow LM methods: a long run shows where it is
        info = next((i for i in available_methods() if i.name == spec), None)
        slow = info is not None and bool(LM_NEEDS & set(info.needs))
        ctx = SelectionContext(pool, target, seed=args.seed, cache_dir=args.cache_dir, progress=slow)
        ctx.set_embeddings("pool", xp)
        ctx.set_embeddings("target", xt)
        try:
            if "->" in spec:
                from tasksift.recipe import parse_recipe

                runner = parse_recipe(spec)
                call = lambda: runner.run(ctx, k)  # noqa: E731
            else:
                method = get_method(spec)(**options_for(spec, args))
                call = lambda: method.select(ctx, k)  # noqa: E731
            sub = None
            if spec == "less" and 0 < args.less_rows < len(pool):
                # a seeded sub-sample, same ratio; indices mapped back to pool positions
                sub = np.sort(np.random.default_rng(args.seed).choice(len(pool), args.less_rows, replace=False))
                k_sub = max(1, int(round(args.ratio * len(sub))))
                sctx = ctx.restrict(sub)

                def call(method=method, sctx=sctx, k_sub=k_sub, sub=sub):
                    r = method.select(sctx, k_sub)
                    r.indices = sub[np.asarray(r.indices, dtype=np.int64)]
                    return r
            with PeakRSS() as mem:
                t = time.perf_counter()
                res = call()
                wall = time.perf_counter() - t
        except TasksiftError as e:
            print(f"{label}: error: {e}")
            results[label] = {"error": str(e)}
            continue
        idx = np.asarray(res.indices, dtype=np.int64)
        selections[label] = set(idx.tolist())
        results[label] = {"seconds": wall, "peak_rss_above_base_mib": mem.above_base_mb, "selected": int(len(idx)),
                          "options": options_for(spec, args) if "->" not in spec else {},
                          "marked_share": float(marked[idx].mean()) if len(idx) else 0.0,
                          "top_sources": top_sources(pool, idx),
                          "indices": idx.tolist(),
                          "timings": {s: round(v, 2) for s, v in ctx.timings.items()}}
        cold = cold_runs.get(label) if slow else None    # only the LM methods' features are cached
        if cold is not None:
            same = (cold["selected"] == len(idx) and abs(cold["marked_share"] - results[label]["marked_share"]) < 1e-12
                    and ("indices" not in cold or cold["indices"] == idx.tolist()))
            if not same:
                print(f"{label}: the selection differs from the cold run's in {cold['file']}; reporting this run")
            else:
                results[label].update({k2: cold[k2] for k2 in ("seconds", "peak_rss_above_base_mib", "timings")})
                results[label]["cached_run_seconds"] = wall
                results[label]["cold_run"] = cold["file"]
        if sub is not None:
            results[label]["ran_on"] = f"{len(sub)} of {len(pool)} rows (seeded sub-sample)"
            results[label]["extrapolated_seconds_full"] = wall * len(pool) / len(sub)
        print(f"  {label}: {wall:.2f}s, {len(idx)} rows")

    names = list(selections)
    print(f"\nrows from *{args.mark}* sources: {100 * marked.mean():.1f}% of the pool sample")
    print(f"\n| method | options | wall s | peak RSS +MiB | rows | from *{args.mark}* | top sources | stages (s) |\n"
          f"|---|---|---:|---:|---:|---:|---|---|")
    for label, r in results.items():
        if "error" in r:
            print(f"| {label} | | error: {r['error']} | | | | | |")
        else:
            opts = ", ".join(f"{a}={b}" for a, b in r["options"].items()) or "defaults"
            if "ran_on" in r:
                opts += (f"; ran on {r['ran_on']}, whole sample ~{r['extrapolated_seconds_full']:,.0f}s "
                         f"extrapolated")
            if "cold_run" in r:
                opts += f"; cold run from {r['cold_run']} (this run, features cached: {r['cached_run_seconds']:.1f}s)"
            stages = ", ".join(f"{a} {b}" for a, b in r["timings"].items()) or "-"
            srcs = ", ".join(f"{a} {100 * b:.0f}%" for a, b in r["top_sources"])
            print(f"| {label} | {opts} | {r['seconds']:.2f} | {r['peak_rss_above_base_mib']:.0f} | {r['selected']} "
                  f"| {100 * r['marked_share']:.1f}% | {srcs} | {stages} |")
    short = {n: f"M{i + 1}" for i, n in enumerate(names)}
    print("\npairwise Jaccard overlap of the selections (" +
          ", ".join(f"{v} = {n}" for n, v in short.items()) + ")\n")
    print("| | " + " | ".join(short[n] for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    jac = {}
    for a in names:
        row = []
        for b in names:
            sa, sb = selections[a], selections[b]
            j = len(sa & sb) / max(1, len(sa | sb))
            jac[f"{a} | {b}"] = j
            row.append(f"{j:.2f}")
        print(f"| {short[a]} {a} | " + " | ".join(row) + " |")
    print(f"\nprocess peak RSS {peak_memory_mb():,.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": len(pool), "k": k, "embed_seconds": t_embed,
                                               "methods": results, "jaccard": jac}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
