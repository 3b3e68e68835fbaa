"""Arms with [settings] (``"knn [embed_text=prompt]"``): parsing, recipe checks, the embedding
they select with, and a run of added methods combined with an earlier run."""
from __future__ import annotations

import json

import pytest

import tasksift.api
from tasksift.errors import ConfigError
from tasksift.evaluate import preset_recipe
from tasksift.evaluate.combine import summarize_dirs
from tasksift.evaluate.config import recipe_from_dict
from tasksift.evaluate.metrics import feasibility_penalty
from tasksift.evaluate.runner import read_results, run_evaluation
from tasksift.evaluate.variants import method_of, method_parts, split_arm
from tasksift.methods.registry import available_methods


def test_split_arm_reads_settings_and_leaves_other_labels_alone():
    assert split_arm("tsds [embed_text=prompt]") == ("tsds", {"embed_text": "prompt"})
    assert split_arm("  dedup ->  knn [ embed_text = response ] ") == ("dedup -> knn", {"embed_text": "response"})
    assert split_arm("tsds") == ("tsds", {})
    assert split_arm("knn(k=3)") == ("knn(k=3)", {})
    assert split_arm(["dedup", "knn"]) == (["dedup", "knn"], {})
    assert method_of("knn [embed_text=text]") == "knn"
    assert method_parts("answer-style -> tsds [embed_text=prompt]") == ["answer-style", "tsds"]
    assert method_parts("odd [label]") == ["odd [label]"]      # not settings: the label as it stands
    for bad, msg in [("tsds [embed=prompt]", "unknown arm setting"), ("tsds [embed_text=title]", "must be one of"),
                     ("[embed_text=prompt]", "nothing before"), ("tsds []", "empty"),
                     ("tsds [embed_text=prompt, embed_text=text]", "twice")]:
        with pytest.raises(ConfigError, match=msg):
            split_arm(bad)


def test_recipe_names_the_file_for_bad_settings_and_refuses_a_label_twice():
    d = {"pool": "p", "task": {"kind": "gsm8k"}}
    r = recipe_from_dict({**d, "methods": ["knn", "knn [embed_text=prompt]"]})
    assert r.method_names() == ["random", "knn", "knn [embed_text=prompt]"]
    with pytest.raises(ConfigError, match=r"^r\.yaml: .*unknown arm setting"):
        recipe_from_dict({**d, "methods": ["knn [k=3]"]}, source="r.yaml")
    with pytest.raises(ConfigError, match="listed twice: knn"):
        recipe_from_dict({**d, "methods": ["knn", " knn"]})


def test_a_variant_has_its_method_s_feasibility():
    infos = {i.name: i for i in available_methods()}
    assert feasibility_penalty("knn [embed_text=prompt]", infos) == feasibility_penalty("knn", infos)


def test_added_variant_arm_runs_alone_embeds_prompts_and_combines(tmp_path, monkeypatch):
    base = preset_recipe("smoke", tmp_path).to_dict()
    base.update({"budgets": [0.2], "seeds": [0], "full": False, "scorers": ["loss", "mc"], "primary_scorer": "loss"})
    seen: list[tuple[str, str]] = []
    real = tasksift.api.select

    def spy(pool, target, method="tsds", **kw):
        seen.append((method, kw["embed"].text))
        return real(pool, target, method=method, **kw)

    monkeypatch.setattr(tasksift.api, "select", spy)
    first = tmp_path / "s0"
    run_evaluation(recipe_from_dict({**base, "methods": ["knn"]}), first, progress=False)
    assert seen == [("random", "text"), ("knn", "text")]

    added = tmp_path / "s0-added"       # a later run of one added arm: base and random rows copied in
    added.mkdir()
    rows = read_results(first / "results.jsonl")
    (added / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["kind"] != "method"))
    seen.clear()
    run_evaluation(recipe_from_dict({**base, "methods": ["knn [embed_text=prompt]"]}), added, progress=False)
    assert seen == [("knn", "prompt")]                                    # only the new arm ran
    new = [r for r in read_results(added / "results.jsonl") if r["method"] == "knn [embed_text=prompt]"]
    assert len(new) == 1 and new[0]["embed"]["text"] == "prompt" and new[0]["arm"] == "knn [embed_text=prompt]|ratio=0.2|seed=0"

    s = summarize_dirs([first, added], tmp_path / "combined", report=False)
    assert [m for m in s["recipe"]["methods"]] == ["knn", "knn [embed_text=prompt]"]
    arms = [r["arm"] for r in read_results(tmp_path / "combined" / "results.jsonl")]
    assert len(arms) == len(set(arms)) == 4                               # base, random, knn, the variant
    assert {c["method"] for c in s["paired"]} == {"knn", "knn [embed_text=prompt]"}
    assert s["feasibility"]["knn [embed_text=prompt]"]["penalty"] == s["feasibility"]["knn"]["penalty"]
