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


# --------------------------------------------------------------------------- issue 17 cases
@pytest.mark.parametrize("flags,needles", [
    (["--layout", "sharegpt"], ["pool.jsonl", "row 1", "'conversations'", "missing field", "--layout", "--fields"]),
    (["--layout", "messages"], ["pool.jsonl", "row 1", "'messages'", "missing field"]),
    (["--target-layout", "messages"], ["target.jsonl", "row 1", "'messages'", "--target-layout", "--target-fields"]),
    (["--layout", "messages", "--skip-bad"], ["pool is empty", "6 rows skipped"]),
    (["--target-layout", "sharegpt", "--skip-bad"], ["target is empty", "1 rows skipped"]),
])
def test_forced_layout_that_does_not_fit_is_one_line(tmp_path, capsys, files, flags, needles):
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 1, "--out", tmp_path / "o",
                      *flags)
    assert rc == 2
    assert_one_line(err, *needles)


def test_target_errors_name_the_target_flags(tmp_path, capsys, files):
    weird = _jsonl(tmp_path / "weird.jsonl", [{"foo": 1, "bar": 2}])
    rc, err = run_cli(capsys, "--pool", files[0], "--target", weird, "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "weird.jsonl", "--target-fields", "--target-layout")
    assert " --fields" not in err and " --layout" not in err
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 1, "--out", tmp_path / "o",
                      "--target-fields", "bogus=x")
    assert rc == 2
    assert_one_line(err, "unknown --target-fields key")


@pytest.mark.parametrize("flags,needles", [
    (["--seed", "-1"], ["--seed must be an integer in [0, 4294967295], got -1"]),
    (["--embed-max-tokens", "-4"], ["--embed-max-tokens must be an integer >= 1, got -4"]),
    (["--workers", "0"], ["--workers must be an integer >= 1"]),
    (["-o", "alpha=1"], ["method 'random' has no option(s) ['alpha']"]),
])
def test_bad_flag_values_are_one_line(tmp_path, capsys, files, flags, needles):
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 1, "--out", tmp_path / "o",
                      *flags)
    assert rc == 2
    assert_one_line(err, *needles)
    assert not (tmp_path / "o").exists()          # failed before the output folder was made


@pytest.mark.parametrize("yaml_text,needles", [
    ("count: five\n", ["cfg.yaml", "'count' in the config file must be an integer >= 1, got 'five'"]),
    ("ratio: 2\n", ["'ratio' in the config file must be a number in (0, 1]"]),
    ("seed: -3\n", ["'seed' in the config file must be an integer"]),
    ("count: 2\nskip_bad: maybe\n", ["'skip_bad' in the config file must be true or false"]),
    ("count: 2\nformat: xlsx\n", ["'format' in the config file must be one of"]),
    ("count: 2\noptions: [1, 2]\n", ["'options' must be a mapping"]),
    ("count: 2\nmethod: tsds\noptions: {alpha: high}\n", ["method 'tsds' option alpha must be a number in [0, 1]"]),
])
def test_wrong_types_in_the_config_file_are_one_line(tmp_path, capsys, files, yaml_text, needles):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"pool: {files[0]}\ntarget: {files[1]}\nout: {tmp_path / 'o'}\n" + yaml_text)
    rc = main(["select", "--config", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert_one_line(err, *needles)


def test_a_flag_overrides_a_bad_config_value(tmp_path, capsys, files):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"pool: {files[0]}\ntarget: {files[1]}\nout: {tmp_path / 'o'}\ncount: five\nmethod: random\n")
    assert main(["select", "--config", str(cfg), "--count", "2", "--no-progress"]) == 0


def test_full_disk_under_out_is_one_line(tmp_path, capsys, files, monkeypatch):
    import errno

    import tasksift.atomic as atomic

    real = atomic.os.replace

    def full(src, dst):
        if str(dst).endswith("manifest.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", full)
    rc, err = run_cli(capsys, "--pool", files[0], "--target", files[1], "--count", 2, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "cannot write", "manifest.json", "No space left on device")


def test_other_os_errors_still_show_their_traceback(tmp_path, files, monkeypatch):
    """Only the machine's state (disk full, read-only, no permission) is one line: a bug stays loud."""
    import errno

    import tasksift.atomic as atomic

    def broken(src, dst):
        raise OSError(errno.EINVAL, "invalid argument")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError):
        main(["select", "--method", "random", "--no-progress", "--pool", str(files[0]), "--target",
              str(files[1]), "--count", "2", "--out", str(tmp_path / "o")])


def test_csv_header_repeating_a_name_is_one_line(tmp_path, capsys, files):
    p = tmp_path / "dup.csv"
    p.write_text("prompt,prompt,response\na,b,c\nd,e,f\n")
    rc, err = run_cli(capsys, "--pool", p, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "dup.csv", "row 1", "header repeats column name 'prompt' (columns 1 and 2)")


def test_csv_header_detection_by_hand(tmp_path):
    from tasksift.data.readers import looks_like_header

    assert looks_like_header(["prompt", "response"])
    assert not looks_like_header(["What is 2+2?", "4"])
    with pytest.raises(Exception, match="repeats column name 'q'"):
        looks_like_header(["q", " q", "a"])


def test_mixed_layout_file_is_read_row_by_row(tmp_path, capsys, files):
    rows = [{"instruction": "Add 1 and 2.", "output": "3"},
            {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
            {"prompt": "Capital of France?", "response": "Paris."},
            {"conversations": [{"from": "human", "value": "Yes?"}, {"from": "gpt", "value": "No."}]}] * 3
    p = _jsonl(tmp_path / "mixed.jsonl", [dict(r, n=i) if "instruction" in r else r for i, r in enumerate(rows)])
    from tasksift.data.loading import load_examples

    data = load_examples(p)
    assert len(data) == 12 and data.layout == "mixed" and not data.skipped
    assert [ex.layout for ex in data.examples[:4]] == ["alpaca", "messages", "prompt_response", "sharegpt"]
    assert data.examples[2].response == "Paris."
    # a row that fits no layout keeps the file's layout in its error
    bad = _jsonl(tmp_path / "bad.jsonl", [rows[0], {"instruction": "no output here"}])
    rc, err = run_cli(capsys, "--pool", bad, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "bad.jsonl", "row 2", "'output'", "layout alpaca")


def test_numbers_read_as_text_booleans_only_as_responses(tmp_path, capsys, files):
    from tasksift.data.loading import load_examples

    ok = load_examples(_jsonl(tmp_path / "n.jsonl", [{"question": 12, "answer": True},
                                                     {"question": "Is 2 even?", "answer": 42}]))
    assert ok.examples[0].prompt == "12" and ok.examples[0].response == "True"
    assert ok.examples[1].response == "42"
    bad = _jsonl(tmp_path / "b.jsonl", [{"instruction": True, "output": "x"}])
    rc, err = run_cli(capsys, "--pool", bad, "--target", files[1], "--count", 1, "--out", tmp_path / "o")
    assert rc == 2
    assert_one_line(err, "b.jsonl", "row 1", "'instruction'", "expected text, got a boolean")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_files_follow_the_umask(tmp_path, capsys, files, umask):
    old = os.umask(umask)
    try:
        assert main(["select", "--method", "random", "--no-progress", "--pool", str(files[0]), "--target",
                     str(files[1]), "--count", "2", "--out", str(tmp_path / "o")]) == 0
    finally:
        os.umask(old)
    for name in ("selected.jsonl", "manifest.json"):
        assert (tmp_path / "o" / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_cache_shards_follow_the_umask(tmp_path):
    import numpy as np

    from tasksift.store import FeatureStore

    old = os.umask(0o002)
    try:
        store = FeatureStore(tmp_path / "c", "probe", {"v": 1})
        store.write(["a", "b"], np.ones((2, 2), dtype=np.float32))
        store.close()
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o664 for p in files), \
        {p.name: oct(p.stat().st_mode & 0o777) for p in files}
