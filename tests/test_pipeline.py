"""The feature pipeline: only missing rows are computed, in blocks, written by the workers;
corrupt segments heal; an unwritable cache fails before computing; a killed run resumes."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from store_fixtures import ToyFeaturizer, corrupt_file, logged_rows, toy_values
from tasksift.errors import ConfigError
from tasksift.exec import LocalExecutor
from tasksift.features.pipeline import compute_features, open_store
from tasksift.store import store as store_mod

TESTS = Path(__file__).parent


def _run(f, rows, cache, **kw):
    return compute_features(f, rows, open_store(f, cache), LocalExecutor(), progress=False, **kw)


def test_computes_only_missing_rows_in_blocks_and_keeps_order(tmp_path):
    log = tmp_path / "log"
    f = ToyFeaturizer(log=str(log))
    res = _run(f, list(range(10)), tmp_path / "c", block_rows=4)
    assert logged_rows(log) == list(range(10)) and (res.rows_computed, res.rows_cached) == (10, 0)
    assert len(list((tmp_path / "c").rglob("seg-*.seg"))) == 3
    log.unlink()
    rows = [9, 3, 3, 12, 0, 12]
    res = _run(f, rows, tmp_path / "c", block_rows=4)
    assert logged_rows(log) == [12]                           # the only new row, computed once
    assert (res.rows_computed, res.rows_cached) == (1, 3)
    for k, v in toy_values(rows).items():
        np.testing.assert_array_equal(res.values[k], v)
    # another cache key is another store
    log.unlink()
    _run(ToyFeaturizer(version=2, log=str(log)), [1, 2], tmp_path / "c")
    assert logged_rows(log) == [1, 2]


def test_progress_bar_says_how_many_rows_came_from_the_cache(tmp_path, capsys):
    f = ToyFeaturizer()
    _run(f, list(range(5)), tmp_path / "c")
    compute_features(f, list(range(8)), open_store(f, tmp_path / "c"), LocalExecutor(), progress=True,
                     block_rows=1, desc="toy")
    err = capsys.readouterr().err
    assert "5 from cache" in err and "8/8" in err


@pytest.mark.parametrize("how", ["truncated", "empty", "bitflip"])
def test_corrupt_segment_is_recomputed_and_equals_a_clean_run(tmp_path, capsys, how):
    log = tmp_path / "log"
    f = ToyFeaturizer(log=str(log))
    rows = list(range(12))
    clean = _run(f, rows, tmp_path / "clean", block_rows=4).values
    st = open_store(f, tmp_path / "c")
    _run(f, rows, tmp_path / "c", block_rows=4)
    victim = st.dir / st.index.lookup(["r5"])["r5"][0]
    corrupt_file(victim, how)
    log.unlink()
    capsys.readouterr()
    store_mod._VERIFIED.clear()                               # as a new process
    res = _run(f, rows, tmp_path / "c", block_rows=4)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(victim) in err[0]
    assert logged_rows(log) == [4, 5, 6, 7]                   # only that segment's rows
    for k in clean:
        np.testing.assert_array_equal(res.values[k], clean[k])
    assert victim.with_name(victim.name + ".corrupt").exists()


def test_unwritable_cache_fails_in_one_line_before_computing(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    log = tmp_path / "log"
    with pytest.raises(ConfigError) as e:
        _run(ToyFeaturizer(log=str(log)), [1, 2, 3], blocker / "cache")
    assert "\n" not in str(e.value) and str(blocker / "cache") in str(e.value)
    assert not log.exists()                                    # compute_block was never called


KILLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from store_fixtures import ToyFeaturizer
    from tasksift.features.pipeline import compute_features, open_store
    f = ToyFeaturizer(log={log!r}, sleep=0.3)
    compute_features(f, list(range(40)), open_store(f, {cache!r}), progress=False, block_rows=5)
    print("finished")
""")


def test_a_run_killed_after_some_blocks_resumes(tmp_path):
    cache, log = tmp_path / "cache", tmp_path / "log"
    script = tmp_path / "run.py"
    script.write_text(KILLED.format(tests=str(TESTS), log=str(log), cache=str(cache)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(cache.rglob("seg-*.seg"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(cache.rglob("seg-*.seg")))
    assert 3 <= done < 8, "the run was not killed mid-way"
    log.unlink()
    f = ToyFeaturizer(log=str(log))
    res = _run(f, list(range(40)), cache, block_rows=5)
    assert len(logged_rows(log)) == 40 - 5 * done and res.rows_cached == 5 * done
    for k, v in toy_values(list(range(40))).items():
        np.testing.assert_array_equal(res.values[k], v)


def test_model_featurizers_take_their_ids_from_the_pool_column_unchanged(tmp_path):
    """Embeddings, LM losses and LESS gradients derive store ids from content ids: the pool's
    id column gives exactly the ids that reading each row would, with no row read."""
    import json as _json

    from tasksift.data import load_examples
    from tasksift.features.embed import EmbedConfig, Embedder
    from tasksift.features.grads import GradConfig, GradFeaturizer
    from tasksift.features.lm.scorer import LMConfig, LMFeaturizer
    from tasksift.features.pipeline import encode_ids, row_ids

    f = tmp_path / "pool.jsonl"
    f.write_text("".join(_json.dumps({"instruction": f"q {i % 7}", "output": f"a {i}"}) + "\n" for i in range(40)))
    pool = load_examples(str(f), role="pool").pool
    exs = list(pool.examples(range(len(pool))))
    for feat in (Embedder(EmbedConfig(text="prompt")), LMFeaturizer(LMConfig()), GradFeaturizer(GradConfig())):
        expected = encode_ids(feat.row_id(ex) for ex in exs)
        assert np.array_equal(row_ids(feat, exs), expected)
        pool.examples = None     # the column path must not read a row
        try:
            assert np.array_equal(row_ids(feat, pool), expected), type(feat).__name__
        finally:
            del pool.examples
