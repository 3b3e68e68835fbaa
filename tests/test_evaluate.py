"""``tasksift evaluate`` end to end on the ``smoke`` preset (tiny random llama, generated pool):
a run killed after a few arms resumes without redoing them, the outputs hold every arm with
its metrics, the report is self-contained, and contamination handling works."""
from __future__ import annotations

import json
import re

import pytest

from tasksift.cli import main
from tasksift.errors import ConfigError
from tasksift.evaluate import preset_recipe
from tasksift.evaluate import runner as R
from tasksift.evaluate.config import recipe_from_dict
from tasksift.evaluate.runner import Evaluation, plan_arms, read_results, run_evaluation


class _Killed(Exception):
    pass


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run the smoke preset, killed at the 4th fine-tune, then resumed; returns what happened."""
    out = tmp_path_factory.mktemp("smoke_eval")
    recipe = preset_recipe("smoke", out)
    real = R.finetune_lora
    calls = {"n": 0, "ids": []}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Killed("simulated kill")
        return real(*a, **k)

    R.finetune_lora = dying
    try:
        with pytest.raises(_Killed):
            run_evaluation(recipe, out)
    finally:
        R.finetune_lora = real
    before = read_results(out / "results.jsonl")

    resumed = {"n": 0}

    def counting(*a, **k):
        resumed["n"] += 1
        return real(*a, **k)

    R.finetune_lora = counting
    try:
        summary = run_evaluation(preset_recipe("smoke", out), out)
    finally:
        R.finetune_lora = real
    return {"out": out, "recipe": recipe, "before": before, "resumed_calls": resumed["n"], "summary": summary,
            "rows": read_results(out / "results.jsonl")}


def test_kill_then_resume_skips_finished_arms(smoke_run):
    before, rows = smoke_run["before"], smoke_run["rows"]
    arms = plan_arms(smoke_run["recipe"])
    assert len(before) == 4          # base + 3 fine-tuned arms finished before the kill
    assert [r["arm"] for r in before] == [a["id"] for a in arms[:4]]
    assert len(rows) == len(arms) == 1 + 2 * 2 * 3 + 2   # base, (random, knn, perplexity) x 2 budgets x 2 seeds, full x 2
    assert smoke_run["resumed_calls"] == len(arms) - 4   # only the unfinished arms were trained
    assert sorted(smoke_run["summary"]["arms_skipped"]) == sorted(r["arm"] for r in before)
    old = {r["arm"]: r["finished_at"] for r in before}
    assert all(r["finished_at"] == old[r["arm"]] for r in rows if r["arm"] in old)
    assert len({r["arm"] for r in rows}) == len(rows)


def test_results_rows_and_metrics(smoke_run):
    rows = {r["arm"]: r for r in smoke_run["rows"]}
    base = rows["base|none"]
    assert base["n_selected"] == 0 and base["pir"] == pytest.approx(1.0)
    assert set(base["scores"]) == {"loss", "mc", "em"}
    r = rows["knn|ratio=0.2|seed=1"]
    assert r["n_pool"] == 152 and r["n_selected"] == round(0.2 * 152)
    assert r["sdf"] == pytest.approx(r["n_selected"] / 152)
    assert r["pir"] == pytest.approx(base["scores"]["loss"]["math"] / r["scores"]["loss"]["math"] / 2
                                     + base["scores"]["loss"]["math-b"] / r["scores"]["loss"]["math-b"] / 2)
    for key in ("select", "finetune", "score"):
        assert r["timings"][key] >= 0
    assert r["train"]["steps"] == 3
    assert sum(r["source_mix"].values()) == r["n_selected"]
    assert r["embed"]["dtype"] in ("float32", "bfloat16") and r["embed"]["model"]   # the vectors knn used
    assert len(r["item_scores"]["loss"]) == 12 and set(r["item_scores"]["mc"]) <= {0.0, 1.0}
    assert isinstance(r["efficiency"], float) and r["feasibility_rank"] == 2
    full = rows["full|ratio=1|seed=0"]
    assert full["sdf"] == 1.0 and full["n_selected"] == 152
    s = smoke_run["summary"]
    assert s["feasibility"]["random"]["rank"] < s["feasibility"]["knn"]["rank"] < s["feasibility"]["perplexity"]["rank"]
    # the same seed selects the same rows: random arms differ across seeds, not across reruns
    assert rows["random|ratio=0.2|seed=0"]["source_mix"] != rows["random|ratio=0.2|seed=1"]["source_mix"] or \
        rows["random|ratio=0.2|seed=0"]["scores"] != rows["random|ratio=0.2|seed=1"]["scores"]


def test_knn_prefers_math_rows(smoke_run):
    rows = {r["arm"]: r for r in smoke_run["rows"]}
    mix = rows["knn|ratio=0.05|seed=0"]["source_mix"]
    assert max(mix, key=mix.get) == "math.jsonl"


def test_planted_contamination_found(smoke_run):
    pool = smoke_run["summary"]["pool"]
    c = pool["contamination_before_drop"]
    assert c["exact"] == 2 and pool["dropped_contaminated"] == 0
    assert {m["test_id"] for m in c["matches"] if m["kind"] == "exact"} == {"smoke-0", "smoke-1"}
    full = next(r for r in smoke_run["rows"] if r["kind"] == "full")
    assert full["contamination"]["exact"] == 2


def test_report_is_self_contained(smoke_run):
    html = (smoke_run["out"] / "report.html").read_text()
    imgs = re.findall(r"<img src='([^']+)'", html)
    assert len(imgs) >= 7 and all(u.startswith("data:image/png;base64,") for u in imgs)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    for word in ("Most efficient:", "PIR vs base", "efficiency", "feasibility", "Contamination", "knn", "perplexity",
                 "random"):
        assert word in html
    summary = json.loads((smoke_run["out"] / "summary.json").read_text())
    assert summary["n_arms"] == len(smoke_run["rows"])


def test_finished_run_reruns_nothing(smoke_run, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("fine-tuned again")

    monkeypatch.setattr(R, "finetune_lora", boom)
    s = run_evaluation(preset_recipe("smoke", smoke_run["out"]), smoke_run["out"], progress=False)
    assert s["arms_run"] == [] and len(s["arms_skipped"]) == len(smoke_run["rows"])


def test_run_stopped_while_scoring_resumes_without_training_again(tmp_path, monkeypatch):
    """A stop during an arm's scoring keeps its finished adapter; the resumed run scores that
    adapter without fine-tuning again, then removes it (keep_adapters off)."""
    import peft

    real_train, real_score = peft.get_peft_model, Evaluation.score_adapter
    trained, scored = {"n": 0}, {"n": 0}

    def counting(*a, **k):
        trained["n"] += 1
        return real_train(*a, **k)

    def stopping(self, adapter_dir, items, scorers):
        scored["n"] += 1
        if scored["n"] == 1:
            raise KeyboardInterrupt
        return real_score(self, adapter_dir, items, scorers)

    monkeypatch.setattr(peft, "get_peft_model", counting)
    monkeypatch.setattr(Evaluation, "score_adapter", stopping)
    from tasksift.evaluate.presets import smoke_recipe

    d = {**smoke_recipe(tmp_path / "_smoke"), "methods": ["knn"]}
    recipe = recipe_from_dict(d)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(recipe, tmp_path, progress=False)
    kept = [p for p in (tmp_path / "adapters").iterdir() if (p / "train_log.json").is_file()]
    assert trained["n"] == 1 and len(kept) == 1
    monkeypatch.setattr(Evaluation, "score_adapter", real_score)
    before = trained["n"]
    summary = run_evaluation(recipe_from_dict(d), tmp_path, progress=False)
    n_arms = len([r for r in read_results(tmp_path / "results.jsonl") if r["kind"] != "base"])
    assert trained["n"] - before == n_arms - 1          # the stopped arm was not trained again
    assert not kept[0].exists() and summary["n_arms"] == n_arms + 1


def test_other_recipe_in_same_out_dir_refused(smoke_run):
    d = preset_recipe("smoke", smoke_run["out"]).to_dict()
    d["seeds"] = [5]
    with pytest.raises(ConfigError, match="different recipe"):
        run_evaluation(recipe_from_dict(d), smoke_run["out"])


def test_drop_contaminated_removes_planted_rows(tmp_path):
    d = preset_recipe("smoke", tmp_path).to_dict()
    d["contamination"] = {**d["contamination"], "drop_contaminated": True}
    ev = Evaluation(recipe_from_dict(d), tmp_path / "out", progress=False)
    ev.prepare()
    assert ev.pool_info["dropped_contaminated"] >= 2
    assert len(ev.pool) == 152 - ev.pool_info["dropped_contaminated"]
    assert not (ev.overlap.flag > 0).any()


def test_unknown_method_fails_before_work(tmp_path):
    d = preset_recipe("smoke", tmp_path).to_dict()
    d["methods"] = ["knn", "nosuch"]
    with pytest.raises(ConfigError, match="unknown method 'nosuch'"):
        run_evaluation(recipe_from_dict(d), tmp_path / "out")
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["evaluate"]) == 2
    assert "recipe file or --preset" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: p\ntask: {kind: gsm8k}\nmethods: [knn]\nscorers: [bleu]\n")
    assert main(["evaluate", str(bad)]) == 2
    assert "unknown scorer" in capsys.readouterr().err


def test_arms_leave_the_base_model_untouched(tmp_path):
    """Fine-tuning and scoring an arm (LoRA attached, then removed) must not change the shared
    base model: the base arm scores the same before and after."""
    d = preset_recipe("smoke", tmp_path).to_dict()
    d["methods"], d["full"] = ["knn"], False
    ev = Evaluation(recipe_from_dict(d), tmp_path / "out", progress=False)
    ev.prepare()
    arms = plan_arms(ev.recipe)
    first = ev.run_arm(arms[0])
    tuned = ev.run_arm(arms[2])
    again = ev.run_arm(arms[0])
    assert again["scores"] == first["scores"]
    assert tuned["scores"]["loss"] != first["scores"]["loss"]
    model, _ = ev.model()
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_cli_plan_lists_arms(tmp_path, capsys):
    assert main(["evaluate", "--preset", "smoke", "--out", str(tmp_path), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "15 arms, 0 finished" in out and "todo  knn|ratio=0.2|seed=1" in out
    assert not (tmp_path / "results.jsonl").exists()


def test_recipe_string_arm(tmp_path):
    """A method recipe such as "dedup -> knn" is one arm like any registered method."""
    pytest.importorskip("tasksift.recipe")
    d = preset_recipe("smoke", tmp_path).to_dict()
    d["methods"], d["full"] = ["dedup  ->  knn"], False
    ev = Evaluation(recipe_from_dict(d), tmp_path / "out", progress=False)
    R.validate_methods(ev.recipe)
    ev.prepare()
    arm = next(a for a in plan_arms(ev.recipe) if a["method"] == "dedup -> knn" and a["budget"] == "ratio=0.2")
    idx, timings, _ = ev._select(arm)
    assert len(idx) == round(0.2 * 152) and len(set(idx.tolist())) == len(idx)


@pytest.mark.slow
def test_real_model_micro_evaluation(tmp_path):
    """SmolLM2-135M (bundled) on a 300-row FLAN sample, CommonsenseQA, knn vs random, one
    LoRA step: the real-model path end to end (minutes on 2 CPU cores)."""
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "pool").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    r = recipe_from_dict({
        "name": "micro-csqa", "pool": str(SHARED_DATA / "pool" / "flan_v2_cot"), "pool_sample": 300,
        "task": {"kind": "csqa", "path": str(SHARED_DATA / "targets" / "zscot_commonsenseqa"), "n_target": 6,
                 "n_test": 4},
        "methods": ["knn"], "budgets": [8], "seeds": [0], "device": "cpu",
        "finetune": {"steps": 1, "batch_size": 2, "max_length": 128}, "scorers": ["mc", "loss", "em"],
        "generation": {"max_new_tokens": 8}, "contamination": {"drop_contaminated": True}, "progress": False})
    s = run_evaluation(r, tmp_path)
    rows = read_results(tmp_path / "results.jsonl")
    assert [x["arm"] for x in rows] == ["base|none", "random|count=8|seed=0", "knn|count=8|seed=0"]
    assert all(0 < x["scores"]["loss"]["all"] < 10 for x in rows)
    assert rows[2]["source_mix"] and s["pool"]["rows"] + s["pool"]["dropped_contaminated"] == 300
    assert (tmp_path / "report.html").is_file()
