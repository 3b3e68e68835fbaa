"""``report.html`` beside a selection: why these rows, on one self-contained page (plots
inlined as base64 PNG, no scripts, no network), small whatever the pool's size.

Sections: the run (method, options, budget, seed, timings); source mix of the subset against
the pool; score distribution (when the method scores rows); length distribution of the subset
against the pool and the target; target coverage; each target example's nearest selected
rows; near-duplicate groups a density penalty down-weighted (TSDS's KDE). Every row text is
HTML-escaped and clipped; tables are capped (constants below), plots are histograms, so the
page does not grow with the pool.
"""
from __future__ import annotations

import html
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..atomic import write_text
from .html_parts import clip, fmt, img, png_data_uri, table, use_agg

#: caps that keep the page small for any pool
MAX_SOURCES = 15
MAX_TARGETS_SHOWN = 30
MAX_UNCOVERED_SHOWN = 20
MAX_GROUPS_SHOWN = 10
TARGET_CHARS = 300
ROW_CHARS = 220

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;font-size:12px;margin:8px 0 18px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}td.text{text-align:left;white-space:normal;max-width:520px}
table.rows td,table.rows th,table.kv td{text-align:left}ol{margin:0;padding-left:20px}li{margin-bottom:4px}.sim{color:#555;font-variant-numeric:tabular-nums}
img{max-width:100%;margin:6px 12px 6px 0;border:1px solid #eee}.grid{display:flex;flex-wrap:wrap;align-items:flex-start}
code{background:#f4f4f4;padding:1px 4px}h2{margin-top:28px;border-bottom:1px solid #ddd}.note{color:#555;font-size:13px}
.warn{background:#fff4e0;padding:6px 10px;border-left:3px solid #e0a030}"""

_POOL, _SUBSET, _TARGET = "#7f7f7f", "#1f77b4", "#d62728"


# ------------------------------------------------------------------ facts (no HTML)
def source_key(source: Any, fallback: str) -> str:
    """A row's source as the manifest's source mix names it: the first path part below the
    pool folder (``fallback`` for a single-file pool)."""
    return Path(source).parts[0] if source else fallback


def source_table(pool_counts: Mapping[Any, int], picked_counts: Mapping[Any, int], fallback: str,
                 limit: int = MAX_SOURCES) -> list[tuple[str, int, int]]:
    """(source, pool rows, selected rows) for the ``limit`` sources with most selected rows
    (then most pool rows), and one ``other (n sources)`` row for the rest, from the rows per
    raw source of the pool and of the subset (:meth:`tasksift.data.pool.Pool.source_counts`);
    the selected column sums to the subset's size and the pool column to the pool's."""
    def by_key(counts: Mapping[Any, int]) -> Counter:
        out: Counter = Counter()
        for src, n in counts.items():
            out[source_key(src, fallback)] += n
        return out

    pool, picked = by_key(pool_counts), by_key(picked_counts)
    keys = sorted(pool, key=lambda s: (-picked.get(s, 0), -pool[s], s))
    rows = [(s, pool[s], picked.get(s, 0)) for s in keys[:limit]]
    rest = keys[limit:]
    if rest:
        rows.append((f"other ({len(rest)} sources)", sum(pool[s] for s in rest), sum(picked.get(s, 0) for s in rest)))
    return rows


def length_stats(words: np.ndarray) -> dict[str, float | None]:
    w = np.asarray(words, dtype=np.float64)
    if not len(w):
        return {"rows": 0, "median": None, "mean": None, "p90": None}
    return {"rows": len(w), "median": float(np.median(w)), "mean": float(w.mean()),
            "p90": float(np.percentile(w, 90))}


def score_scale(scores: np.ndarray) -> tuple[bool, bool]:
    """How scores are plotted: (leave the zeros out, log10 scale). Scores that are all >= 0
    (probabilities) leave their zeros out (counted in the table) when over half of the rows
    are 0 or the positive ones span over three orders of magnitude, which are then shown as
    log10."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    pos = s[s > 0]
    if not len(pos) or not (s >= 0).all():
        return False, False
    log = float(pos.max() / pos.min()) > 1e3
    return log or len(pos) < 0.5 * len(s), log


def plotted_scores(scores: np.ndarray, no_zeros: bool, log: bool) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if no_zeros:
        s = s[s > 0]
    if not log:
        return s
    logs = np.log10(s)
    return np.maximum(logs, logs.max() - 8) if len(logs) else logs   # 8 decades: the lowest bin holds the rest


# ------------------------------------------------------------------ plots
def _hist_plot(series: list[tuple[str, np.ndarray, str]], xlabel: str, title: str, *, log_bins: bool = False,
               vline: float | None = None, vlabel: str = "") -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.3))
    vals = [v for _, v, _ in series if len(v)]
    if vals:
        lo, hi = min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)
        if log_bins:
            lo = max(lo, 1.0)
            bins = np.geomspace(lo, max(hi, lo * 1.01), 40)
            ax.set_xscale("log")
        else:
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-9, 40)
        for label, v, color in series:
            if len(v):
                ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step", linewidth=1.8,
                        color=color, label=f"{label} ({len(v):,})")
    if vline is not None:
        ax.axvline(vline, color="#444", linestyle=":", label=vlabel)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share (density)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return png_data_uri(fig)


def _source_plot(rows: list[tuple[str, int, int]], n_pool: int, k: int) -> str:
    import matplotlib.pyplot as plt

    rows = rows[:12][::-1]
    fig, ax = plt.subplots(figsize=(6.2, 0.32 * len(rows) + 1.1))
    y = np.arange(len(rows))
    ax.barh(y + 0.2, [100 * p / max(1, n_pool) for _, p, _ in rows], height=0.4, color=_POOL, label="pool")
    ax.barh(y - 0.2, [100 * s / max(1, k) for _, _, s in rows], height=0.4, color=_SUBSET, label="subset")
    ax.set_yticks(y, [r[0] if len(r[0]) <= 32 else r[0][:30] + "…" for r in rows], fontsize=8)
    ax.set_xlabel("% of rows")
    ax.set_title("source mix: subset vs pool", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return png_data_uri(fig)


def _per_target_plot(counts: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.3))
    order = np.sort(counts)[::-1]
    ax.bar(np.arange(1, len(order) + 1), order, width=1.0, color=_SUBSET)
    ax.set_xlabel("target examples, sorted by rows they are nearest to")
    ax.set_ylabel("selected rows")
    ax.set_title("selected rows per target example (as their nearest)", fontsize=10)
    ax.grid(alpha=0.3)
    return png_data_uri(fig)


# ------------------------------------------------------------------ sections
def _where(ex: Any) -> str:
    return f"{ex.source}:{ex.row}" if ex.source else f"row {ex.row}"


def _run_section(sel: Any, ex: Any) -> str:
    n, k = len(sel.pool), len(sel.indices)
    emb = sel.embedding or {}
    rows = [("method", sel.method), ("options", json.dumps(sel.config, default=str) if sel.config else "defaults"),
            ("budget", ", ".join(f"{a} {b}" for a, b in sel.budget.describe().items())), ("seed", sel.seed),
            ("pool", f"{sel.pool.path} ({sel.pool.format}, {n:,} rows, {len(sel.pool.skipped):,} skipped)"),
            ("target", f"{sel.target.path} ({sel.target.format}, {len(sel.target):,} examples)"),
            ("selected", f"{k:,} rows ({100 * k / max(1, n):.2f}% of the pool)"),
            ("embedding model", emb.get("model") if emb.get("used") else "none (the method embeds nothing)"),
            ("similarity in this report", ex.similarity), ("backend", sel.info.get("backend"))]
    timing = [(stage, secs) for stage, secs in sel.timings.items()]
    warn = "".join(f"<p class='warn'>{html.escape(w)}</p>" for w in sel.info.get("warnings", []))
    return ("<h2>The run</h2>" + warn + table(["", ""], rows, css="kv") +
            "<p class='note'>Seconds per stage (the report's own time is in manifest.json, <code>timings.report</code>):</p>"
            + table(["stage", "seconds"], timing))


def _source_section(sel: Any) -> str:
    n, k = len(sel.pool), len(sel.indices)
    rows = source_table(sel.pool.pool.source_counts(), sel.pool.pool.source_counts(sel.indices),
                        Path(sel.pool.path).name)
    body = [(s, p, f"{100 * p / max(1, n):.1f}", c, f"{100 * c / max(1, k):.1f}",
             f"{(c / k) / (p / n):.2f}" if p and k else "–") for s, p, c in rows]
    body.append(("total", n, "100.0", k, "100.0", "–"))
    plot = img(_source_plot(rows, n, k), "source mix") if len(rows) > 1 else ""
    return ("<h2>Source mix: subset vs pool</h2><p class='note'><i>enrichment</i> = share in the subset / share "
            "in the pool (1 = as random selection would give).</p><div class='grid'>"
            + table(["source", "pool rows", "pool %", "selected", "selected %", "enrichment"], body) + plot + "</div>")


def _score_section(sel: Any) -> str:
    if sel.scores is None or not np.isfinite(np.asarray(sel.scores, dtype=np.float64)).any():
        return (f"<h2>Scores</h2><p class='note'>Method <code>{html.escape(sel.method)}</code> gives no per-row "
                "scores.</p>")
    scores = np.asarray(sel.scores, dtype=np.float64)
    picked = scores[sel.indices]
    no_zeros, log = score_scale(scores)
    label = ("log10(score), at most 8 decades" if log else "score") + ("; rows with score 0 left out" if no_zeros else "")
    stats = [(name, int(np.isfinite(v).sum()), *(f"{float(f(v[np.isfinite(v)])):.4g}" if np.isfinite(v).any() else "–"
                                                  for f in (np.min, np.median, np.max)), int((v == 0).sum()))
             for name, v in (("pool", scores), ("selected", picked))]
    note = (f" {int((scores == 0).sum()):,} pool rows and {int((picked == 0).sum()):,} selected rows have score 0 "
            "(left out of the plot).") if no_zeros else ""
    series = [("pool", plotted_scores(scores, no_zeros, log), _POOL),
              ("selected", plotted_scores(picked, no_zeros, log), _SUBSET)]
    values = np.unique(scores[np.isfinite(scores)])
    if len(values) <= 2:     # an indicator (random: 1 = picked): nothing to plot
        note += f" The scores take only the values {', '.join(f'{v:.4g}' for v in values)}."
        plot = ""
    else:
        plot = img(_hist_plot(series, label, "score: selected vs pool"), "score distribution")
    return ("<h2>Score distribution</h2><p class='note'>The method's score of each row (column "
            f"<code>tasksift_score</code>; higher = preferred).{note}</p><div class='grid'>"
            + table(["rows", "scored", "min", "median", "max", "score 0"], stats) + plot + "</div>")


def _length_section(sel: Any) -> str:
    words = np.asarray(sel.pool.pool.words)
    target_words = np.array([len(ex.text.split()) for ex in sel.target.examples], dtype=np.int64)
    series = [("pool", words, _POOL), ("selected", words[sel.indices], _SUBSET), ("target", target_words, _TARGET)]
    stats = [(name, *(fmt(x, 1) for x in length_stats(v).values())) for name, v, _ in series]
    return ("<h2>Length: subset vs target</h2><p class='note'>Whitespace-separated words of prompt + response.</p>"
            "<div class='grid'>" + table(["rows", "count", "median", "mean", "p90"], stats)
            + img(_hist_plot(series, "words (log scale)", "length distribution", log_bins=True), "length distribution")
            + "</div>")


def _coverage_section(sel: Any, ex: Any) -> str:
    targets = list(sel.target.examples)
    best = ex.best_sim_of_target
    low = ex.uncovered()
    related = ex.sim_of_selected > 0     # a row sharing nothing with any target is nobody's
    per_target = np.bincount(ex.target_of_selected[related], minlength=len(targets))
    plots = (img(_hist_plot([("target examples", best[np.isfinite(best)], _TARGET)],
                            "similarity of the nearest selected row", "best match of each target example",
                            vline=ex.coverage_threshold, vlabel=f"threshold {ex.coverage_threshold}"), "coverage")
             + img(_per_target_plot(per_target), "rows per target"))
    shown = low[:MAX_UNCOVERED_SHOWN]
    rows = [(int(t) + 1, html.escape(_where(targets[t])), best[t], f"<span>{clip(targets[t].text, TARGET_CHARS)}</span>")
            for t in shown]
    more = f" ({len(low) - len(shown):,} more not shown)" if len(low) > len(shown) else ""
    listing = (table(["target #", "where", "best similarity", "target example"], rows, raw_cols=(1, 3), css="rows")
               if rows else "<p>Every target example has a selected row above the threshold.</p>")
    return (f"<h2>Target coverage</h2><p><b>{len(targets) - len(low):,} of {len(targets):,}</b> target examples have "
            f"a selected row with similarity ≥ <b>{ex.coverage_threshold}</b> ({html.escape(ex.similarity)}). "
            f"Uncovered target examples, least similar first{more}:</p>" + listing
            + f"<p class='note'>Selected rows per target example: median {fmt(float(np.median(per_target)), 1)}, "
              f"max {int(per_target.max()):,}; {int((per_target == 0).sum()):,} target examples are nobody's nearest.</p>"
            + f"<div class='grid'>{plots}</div>")


def _neighbours_section(sel: Any, ex: Any) -> str:
    targets = list(sel.target.examples)
    shown = np.arange(min(len(targets), MAX_TARGETS_SHOWN))
    positions = sorted({int(p) for p in ex.rows_of_target[shown].ravel() if p >= 0})
    rows_by_pos = dict(zip(positions, sel.pool.pool.examples(sel.indices[positions]))) if positions else {}
    sources_by_pos = dict(zip(positions, sel.pool.pool.sources_at(sel.indices[positions]))) if positions else {}
    body = []
    for t in shown:
        items = []
        for p, s in zip(ex.rows_of_target[t], ex.sims_of_target[t]):
            if p < 0:
                continue
            src = sources_by_pos[int(p)]
            where = f"rank {int(p) + 1}" + (f", {html.escape(str(src))}" if src else "")
            items.append(f"<li><span class='sim'>{float(s):.3f} · {where}</span><br>{clip(rows_by_pos[int(p)].text, ROW_CHARS)}</li>")
        body.append((f"#{int(t) + 1} <span class='sim'>({html.escape(_where(targets[t]))})</span><br>"
                     f"{clip(targets[t].text, TARGET_CHARS)}", f"<ol>{''.join(items)}</ol>"))
    more = (f" The first {len(shown)} of {len(targets):,} are shown; every selected row's nearest target is in the "
            "output columns.") if len(targets) > len(shown) else ""
    return ("<h2>Nearest selected rows of each target example</h2>"
            f"<p class='note'>Similarity: {html.escape(ex.similarity)}; <i>rank</i> = the row's "
            f"<code>tasksift_rank</code> in the subset.{more}</p>"
            + table(["target example", "nearest selected rows (similarity · rank, source)"], body, raw_cols=(0, 1),
                    css="rows"))


def _duplicates_section(sel: Any, ex: Any) -> str:
    if ex.density_column is None:
        return (f"<h2>Near-duplicate groups</h2><p class='note'>Method <code>{html.escape(sel.method)}</code> applies "
                "no density penalty (TSDS with <code>sigma</code> &gt; 0 does), so no rows were down-weighted for "
                "having near-duplicates.</p>")
    density = np.asarray(sel.columns[ex.density_column], dtype=np.float64)
    intro = ("<h2>Near-duplicate groups the density penalty down-weighted</h2><p class='note'>TSDS divides the "
             "mass a row can take by its KDE density ρ (ρ = 1 + the kernel weights of its neighbours within σ; an "
             "exact copy adds 1; column <code>tasksift_tsds_density</code>), so a cluster of near-copies shares "
             "one row's worth of probability instead of crowding the subset. Groups: the "
             f"densest rows (ρ ≥ 2, at most 200) grouped at similarity ≥ {ex.duplicate_threshold}.</p>")
    if not ex.duplicate_groups:
        n_dense = int((np.nan_to_num(density, nan=0) >= 2).sum())
        return intro + f"<p>No near-duplicate groups: {n_dense:,} rows have ρ ≥ 2 and none of them sit together.</p>"
    chosen = set(sel.indices.tolist())
    probs = sel.probabilities
    groups = ex.duplicate_groups[:MAX_GROUPS_SHOWN]
    heads = sel.pool.pool.examples([g[0] for g in groups])
    sources = sel.pool.pool.sources_at([g[0] for g in groups])
    rows = []
    for i, (g, head, src) in enumerate(zip(groups, heads, sources), start=1):
        p = float(np.sum(probs[g])) if probs is not None else None
        rows.append((i, len(g), density[g[0]], sum(1 for r in g if r in chosen), "–" if p is None else f"{p:.3g}",
                     html.escape(str(src)) if src else "–", f"{clip(head.text, ROW_CHARS)}"))
    more = f" ({len(ex.duplicate_groups) - len(groups)} more groups not shown)" if len(ex.duplicate_groups) > len(groups) else ""
    return (intro + f"<p>{len(ex.duplicate_groups)} groups{more}:</p>"
            + table(["group", "rows in group", "ρ of densest", "selected", "sum of p (selection probability)", "source", "densest row"],
                    rows, raw_cols=(5, 6), css="rows"))


def render_select_report(sel: Any) -> str:
    """The page of a :class:`~tasksift.api.Selection` that carries an ``explanation``."""
    use_agg()
    ex = sel.explanation
    n, k = len(sel.pool), len(sel.indices)
    covered = len(sel.target) - len(ex.uncovered())
    title = f"tasksift select: {sel.method}"
    head = (f"<p>Selected <b>{k:,}</b> of {n:,} pool rows ({100 * k / max(1, n):.2f}%) for "
            f"<b>{len(sel.target):,}</b> target examples with <code>{html.escape(sel.method)}</code>, seed {sel.seed}. "
            f"{covered:,} of {len(sel.target):,} target examples have a selected row with similarity ≥ "
            f"{ex.coverage_threshold}. Each selected row's nearest target example is in the output columns "
            "<code>tasksift_nearest_target</code> (1-based target number, as below) and "
            "<code>tasksift_nearest_target_sim</code>.</p>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>", head,
             _run_section(sel, ex), _source_section(sel), _score_section(sel), _length_section(sel),
             _coverage_section(sel, ex), _neighbours_section(sel, ex), _duplicates_section(sel, ex),
             "</body></html>"]
    return "\n".join(parts)


def write_select_report(sel: Any, path: str | Path) -> Path:
    """Render ``sel``'s report and write it atomically to ``path``; its seconds go into
    ``sel.timings["report"]``."""
    t = time.perf_counter()
    write_text(path, render_select_report(sel))
    sel.timings["report"] = time.perf_counter() - t
    return Path(path)
