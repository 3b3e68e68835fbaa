"""Selection counts distinct content (issue 17): pool rows repeating an earlier row's content
are collapsed before the method runs; ``distinct=False`` / ``--keep-duplicates`` keeps them."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import tasksift
from tasksift.api import distinct_rows, spread
from tasksift.cli import main
from tasksift.data.pool import Pool
from tasksift.errors import ConfigError
from tasksift.features.embed import EmbedConfig

TOPICS = ["apples", "trains", "python function", "french capital", "movie review", "sort words"]
DISTINCT = [{"instruction": f"Question {i} about {TOPICS[i % 6]}?", "output": f"Answer {i}."} for i in range(12)]
# 12 distinct rows, the first three repeated 6 more times each: 30 rows, 18 of them repeats
POOL = DISTINCT + [DISTINCT[i % 3] for i in range(18)]
TARGET = [{"question": "How many apples does the cat buy?", "answer": "3"}]


def _ids(sel) -> list[str]:
    return [ex.id for ex in sel.subset]


@pytest.mark.parametrize("method", ["random", "kcenter"])
def test_selection_counts_distinct_content(method, tiny_embed_model, tmp_path):
    embed = EmbedConfig(model=tiny_embed_model)
    for seed in range(3):
        sel = tasksift.select(POOL, TARGET, method=method, count=10, seed=seed, embed=embed,
                              cache_dir=tmp_path / "c", progress=False)
        assert len(sel.indices) == 10 and len(set(_ids(sel))) == 10
        assert sel.info["duplicates_collapsed"] == 18
        assert all(i < 12 for i in sel.indices)   # the first row of each content is the one kept
        assert sel.scores is None or len(sel.scores) == len(POOL)
    with pytest.warns(tasksift.errors.SelectionWarning, match="the pool holds 12 distinct rows"):
        more = tasksift.select(POOL, TARGET, method=method, count=15, embed=embed, cache_dir=tmp_path / "c",
                               progress=False)
    assert sorted(more.indices.tolist()) == list(range(12))   # every content once, no repeats
    more.save(tmp_path / "o")
    man = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert man["info"]["duplicates_collapsed"] == 18 and man["counts"]["pool"] == 30
    assert man["info"]["shortfall"]["missing"] == 3


@pytest.mark.parametrize("method", ["random", "kcenter"])
def test_keeping_duplicates_lets_the_same_content_be_picked_again(method, tiny_embed_model, tmp_path):
    pool = [DISTINCT[0]] * 10 + [DISTINCT[1]] * 10     # two contents: 5 picks must repeat one
    sel = tasksift.select(pool, TARGET, method=method, count=5, distinct=False, progress=False,
                          embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c")
    assert len(sel.indices) == 5 and len(set(_ids(sel))) < 5
    assert sel.info["duplicates_collapsed"] == 0 and sel.info["duplicates_kept"] == 18
    with pytest.warns(tasksift.errors.SelectionWarning, match="selected 2 rows, 3 fewer than the budget of 5 "
                      r"\(the pool holds 2 distinct rows \(18 duplicates collapsed\)\)"):
        short = tasksift.select(pool, TARGET, method=method, count=5, progress=False,
                                embed=EmbedConfig(model=tiny_embed_model), cache_dir=tmp_path / "c")
    assert sorted(short.indices.tolist()) == [0, 10]
    assert short.info["shortfall"]["missing"] == 3


def test_budgets_and_groups_with_duplicates():
    ratio = tasksift.select(POOL, TARGET, method="random", ratio=0.2, progress=False)
    assert len(ratio.indices) == 6 == len(set(_ids(ratio)))       # 20% of the 30 rows as given
    tokens = tasksift.select(POOL, TARGET, method="random", tokens=40, progress=False)
    assert len(set(_ids(tokens))) == len(tokens.indices)
    assert int(tokens.pool.pool.words[tokens.indices].sum()) <= 40
    grouped = tasksift.select([dict(r, half=i % 2) for i, r in enumerate(POOL)], TARGET, method="random",
                              count=8, group_by="half", progress=False)
    assert len(set(_ids(grouped))) == len(grouped.indices) == 8


def test_per_pool_row_scores_and_columns_mark_collapsed_rows_unscored():
    sel = tasksift.select(POOL, TARGET, method="random", count=4, progress=False)
    assert np.isnan(sel.scores[12:]).all() and not np.isnan(sel.scores[:12]).any()
    ints = spread(np.array([5, 6]), np.array([0, 2]), 3)
    assert ints.tolist() == [5, None, 6]
    floats = spread(np.array([0.5, 0.25], dtype=np.float32), np.array([2, 0]), 3)
    assert floats.dtype == np.float32 and np.isnan(floats[1]) and floats[2] == 0.5


def test_distinct_rows_keeps_the_first_of_each_content():
    from tasksift.data.example import Example

    exs = [Example(messages=[{"role": "assistant", "content": t}], raw={}, row=i) for i, t in enumerate("abacbd")]
    assert distinct_rows(Pool.from_examples(exs)).tolist() == [0, 1, 3, 5]
    assert distinct_rows(Pool.from_examples(exs[:2])) is None


class _Ids:
    """A stand-in pool: distinct_rows reads only ``.ids``."""

    def __init__(self, ids):
        self.ids = ids


def _first_seen(values) -> list[int] | None:
    seen: dict = {}
    for i, v in enumerate(values):
        seen.setdefault(v, i)
    return None if len(seen) == len(values) else sorted(seen.values())


def _id_arrays():
    import pyarrow as pa

    rng = np.random.default_rng(0)
    hexes = [f"{v:016x}" for v in rng.integers(0, 300, 2000)]   # fixed width, many repeats
    mixed = [str(v) for v in rng.integers(0, 1000, 2000)]        # widths 1-3
    nul = ["a\x00\x00", "a\x00b", "ab\x00", "a\x00\x00", "abc", "ab\x00"]   # one width, NUL bytes
    sliced = pa.array(["x" * 4] + hexes + ["zzzz"])[1:-1]
    return {
        "hex": pa.array(hexes),
        "mixed-width": pa.array(mixed),
        "sliced": sliced,
        "chunked": pa.chunked_array([pa.array(hexes[:700]), pa.array(hexes[700:])]),
        "large": pa.array(hexes, type=pa.large_string()),
        "utf8": pa.array([["é", "ü", "é", "ñ"][v % 4] + "q" for v in range(40)]),
        "nul": pa.array(nul),
        "all-distinct": pa.array([f"{v:08d}" for v in range(500)]),
        "one-row": pa.array(["a"]),
    }


@pytest.mark.parametrize("name", list(_id_arrays()))
def test_distinct_rows_matches_a_first_seen_oracle(name):
    ids = _id_arrays()[name]
    got = distinct_rows(_Ids(ids))
    want = _first_seen(ids.to_pylist())
    assert (got if got is None else got.tolist()) == want


def test_cli_says_what_it_did_with_duplicates(tmp_path, capsys):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in POOL))
    target = tmp_path / "t.jsonl"
    target.write_text(json.dumps(TARGET[0]) + "\n")
    base = ["select", "--pool", str(pool), "--target", str(target), "--method", "random", "--count", "5",
            "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "duplicates collapsed: 18 pool rows repeat earlier content" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "b"), "--keep-duplicates"]) == 0
    assert "duplicates kept: 18 pool rows repeat earlier content" in capsys.readouterr().out
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["info"]["duplicates_kept"] == 18 and man["info"]["duplicates_collapsed"] == 0


# ------------------------------------------------------------------ API settings (issue 17, part 4)
@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True, "3"])
def test_a_bad_seed_is_one_config_error(seed):
    with pytest.raises(ConfigError) as e:
        tasksift.select(POOL, TARGET, method="random", count=2, seed=seed, progress=False)
    assert str(e.value) == f"seed must be an integer in [0, 4294967295], got {seed!r}"


@pytest.mark.parametrize("method,config,message", [
    ("tsds", {"alpha": 7}, "method 'tsds' option alpha must be a number in [0, 1], got 7"),
    ("random", {"nope": 1}, "method 'random' has no option(s) ['nope']"),
    ("dedup -> tsds", {"C": "many"}, "method 'tsds' option C must be"),
    ("dedup(threshold=2) -> knn", {}, "method 'dedup' option threshold must be"),
])
def test_bad_options_fail_from_the_option_table_before_loading(tmp_path, method, config, message):
    """The pool path does not exist: the option error comes first, from the declared table."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        tasksift.select(tmp_path / "missing.jsonl", TARGET, method=method, count=2, config=config, progress=False)
