"""``--export``: the subset in one training layout whatever the pool mixed (issue 17). Every
exported file reads back through tasksift's loader to the same examples, and LLaMA-Factory's
documented reading of the ``dataset_info.json`` entry gives the same conversations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import tasksift
from tasksift.cli import main
from tasksift.data.export import alpaca_problem, llamafactory_sharegpt_problem
from tasksift.data.loading import load_examples
from tasksift.errors import DataError

ALPACA = [{"instruction": f"Add {i} and {i + 1}.", "input": "", "output": f"{2 * i + 1}"} for i in range(4)] + [
    {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour", "system": "Be brief."},
    {"instruction": "And now?", "input": "", "output": "Fine.", "history": [["Hi", "Hello"], ["How are you?", "Good."]]}]
FLAN_TSV = "What is 3 times 4?\t12\tThree fours make twelve.\nIs a cat a mammal?\tyes\tCats nurse their young.\n"
SHAREGPT = [{"conversations": [{"from": "system", "value": "You are terse."}, {"from": "human", "value": "Sky colour?"},
                               {"from": "gpt", "value": "Blue."}, {"from": "human", "value": "At night?"},
                               {"from": "gpt", "value": "Black."}]},
            {"conversations": [{"from": "human", "value": "Capital of Peru?"}, {"from": "gpt", "value": "Lima."}]}]
TOOLS = [{"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": "Looking it up."},
                       {"role": "tool", "content": "{\"temp\": -3}"}, {"role": "assistant", "content": "-3 degrees."}]}]
TEXT = [{"text": "Plain text about apples and pears."}, {"text": "Another plain document on trains."}]
TARGET = [{"question": "What is 5 plus 6?", "answer": "11"}]


def _write(folder: Path, *, tools: bool = True, text: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    (folder / "b.tsv").write_text(FLAN_TSV)
    (folder / "c.json").write_text(json.dumps(SHAREGPT))
    if tools:
        (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TOOLS))
    if text:
        (folder / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    return folder


def _select_all(pool):
    data = load_examples(pool)
    return tasksift.select(data, TARGET, method="random", count=len(data), progress=False)


def _same_examples(path: Path, sel) -> None:
    back = load_examples(path)
    assert [ex.messages for ex in back.examples] == [ex.messages for ex in sel.subset]
    assert [ex.id for ex in back.examples] == sel.ids


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
@pytest.mark.parametrize("export", ["messages", "sharegpt"])
def test_every_example_reads_back_unchanged(tmp_path, export, fmt):
    sel = _select_all(_write(tmp_path / "pool"))
    assert {ex.layout for ex in sel.subset} >= {"alpaca", "flan_cot", "sharegpt", "messages", "text"}
    path = sel.save(tmp_path / "out", fmt, export=export)
    assert path.name == f"selected.{fmt}"
    _same_examples(path, sel)
    rows = load_examples(path).examples
    for ex in rows[:3]:
        assert set(ex.raw) >= {"tasksift_id", "tasksift_rank", "tasksift_score", "tasksift_source"}
        assert not any(k.startswith("column_") for k in ex.raw)   # FLAN rows are conversations now
    assert {ex.layout for ex in rows} == {export}
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["output"]["export"] == {"as": export, "layout": export}


def test_alpaca_export_of_pairs_reads_back_and_a_tool_turn_is_one_line(tmp_path, capsys):
    sel = _select_all(_write(tmp_path / "pool", tools=False))
    path = sel.save(tmp_path / "out", export="alpaca")
    _same_examples(path, sel)
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert all(list(r)[:5] == ["instruction", "input", "output", "system", "history"] for r in rows)
    by_out = {r["output"]: r for r in rows}
    assert by_out["Fine."]["history"] == [["Hi", "Hello"], ["How are you?", "Good."]]
    assert by_out["bonjour"]["instruction"] == "Translate to French.\n\ngood morning"
    assert by_out["bonjour"]["system"] == "Be brief."
    assert by_out["Plain text about apples and pears."]["instruction"] == ""
    _same_examples(sel.save(tmp_path / "out_parquet", "parquet", export="alpaca"), sel)

    tool_pool = _write(tmp_path / "pool2")
    rc = main(["select", "--pool", str(tool_pool), "--target", str(tmp_path / "pool" / "a.jsonl"), "--method",
               "random", "--ratio", "1", "--export", "alpaca", "--out", str(tmp_path / "out2"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("tasksift: error: d.jsonl, row 1: selected example cannot be written as alpaca: its turns "
                          "(user/assistant/tool/assistant) are not user/assistant pairs; use --export messages")
    assert not (tmp_path / "out2" / "manifest.json").exists()


def _llamafactory_reads(row: dict, entry: dict) -> list[dict]:
    """The conversation LLaMA-Factory builds from a row, following its data/README.md: alpaca
    (history pairs, then prompt + "\\n" + query, then response; the system column) or sharegpt
    (a first turn with the system tag is the system prompt; user/observation tags in odd
    positions, assistant/function tags in even ones, else the example is dropped)."""
    cols = entry["columns"]
    if entry.get("formatting", "alpaca") == "alpaca":
        if set(cols) == {"prompt"}:   # pre-training: the text only
            return [{"role": "assistant", "content": row[cols["prompt"]]}]
        msgs = [{"role": "system", "content": row[cols["system"]]}] if row[cols["system"]] else []
        for q, a in row[cols["history"]]:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        query = "\n".join(x for x in (row[cols["prompt"]], row[cols["query"]]) if x)
        return msgs + [{"role": "user", "content": query}, {"role": "assistant", "content": row[cols["response"]]}]
    tags = entry["tags"]
    turns = row[cols["messages"]]
    names = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["observation_tag"]: "tool",
             tags["system_tag"]: "system"}
    msgs = []
    if turns[0][tags["role_tag"]] == tags["system_tag"]:
        msgs.append({"role": "system", "content": turns[0][tags["content_tag"]]})
        turns = turns[1:]
    for i, t in enumerate(turns):
        allowed = (tags["user_tag"], tags["observation_tag"]) if i % 2 == 0 else (tags["assistant_tag"],)
        assert t[tags["role_tag"]] in allowed, "LLaMA-Factory would drop this example"
        msgs.append({"role": names[t[tags["role_tag"]]], "content": t[tags["content_tag"]]})
    assert len(turns) % 2 == 0, "LLaMA-Factory would drop this example"
    return msgs


@pytest.mark.parametrize("kind,layout", [("pairs", "alpaca"), ("tools", "sharegpt"), ("text", "text")])
def test_llamafactory_export_and_its_dataset_info_entry(tmp_path, kind, layout):
    if kind == "text":
        pool = tmp_path / "pool"
        pool.mkdir()
        (pool / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    else:
        pool = _write(tmp_path / "pool", tools=kind == "tools", text=False)
    sel = _select_all(pool)
    path = sel.save(tmp_path / "out", export="llamafactory")
    _same_examples(path, sel)
    info = json.loads((tmp_path / "out" / "dataset_info.json").read_text())
    entry = info["tasksift_selected"]
    assert entry["file_name"] == "selected.jsonl"
    assert entry.get("formatting", "alpaca") == ("sharegpt" if layout == "sharegpt" else "alpaca")
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    for row, ex in zip(rows, sel.subset):
        assert _llamafactory_reads(row, entry) == ex.messages
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["output"]["export"] == {"as": "llamafactory", "layout": layout}
    assert [f["name"] for f in man["output"]["files"]][:2] == ["selected.jsonl", "dataset_info.json"]


def test_llamafactory_refuses_plain_text_beside_conversations(tmp_path):
    sel = _select_all(_write(tmp_path / "pool", tools=False))
    with pytest.raises(DataError, match=r"e.jsonl, row [12]: selected example is plain text .* use --export messages"):
        sel.save(tmp_path / "out", export="llamafactory")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_layout_fit_rules_by_hand():
    u, a, s, t = ({"role": r, "content": "x"} for r in ("user", "assistant", "system", "tool"))
    assert alpaca_problem([u, a]) is None and alpaca_problem([s, u, a, u, a]) is None and alpaca_problem([a]) is None
    assert "not user/assistant pairs" in alpaca_problem([u, u, a])
    assert "not user/assistant pairs" in alpaca_problem([u, a, t, a])
    assert alpaca_problem([{"role": "user", "content": " "}, a]) == "its last user turn is empty"
    assert alpaca_problem([{"role": "system", "content": ""}, u, a]) == "its system message is empty"
    assert llamafactory_sharegpt_problem([s, u, a, t, a]) is None
    assert llamafactory_sharegpt_problem([a]) is not None and llamafactory_sharegpt_problem([u, u, a]) is not None
    assert llamafactory_sharegpt_problem([u, a, s, u, a]) is not None   # a system turn midway


@pytest.mark.parametrize("args,needle", [
    (["--export", "alpaca", "--format", "csv"], "--export alpaca writes nested turns: use --format jsonl, json, parquet, not csv"),
    (["--export", "chatml"], "invalid choice: 'chatml'"),
])
def test_bad_export_settings_stop_before_any_work(tmp_path, capsys, args, needle):
    pool = _write(tmp_path / "pool")
    with pytest.raises(SystemExit) if "chatml" in args else _no_raise():
        rc = main(["select", "--pool", str(pool), "--target", str(pool / "a.jsonl"), "--count", "2", "--method",
                   "random", "--out", str(tmp_path / "out"), "--no-progress", *args])
        assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_export_in_a_config_file_is_checked(tmp_path, capsys):
    pool = _write(tmp_path / "pool")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"pool: {pool}\ntarget: {pool / 'a.jsonl'}\nout: {tmp_path / 'out'}\ncount: 2\nmethod: random\n"
                   "export: openai\n")
    assert main(["select", "--config", str(cfg)]) == 2
    assert "'export' in the config file must be one of" in capsys.readouterr().err


def _readme_export_blocks(lang: str) -> list[str]:
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = text.index("### Exporting for training")
    end = text.find("\n## ", start)
    return re.findall(rf"```{lang}\n(.*?)```", text[start:end], re.S)


def test_the_readme_export_commands_run_as_written(tmp_path, monkeypatch, tiny_embed_model, capsys):
    """The README's export commands on a tiny folder pool (counts cut to 5, tiny embedding
    model); the TRL snippet is compiled and must read the file the first command wrote (TRL
    itself is not a dependency: it was run by hand with TRL 1.16, see the README)."""
    import shlex

    import pandas as pd

    import tasksift.features.embed as embed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(embed, "default_embed_model_path", lambda: tiny_embed_model)
    monkeypatch.setenv("TASKSIFT_CACHE", str(tmp_path / "cache"))
    _write(tmp_path / "data", tools=False, text=False)
    pd.DataFrame(TARGET).to_parquet("task.parquet")
    (bash,) = _readme_export_blocks("bash")
    commands = [shlex.split(line) for line in bash.splitlines() if line.strip()]
    assert len(commands) == 2 and {c[c.index("--export") + 1] for c in commands} == {"messages", "llamafactory"}
    for argv in commands:
        assert argv[0] == "tasksift"
        argv = [("5" if prev == "--count" else a) for prev, a in zip([""] + argv[1:], argv[1:])] + ["--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
    assert [ex.layout for ex in load_examples("picked/selected.jsonl").examples] == ["messages"] * 5
    entry = json.loads(Path("lf/dataset_info.json").read_text())["tasksift_selected"]
    assert Path("lf", entry["file_name"]).is_file() and entry["formatting"] == "alpaca"
    (python,) = _readme_export_blocks("python")
    compile(python, "README.md", "exec")
    assert 'data_files="picked/selected.jsonl"' in python and "SFTTrainer" in python
