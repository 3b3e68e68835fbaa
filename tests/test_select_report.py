"""report.html and the nearest-target columns (issue 17, "explain the choice"): neighbours
against brute-force cosine, coverage and near-duplicate groups on hand-built cases, the
page's tables and numbers, escaping, caps, --no-report, and the report's cost on real data."""
from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import tasksift
from tasksift.cli import main
from tasksift.features.embed import EmbedConfig, Embedder
from tasksift.report.explain import (Explanation, TfidfSpace, dense_rows, duplicate_groups, nearest_pairs,
                                     unit_rows)
from tasksift.report.select_report import (MAX_TARGETS_SHOWN, render_select_report, score_scale,
                                           source_table)

from conftest import SHARED_DATA, needs_shared_data


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts; <img> sources; <script> tags seen."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.imgs: list[str] = []
        self.scripts = 0
        self._depth = 0
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            self.tables[-1][-1].append("")
        elif tag == "img":
            self.imgs.append(dict(attrs).get("src", ""))
        elif tag == "script":
            self.scripts += 1

    def handle_data(self, data):
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data

    def table_with(self, header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and header in t[0])


def _num(cell: str) -> float:
    return float(cell.replace(",", ""))


def brute_force(sel: np.ndarray, tgt: np.ndarray):
    s = unit_rows(sel).astype(np.float64) @ unit_rows(tgt).astype(np.float64).T
    return s


# ------------------------------------------------------------------ neighbours
@pytest.mark.parametrize("block", [1, 3, 1000])
def test_nearest_pairs_match_brute_force_cosine(block):
    rng = np.random.default_rng(0)
    sel, tgt = unit_rows(rng.normal(size=(23, 8))), unit_rows(rng.normal(size=(7, 8)))
    best_t, best_s, top_r, top_s = nearest_pairs(sel, tgt, per_target=3, block=block)
    s = brute_force(sel, tgt)
    np.testing.assert_array_equal(best_t, s.argmax(axis=1))
    np.testing.assert_allclose(best_s, s.max(axis=1), atol=1e-6)
    for t in range(7):
        np.testing.assert_array_equal(top_r[t], np.argsort(-s[:, t], kind="stable")[:3])
        np.testing.assert_allclose(top_s[t], np.sort(s[:, t])[::-1][:3], atol=1e-6)


def test_nearest_pairs_ties_go_to_the_earlier_row_and_short_lists_are_padded():
    tgt = np.eye(3, dtype=np.float32)
    sel = np.array([[0, 1, 0], [1, 0, 0], [1, 0, 0]], dtype=np.float32)   # rows 1 and 2 tie for target 0
    best_t, best_s, top_r, top_s = nearest_pairs(sel, tgt, per_target=4, block=1)
    assert best_t.tolist() == [1, 0, 0]
    assert top_r[0].tolist()[:2] == [1, 2] and top_r[0, 3] == -1 and np.isnan(top_s[0, 3])


def test_nearest_pairs_on_sparse_tfidf_vectors():
    from tasksift.data.example import Example

    texts = ["apples and pears", "train travels far", "cat and dog", "the train is fast"]
    exs = [Example(messages=[{"role": "assistant", "content": t}], raw={}, row=i + 1) for i, t in enumerate(texts)]
    space = TfidfSpace()
    c = space.counts(exs)
    space.fit(c)
    v = space.weigh(c)
    best_t, best_s, _, _ = nearest_pairs(v[:2], v[2:])
    s = (v[:2] @ v[2:].T).toarray()
    np.testing.assert_array_equal(best_t, s.argmax(axis=1))
    assert best_t[1] == 1 and best_s[1] > 0             # "train" is shared
    assert best_s[0] == pytest.approx(s[0].max())


def _pool_rows(n: int = 60):
    topics = ["apples cost dollars each", "the movie review was good", "translate to french please",
              "python function returns sum", "the train travels km per hour"]
    return [{"instruction": f"{topics[i % 5]} number {i}", "output": f"answer {i} {topics[(i * 3) % 5]}"}
            for i in range(n)]


def test_nearest_target_column_matches_brute_force_embeddings(tmp_path, tiny_embed_model):
    pool, target = _pool_rows(), [{"instruction": "apples cost how many dollars", "output": "5"},
                                  {"instruction": "a train travels far", "output": "100 km"},
                                  {"instruction": "write a python function", "output": "def f(): pass"}]
    cfg = EmbedConfig(model=tiny_embed_model)
    sel = tasksift.select(pool, target, method="knn", count=15, embed=cfg, cache_dir=tmp_path / "c",
                          progress=False)
    ex = sel.explanation
    assert ex.kind == "embeddings" and sel.info["nearest_target"]["similarity"] == "embeddings"
    emb = Embedder(cfg, cache_dir=tmp_path / "c", progress=False)
    s = brute_force(emb.embed(sel.subset), emb.embed(list(sel.target.examples)))
    number, sim = sel.columns["nearest_target"], sel.columns["nearest_target_sim"]
    assert [number[i] for i in sel.indices] == (s.argmax(axis=1) + 1).tolist()
    np.testing.assert_allclose(sim[sel.indices], s.max(axis=1), atol=1e-4)
    others = np.setdiff1d(np.arange(len(pool)), sel.indices)
    assert all(number[i] is None for i in others) and np.isnan(sim[others]).all()
    rows = [json.loads(line) for line in sel.save(tmp_path / "out").read_text().splitlines()]
    assert [r["tasksift_nearest_target"] for r in rows] == (s.argmax(axis=1) + 1).tolist()


def test_without_embeddings_the_tfidf_space_is_used_and_nothing_is_embedded(tmp_path):
    pool = _pool_rows()
    target = [{"instruction": "python function returns sum number 3", "output": "answer 3"}]
    sel = tasksift.select(pool, target, method="random", count=20, seed=1, cache_dir=tmp_path / "c",
                          progress=False)
    assert sel.explanation.kind == "tfidf" and not sel.embedding["used"]
    assert not any(k.startswith("embed_") for k in sel.timings) and not (tmp_path / "c").exists()
    # the oracle: one TF-IDF space over selected + target, full dense cosine matrix
    space = TfidfSpace()
    cs, ct = space.counts(sel.subset), space.counts(list(sel.target.examples))
    space.fit(cs, ct)
    s = (space.weigh(cs) @ space.weigh(ct).T).toarray()
    np.testing.assert_allclose(sel.columns["nearest_target_sim"][sel.indices], s[:, 0].round(4), atol=1e-4)
    # an exact copy of the target in the pool is its nearest row, similarity 1
    pool2 = pool + [target[0]]
    sel2 = tasksift.select(pool2, target, method="random", count=len(pool2), progress=False)
    assert sel2.columns["nearest_target_sim"][len(pool)] == pytest.approx(1.0, abs=1e-4)
    assert sel2.explanation.rows_of_target[0, 0] == list(sel2.indices).index(len(pool))


# ------------------------------------------------------------------ coverage, duplicates
def _explanation(best: list[float], threshold: float = 0.5) -> Explanation:
    m = len(best)
    sims = np.array([[b, b - 0.1, np.nan] for b in best], dtype=np.float32)
    return Explanation(kind="tfidf", similarity="test", coverage_threshold=threshold,
                       target_of_selected=np.zeros(2, np.int64), sim_of_selected=np.ones(2, np.float32),
                       rows_of_target=np.zeros((m, 3), np.int64), sims_of_target=sims, duplicate_threshold=0.9)


def test_coverage_counts_on_a_hand_built_case():
    ex = _explanation([0.9, 0.2, 0.5, 0.49, np.nan, 0.2])
    assert ex.uncovered().tolist() == [4, 1, 5, 3]          # NaN (no row) first, ties by position
    assert ex.describe()["targets_covered"] == 2 and ex.describe()["targets"] == 6


def test_near_duplicate_groups_by_hand():
    density = np.array([1.0, 5.0, np.nan, 5.0, 3.0, 1.5, 9.0])
    reached = np.array([True, True, True, True, True, True, False])
    rows = dense_rows(density, reached)
    assert rows.tolist() == [1, 3, 4]                       # >= 2, reached, densest first, ties by position
    v = unit_rows(np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32))  # rows 1 and 3 near-copies
    assert duplicate_groups(rows, v, 0.9) == [[1, 3]]      # row 4 alone: not a group
    assert dense_rows(density, None, limit=2).tolist() == [6, 1]


def test_tsds_report_shows_the_copies_the_kde_down_weighted(tmp_path, tiny_embed_model):
    copy = {"instruction": "apples cost dollars each, how many", "output": "7 apples"}
    pool = _pool_rows(40) + [copy] * 8
    target = [{"instruction": "apples cost dollars, how many", "output": "3"}, copy]
    # a narrow kernel: the tiny random model puts distinct rows close together
    # copies kept as candidates (distinct=False): the KDE is what down-weights them
    sel = tasksift.select(pool, target, method="tsds", count=10, config={"sigma": 0.02}, distinct=False,
                          embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c", progress=False)
    rho, p = sel.columns["tsds_density"], sel.columns["tsds_prob"]
    np.testing.assert_allclose(rho[40:], 8.0)              # each copy: itself + 7 copies
    assert (rho[np.isfinite(rho)] >= 1 - 1e-9).all() and p[40:].max() < p[:40].max()
    copies = set(range(40, 48))
    assert any(set(g) == copies for g in sel.explanation.duplicate_groups)
    page = render_select_report(sel)
    groups = Tables(page).table_with("rows in group")
    assert any(r[1] == "8" and "apples cost dollars each" in r[-1] for r in groups[1:])
    # by default the copies are one candidate: its density is 1, the collapsed rows get none
    sel = tasksift.select(pool, target, method="tsds", count=10, config={"sigma": 0.02},
                          embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c", progress=False)
    rho = sel.columns["tsds_density"]
    assert rho[40] >= 1 - 1e-9 and np.isnan(rho[41:]).all()
    assert all(g < 41 for grp in sel.explanation.duplicate_groups for g in grp)
    assert len(sel.columns["nearest_target"]) == len(pool)


# ------------------------------------------------------------------ the page
def _folder_pool(tmp_path: Path, rows_per_file=(30, 20, 10)) -> Path:
    folder = tmp_path / "pool"
    for f, n in enumerate(rows_per_file):
        d = folder / f"src{f}"
        d.mkdir(parents=True)
        with open(d / "part.jsonl", "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"instruction": f"source {f} task {i} apples train", "output": f"{i}"}) + "\n")
    return folder


def test_source_mix_table_sums_to_the_subset_and_the_pool(tmp_path):
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps({"instruction": "source 1 task apples", "output": "1"}) + "\n")
    sel = tasksift.select(_folder_pool(tmp_path), target, method="random", count=17, seed=3, progress=False)
    page = render_select_report(sel)
    mix = Tables(page).table_with("pool rows")
    body, total = mix[1:-1], mix[-1]
    assert total[0] == "total" and _num(total[1]) == 60 and _num(total[3]) == 17
    assert sum(_num(r[3]) for r in body) == 17 and sum(_num(r[1]) for r in body) == 60
    assert {r[0]: _num(r[3]) for r in body if _num(r[3])} == sel.source_mix()
    assert sorted(_num(r[1]) for r in body) == [10, 20, 30]
    assert "take only the values 0, 1" in page                # random's indicator scores: no histogram
    assert "score distribution" not in [a for a in re.findall(r"alt='([^']*)'", page)]


def test_source_table_caps_the_sources_and_keeps_the_sums():
    sources = np.array([f"s{i % 20}/f.jsonl" for i in range(200)], dtype=object)
    idx = np.arange(0, 200, 3)
    rows = source_table(Counter(sources.tolist()), Counter(sources[idx].tolist()), "pool", limit=5)
    assert len(rows) == 6 and rows[-1][0] == "other (15 sources)"
    assert sum(r[1] for r in rows) == 200 and sum(r[2] for r in rows) == len(idx)


def test_row_text_is_escaped_and_the_page_is_offline(tmp_path):
    evil = {"instruction": "apples <script>alert('x')</script> & <b>bold</b>", "output": "</td></table>"}
    pool = _pool_rows(20) + [evil]
    sel = tasksift.select(pool, [evil], method="random", count=len(pool), progress=False)
    page = render_select_report(sel)
    parsed = Tables(page)
    assert parsed.scripts == 0 and "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)" in page
    assert "<b>bold</b>" not in page and "&lt;/td&gt;&lt;/table&gt;" in page
    assert parsed.imgs and all(s.startswith("data:image/png;base64,") for s in parsed.imgs)
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)
    for section in ("The run", "Source mix", "Score distribution", "Length: subset vs target", "Target coverage",
                    "Nearest selected rows", "Near-duplicate groups"):
        assert f"<h2>{section}" in page


def test_the_page_stays_small_for_a_larger_pool(tmp_path):
    long = " ".join(["apples"] * 2000)
    pool = [{"instruction": f"{long} {i}", "output": f"train {i} " * 50} for i in range(3000)]
    target = [{"instruction": f"apples number {i} {long}", "output": "x"} for i in range(80)]
    sel = tasksift.select(pool, target, method="random", count=1500, progress=False)
    page = render_select_report(sel)
    neigh = Tables(page).table_with("target example")
    assert len(neigh) - 1 == MAX_TARGETS_SHOWN
    assert max(len(c) for r in neigh for c in r) < 2000           # texts clipped
    assert len(page) < 600_000


def test_zeros_and_log_scale_only_for_non_negative_scores():
    assert score_scale(np.array([0.0, 1e-9, 0.5, np.nan])) == (True, True)
    assert score_scale(np.array([0.0, 0.0, 0.0, 0.1, 0.3])) == (True, False)     # mostly zeros (TSDS)
    assert score_scale(np.array([0.0, 0.1, 0.5, 1.0])) == (False, False)
    assert score_scale(np.array([-1.0, 0.0, 0.0, 1e-9, 0.5])) == (False, False)


# ------------------------------------------------------------------ CLI
def test_cli_writes_the_report_and_no_report_removes_it(tmp_path, capsys):
    pool, target = tmp_path / "p.jsonl", tmp_path / "t.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _pool_rows(30)))
    target.write_text(json.dumps({"instruction": "translate to french please", "output": "oui"}) + "\n")
    out = tmp_path / "out"
    args = ["select", "--pool", str(pool), "--target", str(target), "--method", "random", "--count", "5",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert "report.html" in capsys.readouterr().out and (out / "report.html").is_file()
    man = json.loads((out / "manifest.json").read_text())
    assert man["output"]["report"].endswith("report.html") and "report" in man["timings"]
    assert man["info"]["nearest_target"]["similarity"] == "tfidf"
    assert "tasksift_nearest_target" in man["output"]["score_columns"]
    assert main(args + ["--no-report"]) == 0
    assert not (out / "report.html").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["output"]["report"] is None and "nearest_target" not in man["info"]
    row = json.loads((out / "selected.jsonl").read_text().splitlines()[0])
    assert "tasksift_nearest_target" not in row


# ------------------------------------------------------------------ cost on real data
@pytest.mark.slow
@needs_shared_data()
def test_report_cost_on_a_20k_real_pool(tmp_path):
    """Nearest targets (TF-IDF: random embeds nothing) and the page for 20k real pool rows and
    100 GSM8K targets stay within seconds and a small page (bench/select_report.py measures
    it against --no-report)."""
    import random

    from tasksift.data import load_examples

    exs = load_examples(SHARED_DATA / "pool").examples
    pool = exs.examples(sorted(random.Random(0).sample(range(len(exs)), 20_000)))
    target = load_examples(SHARED_DATA / "targets" / "gsm8k" / "train.jsonl", limit=100).examples
    sel = tasksift.select(pool, list(target), method="random", ratio=0.05, progress=False)
    sel.save(tmp_path / "out")
    assert sel.explanation.kind == "tfidf" and len(sel.indices) == 1000
    assert sel.timings["explain"] + sel.timings["report"] < 30
    assert (tmp_path / "out" / "report.html").stat().st_size < 1_000_000
