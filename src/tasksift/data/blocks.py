"""Blocks of a pool's rows described by reference, so that worker processes read their own rows.

A file-backed :class:`~tasksift.data.pool.Pool` keeps its rows in an Arrow file that is
unlinked once opened, which other processes cannot open. :func:`share_pool` writes a linked
copy of that file (and its batch layout) into a folder the workers can reach, once per pool
and folder; the copy is removed when the pool is dropped or the process exits, and copies
left by a process of this host that was killed are removed the next time one is made.
:meth:`SharedPool.block` then describes rows of the pool as a :class:`RowBlock`: the copy's
path, the rows' positions in it and the rows' own columns (content id, row number, file), a
few dozen bytes a row whatever the rows' text. A worker calls :meth:`RowBlock.examples`.

The folder must be one every worker can open: on one machine any folder does; a cluster of
several machines needs a shared filesystem (the feature store's root, which workers write
into, is one already).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from .example import Example
from .pool import ArrowRows, Pool, PoolColumns, index_array

#: folder names of shared copies: ``<host>-<pid>-<random>``
_ROWS_FILE, _STARTS_FILE, _NAMES_FILE = "rows.arrow", "batch_starts.npy", "row_files.json"


@dataclass(frozen=True)
class RowBlock:
    """Rows of a shared pool file: ``positions`` in the file at ``path``, and their columns
    (``columns``, row-aligned with ``positions``). Picklable; small."""

    path: str
    positions: np.ndarray
    columns: PoolColumns

    def __len__(self) -> int:
        return len(self.positions)

    def examples(self) -> list[Example]:
        """The block's Examples, in order, read from the shared file."""
        if not len(self.positions):
            return []
        folder = Path(self.path).parent
        try:
            names = json.loads((folder / _NAMES_FILE).read_text())
            rows = ArrowRows([folder / n for n in names], np.load(folder / _STARTS_FILE), unlink=False)
        except FileNotFoundError:
            raise ConfigError(f"this worker ({socket.gethostname()}) cannot open the pool copy {self.path}: "
                              f"the feature cache folder must be on a filesystem every worker shares") from None
        return rows.read(self.positions, self.columns, at=np.arange(len(self.positions)))


def _slice_columns(columns: PoolColumns, positions: np.ndarray) -> PoolColumns:
    """The columns of the rows at ``positions`` only (their files renumbered)."""
    used, file = np.unique(columns.file[positions], return_inverse=True)
    return PoolColumns(ids=columns.ids.take(index_array(positions)), rows=columns.rows[positions],
                       file=file.astype(np.int32), words=columns.words[positions],
                       chars=columns.chars[positions], files=[columns.files[int(f)] for f in used])


class SharedPool:
    """A linked copy of a file-backed pool's rows under ``folder`` (see the module doc)."""

    def __init__(self, rows: ArrowRows, folder: str | os.PathLike) -> None:
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        remove_orphans(root)
        self.dir = root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.dir), True)
        tmp = root / f".{self.dir.name}.tmp"
        tmp.mkdir()
        try:
            (tmp / _NAMES_FILE).write_text(json.dumps(rows.copy_to(tmp / _ROWS_FILE)))
            np.save(tmp / _STARTS_FILE, rows.batch_starts)
            os.replace(tmp, self.dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = str(self.dir / _ROWS_FILE)

    def block(self, pool: Pool, indices: Sequence[int] | np.ndarray) -> RowBlock:
        """The rows ``indices`` (positions into ``pool``, a pool or view over these rows)."""
        _, columns, positions = pool.stored_rows()
        stored = positions[np.asarray(indices, dtype=np.int64)]
        return RowBlock(self.path, stored, _slice_columns(columns, stored))

    def close(self) -> None:
        """Remove the copy now (workers still reading it keep their open file)."""
        self._finalizer()


#: one shared copy per (row store, folder), kept while the pool's rows are alive
_SHARED: "weakref.WeakKeyDictionary[ArrowRows, dict[str, SharedPool]]" = weakref.WeakKeyDictionary()


def share_pool(pool: Any, folder: str | os.PathLike) -> SharedPool | None:
    """The shared copy of ``pool``'s rows under ``folder`` (made on first use), or None when
    ``pool`` is not a file-backed Pool (rows held in memory: ship the rows themselves)."""
    if not isinstance(pool, Pool):
        return None
    rows, _, _ = pool.stored_rows()
    if not isinstance(rows, ArrowRows):
        return None
    copies = _SHARED.setdefault(rows, {})
    key = str(Path(folder).resolve())
    if key not in copies or not Path(copies[key].path).exists():
        copies[key] = SharedPool(rows, folder)
    return copies[key]


def remove_orphans(folder: Path) -> None:
    """Remove the copies under ``folder`` made by processes of this host that are gone."""
    host = socket.gethostname()
    for d in folder.iterdir() if folder.is_dir() else ():
        name = d.name.lstrip(".")
        h, _, rest = name.rpartition("-")[0].rpartition("-")
        if h != host or not rest.isdigit() or _alive(int(rest)):
            continue
        shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
