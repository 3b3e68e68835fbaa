"""The README's "Selecting data" examples run as written, so they cannot drift.

The ```bash lines are run through the CLI in-process, the ```yaml block is written as the
``run.yaml`` the commands name and the ```python block is executed, all in a folder holding tiny
files under the README's names (pool.jsonl, examples.jsonl, data/, task.parquet). Two things
differ from a real run: the default embedding model is the tiny random one, and a count larger
than the tiny pool is cut to 5 rows."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from tasksift.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Selecting data"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end != -1 else None]
    return re.findall(rf"```{lang}\n(.*?)```", body, re.S)


def _commands() -> list[list[str]]:
    out = []
    for block in _section_blocks("bash"):
        for line in block.splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                assert argv[0] == "tasksift", line
                out.append(argv[1:])
    return out


def _rows(n: int, topic: str) -> list[dict]:
    return [{"instruction": f"{topic} question {i}: how many apples does the cat buy?",
             "input": "", "output": f"The answer is {i} apples."} for i in range(n)]


@pytest.fixture()
def readme_dir(tmp_path, monkeypatch, tiny_embed_model):
    import pandas as pd

    import tasksift.features.embed as embed

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(embed, "default_embed_model_path", lambda: tiny_embed_model)
    monkeypatch.setenv("TASKSIFT_CACHE", str(tmp_path / "cache"))
    pool = _rows(30, "math") + [{"instruction": f"translate word {i} to french", "input": "",
                                 "output": f"mot {i}"} for i in range(30)]
    Path("pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool))
    Path("examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(3, "new math")))
    Path("data").mkdir()
    Path("data/a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool[:20]))
    pd.DataFrame(pool[20:40]).to_csv("data/b.csv", index=False)
    pd.DataFrame(_rows(3, "task")).to_parquet("task.parquet")
    (yaml_block,) = _section_blocks("yaml")
    Path("run.yaml").write_text(yaml_block)
    return tmp_path


def _tiny(argv: list[str]) -> list[str]:
    out = list(argv)
    if "--count" in out:
        i = out.index("--count") + 1
        out[i] = str(min(int(out[i]), 5))
    if out[0] == "select":
        out.append("--no-progress")
    return out


def test_the_readme_section_has_the_examples():
    cmds = _commands()
    assert len(cmds) >= 4 and [c[0] for c in cmds].count("select") >= 3
    assert any(c[:2] == ["select", "--config"] for c in cmds)


def test_readme_commands_run_as_written(readme_dir, capsys):
    for argv in _commands():
        rc = main(_tiny(argv))
        cap = capsys.readouterr()
        assert rc == 0, (argv, cap.err)
        assert "Traceback" not in cap.err
        if argv[0] == "select":
            out_dir = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("picked")
            man = json.loads((out_dir / "manifest.json").read_text())
            assert man["counts"]["selected"] >= 1
            if "--config" in argv:   # the YAML recipe ran, and the summary shows it as text
                assert man["method"] == "dedup(threshold=0.95) -> tsds"
                # (the tiny random model sees most rows as near-duplicates: few survive dedup)
                assert cap.out.startswith("tasksift dedup(threshold=0.95) -> tsds: selected ")
                assert man["config"] == {"alpha": 0.5}


def test_readme_python_example_runs(readme_dir):
    (block,) = _section_blocks("python")
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    sel = scope["sel"]
    assert len(sel.indices) == 1 and Path("picked/manifest.json").is_file()
