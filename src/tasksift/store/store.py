"""A row-level, on-disk feature store keyed by (row id, featurizer config) that scales and heals.

Layout: ``<root>/<kind>-<config hash>/`` holds ``config.json``, segment files
``seg-<uuid>.seg`` (one computed block each: ids plus one fixed-width array per field, see
:mod:`tasksift.store.segment`) and the id index ``index.sqlite`` (:mod:`tasksift.store.index`).

* Reading the features of N ids looks them up in the index and copies those rows out of
  memory-mapped segments: memory and time grow with N and the segments those rows sit in,
  not with what else is cached.
* Every segment carries a checksum, verified the first time a process reads it. A truncated,
  empty or bit-flipped segment is reported in one warning line naming the file, moved aside
  to ``<name>.corrupt`` and dropped from the index, so its rows count as missing and are
  recomputed. A damaged index is moved aside the same way and rebuilt from the segments.
* Writes are atomic (temporary file + rename, then one index transaction); several processes
  (runs, Ray workers) may write the same config at once: each writes its own segments, the
  index keeps the first copy of an id.
* Caches of the previous format (``shard-*.npz``, the same folder names) are migrated into
  segments the first time a folder is opened.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sqlite3
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path, write_json
from ..errors import ConfigError
from .index import SegmentIndex
from .segment import (SUFFIX, CorruptSegment, SegmentHeader, read_field, read_header, read_ids, verify,
                      write_segment)

#: segments already verified in this process: (path, size, mtime_ns)
_VERIFIED: set[tuple[str, int, int]] = set()


def default_cache_root() -> Path:
    """``$TASKSIFT_CACHE`` if set, else ``~/.cache/tasksift``."""
    env = os.environ.get("TASKSIFT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tasksift"


def config_hash(config: Mapping) -> str:
    """16 hex digits naming a featurizer configuration's folder."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def warn(message: str) -> None:
    """One warning line on stderr (``tasksift: warning: ...``)."""
    print(f"tasksift: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StoreSpec:
    """What names a store (picklable, so a worker process opens the same one)."""

    root: str
    kind: str
    config_json: str

    def open(self) -> "FeatureStore":
        return FeatureStore(self.root, self.kind, json.loads(self.config_json))


class FeatureStore:
    """Per-row features of one featurizer configuration.

    ``config`` must hold everything that changes the features (model fingerprint, text
    rendering, max length, ...); ``kind`` names the featurizer. Values are dicts of arrays
    whose first axis is the row (NaN rows are fine).
    """

    def __init__(self, root: str | os.PathLike | None, kind: str, config: Mapping) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.kind = kind
        self.config = dict(config)
        self.dir = self.root / f"{kind}-{config_hash(self.config)}"
        self._index: SegmentIndex | None = None
        self._headers: dict[str, SegmentHeader] = {}
        self.segments_read = 0  # segments this object opened for reading (tests, benchmarks)

    @property
    def spec(self) -> StoreSpec:
        return StoreSpec(str(self.root), self.kind, json.dumps(self.config, sort_keys=True, default=str))

    # ---- checks -------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the folder and a scratch file in it, or raise a one-line ConfigError naming it."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=self.dir)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise ConfigError(f"feature cache folder '{self.dir}' is not writable "
                              f"({e.strerror or type(e).__name__}); pass a writable --cache-dir "
                              f"or set TASKSIFT_CACHE") from None

    # ---- the index ----------------------------------------------------------------------
    @property
    def index(self) -> SegmentIndex:
        """The id index, synced with the segment files on first use in this object."""
        if self._index is None:
            if not self.dir.exists():
                self.dir.mkdir(parents=True, exist_ok=True)
            self._index = self._open_index()
            self._migrate_npz()
            self.sync()
        return self._index

    def _open_index(self) -> SegmentIndex:
        path = self.dir / "index.sqlite"
        idx = SegmentIndex(path)
        try:
            idx.check()
            return idx
        except sqlite3.DatabaseError as e:
            idx.close()
            if not os.access(self.dir, os.W_OK):
                raise
            aside = path.with_name(path.name + ".corrupt")
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, aside)
            warn(f"feature index {path} is damaged ({e}); moved to {aside.name}, rebuilding it "
                 f"from the segments")
            return SegmentIndex(path)

    def sync(self) -> None:
        """Index segment files the index does not know; forget indexed ones that are gone."""
        idx = self._index if self._index is not None else self.index
        on_disk = {p.name for p in self.dir.glob(f"seg-*{SUFFIX}")}
        known = idx.segment_names()
        with contextlib.suppress(sqlite3.OperationalError):  # read-only folder: read as is
            idx.remove(known - on_disk)
            for name in sorted(on_disk - known):
                try:
                    header = self._header(name)
                    self._verify(header)
                    idx.add(name, read_ids(header))
                except CorruptSegment as e:
                    self._move_aside(name, str(e))
                except FileNotFoundError:
                    pass

    def _migrate_npz(self) -> None:
        """Turn shards of the previous cache format (``shard-*.npz``) into segments."""
        shards = sorted(self.dir.glob("shard-*.npz"))
        if not shards or not os.access(self.dir, os.W_OK):
            return
        with self._lock():
            for shard in shards:
                try:
                    with np.load(shard, allow_pickle=False) as z:
                        data = {k: z[k] for k in z.files}
                    ids = [str(i) for i in data.pop("__ids__").tolist()]
                except FileNotFoundError:
                    continue  # another process migrated it
                except Exception as e:  # noqa: BLE001 - any unreadable shard is recomputed
                    aside = shard.with_name(shard.name + ".corrupt")
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(shard, aside)
                    warn(f"feature cache shard {shard} is unreadable ({type(e).__name__}); moved to "
                         f"{aside.name}, its rows will be recomputed")
                    continue
                self._write_file(ids, data)
                with contextlib.suppress(FileNotFoundError):
                    shard.unlink()

    @contextlib.contextmanager
    def _lock(self):
        with open(self.dir / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- segments -----------------------------------------------------------------------
    def _header(self, name: str) -> SegmentHeader:
        if name not in self._headers:
            self._headers[name] = read_header(self.dir / name)
        return self._headers[name]

    def _verify(self, header: SegmentHeader) -> None:
        st = header.path.stat()
        key = (str(header.path), st.st_size, st.st_mtime_ns)
        if key not in _VERIFIED:
            verify(header)
            _VERIFIED.add(key)

    def _move_aside(self, name: str, reason: str) -> None:
        path = self.dir / name
        aside = path.with_name(name + ".corrupt")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, aside)
        self._headers.pop(name, None)
        if self._index is not None:
            with contextlib.suppress(sqlite3.OperationalError):
                self._index.remove([name])
        warn(f"feature cache segment {path} is corrupt ({reason}); moved to {aside.name}, "
             f"its rows will be recomputed")

    def _usable(self, name: str) -> bool:
        """Whether segment ``name`` can be read (checked once per process); a corrupt one is
        moved aside."""
        try:
            header = self._header(name)
            self._verify(header)
            return True
        except CorruptSegment as e:
            self._move_aside(name, str(e))
        except FileNotFoundError:  # moved aside by another process
            self._headers.pop(name, None)
            with contextlib.suppress(sqlite3.OperationalError):
                self.index.remove([name])
        return False

    def locate(self, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``{id: (segment, row)}`` for the ``ids`` held by readable segments (each segment
        involved is verified once per process; corrupt ones are moved aside)."""
        if not self.dir.exists():
            return {}
        found = self.index.lookup(ids)
        bad = {seg for seg in {s for s, _ in found.values()} if not self._usable(seg)}
        return {i: loc for i, loc in found.items() if loc[0] not in bad} if bad else found

    def locate_arrays(self, ids: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Where each of ``ids`` is stored, as arrays row-aligned with ``ids``: segment codes
        (int32, -1 where the id has no readable stored value), rows in those segments (int64)
        and the segment names the codes index. Each segment involved is verified once per
        process (corrupt ones are moved aside and their ids count as missing). ``ids``:
        strings, or a numpy bytes (``S``) array of their UTF-8 encodings; duplicates are fine.
        Memory: about 12 bytes an id, no per-id Python object kept."""
        if not self.dir.exists():
            return np.full(len(ids), -1, dtype=np.int32), np.zeros(len(ids), dtype=np.int64), []
        codes: dict[str, int] = {}
        seg, row = self.index.lookup_arrays(ids, codes)
        names = list(codes)
        bad = [c for c, name in enumerate(names) if not self._usable(name)]
        if bad:
            seg[np.isin(seg, bad)] = -1
        return seg, row, names

    def missing(self, ids: Sequence[str] | np.ndarray) -> list[int]:
        """Positions in ``ids`` that have no (readable) stored value."""
        return np.flatnonzero(self.locate_arrays(ids)[0] < 0).tolist()

    def __len__(self) -> int:
        return self.index.count() if self.dir.exists() else 0

    # ---- reading ------------------------------------------------------------------------
    def read(self, ids: Sequence[str] | np.ndarray) -> dict[str, np.ndarray]:
        """The stored fields for ``ids`` (strings, or a numpy ``S`` array of their UTF-8
        encodings), row-aligned; duplicates are read once each (KeyError naming how many
        are missing). Besides the output, memory holds about 30 bytes an id."""
        if not len(ids):
            return {}
        seg, row, names = self.locate_arrays(ids)
        lost = int((seg < 0).sum())
        if lost:
            raise KeyError(f"{lost} of {len(ids)} ids are not in the store {self.dir}")
        by_seg = np.argsort(seg, kind="stable")
        sorted_seg = seg[by_seg]
        bounds = np.flatnonzero(np.r_[True, sorted_seg[1:] != sorted_seg[:-1]])
        ends = np.r_[bounds[1:], len(by_seg)]
        seg_codes = sorted_seg[bounds]
        del seg, sorted_seg
        out: dict[str, np.ndarray] = {}
        for a, e, code in zip(bounds.tolist(), ends.tolist(), seg_codes.tolist()):
            dst = by_seg[a:e]
            header = self._header(names[code])
            self.segments_read += 1
            rows_here = row[dst]
            order = np.argsort(rows_here, kind="stable")
            dst_a, rows_a = dst[order], rows_here[order]
            for field in header.field_names:
                dtype, shape = header.field_spec(field)
                if field not in out:
                    out[field] = np.empty((len(ids), *shape), dtype=dtype)
                elif out[field].shape[1:] != shape:
                    raise CorruptSegment(f"{header.path}: field {field!r} has row shape {shape}, "
                                         f"other segments {out[field].shape[1:]}")
                out[field][dst_a] = read_field(header, field, rows_a)
        return out

    # ---- writing ------------------------------------------------------------------------
    def _write_file(self, ids: Sequence[str], values: Mapping[str, np.ndarray]) -> Path:
        name = f"seg-{uuid.uuid4().hex}{SUFFIX}"
        path = self.dir / name
        with atomic_path(path) as tmp:   # temp file + fsync + rename, mode as a plain open() gives
            write_segment(tmp, list(ids), values)
        self._index_segment(name, ids)
        return path

    def _index_segment(self, name: str, ids: Sequence[str]) -> None:
        st = (self.dir / name).stat()
        _VERIFIED.add((str(self.dir / name), st.st_size, st.st_mtime_ns))  # written by us: trusted
        if self._index is not None:
            self._index.add(name, [str(i) for i in ids])

    def write(self, ids: Sequence[str], values: Mapping[str, Any]) -> Path:
        """Atomically store one block of rows (``values``: field name -> array, row-aligned
        with ``ids``; a bare array is stored as ``"values"``) and index it."""
        if not isinstance(values, Mapping):
            values = {"values": values}
        arrays = {k: np.asarray(v) for k, v in values.items()}
        for k, v in arrays.items():
            if v.ndim == 0 or len(v) != len(ids):
                raise ValueError(f"field {k!r} has {0 if v.ndim == 0 else len(v)} rows for {len(ids)} ids")
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.json"
        if not cfg.exists():
            write_json(cfg, {"kind": self.kind, "config": self.config})
        _ = self.index  # open (and sync) before adding
        return self._write_file(ids, arrays)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None
