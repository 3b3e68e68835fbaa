"""The feature store: round trips, reads that touch only the segments they need, healing of
corrupt segments and indexes, migration of the previous npz cache, concurrent writers."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from store_fixtures import corrupt_file, toy_values
from tasksift.errors import ConfigError
from tasksift.store import FeatureStore
from tasksift.store import store as store_mod

TESTS = Path(__file__).parent


def _fill(store: FeatureStore, n_segments: int, rows: int) -> None:
    for s in range(n_segments):
        r = list(range(s * rows, (s + 1) * rows))
        store.write([f"r{i}" for i in r], toy_values(r))


def _fresh(tmp_path, version: int = 1) -> FeatureStore:
    """A new store object as a new process would see it (no segment verified yet)."""
    store_mod._VERIFIED.clear()
    return FeatureStore(tmp_path, "toy", {"v": version})


def test_round_trip_multi_field_nan_rows_duplicates_and_order(tmp_path):
    st = FeatureStore(tmp_path, "toy", {"v": 1})
    st.write(["r1", "r2", "r7"], toy_values([1, 2, 7]))
    st.write(["r9", "r1"], toy_values([9, 1]))          # r1 again: the first copy is kept
    got = _fresh(tmp_path).read(["r7", "r9", "r1", "r7"])
    want = toy_values([7, 9, 1, 7])
    assert set(got) == {"vec", "n", "odd"}
    for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k])     # NaN rows compare equal here
    assert np.isnan(got["vec"][0]).all()
    assert len(_fresh(tmp_path)) == 4
    assert _fresh(tmp_path).missing(["r1", "x", "r2", "y"]) == [1, 3]
    with pytest.raises(KeyError, match="1 of 2 ids"):
        _fresh(tmp_path).read(["r1", "nope"])
    assert len(FeatureStore(tmp_path, "toy", {"v": 2})) == 0   # another config, another folder
    assert not list(tmp_path.rglob("*.tmp"))


def test_reading_three_ids_touches_only_their_segment(tmp_path, monkeypatch):
    _fill(FeatureStore(tmp_path, "toy", {"v": 1}), n_segments=60, rows=50)
    st = _fresh(tmp_path)
    verified, mapped = [], []
    real_verify, real_read = store_mod.verify, store_mod.read_field
    monkeypatch.setattr(store_mod, "verify", lambda h: (verified.append(h.path.name), real_verify(h))[1])
    monkeypatch.setattr(store_mod, "read_field",
                        lambda h, name, rows=None: (mapped.append((h.path.name, len(rows))), real_read(h, name, rows))[1])
    got = st.read(["r1210", "r1201", "r1249"])                  # all three in segment 24
    np.testing.assert_array_equal(got["n"], [3630, 3603, 3747])
    assert len(set(verified)) == 1 and len(verified) == 1
    assert {m[0] for m in mapped} == set(verified) and all(n == 3 for _, n in mapped)
    assert st.segments_read == 1
    # a second read in the same process does not verify the segment again
    st.read(["r1202"])
    assert len(verified) == 1


@pytest.mark.parametrize("how", ["truncated", "empty", "bitflip", "header"])
def test_corrupt_segment_is_reported_once_moved_aside_and_its_rows_missing(tmp_path, capsys, how):
    st = FeatureStore(tmp_path, "toy", {"v": 1})
    _fill(st, n_segments=3, rows=4)
    victim = st.dir / st.index.lookup(["r4"])["r4"][0]          # holds r4..r7
    corrupt_file(victim, how)
    capsys.readouterr()
    fresh = _fresh(tmp_path)
    assert fresh.missing([f"r{i}" for i in range(12)]) == [4, 5, 6, 7]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(victim) in err[0] and "corrupt" in err[0], err
    assert not victim.exists() and victim.with_name(victim.name + ".corrupt").exists()
    # the rest is still read, and nothing more is reported
    np.testing.assert_array_equal(fresh.read(["r0", "r11"])["n"], [0, 33])
    assert _fresh(tmp_path).missing(["r4", "r0"]) == [0]
    assert capsys.readouterr().err == ""


def test_unwritable_folder_is_one_line_config_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    st = FeatureStore(blocker / "cache", "toy", {"v": 1})
    with pytest.raises(ConfigError) as e:
        st.check_writable()
    msg = str(e.value)
    assert "\n" not in msg and str(st.dir) in msg and "not writable" in msg


def test_index_is_rebuilt_from_segments(tmp_path, capsys):
    st = FeatureStore(tmp_path, "toy", {"v": 1})
    _fill(st, n_segments=4, rows=5)
    st.close()
    (st.dir / "index.sqlite").write_bytes(b"garbage" * 100)
    fresh = _fresh(tmp_path)
    np.testing.assert_array_equal(fresh.read([f"r{i}" for i in range(20)])["n"], np.arange(20) * 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "index.sqlite" in err[0]
    # a segment written by a process that died before indexing it is picked up too
    from tasksift.store.segment import write_segment

    write_segment(st.dir / "seg-orphan.seg", ["r100"], toy_values([100]))
    assert _fresh(tmp_path).read(["r100"])["n"].tolist() == [300]


def test_previous_npz_cache_is_migrated(tmp_path, capsys):
    st = FeatureStore(tmp_path, "toy", {"v": 1})
    st.dir.mkdir(parents=True)
    vals = toy_values([3, 4])
    np.savez(st.dir / "shard-old.npz", __ids__=np.array(["r3", "r4"]), **vals)
    (st.dir / "shard-bad.npz").write_bytes(b"PK\x03\x04broken")
    got = _fresh(tmp_path).read(["r4", "r3"])
    np.testing.assert_array_equal(got["vec"], vals["vec"][::-1])
    assert not list(st.dir.glob("shard-*.npz")) and len(list(st.dir.glob("seg-*.seg"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shard-bad.npz" in err[0]


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from store_fixtures import corrupt_file, toy_values
    from tasksift.store import FeatureStore
    st = FeatureStore({root!r}, "toy", {{"v": 1}})
    start = int(sys.argv[1])
    for b in range(30):
        rows = list(range(start + b * 10, start + b * 10 + 10))
        st.write([f"r{{i}}" for i in rows], toy_values(rows))
""")


def test_two_processes_writing_the_same_config_stay_consistent(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(TESTS), root=str(tmp_path / "c")))
    # overlapping ranges: rows 150..299 are written by both
    procs = [subprocess.Popen([sys.executable, str(script), str(s)], stderr=subprocess.PIPE) for s in (0, 150)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    st = _fresh(tmp_path / "c")
    assert len(st) == 450
    got = st.read([f"r{i}" for i in range(450)])
    want = toy_values(list(range(450)))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    assert len(list(st.dir.glob("seg-*.seg"))) == 60


def test_read_takes_encoded_ids_and_holds_no_per_id_objects(tmp_path):
    import tracemalloc

    n = 60_000
    st = FeatureStore(tmp_path, "toy", {"v": 1})
    for s in range(0, n, 10_000):
        st.write([f"row-{i:08d}" for i in range(s, s + 10_000)], {"n": np.arange(s, s + 10_000, dtype=np.int32)})
    rng = np.random.default_rng(0)
    pick = rng.integers(0, n, size=n)                       # shuffled, with duplicates
    ids = np.array([f"row-{i:08d}".encode() for i in pick])
    fresh = _fresh(tmp_path)
    assert fresh.missing(ids[:5]) == [] and fresh.missing(np.array([b"row-x", ids[0]])) == [0]
    fresh.read(ids[:10])                                    # open the index and verify outside the count
    tracemalloc.start()
    got = fresh.read(ids)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(got["n"], pick)
    np.testing.assert_array_equal(fresh.read([f"row-{i:08d}" for i in pick[:100]])["n"], pick[:100])
    per_row = (peak - got["n"].nbytes) / n
    assert per_row < 60, f"{per_row:.0f} bytes an id besides the output"
