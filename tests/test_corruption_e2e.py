"""A damaged feature-store segment through a whole ``tasksift select``: one warning line naming
it, its rows recomputed, and the same selection as a clean run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasksift.cli import main

from store_fixtures import corrupt_file


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def inputs(tmp_path):
    topics = ["cats", "dogs", "ships", "trains", "rain", "maths", "bread", "music"]
    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"instruction": f"Tell me about {topics[i % 8]} number {i}", "input": "", "output": f"{topics[i % 8]} " * (i % 5 + 1)}
        for i in range(40)])
    target = write_jsonl(tmp_path / "target.jsonl", [
        {"question": f"What about {t}?", "answer": t} for t in ("cats", "dogs", "rain")])
    return pool, target


def select(tmp_path, inputs, model, cache, method, name):
    pool, target = inputs
    out = tmp_path / name
    rc = main(["select", "--pool", str(pool), "--target", str(target), "--method", method, "--count", "7",
               "--out", str(out), "--no-progress", "--seed", "0", "--embed-model", model, "--cache-dir", str(cache)])
    assert rc == 0
    return json.loads((out / "manifest.json").read_text())["selected_ids"]


def pool_segment(cache: Path) -> Path:
    """The embedding segment holding the pool's rows (the largest: 40 rows against 3)."""
    segs = sorted(cache.rglob("seg-*.seg"), key=lambda p: p.stat().st_size)
    assert len(segs) == 2, segs
    return segs[-1]


@pytest.mark.parametrize("method,how", [("knn", "truncated"), ("knn", "empty"), ("knn", "bitflip"),
                                        ("tsds", "bitflip")])
def test_damaged_segment_warns_once_recomputes_and_selects_the_same(tmp_path, inputs, tiny_embed_model, capsys,
                                                                     how, method):
    cache = tmp_path / "cache"
    clean = select(tmp_path, inputs, tiny_embed_model, cache, method, "clean")   # an empty store: all computed
    victim = pool_segment(cache)
    corrupt_file(victim, how)
    capsys.readouterr()
    again = select(tmp_path, inputs, tiny_embed_model, cache, method, "again")
    err = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(err) == 1 and str(victim) in err[0], err
    assert again == clean
    assert not victim.exists() and victim.with_name(victim.name + ".corrupt").exists()
    recomputed = [p for p in cache.rglob("seg-*.seg")]
    assert len(recomputed) == 2 and victim not in recomputed     # the pool's rows were written anew
    capsys.readouterr()
    assert select(tmp_path, inputs, tiny_embed_model, cache, method, "healed") == clean
    assert not [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
