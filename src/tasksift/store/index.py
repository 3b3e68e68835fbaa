"""The on-disk id index of a feature store: which segment (and row) holds each id.

A SQLite file beside the segments (``index.sqlite``), so looking up N ids reads only the
B-tree pages of those ids, whatever else is cached. Several processes may read and write it
at once (SQLite's own file locking; writers wait up to ``timeout`` seconds). The index is
derived data: the segment files are the truth, and :meth:`SegmentIndex.sync` re-indexes
segments it does not know (written by a process that died before indexing them) and forgets
segments that are gone (moved aside as corrupt).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..atomic import current_umask

#: ids per ``IN (...)`` query (below SQLite's default limit of 999 variables)
_LOOKUP_CHUNK = 900

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, rows INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ids (id TEXT PRIMARY KEY, segment TEXT NOT NULL, row INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ids_by_segment ON ids (segment);
"""


class SegmentIndex:
    """id -> (segment name, row) for one store folder."""

    def __init__(self, path: str | Path, timeout: float = 120.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            created = not self.path.exists()
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.executescript(_SCHEMA)
            except sqlite3.OperationalError:
                # a read-only folder with an existing index: reading still works
                if not self.path.exists():
                    conn.close()
                    raise
            if created and self.path.exists():   # sqlite creates 0644: honour the umask like open()
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o666 & ~current_umask())
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def check(self) -> None:
        """Raise ``sqlite3.DatabaseError`` if the index file is damaged."""
        row = self.conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")

    def segment_names(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM segments")}

    def add(self, segment: str, ids: Sequence[str]) -> None:
        """Index ``segment``'s rows; ids already indexed keep their first segment."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT OR IGNORE INTO segments VALUES (?, ?)", (segment, len(ids)))
            c.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?)",
                          ((i, segment, r) for r, i in enumerate(ids)))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def remove(self, segments: Iterable[str]) -> None:
        """Forget ``segments`` and every id they held."""
        names = list(segments)
        if not names:
            return
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany("DELETE FROM ids WHERE segment = ?", ((n,) for n in names))
            c.executemany("DELETE FROM segments WHERE name = ?", ((n,) for n in names))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def lookup(self, ids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """``{id: (segment, row)}`` for the ``ids`` that are indexed."""
        out: dict[str, tuple[str, int]] = {}
        c = self.conn
        for s in range(0, len(ids), _LOOKUP_CHUNK):
            chunk = list(ids[s:s + _LOOKUP_CHUNK])
            q = f"SELECT id, segment, row FROM ids WHERE id IN ({','.join('?' * len(chunk))})"
            for i, seg, row in c.execute(q, chunk):
                out[i] = (seg, row)
        return out

    def lookup_arrays(self, ids: Sequence[str] | np.ndarray, names: dict[str, int]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """``(segment code, row)`` arrays row-aligned with ``ids`` (code -1: not indexed);
        ``names`` maps segment names to codes and gains the names met. No per-id object
        outlives one query of :data:`_LOOKUP_CHUNK` ids, so memory is about 12 bytes an id.
        ``ids``: strings, or a numpy bytes array of their UTF-8 encodings."""
        n = len(ids)
        seg = np.full(n, -1, dtype=np.int32)
        row = np.zeros(n, dtype=np.int64)
        c = self.conn
        raw = isinstance(ids, np.ndarray) and ids.dtype.kind == "S"
        for s in range(0, n, _LOOKUP_CHUNK):
            part = ids[s:s + _LOOKUP_CHUNK]
            where: dict[str, list[int]] = {}
            for j, i in enumerate(part):
                where.setdefault(i.decode("utf-8") if raw else str(i), []).append(s + j)
            q = f"SELECT id, segment, row FROM ids WHERE id IN ({','.join('?' * len(where))})"
            for i, name, r in c.execute(q, list(where)):
                code = names.setdefault(name, len(names))
                for p in where[i]:
                    seg[p], row[p] = code, r
        return seg, row

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM ids").fetchone()[0])
