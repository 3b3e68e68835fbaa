"""A run's outputs are written as one unit (issue 17): a failure while writing leaves the
previous complete result, a rerun in another format removes the old subset, and files that
tasksift did not write are never touched."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tasksift
from tasksift.cli import main
from tasksift.errors import SelectionWarning
from tasksift.outputs import STAGING_PREFIX, OutputUnit, previous_outputs

ROWS = [{"instruction": f"Question {i} about apples?", "input": "", "output": f"Answer {i}."} for i in range(12)]
TARGET = [{"question": "How many apples?", "answer": "3"}]


@pytest.fixture()
def files(tmp_path):
    pool, target = tmp_path / "pool.jsonl", tmp_path / "target.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    target.write_text("".join(json.dumps(r) + "\n" for r in TARGET))
    return pool, target


def _select(files, out, *extra, report: bool = False) -> int:
    return main(["select", "--pool", str(files[0]), "--target", str(files[1]), "--method", "random",
                 "--no-progress", "--out", str(out), *([] if report else ["--no-report"]), *map(str, extra)])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _no_staging(folder: Path) -> bool:
    return not list(folder.glob(STAGING_PREFIX + "*"))


def test_manifest_lists_every_output_with_its_size(files, tmp_path):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 3, "--export", "llamafactory", report=True) == 0
    man = json.loads((out / "manifest.json").read_text())
    listed = {f["name"]: f for f in man["output"]["files"]}
    assert set(listed) == {"selected.jsonl", "dataset_info.json", "report.html"}
    for name, f in listed.items():
        assert f["bytes"] == (out / name).stat().st_size
    assert listed["selected.jsonl"]["role"] == "subset" and listed["report.html"]["role"] == "report"
    assert man["output"]["report"] == str(out / "report.html")
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "manifest.json", "report.html",
                                                     "selected.jsonl"]
    assert previous_outputs(out) == {n: f["bytes"] for n, f in listed.items()}
    # a rerun with --no-report removes the earlier run's report.html (a stale output)
    assert _select(files, out, "--count", 3, "--export", "llamafactory") == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "manifest.json", "selected.jsonl"]
    assert json.loads((out / "manifest.json").read_text())["output"]["report"] is None


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_while_writing_leaves_the_previous_result(files, tmp_path, monkeypatch, capsys, failure):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4) == 0
    before = _snapshot(out)
    import tasksift.data.writers as writers

    real_dumps = writers.json.dumps
    calls = {"n": 0}

    def dumps_then_fail(*a, **k):   # the second subset row: half a file is on disk
        calls["n"] += 1
        if calls["n"] == 2:
            raise failure
        return real_dumps(*a, **k)

    monkeypatch.setattr(writers.json, "dumps", dumps_then_fail)
    if isinstance(failure, OSError):
        assert _select(files, out, "--count", 6) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and STAGING_PREFIX not in err
    else:
        assert _select(files, out, "--count", 6) == 130
    assert _snapshot(out) == before and _no_staging(out)


def test_a_full_disk_at_the_manifest_leaves_the_previous_pair(files, tmp_path, monkeypatch, capsys):
    """The defect of issue 17: the new subset was in place when the manifest write failed, so
    it sat beside the old manifest."""
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4) == 0
    before = _snapshot(out)
    import tasksift.atomic as atomic

    real = atomic.write_text

    def full(path, text):
        if Path(path).name == "manifest.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    monkeypatch.setattr(atomic, "write_text", full)
    assert _select(files, out, "--count", 6) == 2
    err = capsys.readouterr().err
    assert f"cannot write ({out / 'manifest.json'}): No space left on device" in err
    assert _snapshot(out) == before and _no_staging(out)


def test_a_failure_while_swapping_in_is_rolled_back(files, tmp_path, monkeypatch):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4, "--format", "csv") == 0
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)
    real = os.replace

    def fail_on_manifest(src, dst):
        if Path(dst) == out / "manifest.json" and Path(src).parent.name.startswith(STAGING_PREFIX):
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_manifest)
    with pytest.raises(OSError):
        tasksift.select(files[0], files[1], method="random", count=6, progress=False).save(out, "jsonl")
    assert _snapshot(out) == before and _no_staging(out)


def test_killed_midway_through_the_swap_leaves_no_manifest_and_the_next_run_cleans_up(files, tmp_path):
    """kill -9 between renames: no manifest.json (no complete result), and the journal tells
    the next run which files there are tasksift's."""
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4, "--format", "csv") == 0
    (out / "notes.txt").write_text("mine")
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        import tasksift
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if Path(dst).name == "selected.jsonl" and {STAGING_PREFIX!r} not in str(dst):
                os._exit(9)   # killed right after the new subset was renamed in
        os.replace = replace
        sel = tasksift.select({str(files[0])!r}, {str(files[1])!r}, method="random", count=6, progress=False)
        sel.save({str(out)!r}, "jsonl")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == 9
    assert not (out / "manifest.json").exists()          # no manifest: no complete result here
    assert (out / "selected.jsonl").exists() and (out / "selected.csv").exists()
    assert _select(files, out, "--count", 5, "--format", "parquet") == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt", "selected.parquet"]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_format_change_removes_the_old_subset_and_keeps_user_files(files, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "selected_by_hand.csv").write_text("a,b\n")
    (out / "data").mkdir()
    (out / "data" / "x.jsonl").write_text("{}\n")
    assert _select(files, out, "--count", 4, "--format", "csv") == 0
    assert _select(files, out, "--count", 4, "--export", "llamafactory") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["data", "dataset_info.json", "manifest.json", "notes.txt", "selected.jsonl",
                     "selected_by_hand.csv"]
    assert _select(files, out, "--count", 4) == 0   # back to the pool's own format: the entry goes too
    assert sorted(p.name for p in out.iterdir()) == ["data", "manifest.json", "notes.txt", "selected.jsonl",
                                                     "selected_by_hand.csv"]
    assert (out / "data" / "x.jsonl").read_text() == "{}\n" and (out / "notes.txt").read_text() == "mine"


def test_an_hf_folder_output_is_replaced_and_removed_like_a_file(files, tmp_path):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 3, "--format", "hf") == 0
    assert (out / "selected").is_dir()
    assert _select(files, out, "--count", 4, "--format", "hf") == 0   # a folder replaced by a folder
    import datasets

    assert len(datasets.load_from_disk(str(out / "selected"))) == 4
    assert _select(files, out, "--count", 3) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "selected.jsonl"]


def test_an_old_output_edited_since_is_kept_with_a_warning(files, tmp_path):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4, "--format", "csv") == 0
    with open(out / "selected.csv", "a") as f:
        f.write("my,own,row\n")
    sel = tasksift.select(files[0], files[1], method="random", count=4, progress=False)
    with pytest.warns(SelectionWarning, match="kept .*selected.csv: an output of an earlier run, changed since"):
        sel.save(out, "jsonl")
    assert (out / "selected.csv").read_text().endswith("my,own,row\n")
    man = json.loads((out / "manifest.json").read_text())
    assert any("kept" in w and "selected.csv" in w for w in man["info"]["warnings"])
    assert "selected.csv" not in {f["name"] for f in man["output"]["files"]}


def test_the_cli_prints_the_kept_file_as_a_warning_line(files, tmp_path, capsys):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 4, "--format", "csv") == 0
    (out / "selected.csv").write_text("edited by hand\n")
    capsys.readouterr()
    assert _select(files, out, "--count", 4) == 0
    err = capsys.readouterr().err
    assert f"tasksift: warning: kept {out / 'selected.csv'}: an output of an earlier run, changed since" in err
    assert (out / "selected.csv").read_text() == "edited by hand\n"


def test_names_outside_the_folder_or_unlisted_are_never_removed(files, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "notes.txt").write_text("keep me too")
    (out / "manifest.json").write_text(json.dumps({"tasksift_manifest": 1, "output": {"files": [
        {"name": "../victim.txt"}, {"name": str(victim)}, {"name": ".hidden"}, {"name": "manifest.json"}]}}))
    (out / ".hidden").write_text("x")
    assert _select(files, out, "--count", 2) == 0
    assert victim.read_text() == "keep me" and (out / "notes.txt").exists() and (out / ".hidden").exists()
    # a manifest that is not tasksift's names nothing of ours
    (out / "manifest.json").write_text(json.dumps({"output": {"files": [{"name": "notes.txt"}]}}))
    assert previous_outputs(out) == {}


def test_a_manifest_from_before_output_files_still_names_its_subset(files, tmp_path):
    out = tmp_path / "o"
    assert _select(files, out, "--count", 3, "--format", "csv") == 0
    man = json.loads((out / "manifest.json").read_text())
    del man["output"]["files"]                       # as older tasksift versions wrote it
    (out / "manifest.json").write_text(json.dumps(man))
    assert previous_outputs(out) == {"selected.csv": None}
    assert _select(files, out, "--count", 3) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "selected.jsonl"]


def test_leftover_staging_of_a_dead_run_is_removed(tmp_path):
    out = tmp_path / "o"
    (out / (STAGING_PREFIX + "dead")).mkdir(parents=True)
    (out / (STAGING_PREFIX + "dead") / "selected.jsonl").write_text("half")
    with OutputUnit(out) as unit:
        unit.path("a.txt").write_text("a")
        unit.add("a.txt", "test")
        unit.commit({"tasksift_manifest": 1})
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]


def test_output_names_must_be_plain(tmp_path):
    with OutputUnit(tmp_path / "o") as unit:
        for bad in ("../x", "a/b", ".hidden", "manifest.json", ""):
            with pytest.raises(ValueError):
                unit.add(bad, "test")
        with pytest.raises(FileNotFoundError):
            unit.add("never_written.txt", "test")
