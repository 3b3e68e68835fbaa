"""The learning-rate / warm-up sweep (tasksift.evaluate.sweep): recipe checks, validation items
disjoint from target and test, the choice, and runs that choose, resume and combine."""
from __future__ import annotations

import json
import math
from pathlib import Path

import peft
import pytest

from tasksift.errors import ConfigError
from tasksift.evaluate import preset_recipe
from tasksift.evaluate.combine import summarize_dirs
from tasksift.evaluate.config import parse_sweep, recipe_from_dict
from tasksift.evaluate.runner import Evaluation, read_results, run_evaluation
from tasksift.evaluate.summary import publishable
from tasksift.evaluate.sweep import SWEEP_FILE, choose, point_id, read_sweep, sweep_points
from tasksift.evaluate.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
FT = {"lr": 2e-4, "warmup_ratio": 0.03}


def test_parse_sweep_fills_defaults_and_names_the_file_for_bad_settings():
    s = parse_sweep({"lr": [1e-4, 3e-4]}, FT, [0.01, 0.05], "r.yaml")
    assert s == {"lr": [1e-4, 3e-4], "warmup_ratio": [0.03], "budget": 0.01, "seeds": [0], "n_val": 100,
                 "scorer": "loss"}
    assert parse_sweep(None, FT, [0.01], "r.yaml") is None
    assert parse_sweep(s, FT, [0.5], "r.yaml") == s                      # idempotent (recipes re-read from dicts)
    assert parse_sweep({"warmup_ratio": [0, 0.1], "budget": 200.0, "seeds": 3}, FT, [0.01], "r")["budget"] == 200
    for bad, msg in [({"lr": [0.0, 1e-4]}, "sweep.lr: 0.0 is not a number > 0"),
                     ({"lr": [1e-4, "x"]}, "sweep.lr: 'x'"),
                     ({"warmup_ratio": [0.0, 1.0]}, r"sweep.warmup_ratio: 1.0 is not a number in \[0, 1\)"),
                     ({"lr": [1e-4, 1e-4]}, "twice"), ({"lr": 1e-4}, "at least two settings"),
                     ({"lr": [1e-4, 2e-3], "scorer": "bleu"}, "sweep.scorer must be one of"),
                     ({"lr": [1e-4, 2e-3], "n_val": 0}, "n_val must be a positive integer"),
                     ({"lr": [1e-4, 2e-3], "budget": 1.5}, "sweep.budget"),
                     ({"lr": [1e-4, 2e-3], "seeds": [0, 0]}, "distinct"),
                     ({"lrs": [1e-4]}, r"unknown 'sweep' setting\(s\) \['lrs'\]"), ([1e-4], "must be a mapping")]:
        with pytest.raises(ConfigError, match=r"^r\.yaml: .*" + msg):
            parse_sweep(bad, FT, [0.01], "r.yaml")


def test_a_recipe_without_a_sweep_keeps_the_fingerprint_of_committed_runs():
    runs = sorted((ROOT / "bench" / "results" / "runs").glob("*/run.json"))
    assert runs, "the committed evidence runs are part of the repository"
    for run in runs:
        stored = json.loads(run.read_text())
        assert recipe_from_dict(stored["recipe"]).fingerprint() == stored["fingerprint"], run
    r = recipe_from_dict(stored["recipe"])
    swept = recipe_from_dict({**stored["recipe"], "sweep": {"lr": [1e-4, 2e-4]}})
    assert swept.fingerprint() != r.fingerprint() and swept.sweep["budget"] == r.budgets[0]


def test_grid_order_and_choice_lower_or_higher_is_better_ties_to_the_earlier():
    sw = {"lr": [1e-4, 2e-4], "warmup_ratio": [0.0, 0.1], "seeds": [0, 1], "scorer": "loss", "budget": 0.01,
          "n_val": 10}
    pts = sweep_points(sw)
    assert [p["id"] for p in pts[:3]] == ["lr=0.0001|warmup_ratio=0|seed=0", "lr=0.0001|warmup_ratio=0|seed=1",
                                          "lr=0.0001|warmup_ratio=0.1|seed=0"]
    score = {(1e-4, 0.0): [2.0, 1.0], (1e-4, 0.1): [1.25, 1.25], (2e-4, 0.0): [1.0, 1.5], (2e-4, 0.1): [3.0, 0.1]}
    rows = [{"point": p["id"], "score": score[(p["lr"], p["warmup_ratio"])][p["seed"]]} for p in pts]
    res = choose(rows, sw)
    assert [e["mean"] for e in res["table"]] == [1.5, 1.25, 1.25, pytest.approx(1.55)]
    assert res["chosen"] == {"lr": 1e-4, "warmup_ratio": 0.1, "mean": 1.25}      # tie with (2e-4, 0): earlier wins
    res = choose(rows, {**sw, "scorer": "mc"})
    assert res["chosen"]["lr"] == 2e-4 and res["chosen"]["warmup_ratio"] == 0.1 and res["higher_is_better"]
    rows[0]["score"] = float("nan")                                               # a setting with a NaN seed: no mean
    assert choose(rows, sw)["table"][0]["mean"] is None
    with pytest.raises(ConfigError, match="lacks point"):
        choose(rows[:-1], sw)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_validation_items_are_disjoint_and_leave_target_and_test_as_they_were(tmp_path):
    g = tmp_path / "gsm8k"
    g.mkdir()
    _write_jsonl(g / "train.jsonl", [{"question": f"q{i}?", "answer": f"w {i}\n#### {i}"} for i in range(40)])
    _write_jsonl(g / "test.jsonl", [{"question": f"t{i}?", "answer": f"w\n#### {i}"} for i in range(30)])
    spec = {"kind": "gsm8k", "path": str(g), "n_target": 10, "n_test": 12, "seed": 3}
    plain, with_val = load_task(spec), load_task(spec, n_val=8)
    assert [e.prompt for e in with_val.target] == [e.prompt for e in plain.target]
    assert [t.id for t in with_val.test] == [t.id for t in plain.test] and not plain.validation
    val = {t.prompt for t in with_val.validation}
    assert len(val) == 8 and not val & {e.prompt for e in plain.target} and not val & {t.prompt for t in plain.test}
    assert all(t.id.startswith("gsm8k-val-") and t.bare_answer == t.gold for t in with_val.validation)
    assert with_val.info["n_validation"] == 8
    with pytest.raises(ConfigError, match="31 validation items asked for, 30 rows left"):
        load_task(spec, n_val=31)

    s = tmp_path / "sqa.json"
    rows = [{"input": f"Is {i} even?", "target": "Yes" if i % 2 == 0 else "No",
             "target_scores": {"Yes": int(i % 2 == 0), "No": int(i % 2)}} for i in range(30)]
    s.write_text(json.dumps({"examples": rows}))
    with pytest.raises(ConfigError, match="set task.n_test"):
        load_task({"kind": "strategyqa", "path": str(s), "n_target": 5}, n_val=3)
    t = load_task({"kind": "strategyqa", "path": str(s), "n_target": 5, "n_test": 10}, n_val=4)
    assert len(t.validation) == 4 and not {v.prompt for v in t.validation} & {x.prompt for x in t.test}
    assert not {v.prompt for v in t.validation} & {e.prompt for e in t.target}

    _write_jsonl(tmp_path / "tg.jsonl", [{"prompt": "a", "answer": "b"}])
    _write_jsonl(tmp_path / "ts.jsonl", [{"prompt": "c", "answer": "d"}])
    spec = {"kind": "jsonl", "path": str(tmp_path), "target": "tg.jsonl", "test": "ts.jsonl"}
    with pytest.raises(ConfigError, match="need a 'validation' file"):
        load_task(spec, n_val=1)
    _write_jsonl(tmp_path / "va.jsonl", [{"prompt": "e", "answer": "f"}, {"answer": "no prompt"}])
    with pytest.raises(Exception, match=r"va\.jsonl.*row 2.*needs 'prompt' and 'answer'"):
        load_task({**spec, "validation": "va.jsonl"}, n_val=1)


def _sweep_recipe(tmp_path: Path, **sweep) -> dict:
    base = preset_recipe("smoke", tmp_path).to_dict()
    base.update({"methods": ["knn"], "budgets": [0.2], "seeds": [0], "full": False, "scorers": ["loss"],
                 "primary_scorer": "loss", "sweep": {"lr": [5e-3, 2e-2], "warmup_ratio": [0.0], "n_val": 4, **sweep}})
    return base


def test_a_sweep_runs_on_validation_items_chooses_and_every_arm_trains_with_the_choice(tmp_path, monkeypatch):
    d = _sweep_recipe(tmp_path)
    trained: list[tuple[str, float, float]] = []
    scored: list[list[str]] = []
    real_train, real_score = Evaluation.train, Evaluation.score_adapter

    def train(self, subset, *, seed, adapter_dir, lr=None, warmup_ratio=None):
        info = real_train(self, subset, seed=seed, adapter_dir=adapter_dir, lr=lr, warmup_ratio=warmup_ratio)
        trained.append((adapter_dir.name, info["lr"], info["warmup_ratio"]))
        return info

    def score(self, adapter_dir, items, scorers, **kw):
        scored.append([t.id for t in items])
        return real_score(self, adapter_dir, items, scorers, **kw)

    real_peft = peft.get_peft_model
    fits = {"n": 0}                                                   # fine-tunes that really ran

    def counting(*a, **k):
        fits["n"] += 1
        return real_peft(*a, **k)

    monkeypatch.setattr(peft, "get_peft_model", counting)
    monkeypatch.setattr(Evaluation, "train", train)
    monkeypatch.setattr(Evaluation, "score_adapter", score)
    out = tmp_path / "run"
    summary = run_evaluation(recipe_from_dict(d), out, progress=False)
    rows = read_sweep(out / SWEEP_FILE)
    assert [r["point"] for r in rows] == [point_id(5e-3, 0.0, 0), point_id(2e-2, 0.0, 0)]
    assert all(math.isfinite(r["score"]) and r["n_selected"] == rows[0]["n_selected"] > 0 for r in rows)
    assert all(r["n_val"] == 4 and r["train"]["lr"] == r["lr"] for r in rows)
    # the same seed's random subset for both points, checked against the validation questions
    # (the smoke pool's templated math rows are near duplicates of some)
    assert isinstance(rows[0]["val_overlap"], int) and rows[0]["val_overlap"] == rows[1]["val_overlap"]
    best = min(rows, key=lambda r: r["score"])
    assert summary["sweep"]["chosen"]["lr"] == best["lr"]
    assert scored[0] == scored[1] and len(set(scored[0])) == 4            # validation items, never test items
    assert all(i.startswith("smoke-val-") for i in scored[0])
    assert all(not i.startswith("smoke-val") for ids in scored[2:] for i in ids)
    arms = [r for r in read_results(out / "results.jsonl") if r["kind"] != "base"]
    assert len(arms) == 2 and all(r["train"]["lr"] == best["lr"] and r["train"]["warmup_ratio"] == 0.0 for r in arms)
    assert [t[1] for t in trained] == [5e-3, 2e-2, best["lr"], best["lr"]]
    # the random arm of the sweep's seed and budget trained the sweep point's subset
    random_arm = next(r for r in arms if r["kind"] == "random")
    assert random_arm["n_selected"] == rows[0]["n_selected"]
    # ... and got the chosen point's adapter: three fine-tunes ran (two points, knn), not four
    assert fits["n"] == 3 and random_arm["train"] == {**best["train"], "lr": best["lr"]}
    assert not (out / "adapters").exists() or not any((out / "adapters").iterdir())    # none left behind
    assert "Learning-rate sweep" in (out / "report.html").read_text()
    assert publishable(summary)["sweep"]["chosen"]["lr"] == best["lr"]

    trained.clear()                                                   # resumed: nothing to train again
    again = run_evaluation(recipe_from_dict(d), out, progress=False)
    assert trained == [] and again["sweep"] == summary["sweep"]


def test_a_killed_sweep_resumes_per_point_and_refuses_another_sweep_s_rows(tmp_path, monkeypatch):
    d = _sweep_recipe(tmp_path, lr=[5e-3, 1e-2, 2e-2])
    real_score = Evaluation.score_adapter
    calls = {"n": 0}

    def dies_on_second(self, adapter_dir, items, scorers, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_score(self, adapter_dir, items, scorers, **kw)

    monkeypatch.setattr(Evaluation, "score_adapter", dies_on_second)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(recipe_from_dict(d), out, progress=False)
    assert [r["point"] for r in read_sweep(out / SWEEP_FILE)] == [point_id(5e-3, 0.0, 0)]
    monkeypatch.setattr(Evaluation, "score_adapter", real_score)
    trained: list[float] = []
    real_train = Evaluation.train
    monkeypatch.setattr(Evaluation, "train", lambda self, subset, **kw: trained.append(kw.get("lr")) or
                        real_train(self, subset, **kw))
    real_peft = peft.get_peft_model
    fits = {"n": 0}

    def counting(*a, **k):
        fits["n"] += 1
        return real_peft(*a, **k)

    monkeypatch.setattr(peft, "get_peft_model", counting)
    s = run_evaluation(recipe_from_dict(d), out, progress=False)
    assert trained[:2] == [1e-2, 2e-2] and len(trained) == 4          # the two points left, then the two arms
    # the point stopped while scoring kept its adapter, and the random arm takes the chosen
    # point's: only the third point and knn fine-tune
    assert fits["n"] == 2
    assert [e["lr"] for e in s["sweep"]["table"]] == [5e-3, 1e-2, 2e-2]

    other = tmp_path / "other"                                        # rows of another sweep (other n_val)
    other.mkdir()
    (other / SWEEP_FILE).write_text((out / SWEEP_FILE).read_text())
    with pytest.raises(ConfigError, match="holds rows of another sweep"):
        run_evaluation(recipe_from_dict({**d, "sweep": {**d["sweep"], "n_val": 3}}), other, progress=False)


def test_seed_dirs_sharing_a_copied_sweep_combine_and_different_choices_are_refused(tmp_path):
    d = _sweep_recipe(tmp_path)
    s0, s1 = tmp_path / "s0", tmp_path / "s1"
    first = run_evaluation(recipe_from_dict(d), s0, progress=False)
    s1.mkdir()
    (s1 / SWEEP_FILE).write_text((s0 / SWEEP_FILE).read_text())       # the finished sweep, reused
    run_evaluation(recipe_from_dict({**d, "seeds": [1]}), s1, progress=False)
    assert len(read_sweep(s1 / SWEEP_FILE)) == 2
    comb = summarize_dirs([s0, s1], tmp_path / "comb", report=False)
    assert comb["sweep"] == first["sweep"]
    rows = read_sweep(s1 / SWEEP_FILE)                                # a dir whose sweep chose otherwise
    loser = max(rows, key=lambda r: r["score"])
    for r in rows:
        r["score"] = 0.0 if r is loser else 9.0
    (s1 / SWEEP_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="chose different sweep settings"):
        summarize_dirs([s0, s1], tmp_path / "comb2", report=False)


def test_plan_and_estimate_count_the_sweep_points(tmp_path, capsys):
    from tasksift.cli import main
    from tasksift.evaluate.estimate import estimate_run, format_estimate

    import yaml

    d = _sweep_recipe(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(d))
    assert main(["evaluate", str(tmp_path / "r.yaml"), "--plan", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "todo  sweep|lr=0.005|warmup_ratio=0|seed=0" in out and out.index("sweep|") < out.index("base|none")
    ev = Evaluation(recipe_from_dict(d), tmp_path / "o", progress=False)
    ev.prepare()
    est = estimate_run(ev)
    sweep = [a for a in est["arms"] if a["arm"].startswith("sweep|")]
    assert est["n_sweep_todo"] == len(sweep) == 2 and est["n_arms_todo"] == 3
    by_arm = {a["arm"]: a for a in est["arms"]}
    # the random arm takes the chosen point's adapter: scored, not trained; knn trains
    assert by_arm["random|ratio=0.2|seed=0"]["steps"] == 0 and by_arm["knn|ratio=0.2|seed=0"]["steps"] > 0
    assert by_arm["random|ratio=0.2|seed=0"]["seconds"] == pytest.approx(est["score_seconds_per_arm"])
    assert est["total_seconds"] == pytest.approx(sum(a["seconds"] for a in est["arms"]))
    assert "2 sweep points and 3 arms to run" in format_estimate(est)
