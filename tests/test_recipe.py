"""Recipes: parsing every form, running filters -> selector, mapping indices back."""
from __future__ import annotations

import numpy as np
import pytest

from tasksift.data.example import Example
from tasksift.errors import ConfigError
from tasksift.methods.base import SelectionContext
from tasksift.methods.registry import get_method
from tasksift.recipe import Recipe, load_recipe, parse_recipe


def toy(n: int = 80, seed: int = 0) -> tuple[SelectionContext, dict[int, int]]:
    """A pool whose rows nearest to the target come in planted near-duplicate pairs."""
    rng = np.random.default_rng(seed)
    d = 24
    q = rng.normal(size=(2, d)).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    dups = {}
    for t, (orig, copy) in enumerate([(4, 40), (9, 41), (15, 42), (21, 43)]):
        x[orig] = q[t % 2] + 0.3 * rng.normal(size=d)       # close to a target example
        x[copy] = x[orig] + 0.005 * rng.normal(size=d)      # and its near-copy
        dups[copy] = orig
    pool = [Example(messages=[{"role": "user", "content": f"question {i} " + "word " * (i % 7)},
                              {"role": "assistant", "content": f"answer {i}"}], raw={"i": i}, row=i)
            for i in range(n)]
    target = [Example(messages=[{"role": "user", "content": f"target {j}"}, {"role": "assistant", "content": "x"}],
                      raw={}, row=j) for j in range(2)]
    ctx = SelectionContext(pool, target, seed=seed)
    ctx.set_embeddings("pool", x)
    ctx.set_embeddings("target", q)
    return ctx, dups


def test_parse_string_with_options():
    r = parse_recipe("dedup(threshold=0.9, mode=cluster) -> score-then-diverse(score=knn, score_options={}, "
                     "threshold=0.8)")
    assert [s.name for s in r.steps] == ["dedup", "score-then-diverse"]
    assert r.steps[0].options == {"threshold": 0.9, "mode": "cluster"}
    assert r.steps[1].options == {"score": "knn", "score_options": {}, "threshold": 0.8}
    r2 = parse_recipe(r.describe())
    assert [(s.name, s.options) for s in r2.steps] == [(s.name, s.options) for s in r.steps]
    r = parse_recipe("ifd(filter) -> kcenter")
    assert r.steps[0].filter and r.steps[0].options == {} and r.steps[1].name == "kcenter"
    r = parse_recipe("dsir(keep=0.25, sampling=top) -> knn")
    assert r.steps[0].keep == 0.25 and r.steps[0].options == {"sampling": "top"}
    assert len(parse_recipe("knn").steps) == 1
    assert parse_recipe("length(min_words=2) -> dsir -> knn").needs == ("ngrams", "embeddings")
    assert parse_recipe("length(min_words=2) -> knn").stochastic and not parse_recipe("kcenter").stochastic


def test_parse_list_mapping_and_yaml(tmp_path):
    a = parse_recipe(["dedup(threshold=0.9)", {"method": "length", "options": {"min_words": 3}},
                      {"kcenter": {"init": "random"}}])
    assert [s.name for s in a.steps] == ["dedup", "length", "kcenter"]
    assert a.steps[1].options == {"min_words": 3} and a.steps[2].options == {"init": "random"}
    b = parse_recipe({"steps": [{"method": "dsir", "keep": 100}, "knn"]})
    assert b.steps[0].keep == 100
    f = tmp_path / "recipe.yaml"
    f.write_text("steps:\n  - dedup: {threshold: 0.97}\n  - method: knn\n")
    c = load_recipe(f)
    assert [s.name for s in c.steps] == ["dedup", "knn"] and c.steps[0].options == {"threshold": 0.97}
    assert [s.name for s in parse_recipe(str(f)).steps] == ["dedup", "knn"]
    (tmp_path / "s.yml").write_text("dedup -> random\n")
    assert [s.name for s in load_recipe(tmp_path / "s.yml").steps] == ["dedup", "random"]


@pytest.mark.parametrize("bad", [
    "dedup -> ", "nosuchmethod -> knn", "dedup(thresh=0.9) -> knn", "dedup(threshold=0.9 -> knn",
    "dedup(0.9) -> knn", "knn -> dedup(filter)", "dsir(keep=-1) -> knn", [], {"steps": ["knn"], "x": 1},
    [{"method": "knn", "opts": {}}], [42], "",
])
def test_bad_recipes_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_recipe(bad)


def test_missing_and_malformed_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [dedup\n")
    with pytest.raises(ConfigError, match="malformed"):
        load_recipe(tmp_path / "bad.yaml")


def test_dedup_then_knn_never_returns_both_duplicates():
    ctx, dups = toy()
    plain = get_method("knn")().select(ctx, 8).indices.tolist()
    assert any(c in plain and o in plain for c, o in dups.items())   # knn alone takes the copies
    for k in (4, 8, 20, 60):
        res = parse_recipe("dedup -> knn").run(ctx, k)
        sel = res.indices.tolist()
        assert len(sel) == k == len(set(sel))
        assert not any(c in sel and o in sel for c, o in dups.items())
        assert not set(sel) & set(dups)                             # the later copy is the one dropped
    assert res.info["filters"][0]["rows_kept"] == 76 and res.info["candidates"] == 76
    assert np.isnan(res.scores[list(dups)]).all() and np.isfinite(res.scores[[4, 9, 15, 21]]).all()
    assert res.columns["recipe_candidate"][list(dups)].tolist() == [0, 0, 0, 0]


def test_filters_chain_and_selectors_as_filters():
    ctx, dups = toy()
    res = parse_recipe("length(min_words=4) -> dedup -> kcenter").run(ctx, 10)
    lens = np.array([len(ex.text.split()) for ex in ctx.pool])
    assert (lens[res.indices] >= 4).all() and not set(res.indices.tolist()) & set(dups)
    log = res.info["filters"]
    assert log[0]["rows_in"] == 80 and log[1]["rows_in"] == log[0]["rows_kept"] == int((lens >= 4).sum())
    # a selector used as a filter keeps the rows it returns
    r1 = parse_recipe("random(keep=20) -> knn").run(ctx, 5)
    pool20 = get_method("random")().select(SelectionContext(ctx.pool, ctx.target, seed=0), 20).indices
    assert set(r1.indices.tolist()) <= set(pool20.tolist())
    r2 = parse_recipe("dsir(keep=0.5, sampling=top) -> random").run(ctx, 10)
    assert r2.info["filters"][0]["rows_kept"] == 40
    assert np.isfinite(r2.columns["dsir_log_weight"]).all()
    assert np.isnan(r2.scores).sum() == 40


def test_recipe_with_fewer_candidates_than_budget_and_subcontext_embeddings():
    ctx, dups = toy()
    res = parse_recipe("length(min_words=7) -> knn").run(ctx, 50)
    lens = np.array([len(ex.text.split()) for ex in ctx.pool])
    assert sorted(res.indices.tolist()) == np.flatnonzero(lens >= 7).tolist() and "short" in res.info
    # the selector saw sliced embeddings: its scores equal the full-pool knn scores on the kept rows
    full = get_method("knn")().select(ctx, 5).scores
    kept = np.flatnonzero(lens >= 7)
    np.testing.assert_allclose(res.scores[kept], full[kept], rtol=1e-6)
    assert isinstance(parse_recipe(parse_recipe("knn")), Recipe)


def test_recipe_through_the_api():
    from tasksift.api import select

    pool = [{"instruction": f"question {i} " + "word " * (i % 5), "output": f"answer {i}"} for i in range(40)]
    pool += [dict(pool[3]), dict(pool[7])]                      # exact duplicates
    target = [{"instruction": "t", "output": "x"}]
    sel = select(pool, target, method="dedup(threshold=null) -> length(min_words=5) -> random", count=10,
                 progress=False)
    assert len(sel.indices) == 10 and max(sel.indices) < 40
    assert all(len(pool[i]["instruction"].split()) + 2 >= 5 for i in sel.indices)


def test_a_scoring_method_as_filter_keeps_its_eligible_rows(monkeypatch):
    """``ifd(filter) -> kcenter``: IFD (losses faked, no model) drops rows with IFD > 1, kcenter picks from the rest."""
    import tasksift.methods.ifd as ifd_mod
    from tasksift.features.lm import LossResult

    ctx, _ = toy()
    cond = np.where(np.arange(80) % 4 == 1, 3.0, 1.0)
    unc = np.full(80, 2.0)                      # IFD 1.5 > 1 for rows 1, 5, 9, ...: dropped
    dropped = set(range(1, 80, 4))

    def fake(c, examples, config, *, unconditional=False, stage="lm_loss", **kw):
        n = len(examples)
        rows = [ex.raw["i"] for ex in examples]
        return LossResult(loss=cond[rows], n_response_tokens=np.full(n, 5), n_tokens=np.full(n, 9),
                          truncated=np.zeros(n, bool), status=np.zeros(n, int), uncond_loss=unc[rows],
                          uncond_status=np.zeros(n, int), info={"unscorable": {"count": 0}})

    monkeypatch.setattr(ifd_mod, "lm_losses", fake)
    res = parse_recipe("ifd(filter) -> kcenter").run(ctx, 5)
    assert res.info["filters"][0]["rows_kept"] == 60
    assert len(res.indices) == 5 and not set(res.indices.tolist()) & dropped
    res = parse_recipe("dedup -> ifd(filter) -> knn").run(ctx, 70)
    assert sorted(res.indices.tolist()) == sorted(set(range(80)) - dropped - {40, 41, 42, 43}) and "short" in res.info


def test_api_config_applies_to_the_recipes_selecting_step():
    from tasksift.api import run_method

    with pytest.raises(ConfigError):                        # checked against knn, never ignored
        run_method("dedup -> knn", {"no_such_option": 1}, toy()[0], 6)
    via_config = run_method("dedup -> kcenter", {"init": "random"}, toy()[0], 6)
    inline = run_method("dedup -> kcenter(init=random)", {}, toy()[0], 6)
    default = run_method("dedup -> kcenter", {}, toy()[0], 6)
    assert list(via_config.indices) == list(inline.indices)
    assert list(via_config.indices) != list(default.indices)
    overridden = run_method("dedup -> kcenter(init=target)", {"init": "random"}, toy()[0], 6)
    assert list(overridden.indices) == list(inline.indices)
