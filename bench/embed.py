"""Embedding modes on the real pool sample with a GSM8K target: speed, memory, selection quality.

    python bench/embed.py [--rows 20000] [--modes float32,bfloat16,int8,static] [--cache-dir DIR]
                          [--speed-rows 256] [--rounds 3] [--million 0] [--budget S] [--data ../shared/data]
                          [--no-estimate-check]

Pool: the first ``--rows`` rows of bench/methods.py's seeded 20k sample of the real pool;
target: the first 50 GSM8K train examples (as bench/methods.py builds them).

Per mode (``float32``, ``bfloat16``, ``float16``, ``int8``: the default model in that precision
on torch; ``onnx-int8``: the int8 ONNX export, where optimum installs; ``static``: the model2vec
model distilled from the default model):

* cold: rows/s of embedding the sample through the feature cache, and peak RSS. The cache and a
  JSON of these timings stay in ``--cache-dir``, so a later run reuses both (float32 20k rows
  take ~12+ minutes on 2 cores) and only computes the new modes or rows; ``--budget S`` stops
  each mode's cold run after ~S seconds, so a long table is built in runs of bounded length
  (its rows/s is then over all runs' rows and seconds; peak: the highest);
* speed vs float32: the modes embed the same ``--speed-rows`` rows in turn (A B C A B C ...,
  ``--rounds`` rounds, models loaded once, no cache): median rows/s and the median of the
  per-round ratios to float32, so a machine whose speed drifts still compares fairly;
* quality vs float32: Jaccard of the TSDS selection at 1% (TSDS draws its rows at random
  from its selection probabilities, so the header also gives float32 seed 0 vs seed 1, the
  floor of this column), Jaccard of the 1% rows of highest TSDS probability, the overlap of
  the two probability vectors (sum of min(p, p_float32): 1 = the same distribution), the
  share of selected rows from FLAN's gsm8k (the on-task rows), and kNN-10 overlap (the 10
  nearest pool rows of each target row, and of 500 sampled pool rows).

Last column: ``select --estimate``'s pool-embedding time (empty cache; scaled to the rows of
the recorded run) against the measured cold run. ``--million N`` also embeds N generated rows
(the sample's texts, numbered) with the static model, from a file-backed pool through a fresh
cache (both in a temporary folder under ``--million-dir``), and prints rows/s and peak RSS.
Exits cleanly (code 0, with a message) when the shared data is absent.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402

import methods as methods_bench  # noqa: E402  (bench/methods.py: pool sample, target, PeakRSS)
from tasksift.data.example import Example  # noqa: E402
from tasksift.features.embed import EmbedConfig, Embedder  # noqa: E402
from tasksift.methods.base import SelectionContext  # noqa: E402
from tasksift.methods.registry import get_method  # noqa: E402

MODES = {
    "float32": dict(dtype="float32"),
    "bfloat16": dict(dtype="bfloat16"),
    "float16": dict(dtype="float16"),
    "int8": dict(dtype="int8"),
    "onnx-int8": dict(dtype="int8", runtime="onnx"),
    "static": dict(model="static"),
}


def mode_config(mode: str, device: str) -> EmbedConfig:
    return EmbedConfig(device=device, **MODES[mode])


def cold_run(mode: str, cfg: EmbedConfig, pool: list[Example], target: list[Example], cache: Path,
             record: dict, budget: float | None = None, chunk: int = 1024,
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Pool and target embeddings of ``mode``, timing the pool rows the cache lacks.

    The rows are computed ``chunk`` at a time through the cache; with ``budget`` (seconds) the
    run stops after the chunk that passes it and returns None (the rows done stay cached, and
    the next run goes on from there). Each run that computes rows appends a piece
    ``{rows, seconds, peak_rss_mb, ...}`` to ``record[mode]["pieces"]``; the mode's rows,
    seconds and peak are over all its pieces (rows already cached by a smaller ``--rows`` run
    are reused, not timed)."""
    e = Embedder(cfg, cache_dir=cache, progress=True)
    ids = list(dict.fromkeys(ex.id + ":" + cfg.text for ex in pool))
    missing = e.cache.missing(ids)
    if missing:
        by_id = {ex.id + ":" + cfg.text: ex for ex in pool}
        rows = [by_id[ids[p]] for p in missing]
        _ = e.model                                   # load (and distil) outside the timing
        done = 0
        with methods_bench.PeakRSS() as mem:
            t = time.perf_counter()
            for s in range(0, len(rows), chunk):
                if budget is not None and time.perf_counter() - t > budget:
                    break
                e.embed(rows[s:s + chunk], desc=f"{mode} pool, rows {len(ids) - len(rows) + s:,}+")
                done = min(len(rows), s + chunk)
            secs = time.perf_counter() - t
        rec = record.setdefault(mode, {})
        pieces = rec.setdefault("pieces", [{k: rec[k] for k in ("rows", "seconds", "peak_rss_mb", "when")
                                            if k in rec}] if "rows" in rec else [])
        pieces.append({"rows": done, "seconds": secs, "peak_rss_mb": mem.peak / 2 ** 20,
                       "above_base_mb": mem.above_base_mb, "when": time.strftime("%Y-%m-%d %H:%M:%S")})
        rec.update(rows=sum(p["rows"] for p in pieces), seconds=sum(p["seconds"] for p in pieces),
                   peak_rss_mb=max(p["peak_rss_mb"] for p in pieces), cache=e.cache.dir.name,
                   complete=done == len(rows))
        if done < len(rows):
            print(f"mode {mode}: {len(ids) - len(rows) + done:,} of {len(ids):,} pool rows cached after "
                  f"{secs:.0f} s (budget {budget:g} s); run again to go on")
            return None
    return e.embed(pool, desc=f"{mode} (cached)"), e.embed(target, desc=f"{mode} target")


def tsds_pick(pool: list[Example], target: list[Example], pe: np.ndarray, te: np.ndarray, k: int,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """TSDS's selection (its seeded draw of ``k`` rows) and its selection probabilities."""
    ctx = SelectionContext(pool, target, seed=seed, progress=False)
    ctx.set_embeddings("pool", pe)
    ctx.set_embeddings("target", te)
    res = get_method("tsds")().select(ctx, k)
    return np.asarray(res.indices, dtype=np.int64), np.asarray(res.scores, dtype=np.float64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return len(set(a.tolist()) & set(b.tolist())) / max(1, len(set(a.tolist()) | set(b.tolist())))


def top_k(p: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows of highest probability (ties: lower row first)."""
    return np.argsort(-p, kind="stable")[:k]


def knn_overlap(q_a: np.ndarray, p_a: np.ndarray, q_b: np.ndarray, p_b: np.ndarray, k: int = 10,
                self_rows: np.ndarray | None = None) -> float:
    """Mean share of the k nearest pool rows that two embeddings agree on (a query that is
    pool row ``self_rows[i]`` does not count itself)."""
    def top(q, p):
        s = q @ p.T
        if self_rows is not None:
            s[np.arange(len(q)), self_rows] = -np.inf
        return np.argsort(-s, axis=1)[:, :k]

    a, b = top(q_a, p_a), top(q_b, p_b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def speed_rounds(modes: list[str], configs: dict, texts: list[str], rounds: int, cache: Path) -> dict:
    """rows/s per mode per round, the modes taking turns on the same texts."""
    embedders = {m: Embedder(configs[m], cache_dir=cache, progress=False) for m in modes}
    for m, e in embedders.items():
        e.encode_texts(texts[:16])                    # load and warm up
    out: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for m, e in embedders.items():
            t = time.perf_counter()
            e.encode_texts(texts)
            out[m].append(len(texts) / (time.perf_counter() - t))
    return out


def estimate_vs_measured(mode: str, cfg: EmbedConfig, pool: list[Example], target: list[Example],
                         record: dict, cache: Path) -> str:
    """``select --estimate``'s pool-embedding time with no cached embeddings (the distilled
    static model is reused, as the measured run did) against the measured cold run."""
    from tasksift.data.loading import LoadedData
    from tasksift.estimate import estimate_select

    if mode not in record:
        return "-"
    with tempfile.TemporaryDirectory() as empty:
        if (cache / "models").is_dir():
            (Path(empty) / "models").symlink_to((cache / "models").resolve())
        est = estimate_select(LoadedData(examples=pool, path="<sample>", format="jsonl", layout="mixed"),
                              LoadedData(examples=target, path="<target>", format="jsonl", layout="mixed"),
                              "tsds", ratio=0.01, embed=cfg, cache_dir=empty)
    secs = next(s.seconds for s in est.stages if s.stage == "embed pool") * record[mode]["rows"] / est.unique_rows
    return f"{secs:,.0f} s / {record[mode]['seconds']:,.0f} s"


def million(n: int, pool: list[Example], device: str, folder: str | None, models: Path | None) -> str:
    """Embed ``n`` generated rows (the sample's texts, numbered) with the static model, as
    ``select`` does: from a file-backed pool (written first, untimed) through a fresh cache,
    both in a temporary folder under ``folder``. ``models``: a cache's models folder whose
    distilled static model to reuse."""
    from tasksift.data.pool import PoolWriter

    base = [ex.text[:4000] for ex in pool]
    with tempfile.TemporaryDirectory(dir=folder, prefix="tasksift-bench-million-") as tmp:
        t = time.perf_counter()
        writer = PoolWriter(tmp)
        for s in range(0, n, 8192):
            writer.add([Example(messages=[{"role": "user", "content": f"{base[i % len(base)]} #{i}"}], raw={}, row=i)
                        for i in range(s, min(n, s + 8192))])
        rows = writer.finish()
        made = time.perf_counter() - t
        cache = Path(tmp) / "cache"
        if models is not None and models.is_dir():
            cache.mkdir()
            (cache / "models").symlink_to(models.resolve())
        e = Embedder(mode_config("static", device), cache_dir=cache, progress=True)
        _ = e.model
        with methods_bench.PeakRSS() as mem:
            t = time.perf_counter()
            emb = e.embed(rows, desc=f"static, {n:,} generated rows")
            secs = time.perf_counter() - t
        del rows
    return (f"static model, {n:,} generated rows (the sample's texts, numbered; pool file written first in "
            f"{made:.0f} s) from a file-backed pool through a fresh cache: {secs:.0f} s, {n / secs:,.0f} rows/s, "
            f"peak RSS {mem.peak / 2 ** 20:,.0f} MiB (at start {mem.base / 2 ** 20:,.0f} MiB), dim {emb.shape[1]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--modes", default="float32,bfloat16,int8,static")
    ap.add_argument("--cache-dir", default=None, help="persistent cache + timings (default: a temporary folder)")
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--targets", type=int, default=50)
    ap.add_argument("--speed-rows", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--million", type=int, default=0, help="also embed this many generated rows with the static model")
    ap.add_argument("--million-dir", default=None,
                    help="folder for --million's pool file and cache (default: the system temp folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of cold embedding per mode per run: stop after the chunk that passes it "
                         "(the cache keeps the rows; run again to go on; the table waits for every mode)")
    ap.add_argument("--no-estimate-check", dest="estimate_check", action="store_false",
                    help="skip comparing select --estimate with each mode's measured cold run")
    ap.add_argument("--data", default=None, help="shared data folder (default ../shared/data beside the repo)")
    args = ap.parse_args()
    if args.data:
        methods_bench.SHARED = Path(args.data)
    if not (methods_bench.SHARED / "pool").is_dir():
        print(f"bench/embed.py: no pool at {methods_bench.SHARED / 'pool'}; nothing to measure")
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown or "float32" not in modes:
        ap.error(f"modes must include float32 and be among {', '.join(MODES)} (unknown: {sorted(unknown)})")
    pool = methods_bench.load_pool(20_000, 0)[:args.rows]
    target = methods_bench.load_target(args.targets)
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="tasksift-bench-embed-"))
    timings_path = cache / f"bench-embed-timings-{args.rows}.json"
    record = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    configs = {m: mode_config(m, args.device) for m in modes}
    embs, unfinished = {}, []
    for m in modes:
        try:
            got = cold_run(m, configs[m], pool, target, cache, record, budget=args.budget)
        except Exception as e:  # an optional runtime that does not install here
            print(f"mode {m}: skipped ({type(e).__name__}: {e})")
            continue
        cache.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(record, indent=1))
        if got is None:
            unfinished.append(m)
        else:
            embs[m] = got
    if unfinished:
        print(f"not all rows embedded yet ({', '.join(unfinished)}): no table; timings so far in {timings_path}")
        return 0
    modes = [m for m in modes if m in embs]
    texts = [ex.text[:4000] for ex in pool[:args.speed_rows]]
    speed = speed_rounds(modes, configs, texts, args.rounds, cache) if args.rounds else {}
    k = max(1, round(args.ratio * len(pool)))
    ref_pe, ref_te = embs["float32"]
    ref_pick, ref_p = tsds_pick(pool, target, ref_pe, ref_te, k)
    # TSDS draws k rows from its probabilities: float32 with another seed is the floor of the
    # draw's Jaccard (any change of the vectors beyond ~1e-5 reshuffles the draw like a new seed)
    seed_floor = jaccard(ref_pick, tsds_pick(pool, target, ref_pe, ref_te, k, seed=1)[0])
    rng = np.random.default_rng(0)
    probe = rng.choice(len(pool), size=min(500, len(pool)), replace=False)
    chars = np.mean([len(ex.text[:4000]) for ex in pool])
    print(f"\n{len(pool):,} rows of the real pool sample (mean {chars:.0f} chars), {len(target)} GSM8K target rows; "
          f"TSDS selects {k} ({100 * args.ratio:g}%); device {args.device}; cold runs: one each, under the load of "
          f"the moment; speed: {args.rounds} alternating rounds on {len(texts)} rows; TSDS draw Jaccard of "
          f"float32 seed 0 vs seed 1 (the floor of that column): {seed_floor:.3f}")
    print("| mode | dim | cold rows/s | cold peak RSS MiB | speed rows/s (median) | vs float32 (median) "
          "| TSDS Jaccard vs float32 (draw) | TSDS top-1% Jaccard | TSDS prob. overlap | gsm8k share "
          "| kNN-10 target->pool | kNN-10 pool->pool | --estimate / measured cold |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in modes:
        pe, te = embs[m]
        pick, p = tsds_pick(pool, target, pe, te, k)
        jac = jaccard(pick, ref_pick)
        jac_top = jaccard(top_k(p, k), top_k(ref_p, k))
        overlap = float(np.minimum(p, ref_p).sum())          # 1: the same distribution to draw from
        share = np.mean(["gsm8k" in (pool[i].source or "") for i in pick])
        kt = knn_overlap(te, pe, ref_te, ref_pe)
        kp = knn_overlap(pe[probe], pe, ref_pe[probe], ref_pe, self_rows=probe)
        r = record.get(m, {})
        runs = len(r.get("pieces", [])) if r else 0
        cold = (f"{r['rows'] / r['seconds']:,.1f}" + (f" ({runs} runs)" if runs > 1 else "")) if r else "-"
        peak = f"{r['peak_rss_mb']:,.0f}" if r else "-"
        if speed:
            med = statistics.median(speed[m])
            ratio = statistics.median(a / b for a, b in zip(speed[m], speed["float32"]))
            sp, rt = f"{med:,.1f}", f"{ratio:.2f}x"
        else:
            sp = rt = "-"
        ev = estimate_vs_measured(m, configs[m], pool, target, record, cache) if args.estimate_check else "-"
        print(f"| {m} | {pe.shape[1]} | {cold} | {peak} | {sp} | {rt} | {jac:.3f} | {jac_top:.3f} | {overlap:.3f} "
              f"| {share:.3f} | {kt:.3f} "
              f"| {kp:.3f} | {ev} |")
    if args.million:
        print(million(args.million, pool, args.device, args.million_dir, cache / "models"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
