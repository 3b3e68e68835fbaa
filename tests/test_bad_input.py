"""Every kind of bad input gets one clear line naming file/row/field and exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasksift.cli import main

GOOD_POOL = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]
GOOD_TARGET = [{"question": "Question 1?", "answer": "Answer."}]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture()
def files(tmp_path):
    return _jsonl(tmp_path / "pool.jsonl", GOOD_POOL), _jsonl(tmp_path / "target.jsonl", GOOD_TARGET)


def run_cli(capsys, *args) -> tuple[int, str]:
    rc = main(["select", "--method", "random", "--no-progress", *map(str, args)])
    err = capsys.readouterr().err
    return rc, err


def assert_one_line(err: str, *needles: str) -> None:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tasksift: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_empty_pool(tmp_path, capsys, files):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, err = run_cli(capsys, "--pool", empty, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "empty.jsonl", "empty")


def test_empty_target_json(tmp_path, capsys, files):
    t = tmp_path / "t.json"
    t.write_text("[]")
    rc, err = run_cli(capsys, "--pool", files[0], "--target", t, "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "t.json", "target is empty")


def test_unknown_layout(tmp_path, capsys, files):
    p = _jsonl(tmp_path / "weird.jsonl", [{"foo": 1, "bar": 2}])
    rc, err = run_cli(capsys, "--pool", p, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "weird.jsonl", "unknown layout", "--fields")


def test_missing_field(tmp_path, capsys, files):
    rows = GOOD_POOL[:3] + [{"instruction": "no output here", "input": ""}] + GOOD_POOL[3:]
    p = _jsonl(tmp_path / "p.jsonl", rows)
    rc, err = run_cli(capsys, "--pool", p, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "p.jsonl", "row 4", "field 'output'", "missing")


def test_non_utf8(tmp_path, capsys, files):
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    rc, err = run_cli(capsys, "--pool", p, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "latin1.jsonl", "row 2", "UTF-8")
    c = tmp_path / "latin1.csv"
    c.write_bytes(b"text\nfine\ncaf\xe9\n")
    rc, err = run_cli(capsys, "--pool", c, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "latin1.csv", "line 3", "UTF-8")


def test_malformed_jsonl_line_and_skip_bad(tmp_path, capsys, files):
    rows = [json.dumps(r) for r in GOOD_POOL]
    rows.insert(2, '{"instruction": "broken", ')
    p = tmp_path / "p.jsonl"
    p.write_text("\n".join(rows) + "\n")
    rc, err = run_cli(capsys, "--pool", p, "--target", files[1], "--count", 2, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "p.jsonl", "row 3", "malformed JSON")
    rc = main(["select", "--method", "random", "--no-progress", "--pool", str(p), "--target", str(files[1]),
               "--count", "2", "--out", str(tmp_path / "o"), "--skip-bad"])
    out = capsys.readouterr().out
    assert rc == 0 and "skipped bad rows: pool 1" in out
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["counts"]["skipped_pool_rows"] == 1 and man["pool"]["skipped"][0]["row"] == 3


def test_skip_bad_counts_missing_fields(tmp_path, capsys, files):
    rows = GOOD_POOL + [{"instruction": "x"}, {"instruction": "y", "output": ["not", "text"]}]
    p = _jsonl(tmp_path / "p.jsonl", rows)
    rc = main(["select", "--method", "random", "--no-progress", "--pool", str(p), "--target", str(files[1]),
               "--count", "2", "--out", str(tmp_path / "o"), "--skip-bad"])
    assert rc == 0
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["counts"]["skipped_pool_rows"] == 2
    assert {s["row"] for s in man["pool"]["skipped"]} == {7, 8}


def test_budget_larger_than_pool(tmp_path, capsys, files):
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 7, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "larger than the pool (6 rows)")


def test_unwritable_output(tmp_path, capsys, files):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 1, "--out", blocker / "sub")
    assert rc == 2
    assert_one_line(err, "not writable")


def test_missing_file_unknown_method_and_bad_option(tmp_path, capsys, files):
    rc, err = run_cli(capsys, "--pool", tmp_path / "nope.jsonl", "--target", files[1], "--count", 1,
                      "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "nope.jsonl", "not found")
    rc = main(["select", "--method", "nosuch", "--pool", str(files[0]), "--target", str(files[1]),
               "--count", "1", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert_one_line(capsys.readouterr().err, "unknown method 'nosuch'", "random")
    rc = main(["select", "--method", "random", "-o", "bogus=1", "--pool", str(files[0]), "--target",
               str(files[1]), "--count", "1", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert_one_line(capsys.readouterr().err, "bogus")


def test_no_traceback_from_real_process(tmp_path, files):
    """The installed entry point: exit code 2 and a single stderr line."""
    r = subprocess.run([sys.executable, "-m", "tasksift", "select", "--method", "random", "--pool",
                        str(tmp_path / "missing.json"), "--target", str(files[1]), "--count", "1",
                        "--out", str(tmp_path / "o")], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2
    assert_one_line(r.stderr, "missing.json")


@pytest.mark.parametrize("content, needle", [
    (b"method: [unclosed\n", "malformed YAML, line"),
    (b"method: random\ncount: \xff\xfe\n", "not UTF-8"),
    (None, "not found"),
    ("folder", "is a folder"),
    (b"- just\n- a list\n", "must hold a mapping"),
])
def test_bad_config_files_are_one_line_errors(capsys, files, tmp_path, content, needle):
    pool, target = files
    cfg = tmp_path / "run.yaml"
    if content == "folder":
        cfg.mkdir()
    elif content is not None:
        cfg.write_bytes(content)
    rc, err = run_cli(capsys, "--pool", pool, "--target", target, "--count", 2, "--out", tmp_path / "o",
                      "--config", cfg)
    assert rc == 2
    assert_one_line(err, needle, "run.yaml")


def test_bad_recipe_files_name_the_file(tmp_path):
    from tasksift.errors import ConfigError
    from tasksift.evaluate.config import load_recipe as load_eval_recipe
    from tasksift.recipe import load_recipe

    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"steps: [dedup, {knn: \n")
    for loader in (load_recipe, load_eval_recipe):
        with pytest.raises(ConfigError, match=r"r\.yaml.*malformed YAML, line"):
            loader(bad)
