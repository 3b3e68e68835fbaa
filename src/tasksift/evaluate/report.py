"""``report.html``: one self-contained page (plots embedded as base64 PNG, no scripts, no
network), readable offline.

Sections: summary table per method x budget (mean +- std over seeds of every score, PIR
against the base model and against random, efficiency, seed-noise test against random,
feasibility penalty and rank, contamination), then plots: score vs SDF per method with random
as the reference line and the base model as a horizontal line; PIR vs SDF with the random
line; time per stage; source mix of each selection; per-item loss distributions and every
score per test set; pool contamination; and the definitions of the metrics.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_text

SCORER_TITLES = {"loss": "target-test loss (NLL/token, lower is better)",
                 "loss_answer": "bare-answer loss (NLL/token, lower is better)",
                 "mc": "multiple-choice accuracy", "em": "exact match"}
_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(methods: Sequence[str]) -> dict[str, str]:
    out = {"random": "#7f7f7f", "full": "#000000"}
    k = 0
    for m in methods:
        if m not in out:
            out[m] = _PALETTE[k % len(_PALETTE)]
            k += 1
    return out


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{nd}f}" if abs(v) < 1e4 else f"{v:.3g}"
    return html.escape(str(v))


def _score_vs_sdf(rows: list[dict], summary: dict, scorer: str, colors: dict[str, str]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    table = [e for e in summary["table"] if f"{scorer}_mean" in e]
    methods = list(dict.fromkeys(e["method"] for e in table))
    for m in methods:
        es = sorted([e for e in table if e["method"] == m], key=lambda e: e["sdf"])
        xs = [e["sdf"] for e in es]
        ys = [e[f"{scorer}_mean"] for e in es]
        err = [e.get(f"{scorer}_std") or 0 for e in es]
        style = dict(linestyle="--", linewidth=2, marker="s") if m == "random" else dict(marker="o")
        ax.errorbar(xs, ys, yerr=err, label=m, color=colors[m], capsize=3, **style)
        seeds = [r for r in rows if r["method"] == m and scorer in r.get("scores", {})]
        ax.scatter([r["sdf"] for r in seeds], [r["scores"][scorer]["all"] for r in seeds], color=colors[m], alpha=0.3, s=12)
    base = summary.get("base_scores", {}).get(scorer, {}).get("all")
    if base is not None:
        ax.axhline(base, color="#444", linestyle=":", label="base model (no fine-tuning)")
    xs_all = [e["sdf"] for e in table if e["sdf"] > 0]
    if xs_all and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("SDF = |subset| / |pool|")
    ax.set_ylabel(scorer)
    ax.set_title(SCORER_TITLES.get(scorer, scorer) + " vs SDF")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _pir_vs_sdf(rows: list[dict], summary: dict, colors: dict[str, str]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for m in dict.fromkeys(r["method"] for r in rows if r["kind"] != "base"):
        rs = [r for r in rows if r["method"] == m and r.get("pir") is not None and np.isfinite(r["pir"])]
        ax.scatter([r["sdf"] for r in rs], [r["pir"] for r in rs], color=colors[m], label=m,
                   marker="s" if m == "random" else "o", alpha=0.8)
    line = summary.get("random_line")
    xs = [r["sdf"] for r in rows if r["kind"] != "base"]
    if line and xs:
        gx = np.linspace(min(xs), max(xs), 50)
        ax.plot(gx, line["intercept"] + line["slope"] * gx, color="#7f7f7f", linestyle="--",
                label="random line (efficiency = signed distance)")
    ax.axhline(1.0, color="#444", linestyle=":", linewidth=1, label="PIR = 1 (base model)")
    ax.set_xlabel("SDF")
    ax.set_ylabel(f"PIR vs base ({summary['primary_scorer']})")
    ax.set_title("PIR vs SDF: above the random line = more efficient than random")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)  # below: never over points
    return _png(fig)


def _stage_times(rows: list[dict]) -> str:
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        label = r["method"] if r["kind"] == "base" else f"{r['method']} {r['budget']}"
        g = groups.setdefault(label, {})
        for st in ("select", "finetune", "score"):
            v = r.get("timings", {}).get(st)
            if isinstance(v, (int, float)):
                g.setdefault(st, []).append(float(v))
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(labels) + 1.5))
    left = np.zeros(len(labels))
    for st, col in (("select", "#1f77b4"), ("finetune", "#ff7f0e"), ("score", "#2ca02c")):
        vals = np.array([np.mean(groups[lb].get(st, [0.0])) for lb in labels])
        ax.barh(labels, vals, left=left, color=col, label=st)
        left += vals
    ax.invert_yaxis()
    ax.set_xlabel("seconds per arm (mean over seeds)")
    ax.set_title("time per stage")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _source_mix(rows: list[dict], pool_sources: dict[str, int]) -> str:
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r.get("source_mix") and r["kind"] in ("method", "random")]
    seen_seed: dict[tuple[str, str], dict] = {}
    for r in sel:
        seen_seed.setdefault((r["method"], r["budget"]), r)
    bars = [("pool", {(k.split("/")[0]): 0 for k in pool_sources})]
    pool_mix: dict[str, int] = {}
    for k, v in pool_sources.items():
        top = k.split("/")[0]
        pool_mix[top] = pool_mix.get(top, 0) + v
    bars = [("pool", pool_mix)] + [(f"{m} {b} (seed {r['seed']})", r["source_mix"]) for (m, b), r in seen_seed.items()]
    totals: dict[str, int] = {}
    for _, mix in bars:
        for k, v in mix.items():
            totals[k] = totals.get(k, 0) + v
    top = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:9]]
    cats = top + (["other"] if len(totals) > len(top) else [])
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(bars) + 1.8))
    labels = [b[0] for b in bars]
    left = np.zeros(len(bars))
    cmap = plt.get_cmap("tab10")
    for j, c in enumerate(cats):
        vals = []
        for _, mix in bars:
            n = sum(mix.values()) or 1
            v = sum(x for k, x in mix.items() if k not in top) if c == "other" else mix.get(c, 0)
            vals.append(v / n)
        vals = np.array(vals)
        ax.barh(labels, vals, left=left, color=cmap(j % 10), label=c)
        left += vals
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of rows")
    ax.set_title("source mix of each selection (pool first)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=4)
    return _png(fig)


def _per_test_set(rows: list[dict], summary: dict, scorer: str, colors: dict[str, str]) -> str:
    """Dot plot: mean score per test set for each method x budget (mean over seeds), base
    model first; error bars = std over seeds."""
    import matplotlib.pyplot as plt

    sets = [k for k in summary.get("base_scores", {}).get(scorer, {}) if k != "all"] or ["all"]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if scorer in r.get("scores", {}):
            label = "base" if r["kind"] == "base" else f"{r['method']} {r['budget']}"
            groups.setdefault(label, []).append(r)
    labels = list(groups)
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(labels) * max(1, len(sets)) / 1.5 + 1.8))
    h = 0.8 / len(sets)
    cmap = plt.get_cmap("tab10")
    for j, ts in enumerate(sets):
        means, errs = [], []
        for lb in labels:
            v = [r["scores"][scorer].get(ts, np.nan) for r in groups[lb]]
            means.append(float(np.nanmean(v)) if np.isfinite(v).any() else 0.0)
            errs.append(float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0)
        y = np.arange(len(labels)) + (j - (len(sets) - 1) / 2) * h
        ax.errorbar(means, y, xerr=errs, fmt="o", color=cmap(j % 10), label=ts, capsize=3)
    ax.set_yticks(np.arange(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{scorer} (mean over seeds; error bar = std)")
    ax.set_title(f"{SCORER_TITLES.get(scorer, scorer)} per test set")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, title="test set")
    return _png(fig)


def _distributions(rows: list[dict], scorer: str, colors: dict[str, str]) -> str:
    import matplotlib.pyplot as plt

    data, labels, cols = [], [], []
    for r in rows:
        v = [x for x in r.get("item_scores", {}).get(scorer, []) if x is not None]
        if not v:
            continue
        if r["kind"] != "base" and r["seed"] != min(x["seed"] for x in rows if x["method"] == r["method"]):
            continue
        data.append(v)
        labels.append("base" if r["kind"] == "base" else f"{r['method']} {r['budget']}")
        cols.append(colors.get(r["method"], "#444"))
    fig, ax = plt.subplots(figsize=(7.5, 0.35 * len(labels) + 1.6))
    if data:
        try:
            bp = ax.boxplot(data, orientation="horizontal", patch_artist=True, showmeans=True)
        except TypeError:  # matplotlib < 3.10
            bp = ax.boxplot(data, vert=False, patch_artist=True, showmeans=True)
        ax.set_yticks(range(1, len(labels) + 1), labels)
        for patch, c in zip(bp["boxes"], cols):
            patch.set_facecolor(c)
            patch.set_alpha(0.45)
        ax.invert_yaxis()
    ax.set_xlabel(f"per-item {scorer}")
    ax.set_title(f"distribution of per-item {SCORER_TITLES.get(scorer, scorer)} (first seed; triangle = mean)")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _table(summary: dict, scorers: Sequence[str]) -> str:
    primary = summary["primary_scorer"]
    head = ["method", "budget", "seeds", "n", "SDF"] + [f"{s} mean±std" for s in scorers] + \
        ["PIR vs base", "PIR vs random", "efficiency", f"Δ{primary} vs random", "beyond 2·pooled std", "Welch p",
         "feasibility penalty", "rank", "contam. exact/near", "s select/train/score", "peak RSS MB"]
    lines = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    base = summary.get("base_scores", {})
    cells = ["base model", "–", "–", "0", "0"] + [_fmt(base.get(s, {}).get("all")) for s in scorers] + \
        ["1.000", "–", "–", "–", "–", "–", "–", "–", "–", "–", "–"]
    lines.append("<tr class='base'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for e in summary["table"]:
        vr = e.get("vs_random") or {}
        cls = "random" if e["kind"] == "random" else ("good" if vr.get("better") and vr.get("exceeds_noise") else "")
        cells = [html.escape(e["method"]), html.escape(e["budget"]), str(len(e["seeds"])), _fmt(e["n_selected"], 0),
                 _fmt(e["sdf"], 4)]
        cells += [f"{_fmt(e.get(f'{s}_mean'))}±{_fmt(e.get(f'{s}_std'))}" if f"{s}_mean" in e else "–" for s in scorers]
        cells += [_fmt(e.get("pir")), _fmt(e.get("pir_random")), _fmt(e.get("efficiency")),
                  _fmt(vr.get("diff")) if e["kind"] != "random" else "–",
                  _fmt(vr.get("exceeds_noise")) if e["kind"] != "random" else "–",
                  _fmt(vr.get("welch_p")) if e["kind"] != "random" else "–",
                  _fmt(e.get("feasibility_penalty"), 1), _fmt(e.get("feasibility_rank")),
                  f"{_fmt(e.get('contaminated_exact'), 1)} / {_fmt(e.get('contaminated_near'), 1)}",
                  "/".join(_fmt(e.get(f"{st}_seconds"), 1) for st in ("select", "finetune", "score")),
                  _fmt(e.get("peak_rss_mb"), 0)]
        lines.append(f"<tr class='{cls}'>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _paired_table(summary: dict) -> str:
    """Paired per-item differences to random at the same budget, one row per method x budget x scorer."""
    rows = summary.get("paired") or []
    if not rows:
        return "<p>No paired comparison (no per-item scores, or no random arm at a method's budget).</p>"
    head = ["method", "budget", "scorer", "Δ (method − random)", "95% bootstrap CI", "permutation p", "paired t p",
            "paired SD", "n items", "MDE (80% power)", "seeds (method / random)", "verdict"]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for c in rows:
        cls = {"better": "good", "worse": "bad"}.get(c["verdict"], "")
        cells = [html.escape(c["method"]), html.escape(c["budget"]), html.escape(c["scorer"]), _fmt(c["diff"], 4),
                 f"[{_fmt(c['ci_low'], 4)}, {_fmt(c['ci_high'], 4)}]", _fmt(c.get("permutation_p")),
                 _fmt(c.get("t_p")), _fmt(c.get("paired_sd"), 4), str(c["n_items"]), _fmt(c.get("mde"), 4),
                 f"{len(c.get('seeds_method') or [])} / {len(c.get('seeds_random') or [])}", html.escape(c["verdict"])]
        out.append(f"<tr class='{cls}'>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _chance_block(summary: dict) -> str:
    ch = summary.get("base_chance") or {}
    if not ch:
        return "<p>No multiple-choice scores with known option counts: distance from chance not computed.</p>"
    out = ["<table><tr><th>test set</th><th>base accuracy</th><th>chance</th><th>distance</th>"
           "<th>95% Wilson CI of the distance</th><th>n</th><th>at chance</th></tr>"]
    for k, v in ch.items():
        out.append("<tr>" + "".join(f"<td>{x}</td>" for x in [
            html.escape(k), _fmt(v["accuracy"]), _fmt(v["chance"]), _fmt(v["distance"]),
            f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]", str(v["n_items"]), _fmt(v["at_chance"])]) + "</tr>")
    out.append("</table>")
    at = summary.get("base_at_chance") or []
    if at:
        out.append(f"<p><b>The base model is at chance on {html.escape(', '.join(at))}</b>: multiple-choice differences "
                   "there say little; lean on the loss scorer.</p>")
    return "\n".join(out)


def _style_block(summary: dict) -> str:
    st = summary.get("answer_style") or []
    tgt = summary.get("target_answer_style")
    if not st and not tgt:
        return "<p>No answer-style data (rows from runs made before it was recorded).</p>"
    out = ["<table><tr><th>subset</th><th>seeds</th><th>words (mean)</th><th>words (median)</th>"
           "<th>rationale-first share</th><th>bare share</th></tr>"]
    if tgt:
        out.append("<tr class='base'>" + "".join(f"<td>{x}</td>" for x in [
            "target examples", "–", _fmt(tgt.get("words_mean"), 1), _fmt(tgt.get("words_median"), 1),
            _fmt(tgt.get("rationale_first_share")), _fmt(tgt.get("bare_share"))]) + "</tr>")
    for e in st:
        out.append("<tr>" + "".join(f"<td>{x}</td>" for x in [
            html.escape(f"{e['method']} {e['budget']}"), str(e["seeds"]), _fmt(e.get("words_mean"), 1),
            _fmt(e.get("words_median"), 1), _fmt(e.get("rationale_first_share")), _fmt(e.get("bare_share"))]) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _survey_chart(summary: dict, colors: dict[str, str]) -> str:
    """The survey's twelve published (SDF, PIR) points, its reference line, and our arms."""
    import matplotlib.pyplot as plt

    sv = summary.get("survey") or {}
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    pts = sv.get("published_points") or {}
    for name, p in pts.items():
        ax.scatter([p["sdf"]], [p["pir"]], color="#999", marker="^", s=28)
        ax.annotate(name, (p["sdf"], p["pir"]), fontsize=6, xytext=(3, 2), textcoords="offset points", color="#666")
    ours = sv.get("efficiency") or []
    for e in ours:
        ax.scatter([e["sdf"]], [e["pir"]], color=colors.get(e["method"], "#000"), marker="o", s=30,
                   label=f"{e['method']} {e['budget']}")
    xs = [p["sdf"] for p in pts.values()] + [e["sdf"] for e in ours] + [0.0]
    line = sv.get("reference_line")
    if line:
        gx = np.linspace(min(xs), max(xs) * 1.05, 20)
        ax.plot(gx, line["intercept"] + line["slope"] * gx, color="#444", linestyle="--", linewidth=1,
                label="survey line (Instruction-Mining, InstructionGPT-4)")
    ax.set_xlabel("SDF")
    ax.set_ylabel("PIR")
    ax.set_title("our arms on the survey's efficiency map (PIRs of other setups: only roughly comparable)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    return _png(fig)


def _survey_tables(summary: dict) -> str:
    sv = summary.get("survey") or {}
    eff = sv.get("efficiency") or []
    out = ["<table><tr><th>method</th><th>budget</th><th>SDF</th><th>PIR vs base</th><th>survey efficiency</th></tr>"]
    for e in eff:
        out.append("<tr>" + "".join(f"<td>{x}</td>" for x in [
            html.escape(e["method"]), html.escape(e["budget"]), _fmt(e["sdf"], 4), _fmt(e["pir"]),
            _fmt(e["survey_efficiency"])]) + "</tr>")
    out.append("</table>")
    feas = sv.get("feasibility") or {}
    out.append("<table><tr><th>method</th><th>LLMs trained</th><th>steps</th><th>reproducible</th>"
               "<th>model-dep.</th><th>dataset-dep.</th><th>GPT-dep.</th><th>simplicity pen./rank</th>"
               "<th>flexibility pen./rank</th><th>feasibility rank</th></tr>")
    for m, f in sorted(feas.items(), key=lambda kv: (kv[1]["feasibility_rank"], kv[0])):
        out.append(f"<tr class='{'' if f['published'] else 'good'}'>" + "".join(f"<td>{x}</td>" for x in [
            html.escape(m) + (" (survey)" if f["published"] and "(survey)" not in m else ""), _fmt(f["llms_trained"]),
            str(f["steps"]), _fmt(f["reproducible"]), _fmt(f["model_dependent"]), _fmt(f["dataset_dependent"]),
            _fmt(f["gpt_dependent"]), f"{_fmt(f['simplicity_penalty'], 1)} / {f['simplicity_rank']}",
            f"{_fmt(f['flexibility_penalty'], 1)} / {f['flexibility_rank']}", str(f["feasibility_rank"])]) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _feasibility_table(summary: dict) -> str:
    rows = ["<table><tr><th>method</th><th>cost</th><th>needs</th><th>trains a model</th>"
            "<th>redo per data set</th><th>penalty</th><th>rank</th></tr>"]
    for m, f in sorted(summary.get("feasibility", {}).items(), key=lambda kv: kv[1]["rank"]):
        parts = f["parts"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in [
            html.escape(m), " + ".join(p["cost"] for p in parts),
            html.escape(", ".join(sorted({n for p in parts for n in p["needs"]})) or "–"),
            _fmt(any(p["trains_model"] for p in parts)), _fmt(any(p["per_dataset"] for p in parts)),
            _fmt(f["penalty"], 1), str(f["rank"])]) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _sweep_block(summary: dict) -> str:
    """The learning-rate sweep's table (mean validation score per setting, the chosen one in bold)."""
    sw = summary.get("sweep")
    if not sw:
        return ""
    c = sw["chosen"]
    head = (f"<h2>Learning-rate sweep</h2><p>Random subsets ({html.escape(str(sw['budget']))}, seeds "
            f"{', '.join(map(str, sw['seeds']))}) fine-tuned with each setting and scored by {html.escape(sw['scorer'])} "
            f"on {sw['n_val']} validation items (none of them test items; "
            f"{'higher' if sw['higher_is_better'] else 'lower'} is better). Every arm trained with "
            f"<b>lr {c['lr']:g}, warm-up {c['warmup_ratio']:g}</b>.</p>")
    rows = ["<table><tr><th>lr</th><th>warm-up ratio</th><th>score per seed</th><th>mean</th></tr>"]
    for e in sw["table"]:
        chosen = e["lr"] == c["lr"] and e["warmup_ratio"] == c["warmup_ratio"]
        cells = [f"{e['lr']:g}", f"{e['warmup_ratio']:g}", ", ".join(_fmt(v, 4) for v in e["scores"]), _fmt(e["mean"], 4)]
        rows.append("<tr>" + "".join(f"<td>{'<b>' + x + '</b>' if chosen else x}</td>" for x in cells) + "</tr>")
    rows.append("</table>")
    return head + "\n".join(rows)


DEFINITIONS = """
<ul>
<li><b>SDF</b> (selected data fraction) = |subset| / |pool| (pool after any contaminated rows were dropped).</li>
<li><b>PIR</b> (performance improvement ratio) = mean over test sets of score(subset model) / score(baseline);
for the loss (lower is better) the ratio is inverted (baseline / score), so <b>PIR &gt; 1 always means better</b>.
"PIR vs base": baseline = the base model without fine-tuning. "PIR vs random": baseline = the mean of the random
arms at the same budget. PIR is undefined ("–") where the baseline score is 0.</li>
<li><b>Efficiency</b> = signed Euclidean distance of (SDF, PIR vs base) from the random line: the least-squares line
through the random arms' mean (SDF, PIR) points of this run (one budget: the horizontal line through its point).
Positive = above the line = better than random selection for the amount of data.</li>
<li><b>Seed noise</b>: per method and budget, the primary score's mean difference with random at the same budget;
"&gt; 2·pooled std" says whether |difference| exceeds twice the pooled standard deviation over seeds; Welch p is
scipy's unequal-variance t-test (needs ≥ 2 seeds on each side). Green rows beat random beyond the noise.</li>
<li><b>Feasibility penalty</b> = cost class (cheap 0, moderate 1, expensive 2) + needs (embeddings 0.5, LM 1,
gradients 2, external API 3) + 2 if the method trains a model of its own + 1 if it must be redone per target data
set (it reads the target); recipes ("a -&gt; b") add their parts. Rank 1 = most feasible. Cost and needs come from
the method registry; "trains a model" and "per data set" from tables in <code>tasksift.evaluate.metrics</code>
(<code>TRAINS_MODELS</code>, <code>TARGET_AGNOSTIC</code>) until the registry declares them.</li>
<li><b>Contamination</b>: a selected row is <i>exact</i> when a test question (normalised) equals or occurs inside
its prompt, <i>near</i> when most of the test question's word n-grams occur in it or the character n-gram Jaccard
similarity is high (thresholds in the recipe).</li>
</ul>
"""

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;font-size:11px;margin:8px 0 18px}th,td{border:1px solid #ccc;padding:3px 5px;text-align:right}
td{white-space:nowrap}.scroll{overflow-x:auto}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}tr.random td{background:#f7f7f7}
tr.good td{background:#e8f6e8}tr.bad td{background:#fbeaea}tr.base td{background:#fff8e0}img{max-width:100%;margin:6px 12px 6px 0;border:1px solid #eee}
.grid{display:flex;flex-wrap:wrap}code{background:#f4f4f4;padding:1px 4px}h2{margin-top:28px;border-bottom:1px solid #ddd}"""


def headline(summary: dict) -> str:
    """One sentence: the method x budget with the highest mean efficiency, and whether its
    primary score beats random at the same budget beyond seed noise."""
    cands = [e for e in summary.get("table", []) if e["kind"] == "method" and e.get("efficiency") is not None]
    if not cands:
        return "No method arm has a defined efficiency yet (PIR needs a non-zero base score)."
    best = max(cands, key=lambda e: e["efficiency"])
    vr = best.get("vs_random") or {}
    side = "better" if vr.get("better") else "worse"
    if vr.get("exceeds_noise") is None:
        noise = "seed noise unknown (one seed)"
    else:
        noise = f"{'beyond' if vr['exceeds_noise'] else 'within'} 2·pooled std over seeds"
    p = vr.get("welch_p")
    sig = "" if p is None else f"; Welch p {_fmt(p)}, {'significant' if p < 0.05 else 'not significant'} at 0.05"
    return (f"Most efficient: <b>{html.escape(best['method'])}</b> at {html.escape(best['budget'])} "
            f"(efficiency {_fmt(best['efficiency'])}, PIR vs base {_fmt(best.get('pir'))}, PIR vs random "
            f"{_fmt(best.get('pir_random'))}). Its {html.escape(summary['primary_scorer'])} is {side} than random at "
            f"the same budget by {_fmt(abs(vr['diff']) if vr.get('diff') is not None else None)} ({noise}{sig}).")


def render_report(rows: list[dict], summary: dict) -> str:
    """The report page as an HTML string."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    recipe = summary.get("recipe", {})
    scorers = [s for s in recipe.get("scorers", ["loss"]) if any(s in r.get("scores", {}) for r in rows)]
    methods = list(dict.fromkeys(r["method"] for r in rows if r["kind"] != "base"))
    colors = _colors(methods)
    pool = summary.get("pool", {})
    cb = pool.get("contamination_before_drop", {})
    imgs_score = [_score_vs_sdf(rows, summary, s, colors) for s in scorers]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tasksift evaluate: {html.escape(summary.get('name', ''))}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>tasksift evaluate: {html.escape(str(summary.get('name', '')))}</h1>",
             f"<p>Task <b>{html.escape(str(pool.get('task', {}).get('kind', '')))}</b>: "
             f"{pool.get('task', {}).get('n_target', '?')} target examples, {pool.get('task', {}).get('n_test', '?')} test items "
             f"(test sets: {html.escape(', '.join(summary.get('test_sets', [])))}). Pool: {pool.get('rows', '?')} rows "
             f"({pool.get('dropped_contaminated', 0)} contaminated rows dropped). Base model <code>{html.escape(str(recipe.get('base_model')))}</code>; "
             f"LoRA fine-tuning {html.escape(str({k: v for k, v in recipe.get('finetune', {}).items() if v is not None}))} for every arm; "
             f"seeds {recipe.get('seeds')}. Primary score: <b>{html.escape(summary['primary_scorer'])}</b>. "
             f"{summary.get('n_arms', len(rows))} arms.</p>",
             f"<p>{headline(summary)}</p>",
             "<h2>Results per method and budget (mean ± std over seeds)</h2>",
             "<div class='scroll'>" + _table(summary, scorers) + "</div>",
             "<h2>Paired difference to random at the same budget</h2>",
             "<p>Every arm scores the same test items. Per item, each arm's score is averaged over its seeds; the "
             "difference method − random is then averaged over items, with a percentile bootstrap 95% interval "
             "(items resampled, 10,000 times, seeded) and a sign-flip permutation p-value. Green: the interval lies on "
             "the better side of 0 (beats random); red: on the worse side; otherwise no detectable difference. "
             "MDE: the smallest true difference this run detects with 80% power at α = 0.05 (2.80 × paired SD / √n). "
             "Welch p in the table above (seed means) is a secondary figure.</p>",
             "<div class='scroll'>" + _paired_table(summary) + "</div>",
             "<h2>Base model vs chance (multiple choice)</h2>", _chance_block(summary),
             "<h2>Answer style of each subset vs the target examples</h2>",
             "<p>Words per response; <i>rationale-first</i>: the response ends with an explicit final-answer "
             "statement (\"the answer is\", \"####\", \"answer:\") preceded by at least 10 words; <i>bare</i>: "
             "under 10 words (see <code>tasksift.data.style</code>).</p>", _style_block(summary),
             "<h2>Score vs selected fraction</h2><div class='grid'>" +
             "".join(f"<img src='{u}' alt='score vs SDF'>" for u in imgs_score) +
             f"<img src='{_pir_vs_sdf(rows, summary, colors)}' alt='PIR vs SDF'></div>",
             "<h2>Time per stage</h2>" + f"<img src='{_stage_times(rows)}' alt='time per stage'>",
             "<h2>Source mix of each selection</h2>" + f"<img src='{_source_mix(rows, pool.get('sources', {}))}' alt='source mix'>",
             "<h2>Score distributions</h2><div class='grid'>" +
             "".join(f"<img src='{_distributions(rows, s, colors)}' alt='distribution'>" for s in scorers if s == "loss") +
             "".join(f"<img src='{_per_test_set(rows, summary, s, colors)}' alt='per test set'>" for s in scorers) + "</div>",
             _sweep_block(summary),
             "<h2>Feasibility</h2>", _feasibility_table(summary),
             "<h2>On the survey's map</h2>",
             "<p>The survey (Liu et al., NAACL 2025) and its TEDD-Ranker page tabulate twelve methods' (SDF, PIR); its "
             "efficiency is the signed distance from the line through Instruction-Mining (0.025, 1.400) and "
             "InstructionGPT-4 (0.058, 1.443), its feasibility the rank of simplicity rank + flexibility rank "
             "(ours ranked among its twelve, green). <b>PIRs from different setups (models, pools, benchmarks) are only "
             "roughly comparable.</b></p>"
             f"<img src='{_survey_chart(summary, colors)}' alt='survey map'>" + _survey_tables(summary),
             "<h2>Contamination (pool vs test)</h2>",
             f"<p>Before selection the pool held <b>{cb.get('exact', 0)}</b> exact and <b>{cb.get('near', 0)}</b> near duplicates "
             f"of {cb.get('test_items_hit', 0)} test items; by source: "
             f"{html.escape(', '.join(f'{k}: {v}' for k, v in sorted(pool.get('contaminated_by_source', {}).items(), key=lambda kv: -kv[1])[:10])) or 'none'}. "
             f"{'They were dropped from the pool before selection.' if pool.get('dropped_contaminated') else 'They were kept (drop_contaminated: false); the table shows how many each selection picked.'}</p>",
             "<h2>Definitions</h2>", DEFINITIONS,
             "</body></html>"]
    return "\n".join(parts)


def write_report(path: str | Path, rows: list[dict], summary: dict) -> Path:
    """Render and atomically write ``report.html``; returns its path."""
    write_text(path, render_report(rows, summary))
    return Path(path)
