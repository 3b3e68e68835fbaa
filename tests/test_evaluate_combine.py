"""One dir per seed, combined by ``tasksift evaluate --summarize``; rows of runs started
before the new fields existed are tolerated; the publishable summary holds no texts; the
up-front estimate; the bare-answer loss scorer. All on the smoke preset's tiny model."""
from __future__ import annotations

import json

import pytest

from tasksift.cli import main
from tasksift.errors import ConfigError
from tasksift.evaluate import preset_recipe
from tasksift.evaluate.combine import summarize_dirs
from tasksift.evaluate.config import recipe_from_dict
from tasksift.evaluate.estimate import arm_steps, estimate_run, format_estimate
from tasksift.evaluate.runner import Evaluation, read_results, run_evaluation

NEW_FIELDS = ("answer_style", "item_n_choices", "item_subtasks", "target_answer_style")


def _recipe(work, seed: int, **over):
    d = preset_recipe("smoke", work).to_dict()
    d.update({"methods": ["knn"], "budgets": [0.2], "seeds": [seed], "full": False,
              "scorers": ["loss", "loss_answer", "mc"], "primary_scorer": "loss"})
    d.update(over)
    return recipe_from_dict(d)


@pytest.fixture(scope="module")
def seed_dirs(tmp_path_factory):
    work = tmp_path_factory.mktemp("combine")
    dirs = []
    for s in (0, 1):
        out = work / f"run-s{s}"
        run_evaluation(_recipe(work, s), out, progress=False)
        dirs.append(out)
    return work, dirs


def test_rows_carry_style_choices_and_bare_answer_loss(seed_dirs):
    _, dirs = seed_dirs
    rows = read_results(dirs[0] / "results.jsonl")
    base = next(r for r in rows if r["kind"] == "base")
    assert base["item_n_choices"] == [3] * len(base["item_scores"]["mc"])
    assert base["target_answer_style"]["n"] == 8
    for r in rows:
        assert set(r["item_scores"]) == {"loss", "loss_answer", "mc"}
        assert r["scores"]["loss_answer"]["all"] != r["scores"]["loss"]["all"]   # another text scored
        if r["kind"] != "base":
            assert 0 <= r["answer_style"]["rationale_first_share"] <= 1 and r["answer_style"]["n"] == r["n_selected"]
    summary = json.loads((dirs[0] / "summary.json").read_text())
    assert {c["scorer"] for c in summary["paired"]} == {"loss", "loss_answer", "mc"}
    assert summary["base_chance"]["all"]["chance"] == pytest.approx(1 / 3)
    assert summary["missing_fields"] == {}


def test_summarize_combines_seeds(seed_dirs, capsys):
    work, dirs = seed_dirs
    out, pub = work / "combined", work / "results" / "smoke.json"
    assert main(["evaluate", "--summarize", *map(str, dirs), "--out", str(out), "--publish", str(pub)]) == 0
    printed = capsys.readouterr().out
    assert "paired difference to random" in printed and "seeds [0, 1]" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["recipe"]["seeds"] == [0, 1] and s["n_arms"] == 5       # one base + 2 random + 2 knn
    knn = next(c for c in s["paired"] if c["method"] == "knn" and c["scorer"] == "loss")
    assert knn["seeds_method"] == [0, 1] and knn["seeds_random"] == [0, 1] and knn["ci_low"] <= knn["diff"] <= knn["ci_high"]
    e = next(x for x in s["table"] if x["method"] == "knn")
    assert e["seeds"] == [0, 1] and e["vs_random"]["welch_p"] is not None
    assert (out / "report.html").is_file()
    p = json.loads(pub.read_text())
    text = pub.read_text()
    for item in read_results(dirs[0] / "results.jsonl"):
        for out_text in item.get("em_outputs", []):
            assert out_text not in text
    assert "item_scores" not in text and "matches" not in text
    assert p["paired"] and p["survey"]["published_points"]["IFD"] == {"sdf": 0.05, "pir": 1.747,
                                                                      "survey_efficiency": pytest.approx(p["survey"]["published_points"]["IFD"]["survey_efficiency"])}
    assert p["recipe"]["seeds"] == [0, 1] and p["combined_from"] == ["run-s0", "run-s1"]
    test_prompts = [json.loads(line)["prompt"] for line in (work / "_smoke" / "data" / "test.jsonl").read_text().splitlines()]
    assert not any(t in text for t in test_prompts)


def test_summarize_tolerates_rows_without_new_fields(seed_dirs, tmp_path):
    """Rows as today's frozen runs write them: no answer style, no per-item choices, no
    loss_answer; the summary still works and names what is missing."""
    work, dirs = seed_dirs
    old = []
    for d in dirs:
        o = tmp_path / d.name
        o.mkdir()
        run = json.loads((d / "run.json").read_text())
        run["recipe"]["scorers"] = ["loss", "mc"]
        run["recipe"]["finetune"].pop("dtype")
        run["recipe"]["scoring"].pop("dtype")
        (o / "run.json").write_text(json.dumps(run))
        lines = []
        for r in read_results(d / "results.jsonl"):
            for f in NEW_FIELDS:
                r.pop(f, None)
            r["item_scores"].pop("loss_answer")
            r["scores"].pop("loss_answer")
            lines.append(json.dumps(r))
        (o / "results.jsonl").write_text("\n".join(lines) + "\n")
        old.append(o)
    s = summarize_dirs(old, tmp_path / "combined")
    assert {c["scorer"] for c in s["paired"]} == {"loss", "mc"}
    assert s["answer_style"] == [] and set(s["missing_fields"]) >= {"answer_style"}
    # the task's data is at hand here, so choices and the target style are recomputed from it
    assert s["base_chance"]["all"]["chance"] == pytest.approx(1 / 3)
    assert s["target_answer_style"]["n"] == 8 and "item_n_choices" in s["recomputed_from_task_data"]


def test_summarize_refuses_mismatched_or_duplicate_dirs(seed_dirs, tmp_path):
    work, dirs = seed_dirs
    with pytest.raises(ConfigError, match="given twice"):
        summarize_dirs([dirs[0], dirs[0]], tmp_path / "x")
    copy = tmp_path / "copy"       # the same arm in two dirs with different rows: two runs of one seed
    copy.mkdir()
    (copy / "run.json").write_text((dirs[0] / "run.json").read_text())
    rows = read_results(dirs[0] / "results.jsonl")
    rows[-1]["scores"]["loss"]["all"] += 1.0
    (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="same seed twice"):
        summarize_dirs([dirs[0], copy], tmp_path / "x")
    other = tmp_path / "other"
    run_evaluation(_recipe(work, 2, finetune={"steps": 2, "lr": 5e-3, "r": 4, "alpha": 8, "batch_size": 4,
                                              "max_length": 128}), other, progress=False)
    with pytest.raises(ConfigError, match="differs in: finetune"):
        summarize_dirs([dirs[0], other], tmp_path / "y")
    with pytest.raises(ConfigError, match="no run.json"):
        summarize_dirs([tmp_path], tmp_path / "z")
    assert main(["evaluate", "--summarize", str(dirs[0])]) != 0       # no --out


def test_estimate_counts_steps_and_scoring(seed_dirs, tmp_path, capsys):
    work, _ = seed_dirs
    recipe = _recipe(work, 0)
    ev = Evaluation(recipe, tmp_path / "est", progress=False)
    ev.prepare()
    est = estimate_run(ev, sample_steps=2, sample_items=4)
    assert est["n_arms_todo"] == 3 and [a["steps"] for a in est["arms"]] == [0, 3, 3]
    assert est["total_seconds"] == pytest.approx(6 * est["seconds_per_step"] + 3 * est["score_seconds_per_arm"])
    assert set(est["seconds_per_item"]) == {"loss+loss_answer+mc"} and "about" in format_estimate(est)
    ep = recipe_from_dict({**recipe.to_dict(), "finetune": {"epochs": 2, "batch_size": 4}})
    arm = {"kind": "method", "budget_value": 0.2}
    assert arm_steps(arm, ep, 150) == 2 * 8                               # 30 rows, batches of 4, 2 epochs
    assert arm_steps({"kind": "base"}, ep, 150) == 0
    assert not (tmp_path / "est" / "results.jsonl").exists()
    d = recipe.to_dict()
    rfile = tmp_path / "r.yaml"
    rfile.write_text(json.dumps(d))
    assert main(["evaluate", str(rfile), "--out", str(tmp_path / "est2"), "--estimate", "--no-progress"]) == 0
    assert "estimate from 2 LoRA steps" in capsys.readouterr().out


def test_dtype_option_validated_and_fingerprint_kept():
    d = {"pool": "p", "task": {"kind": "gsm8k"}, "methods": ["knn"]}
    assert recipe_from_dict(d).fingerprint() == recipe_from_dict({**d, "finetune": {"dtype": "float32"}}).fingerprint()
    assert recipe_from_dict(d).fingerprint() != recipe_from_dict({**d, "finetune": {"dtype": "bfloat16"}}).fingerprint()
    with pytest.raises(ConfigError, match="dtype"):
        recipe_from_dict({**d, "scoring": {"dtype": "float16"}})
    assert "loss_answer" in recipe_from_dict({**d, "scorers": ["loss_answer"]}).scorers


def test_embed_dtype_validated_fingerprint_kept_and_passed_to_selection(tmp_path):
    from tasksift.evaluate.config import EMBED_DTYPES, comparable_recipe
    from tasksift.features.embed_models import DTYPES

    assert EMBED_DTYPES == DTYPES
    d = {"pool": "p", "task": {"kind": "gsm8k"}, "methods": ["knn"]}
    auto = recipe_from_dict(d)
    assert auto.embed_dtype == "auto"
    assert auto.fingerprint() == recipe_from_dict({**d, "embed_dtype": "auto"}).fingerprint()
    f32 = recipe_from_dict({**d, "embed_dtype": "float32"})
    assert f32.fingerprint() != auto.fingerprint()
    old = {k: v for k, v in auto.to_dict().items() if k != "embed_dtype"}   # a run.json from before the option
    assert comparable_recipe(old) == comparable_recipe(auto.to_dict()) != comparable_recipe(f32.to_dict())
    with pytest.raises(ConfigError, match="embed_dtype"):
        recipe_from_dict({**d, "embed_dtype": "fp8"})
    ev = Evaluation(f32, tmp_path / "out", progress=False)
    assert ev.embed_config().dtype == "float32" and ev.embed_config().resolved_dtype() == "float32"


def test_cli_seeds_override(seed_dirs, tmp_path, capsys):
    work, _ = seed_dirs
    rfile = tmp_path / "r.yaml"
    rfile.write_text(json.dumps(_recipe(work, 0, seeds=[0, 1, 2]).to_dict()))
    assert main(["evaluate", str(rfile), "--seeds", "2", "--plan", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "seed=2" in out and "seed=0" not in out and "seed=1" not in out


def test_run_prints_the_estimate_before_the_first_arm(seed_dirs, tmp_path, monkeypatch, capsys):
    import tasksift.evaluate.estimate as E
    from tasksift.evaluate import runner as R

    work, _ = seed_dirs
    calls = []
    fake = {"seconds_per_step": 1.0, "seconds_per_item": {"loss": 0.5}, "score_seconds_per_arm": 6.0, "n_test": 12,
            "arms": [{"arm": "a", "steps": 3, "seconds": 9.0}], "n_arms_todo": 1, "total_seconds": 9.0,
            "sample_steps": 2, "sample_items": 4, "excludes": "selection time"}
    monkeypatch.setattr(E, "estimate_run", lambda ev: calls.append("estimate") or fake)

    def first_arm(self, arm):
        calls.append("arm")
        raise KeyboardInterrupt

    monkeypatch.setattr(R.Evaluation, "run_arm", first_arm)
    with pytest.raises(KeyboardInterrupt):
        R.Evaluation(_recipe(work, 0), tmp_path / "o", progress=True).run()
    assert calls == ["estimate", "arm"]
    assert "about 0m09s" in capsys.readouterr().err
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        R.Evaluation(_recipe(work, 0), tmp_path / "o", progress=True).run(estimate=False)
    assert calls == ["arm"]
