"""`tasksift compare A B` on toy manifests."""
from __future__ import annotations

import json

import pytest

from tasksift.cli import main
from tasksift.commands.compare import overlap, read_manifest
from tasksift.errors import DataError


def write(folder, ids, method="knn"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"method": method, "selected_ids": ids}))
    return folder


def test_overlap_numbers():
    o = overlap(["a", "b", "c", "d"], ["c", "d", "e"])
    assert o["intersection"] == 2 and o["union"] == 5
    assert o["jaccard"] == pytest.approx(0.4) and o["fraction_a_in_b"] == 0.5
    assert o["fraction_b_in_a"] == pytest.approx(2 / 3)
    assert overlap([], [])["jaccard"] == 1.0


def test_compare_cli_prints_and_writes_json(tmp_path, capsys):
    a = write(tmp_path / "a", ["x1", "x2", "x3", "x4"], "tsds")
    b = write(tmp_path / "b", ["x3", "x4", "x5"], "dsir")
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "|A ∩ B| = 2" in text and "Jaccard = 0.4000" in text and "fraction of A in B = 0.5000" in text
    assert "tsds" in text and "dsir" in text
    res = json.loads(out.read_text())
    assert res["intersection"] == 2 and res["jaccard"] == pytest.approx(0.4)
    assert res["a"]["method"] == "tsds" and res["b"]["method"] == "dsir"
    # a manifest path works as well as its folder
    assert main(["compare", str(a / "manifest.json"), str(a)]) == 0
    assert "Jaccard = 1.0000" in capsys.readouterr().out


@pytest.mark.parametrize("content,msg", [
    (None, "no manifest.json"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"method": "knn"}), "no 'selected_ids'"),
    (json.dumps({"selected_ids": ["a"]}), "no 'method'"),
    (json.dumps({"method": "knn", "selected_ids": "abc"}), "list of example id"),
])
def test_bad_manifests_are_one_line_data_errors(tmp_path, capsys, content, msg):
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "manifest.json").write_text(content)
    with pytest.raises(DataError, match=msg):
        read_manifest(bad)
    good = write(tmp_path / "good", ["a"])
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tasksift: error:") and msg in err and err.count("\n") == 1


def test_missing_folder(tmp_path, capsys):
    good = write(tmp_path / "good", ["a"])
    assert main(["compare", str(tmp_path / "nowhere"), str(good)]) == 2
    assert "not found" in capsys.readouterr().err
