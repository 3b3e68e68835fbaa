"""The pool: one input's examples stored column-wise and read in batches.

A :class:`Pool` keeps the cheap per-row columns in memory as arrays (content id, file/source,
row number, text length in words and characters) and the rows themselves elsewhere: in an
Arrow IPC file written once while the input is streamed (:class:`PoolWriter`), or, for small
inputs handed over in memory, in a list. :class:`~tasksift.data.example.Example` objects are
built only for the rows asked for (``pool[i]``, :meth:`Pool.examples`, :meth:`Pool.batches`),
so memory holds the columns plus one batch, not the whole pool as Python objects.

A Pool is a ``Sequence[Example]``: code that indexes or iterates examples keeps working, lazily.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .example import Example

#: Rows per stored record batch and per batch handed to callers.
BATCH_ROWS = 2048
_CACHED_BATCHES = 2
#: the files of a part (:meth:`PoolWriter.save_part`) beside its ``rows.arrow``
_PART_COLUMNS, _PART_IDS, _PART_FILES = "columns.npz", "ids.arrow", "files.json"


def _messages_type() -> Any:
    """Arrow type of a conversation: a list of {role, content}."""
    import pyarrow as pa

    return pa.large_list(pa.struct([("role", pa.string()), ("content", pa.large_string())]))


def index_array(positions: Any) -> Any:
    """``positions`` as an Arrow int64 array over the same memory (for ``Array.take``). Built
    from the buffer, not with ``pa.array``, which imports pandas (~50 MB) when it is installed."""
    import pyarrow as pa

    arr = np.ascontiguousarray(positions, dtype=np.int64)
    return pa.Array.from_buffers(pa.int64(), len(arr), [None, pa.py_buffer(arr)])


@dataclass(frozen=True)
class FileInfo:
    """What the rows of one input file share: ``Example.source`` and ``Example.layout``."""

    source: str | None
    layout: str


class PoolColumns:
    """The in-memory per-row columns of a pool (all of equal length)."""

    def __init__(self, ids: Any, rows: np.ndarray, file: np.ndarray, words: np.ndarray,
                 chars: np.ndarray, files: list[FileInfo]) -> None:
        import pyarrow as pa

        self.ids = ids if isinstance(ids, pa.Array) else pa.array(list(ids), type=pa.string())
        self.rows = np.asarray(rows, dtype=np.int64)
        self.file = np.asarray(file, dtype=np.int32)
        self.words = np.asarray(words, dtype=np.int32)
        self.chars = np.asarray(chars, dtype=np.int64)
        self.files = list(files)

    @classmethod
    def of_examples(cls, examples: Sequence[Example]) -> "PoolColumns":
        files: dict[FileInfo, int] = {}
        file = np.empty(len(examples), dtype=np.int32)
        for i, ex in enumerate(examples):
            file[i] = files.setdefault(FileInfo(ex.source, ex.layout), len(files))
        texts = [ex.text for ex in examples]
        return cls(ids=[ex.id for ex in examples], rows=np.array([ex.row for ex in examples], dtype=np.int64),
                   file=file, words=np.array([len(t.split()) for t in texts], dtype=np.int32),
                   chars=np.array([len(t) for t in texts], dtype=np.int64), files=list(files))


class MemoryRows:
    """Rows kept as the Example objects they were given as (small, in-memory inputs)."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)
        self.batch_starts = np.arange(0, max(len(self.examples), 1), BATCH_ROWS, dtype=np.int64)

    def read(self, positions: np.ndarray, columns: PoolColumns | None) -> list[Example]:
        return [self.examples[int(i)] for i in positions]


class ArrowRows:
    """Rows in Arrow IPC files (``raw``: the row's JSON text; ``messages``: the
    conversation as a list of role/content structs), one record batch per at most
    :data:`BATCH_ROWS` rows, the files' batches one after another (``batch_starts``: the
    first row of every batch). The files are unlinked once opened, so nothing is left
    behind however the process ends (``unlink=False``: a reader of files someone else owns,
    e.g. a worker reading a pool's shared copy); the last batches read are kept decoded."""

    def __init__(self, path: Path | Sequence[Path], batch_starts: np.ndarray, folder: Path | None = None, *,
                 unlink: bool = True) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(q) for q in path]
        self._files = [pa.OSFile(str(q), "rb") for q in paths]
        self._readers = [ipc.open_file(f) for f in self._files]
        #: the first (global) batch of each file
        self._first_batch = np.cumsum([0] + [r.num_record_batches for r in self._readers[:-1]])
        self.batch_starts = np.asarray(batch_starts, dtype=np.int64)
        self._cache: OrderedDict[int, Any] = OrderedDict()
        if not unlink:
            return
        try:
            for q in paths:
                os.unlink(q)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass

    def _batch(self, b: int) -> Any:
        rb = self._cache.get(b)
        if rb is not None:
            self._cache.move_to_end(b)
            return rb
        f = int(np.searchsorted(self._first_batch, b, side="right")) - 1
        rb = self._readers[f].get_batch(b - int(self._first_batch[f]))
        self._cache[b] = rb
        while len(self._cache) > _CACHED_BATCHES:
            self._cache.popitem(last=False)
        return rb

    def copy_to(self, path: str | os.PathLike) -> list[str]:
        """Write the Arrow files (readable here though unlinked) to ``path`` (the first) and
        ``<stem>.<i><suffix>`` beside it (the others), a chunk at a time; their names, in order."""
        path = Path(path)
        names = [path.name] + [f"{path.stem}.{i}{path.suffix}" for i in range(1, len(self._files))]
        for f, name in zip(self._files, names):
            fd = f.fileno()
            size = os.fstat(fd).st_size
            with open(path.with_name(name), "wb") as out:
                for offset in range(0, size, 1 << 22):
                    out.write(os.pread(fd, min(1 << 22, size - offset), offset))
        return names

    def _columns_at(self, positions: np.ndarray, columns: tuple[int, ...]) -> Iterator[tuple]:
        """Per stored batch the rows ``positions`` fall in: ``(js, *values)``, ``js`` the
        indices into ``positions`` of that batch's rows and one Python list per column."""
        batch_of = np.searchsorted(self.batch_starts, positions, side="right") - 1
        order = np.argsort(batch_of, kind="stable")
        bounds = np.flatnonzero(np.r_[True, batch_of[order][1:] != batch_of[order][:-1]]) if len(order) else []
        ends = list(bounds[1:]) + [len(order)]
        for a, e in zip(bounds, ends):
            js = order[a:e]
            b = int(batch_of[js[0]])
            rb = self._batch(b)
            local_np = positions[js] - self.batch_starts[b]
            whole = len(js) == rb.num_rows and bool((local_np == np.arange(len(js))).all())
            local = None if whole else index_array(local_np)
            yield (js, *[(rb.column(c) if whole else rb.column(c).take(local)).to_pylist() for c in columns])

    def read_messages(self, positions: np.ndarray) -> list[list[dict]]:
        """The conversations of the rows at the stored ``positions`` (raw rows not decoded)."""
        positions = np.asarray(positions, dtype=np.int64)
        out: list = [None] * len(positions)
        for js, msgs in self._columns_at(positions, (1,)):
            for j, m in zip(js.tolist(), msgs):
                out[j] = m
        return out

    def read(self, positions: np.ndarray, columns: PoolColumns, at: np.ndarray | None = None) -> list[Example]:
        """The Examples at the stored ``positions``; each row's columns are ``columns`` at ``at``
        (default: at ``positions``; a block's own columns: ``0..len-1``)."""
        positions = np.asarray(positions, dtype=np.int64)
        at = positions if at is None else np.asarray(at, dtype=np.int64)
        out: list[Example | None] = [None] * len(positions)
        files = columns.files
        for js, raws, msgs in self._columns_at(positions, (0, 1)):
            ids = columns.ids.take(index_array(at[js])).to_pylist()
            for j, raw, msg, id_ in zip(js, raws, msgs, ids):
                p = int(at[j])
                info = files[int(columns.file[p])]
                out[j] = Example(messages=msg, raw=json.loads(raw), row=int(columns.rows[p]),
                                 source=info.source, layout=info.layout, id=id_)
        return out  # type: ignore[return-value]


class Pool(Sequence):
    """Examples of one input: columns in memory, rows read in batches (see module doc).

    ``index`` (optional) makes this a view over the rows ``index`` of the stored pool, in that
    order; :meth:`take` builds one.
    """

    def __init__(self, columns: PoolColumns | None, store: MemoryRows | ArrowRows,
                 index: np.ndarray | None = None) -> None:
        self._columns, self._store = columns, store
        self._index = None if index is None else np.asarray(index, dtype=np.int64)

    @classmethod
    def from_examples(cls, examples: Iterable[Example]) -> "Pool":
        """An in-memory pool holding these objects (Examples; its columns are computed on
        first use, so code that only indexes may hold placeholders)."""
        return cls(None, MemoryRows(list(examples)))

    @property
    def _base(self) -> PoolColumns:
        if self._columns is None:
            self._columns = PoolColumns.of_examples(self._store.examples)   # type: ignore[union-attr]
        return self._columns

    # -- size and rows -------------------------------------------------------------------
    def __len__(self) -> int:
        if self._index is not None:
            return len(self._index)
        if self._columns is None:
            return len(self._store.examples)   # type: ignore[union-attr]
        return len(self._columns.rows)

    def _positions(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if len(idx) and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"pool index out of range (pool has {n} rows)")
        idx = np.where(idx < 0, idx + n, idx)
        return idx if self._index is None else self._index[idx]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self.examples(range(len(self))[i])
        if isinstance(i, (int, np.integer)):
            return self._store.read(self._positions([int(i)]), self._columns)[0]
        return self.examples(i)

    def example(self, i: int) -> Example:
        """The Example at position ``i``."""
        return self[int(i)]

    def examples(self, indices: Iterable[int]) -> list[Example]:
        """The Examples at ``indices``, in that order (each stored batch is read once)."""
        idx = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, np.ndarray) else indices
        return self._store.read(self._positions(idx), self._columns) if len(idx) else []

    def batches(self, size: int = BATCH_ROWS) -> Iterator[list[Example]]:
        """The Examples in pool order, a list of at most ``size`` at a time."""
        n = len(self)
        if self._index is None:   # follow the stored batches so each is decoded once
            starts = [int(s) for s in self._store.batch_starts if s < n] or [0]
            bounds = starts + [n]
            for a, b in zip(bounds[:-1], bounds[1:]):
                for s in range(a, b, size):
                    yield self.examples(np.arange(s, min(s + size, b)))
            return
        for s in range(0, n, size):
            yield self.examples(np.arange(s, min(s + size, n)))

    def text_batches(self, field: str = "text", size: int = BATCH_ROWS) -> Iterator[list[str]]:
        """Each row's ``text``, ``prompt`` or ``response`` (as :class:`Example` defines them),
        in pool order, a list of at most ``size`` at a time. Reads only the conversations:
        the raw rows are not decoded (about 4x faster than :meth:`batches`)."""
        if field not in ("text", "prompt", "response"):
            raise ValueError(f"field must be text, prompt or response, got {field!r}")
        if not isinstance(self._store, ArrowRows):
            for batch in self.batches(size):
                yield [getattr(ex, field) for ex in batch]
            return
        n = len(self)
        starts = [0]   # a view: any cut; else follow the stored batches so each is decoded once
        if self._index is None:
            starts = [int(s) for s in self._store.batch_starts if s < n] or [0]
        bounds = starts + [n]
        for a, b in zip(bounds[:-1], bounds[1:]):
            for s in range(a, b, size):
                msgs = self._store.read_messages(self._positions(np.arange(s, min(s + size, b))))
                yield [getattr(Example(messages=m, raw=None, row=0, id="-"), field) for m in msgs]

    def __iter__(self) -> Iterator[Example]:
        for batch in self.batches():
            yield from batch

    def take(self, indices: Iterable[int]) -> "Pool":
        """A view over the rows ``indices`` (positions into this pool), in that order."""
        return Pool(self._columns, self._store, self._positions(np.asarray(list(indices) if not isinstance(
            indices, np.ndarray) else indices, dtype=np.int64)))

    # -- columns -------------------------------------------------------------------------
    def _col(self, arr: np.ndarray) -> np.ndarray:
        return arr if self._index is None else arr[self._index]

    @property
    def ids(self) -> Any:
        """Content ids, a ``pyarrow.StringArray`` (``pool.id_list()`` for Python strings)."""
        return self._base.ids if self._index is None else self._base.ids.take(self._index)

    def id_list(self, indices: Iterable[int] | None = None) -> list[str]:
        """Ids as Python strings: of ``indices``, or of every row."""
        if indices is None:
            return self.ids.to_pylist()
        return self._base.ids.take(self._positions(np.asarray(list(indices) if not isinstance(
            indices, np.ndarray) else indices, dtype=np.int64))).to_pylist()

    @property
    def row_numbers(self) -> np.ndarray:
        """1-based row (line) number of each example in its file."""
        return self._col(self._base.rows)

    @property
    def words(self) -> np.ndarray:
        """Whitespace-separated words of each example's ``text``."""
        return self._col(self._base.words)

    @property
    def chars(self) -> np.ndarray:
        """Characters of each example's ``text``."""
        return self._col(self._base.chars)

    @property
    def sources(self) -> np.ndarray:
        """Each example's ``source`` (object array; None for a single-file input)."""
        return self._source_names()[self._file_codes()]

    def sources_at(self, indices: Any) -> np.ndarray:
        """``source`` of the rows at ``indices`` (object array): :attr:`sources` without
        building it for every row."""
        return self._source_names()[self._file_codes(indices)]

    def source_counts(self, indices: Any = None) -> dict[Any, int]:
        """Rows per ``source`` (None for a single-file input): of every row, or of ``indices``
        (counted as often as they occur). Counted on the file column, with no per-row objects."""
        counts = np.bincount(self._file_codes(indices), minlength=len(self._base.files))
        out: dict[Any, int] = {}
        for f, c in zip(self._base.files, counts.tolist()):   # files sharing a source add up
            if c:
                out[f.source] = out.get(f.source, 0) + int(c)
        return out

    def _source_names(self) -> np.ndarray:
        return np.array([f.source for f in self._base.files] or [None], dtype=object)

    def _file_codes(self, indices: Any = None) -> np.ndarray:
        """The file number of every row, or of the rows at ``indices``."""
        return self._col(self._base.file) if indices is None else self._base.file[self._positions(indices)]

    def stored_rows(self) -> tuple[MemoryRows | ArrowRows, PoolColumns, np.ndarray]:
        """Where this pool's rows live: the row store, the stored pool's columns and each row's
        position in them (for code that reads blocks of rows elsewhere: :mod:`tasksift.data.blocks`)."""
        positions = self._index if self._index is not None else np.arange(len(self), dtype=np.int64)
        return self._store, self._base, positions

    def fingerprint(self) -> str:
        """Hash of the ids in order: equal for equal content, whatever the file."""
        h = hashlib.sha1()
        ids = self.ids
        offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset:ids.offset + len(ids) + 1]
        data = ids.buffers()[2]
        if data is not None and len(ids):
            h.update(memoryview(data)[int(offsets[0]):int(offsets[-1])])
        return h.hexdigest()[:16]


def as_pool(examples: Any) -> Pool:
    """A Pool from a Pool (returned as is) or a sequence of Examples (kept in memory)."""
    return examples if isinstance(examples, Pool) else Pool.from_examples(examples)


class NotJsonSafe(Exception):
    """A raw row holds a value that JSON text cannot carry unchanged."""


class PoolWriter:
    """Builds an Arrow-backed :class:`Pool` from batches of Examples, streaming them to an
    IPC file under ``folder`` (default: the system temp folder, e.g. ``$TMPDIR``).

    Raw rows are stored as JSON text, so a raw value JSON cannot carry
    (bytes, dates, ...) raises :class:`NotJsonSafe`; the caller then keeps rows in memory.
    """

    def __init__(self, folder: str | os.PathLike | None = None) -> None:
        import pyarrow as pa
        import pyarrow.ipc as ipc

        self._dir = Path(tempfile.mkdtemp(prefix="tasksift-pool-", dir=folder))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self._dir), True)
        self._path = self._dir / "rows.arrow"
        self._schema = pa.schema([("raw", pa.large_string()), ("messages", _messages_type())])
        self._sink = pa.OSFile(str(self._path), "wb")
        self._writer = ipc.new_file(self._sink, self._schema,
                                    options=ipc.IpcWriteOptions(compression="zstd"))
        self._files: dict[FileInfo, int] = {}
        self._ids: list = []
        self._rows: list[np.ndarray] = []
        self._file: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self._chars: list[np.ndarray] = []
        self._starts: list[int] = []
        self._pending: list[Example] = []
        self._pending_file: list[int] = []
        self._pending_text: list[str | None] = []
        self.count = 0

    def add(self, examples: Sequence[Example], raw_texts: Sequence[str] | None = None) -> None:
        """Append examples (written out a full batch at a time). ``raw_texts``: each one's raw
        row as the JSON text it was read from, when there is one (saves encoding it again)."""
        for j, ex in enumerate(examples):
            self._pending.append(ex)
            self._pending_text.append(None if raw_texts is None else raw_texts[j])
            self._pending_file.append(self._files.setdefault(FileInfo(ex.source, ex.layout), len(self._files)))
            if len(self._pending) >= BATCH_ROWS:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        exs, fidx = self._pending, self._pending_file
        if not exs:
            return
        try:
            raws = [json.dumps(ex.raw) if t is None else t for ex, t in zip(exs, self._pending_text)]
        except (TypeError, ValueError) as e:
            raise NotJsonSafe(str(e)) from None
        msgs = pa.array([ex.messages for ex in exs], type=_messages_type())
        texts = [ex.text for ex in exs]
        self._writer.write_batch(pa.record_batch([pa.array(raws, pa.large_string()),
                                                  msgs], schema=self._schema))
        self._starts.append(self.count)
        self._ids.append(pa.array([ex.id for ex in exs], type=pa.string()))
        self._rows.append(np.fromiter((ex.row for ex in exs), dtype=np.int64, count=len(exs)))
        self._file.append(np.asarray(fidx, dtype=np.int32))
        self._words.append(np.fromiter((len(t.split()) for t in texts), dtype=np.int32, count=len(exs)))
        self._chars.append(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(exs)))
        self.count += len(exs)
        self._pending, self._pending_file, self._pending_text = [], [], []

    def save_part(self, dest: str | os.PathLike) -> int:
        """Close the file and move it, with the rows' columns, to the folder ``dest`` (replaced
        if present; a part of a pool :class:`PoolParts` builds). Returns the row count."""
        import pyarrow as pa
        import pyarrow.ipc as ipc

        self._flush()
        self._writer.close()
        self._sink.close()
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
        ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], type=pa.string())
        np.savez(self._dir / _PART_COLUMNS, rows=cat(self._rows, np.int64), file_index=cat(self._file, np.int32),
                 words=cat(self._words, np.int32), chars=cat(self._chars, np.int64),
                 batch_starts=np.asarray(self._starts, dtype=np.int64))
        with pa.OSFile(str(self._dir / _PART_IDS), "wb") as f, ipc.new_file(f, pa.schema([("id", pa.string())])) as w:
            w.write_batch(pa.record_batch([ids], names=["id"]))
        (self._dir / _PART_FILES).write_text(json.dumps([[i.source, i.layout] for i in self._files]))
        dest = Path(dest)
        shutil.rmtree(dest, ignore_errors=True)   # a retried task's earlier attempt
        os.replace(self._dir, dest)
        self._finalizer.detach()
        return self.count

    def finish(self) -> Pool:
        """Close the file and return the pool reading it."""
        import pyarrow as pa

        self._flush()
        self._writer.close()
        self._sink.close()
        ids = pa.concat_arrays(self._ids) if self._ids else pa.array([], type=pa.string())
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
        columns = PoolColumns(ids=ids, rows=cat(self._rows, np.int64), file=cat(self._file, np.int32),
                              words=cat(self._words, np.int32), chars=cat(self._chars, np.int64),
                              files=list(self._files))
        store = ArrowRows(self._path, np.asarray(self._starts or [0], dtype=np.int64), folder=self._dir)
        self._finalizer.detach()
        return Pool(columns, store)

    def abort(self) -> None:
        """Drop what was written."""
        try:
            self._writer.close()
            self._sink.close()
        except Exception:
            pass
        self._finalizer()


class PoolParts:
    """Builds an Arrow-backed :class:`Pool` from parts :meth:`PoolWriter.save_part` wrote
    (e.g. by worker processes): the parts' columns are joined here and their Arrow files become
    the pool's storage as they are, never decoded or rewritten. ``folder`` (holding the parts)
    is removed when the pool opens them."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self._folder = Path(folder)
        self._files: dict[FileInfo, int] = {}
        self._ids: list = []
        self._cols: dict[str, list[np.ndarray]] = {k: [] for k in ("rows", "file", "words", "chars", "starts")}
        self._paths: list[Path] = []
        self.count = 0

    def add(self, part: str | os.PathLike, row_offset: int = 0) -> None:
        """Append the rows of the part folder ``part``, their row numbers shifted by ``row_offset``."""
        import pyarrow.ipc as ipc

        part = Path(part)
        files = [FileInfo(src, lay) for src, lay in json.loads((part / _PART_FILES).read_text())]
        remap = np.array([self._files.setdefault(i, len(self._files)) for i in files] or [0], dtype=np.int32)
        with np.load(part / _PART_COLUMNS) as cols:
            if not len(cols["rows"]):
                return
            self._cols["rows"].append(cols["rows"] + row_offset)
            self._cols["file"].append(remap[cols["file_index"]])
            self._cols["words"].append(cols["words"])
            self._cols["chars"].append(cols["chars"])
            self._cols["starts"].append(cols["batch_starts"] + self.count)
            n = len(cols["rows"])
        with open(part / _PART_IDS, "rb") as f:
            self._ids.append(ipc.open_file(f).read_all().column("id").combine_chunks())
        self._paths.append(part / "rows.arrow")
        self.count += n

    def finish(self) -> Pool:
        """The pool of every part added (at least one row)."""
        import pyarrow as pa

        c = {k: np.concatenate(v) for k, v in self._cols.items()}
        columns = PoolColumns(ids=pa.concat_arrays(self._ids), rows=c["rows"], file=c["file"], words=c["words"],
                              chars=c["chars"], files=list(self._files))
        return Pool(columns, ArrowRows(self._paths, c["starts"], folder=self._folder))
