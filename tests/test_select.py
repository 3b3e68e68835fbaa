"""random and knn on hand-checked cases; the select API, CLI, config file and manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tasksift
from tasksift.budget import (Budget, allocate_quotas, allocate_token_quotas, cut_to_tokens, grouped_top_k,
                             max_rows_within)
from tasksift.cli import main
from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.features.embed import EmbedConfig
from tasksift.methods.base import SelectionContext, top_k
from tasksift.methods.knn import round_robin
from tasksift.methods.registry import available_methods, get_method


def _ex(i: int, text: str = "") -> Example:
    return Example(messages=[{"role": "user", "content": f"q{i} {text}"}, {"role": "assistant", "content": "a"}],
                   raw={"i": i}, row=i + 1)


def _ctx(x: np.ndarray, q: np.ndarray, seed: int = 0) -> SelectionContext:
    ctx = SelectionContext([_ex(i) for i in range(len(x))], [_ex(100 + i) for i in range(len(q))], seed=seed,
                           progress=False)
    ctx.set_embeddings("pool", x)
    ctx.set_embeddings("target", q)
    return ctx


def test_knn_round_robin_hand_checked():
    # 2-d unit vectors at angles; targets at 0 and 90 degrees
    ang = np.deg2rad([0, 10, 80, 95, 170, 45, 5])
    x = np.c_[np.cos(ang), np.sin(ang)]
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    res = get_method("knn")().select(_ctx(x, q), 5)
    # target 0 nearest: 0(0), 6(5), 1(10); target 1 nearest: 3(95), 2(80), 5(45)
    assert res.indices.tolist() == [0, 3, 6, 2, 1]
    assert np.isclose(res.scores[5], np.cos(np.deg2rad(45)))
    assert np.isclose(res.scores[4], np.cos(np.deg2rad(80)))  # 170 deg: closest to the 90 target


def test_round_robin_skips_taken_and_minus_one():
    neigh = np.array([[4, 1, 2], [4, -1, 3]])
    assert round_robin(neigh, 4) == [4, 3, 1, 2]
    assert round_robin(neigh, 10) == [4, 3, 1, 2]  # runs out: returns fewer


def test_knn_needs_more_neighbours_than_first_guess():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    q = x[:1] + 1e-3  # one target: knn must return the 50 nearest in order
    res = get_method("knn")().select(_ctx(x, q), 50)
    sims = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (q[0] / np.linalg.norm(q[0]))
    assert res.indices.tolist() == np.argsort(-sims)[:50].tolist()


def test_random_is_seeded_and_unique():
    x = np.zeros((50, 2))
    a = get_method("random")().select(_ctx(x, x[:1], seed=3), 20).indices
    b = get_method("random")().select(_ctx(x, x[:1], seed=3), 20).indices
    c = get_method("random")().select(_ctx(x, x[:1], seed=4), 20).indices
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist() and len(set(a.tolist())) == 20


def test_top_k_ties_and_nan():
    assert top_k(np.array([1.0, np.nan, 3.0, 3.0, -np.inf]), 3).tolist() == [2, 3, 0]


def test_top_k_equals_a_full_sort_with_ties_at_the_cut():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(0, 60))
        x = rng.integers(0, 6, size=n).astype(np.float64)          # many ties
        x[rng.random(n) < 0.15] = np.nan
        x[rng.random(n) < 0.1] = -np.inf
        x[rng.random(n) < 0.05] = np.inf
        finite = np.flatnonzero(np.isfinite(x))
        full = finite[np.lexsort((finite, -x[finite]))]            # the oracle: sort every finite row
        for k in (0, 1, 2, n // 3, len(finite) - 1, len(finite), len(finite) + 3):
            got = top_k(x, k)
            assert got.dtype.kind == "i" and got.tolist() == full[:max(k, 0)].tolist(), (trial, k)


def test_budgets_and_quotas():
    assert Budget(ratio=0.01).rows(1000) == 10 and Budget(count=5).rows(5) == 5
    with pytest.raises(ConfigError):
        Budget(count=6).rows(5)
    with pytest.raises(ConfigError):
        Budget(count=1, ratio=0.1)
    groups = ["a"] * 6 + ["b"] * 3 + ["c"]
    # proportional 3 : 1.5 : 0.5, the spare row to the largest remainder (tie -> name order)
    assert allocate_quotas(groups, 5) == {"a": 3, "b": 2, "c": 0}
    # equal 2 : 2 : 2, but c has one row; its spare row is shared again
    assert allocate_quotas(groups, 6, "equal") == {"a": 3, "b": 2, "c": 1}
    assert allocate_quotas(["a"] * 6 + ["b"] * 3, 4, {"a": 1, "b": 3}) == {"a": 1, "b": 3}
    # b wants 4 of 5 but has only 1 row: the rest goes to a
    assert allocate_quotas(["a"] * 6 + ["b"] * 1, 5, {"a": 0.2, "b": 0.8}) == {"a": 4, "b": 1}
    sel = grouped_top_k(np.arange(10.0), 4, ["x"] * 5 + ["y"] * 5, "equal")
    assert sel.tolist() == [9, 8, 4, 3]
    assert cut_to_tokens(np.array([2, 0, 1]), np.array([5, 5, 5]), 11).tolist() == [2, 0]


def test_token_budget_pieces_by_hand():
    # shortest rows first: 1 + 2 + 3 = 6 fits, + 5 does not
    assert max_rows_within(np.array([5, 1, 3, 2]), 6) == 3
    assert max_rows_within(np.array([5, 1, 3, 2]), 0) == 1          # at least one row
    assert max_rows_within(np.array([5, 1, 3, 2]), 100) == 4
    assert Budget(tokens=6).rows(4, np.array([5, 1, 3, 2])) == 3
    groups, n_tok = ["a", "a", "a", "b", "b"], np.array([10, 10, 10, 5, 5])   # a: 30 tokens, b: 10
    assert allocate_token_quotas(groups, n_tok, 20) == {"a": 15, "b": 5}
    # equal: 15 each, but b holds only 10 tokens; its spare 5 go to a
    assert allocate_token_quotas(groups, n_tok, 30, "equal") == {"a": 20, "b": 10}
    assert allocate_token_quotas(groups, n_tok, 20, {"b": 1}) == {"a": 0, "b": 10}
    with pytest.raises(ConfigError):
        allocate_token_quotas(groups, n_tok, 20, {"c": 1})


def test_token_budget_ranks_only_the_rows_that_can_fit(tmp_path, tiny_embed_model):
    """A token budget runs the method for the most rows that can fit, not the whole pool, and
    keeps the same rows a whole-pool ranking cut at the budget keeps (k-center is greedy)."""
    pool, target = _demo_files(tmp_path)
    kw = dict(embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c", progress=False)
    sel = tasksift.select(pool, target, method="kcenter", tokens=400, **kw)
    n_tok = np.array([len(ex.text.split()) for ex in sel.pool.examples])
    tb = sel.info["token_budget"]
    assert tb["rows_ranked"] == max_rows_within(n_tok, 400) < len(sel.pool)
    assert tb["selected_tokens"] == n_tok[sel.indices].sum() <= 400
    full = tasksift.select(pool, target, method="kcenter", count=len(sel.pool), **kw)
    assert sel.indices.tolist() == cut_to_tokens(full.indices, n_tok, 400).tolist()


def test_token_budget_with_group_quotas_shares_tokens_between_groups(tmp_path, tiny_embed_model):
    pool, target = _demo_files(tmp_path)
    sel = tasksift.select(pool, target, method="knn", tokens=600, group_by="task", quotas="equal",
                          embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c", progress=False)
    n_tok = np.array([len(ex.text.split()) for ex in sel.pool.examples])
    tasks = np.array([ex.raw["task"] for ex in sel.pool.examples])
    groups = sel.info["groups"]
    assert len(groups) == len(set(tasks)) == 6     # every task gets rows (not the first few groups only)
    for g, gi in groups.items():
        picked = [i for i in sel.indices if tasks[i] == g]
        assert 0 < n_tok[picked].sum() <= gi["quota_tokens"] == 100
    assert sel.info["token_budget"]["selected_tokens"] <= 600
    with pytest.raises(ConfigError, match="token budget of 3"):
        tasksift.select(pool, target, method="knn", tokens=3, group_by="task", quotas="equal",
                        embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c", progress=False)


def test_registry_lists_methods_with_info():
    names = {m.name for m in available_methods()}
    assert {"random", "knn"} <= names
    for m in available_methods():
        assert m.description and m.cost in ("cheap", "moderate", "expensive")


def _demo_files(tmp_path):
    from tasksift.data.demo import write_demo_data

    return write_demo_data(tmp_path / "data")


def test_select_api_on_demo(tmp_path, tiny_embed_model):
    pool, target = _demo_files(tmp_path)
    embed = EmbedConfig(model=tiny_embed_model)
    sel = tasksift.select(pool, target, method="knn", ratio=0.1, embed=embed, cache_dir=tmp_path / "c",
                          progress=False)
    k = round(0.1 * len(sel.pool))
    assert len(sel.indices) == k == len(set(sel.ids))
    assert [e.id for e in sel.subset] == sel.ids
    path = sel.save(tmp_path / "out")
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert len(rows) == k and all("instruction" in r and "tasksift_score" in r for r in rows)
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["method"] == "knn" and man["counts"]["selected"] == k and man["seed"] == 0
    assert man["selected_ids"] == sel.ids and man["pool"]["fingerprint"] and "torch" in man["versions"]
    assert set(man["timings"]) >= {"load", "embed_pool", "knn_search", "total"}


def test_group_quotas_by_field(tmp_path, tiny_embed_model):
    pool, target = _demo_files(tmp_path)
    sel = tasksift.select(pool, target, method="knn", count=12, group_by="task", quotas="equal",
                          embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c",
                          progress=False)
    tasks = [ex.raw["task"] for ex in sel.subset]
    assert sorted({t: tasks.count(t) for t in tasks}.values()) == [2] * 6


def test_cli_select_with_config_file(tmp_path, tiny_embed_model, capsys):
    pool, target = _demo_files(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"pool: {pool}\ntarget: {target}\nmethod: knn\ncount: 7\nembed_model: {tiny_embed_model}\n"
                   f"cache_dir: {tmp_path / 'c'}\nno_progress: true\n")
    rc = main(["select", "--config", str(cfg), "--out", str(tmp_path / "o"), "--format", "csv"])
    out = capsys.readouterr().out
    assert rc == 0 and "selected 7 of" in out
    import csv

    with open(tmp_path / "o" / "selected.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert len(lines) == 8 and lines[0][:6] == ["instruction", "input", "output", "task", "tasksift_id",
                                                "tasksift_rank"]
    rc = main(["methods"])
    assert rc == 0 and "knn" in capsys.readouterr().out


def test_same_seed_same_selection(tmp_path):
    rows = [{"text": f"document number {i}"} for i in range(40)]
    a = tasksift.select(rows, rows[:2], method="random", count=10, seed=7, progress=False)
    b = tasksift.select(rows, rows[:2], method="random", count=10, seed=7, progress=False)
    assert a.ids == b.ids


def _run_demo(tmp_path, capsys, method, model):
    args = ["demo", "--out", str(tmp_path / "demo"), "--method", method, "--cache-dir", str(tmp_path / "c"),
            "--no-progress"]
    rc = main(args + (["--embed-model", model] if model else []))
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = [json.loads(l) for l in (tmp_path / "demo" / "selection" / "selected.jsonl").read_text().splitlines()]
    assert len(rows) == round(0.1 * sum(1 for _ in open(tmp_path / "demo" / "data" / "pool.jsonl")))
    share = sum(r["task"] == "math" for r in rows) / len(rows)
    assert "share of selected rows that are math word problems" in out
    return share


def test_demo_command_knn_picks_math(tmp_path, tiny_embed_model, capsys):
    """The README's first command, with a tiny random model: even its geometry finds the math."""
    assert _run_demo(tmp_path, capsys, "knn", tiny_embed_model) > 0.5  # random would give ~20%


@pytest.mark.slow
def test_demo_command_tsds_real_model(tmp_path, capsys):
    """The README's first command as it runs: TSDS with the bundled MiniLM (measured: 97% math)."""
    assert _run_demo(tmp_path, capsys, "tsds", None) > 0.8


# ------------------------------------------------------------------ methods command (issue 17)
def test_methods_name_shows_every_option_with_type_default_and_help(capsys):
    assert main(["methods", "tsds"]) == 0
    out = capsys.readouterr().out
    lines = {l.split()[0]: l for l in out.splitlines() if l.startswith("  ")}
    assert set(lines) == set(get_method("tsds").parameters)
    assert "float[0,1]" in lines["alpha"] and "0.5" in lines["alpha"]
    assert "{without_replacement,with_replacement,top}" in lines["sampling"] and "draw order" in lines["sampling"]
    assert main(["methods", "random"]) == 0 and "options: none" in capsys.readouterr().out


def test_methods_json_is_the_option_table(capsys):
    assert main(["methods", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in recs] == [m.name for m in available_methods()]
    dsir = next(r for r in recs if r["name"] == "dsir")
    opt = {o["name"]: o for o in dsir["options"]}
    assert opt["smoothing"] == {"name": "smoothing", "type": "float>=0", "default": 1.0,
                                "accepts": "a number >= 0", "help": "additive smoothing of the bucket counts"}
    assert main(["methods", "knn", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"] == []


def test_methods_unknown_name_is_one_line(capsys):
    assert main(["methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_method_options_doc_is_generated_from_the_tables(capsys):
    from pathlib import Path

    assert main(["methods", "--markdown"]) == 0
    doc = Path(__file__).resolve().parents[1] / "docs" / "METHOD_OPTIONS.md"
    assert doc.read_text() == capsys.readouterr().out, "rerun: tasksift methods --markdown > docs/METHOD_OPTIONS.md"


# ------------------------------------------------------- empty and short results (issue 17)
def _rows(n, prefix="row"):
    return [{"instruction": f"{prefix} {i} asks a question", "output": f"answer {i}"} for i in range(n)]


def test_zero_selected_rows_is_an_error(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _rows(8)))
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(_rows(1, "other")[0]) + "\n")
    rc = main(["select", "--pool", str(pool), "--target", str(target), "--method", "length(min_words=50) -> random",
               "--count", "3", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "selected 0 of 8 pool rows (the filters left 0 rows" in err
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_shortfall_is_a_warning_and_a_manifest_field(tmp_path, capsys, tiny_embed_model):
    """dedup -> random --count 5 on a pool of one row repeated: 1 row, said so."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text((json.dumps(_rows(1)[0]) + "\n") * 6)
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(_rows(1, "other")[0]) + "\n")
    rc = main(["select", "--pool", str(pool), "--target", str(target), "--method", "dedup -> random",
               "--count", "5", "--out", str(tmp_path / "o"), "--no-progress", "--embed-model", tiny_embed_model,
               "--cache-dir", str(tmp_path / "c")])
    cap = capsys.readouterr()
    assert rc == 0
    warn = [l for l in cap.err.splitlines() if l.startswith("tasksift: warning:")]
    # duplicates are collapsed before the recipe runs (issue 17), so that is the reason given
    assert warn == ["tasksift: warning: selected 1 rows, 4 fewer than the budget of 5 "
                    "(the pool holds 1 distinct rows (5 duplicates collapsed))"]
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["info"]["shortfall"] == {"budget_rows": 5, "selected": 1, "missing": 4,
                                        "reason": "the pool holds 1 distinct rows (5 duplicates collapsed)"}
    assert man["counts"]["selected"] == 1


def test_target_examples_in_the_pool_are_counted_and_warned(tmp_path):
    pool = _rows(10)
    target = pool[:3] + _rows(2, "other")
    with pytest.warns(tasksift.errors.SelectionWarning, match="3 of 5 target examples also sit in the pool"):
        sel = tasksift.select(pool, target, method="random", count=10, progress=False)
    assert sel.info["target_in_pool"] == {"target_examples": 3, "selected_pool_rows": 3}
    assert "shortfall" not in sel.info
    sel.save(tmp_path / "o")
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["info"]["target_in_pool"]["target_examples"] == 3 and len(man["info"]["warnings"]) == 1


def test_yaml_recipe_with_top_level_steps_and_a_readable_summary(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _rows(8) + [{"instruction": "hi", "output": "yo"}]))
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(_rows(1, "other")[0]) + "\n")
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(f"pool: {pool}\ntarget: {target}\nout: {tmp_path / 'o'}\ncount: 3\nno_progress: true\n"
                   "steps:\n  - length(min_words=3)\n  - method: random\n")
    assert main(["select", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tasksift length(min_words=3) -> random: selected 3 of 9")
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["method"] == "length(min_words=3) -> random" and man["info"]["candidates"] == 8
    cfg.write_text(cfg.read_text() + "method: knn\n")
    assert main(["select", "--config", str(cfg)]) == 2
    assert "not both" in capsys.readouterr().err


def test_one_step_recipe_forms_run_as_their_method(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in _rows(8) + [{"instruction": "hi", "output": "yo"}]))
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(_rows(1, "other")[0]) + "\n")
    base = ["select", "--pool", str(pool), "--target", str(target), "--count", "2", "--no-progress"]
    assert main(base + ["--method", "length(min_words=3)", "--out", str(tmp_path / "a")]) == 0
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["method"] == "length" and man["config"] == {"min_words": 3}
    cfg = tmp_path / "r.yaml"
    cfg.write_text("steps:\n  - length: {max_words: 1}\n")
    assert main(base + ["--method", str(cfg), "--out", str(tmp_path / "b"), "-o", "order=first"]) == 2
    assert "selected 0 of 9" in capsys.readouterr().err
    cfg.write_text("steps:\n  - length: {max_words: 6}\n")
    assert main(base + ["--method", str(cfg), "--out", str(tmp_path / "b"), "-o", "order=first"]) == 0
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["config"] == {"max_words": 6, "order": "first"}
    assert main(base + ["--method", "length(min_words=x) -> random", "--out", str(tmp_path / "c")]) == 2
    assert "option min_words must be an integer >= 0 or null, got 'x'" in capsys.readouterr().err


def test_per_selected_views_follow_indices(tmp_path, tiny_embed_model):
    from tasksift.features.embed import EmbedConfig

    pool = [{"instruction": f"task {i} about apples {'x' * i}", "output": str(i)} for i in range(30)]
    sel = tasksift.select(pool, pool[:3], method="tsds", count=5, embed=EmbedConfig(model=tiny_embed_model),
                          cache_dir=tmp_path / "c", progress=False)
    assert len(sel.scores) == len(pool) and len(sel.selected_scores) == len(sel.indices) == 5
    np.testing.assert_array_equal(sel.selected_scores, np.asarray(sel.scores)[sel.indices])
    np.testing.assert_array_equal(sel.selected_probabilities, sel.probabilities[sel.indices])
    assert (sel.selected_probabilities > 0).all()          # tsds draws only rows with mass
    rnd = tasksift.select(pool, pool[:3], method="random", count=4, seed=0, progress=False, explain=False)
    assert rnd.selected_probabilities is None and len(rnd.selected_scores) == 4


def test_targets_in_pool_are_matched_on_the_id_column_without_reading_rows(monkeypatch):
    from tasksift.api import _as_loaded, note_targets_in_pool
    from tasksift.data.pool import Pool

    rows = _rows(8)
    pool = _as_loaded(rows + rows[2:3], "pool", "auto", None, False, None).pool  # row 2 twice
    target = _as_loaded(rows[2:4] + _rows(3, "other"), "target", "auto", None, False, None).pool

    def no_reading(*a, **k):
        raise AssertionError("pool rows were read")
    monkeypatch.setattr(Pool, "__iter__", no_reading)
    monkeypatch.setattr(Pool, "__getitem__", no_reading)
    info: dict = {}
    with pytest.warns(tasksift.errors.SelectionWarning, match="2 of 5 target examples also sit in the pool"):
        note_targets_in_pool(pool, target, np.array([8, 2, 0, 5]), info)
    assert info["target_in_pool"] == {"target_examples": 2, "selected_pool_rows": 2}
    info = {}
    with pytest.warns(tasksift.errors.SelectionWarning, match=r"\(0 of the selected rows"):
        note_targets_in_pool(pool, target, np.array([0, 1]), info)
    assert info["target_in_pool"] == {"target_examples": 2, "selected_pool_rows": 0}
