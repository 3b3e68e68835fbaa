"""The one feature pipeline: ids -> missing rows -> blocks -> executor -> store -> features.

:func:`compute_features` is how embeddings, LM losses and LESS gradients are computed. A
featurizer only says what its rows are called in the store (:meth:`Featurizer.row_id`), what
keys its store (:meth:`Featurizer.cache_key`), which accelerator a worker needs
(:attr:`Featurizer.accelerator`) and how to compute one block (:meth:`Featurizer.compute_block`);
the pipeline dedupes ids, finds what the store lacks, checks the store is writable before
computing anything, cuts the missing rows into blocks and hands them to the executor, whose
workers compute each block and write it into the store themselves (so a crash loses at most
the blocks in flight, and a rerun computes only what is missing). The features of every row are
then read back from the store.

A featurizer whose ``compute_block`` takes an ``on_rows`` callback (it says so with
``batch_progress = True``) reports each batch inside a block as it finishes, so the progress
bar moves per batch wherever the block runs in this process; elsewhere the bar moves per block.

When the executor's workers are other processes (:attr:`Executor.in_process` False: Ray) and
the rows are a file-backed :class:`~tasksift.data.pool.Pool`, the driver sends no rows: blocks
are :class:`~tasksift.data.blocks.RowBlock` references into a shared copy of the pool's file
(under ``<store root>/.pool-files``, which must be a folder every worker can open), and the
workers read them, both to compute the rows' store ids and to compute the features. A
featurizer whose store ids derive from the pool's content ids says so with an optional
``content_row_id(content_id) -> str`` method: then the ids come from the pool's id column
(here and with Ray; no row is read for them), and with Ray the pool file is copied only when
some row must be computed, whose rows are then read once. The driver holds the pool's
columns and the ids as one bytes array (:func:`encode_ids`), never the rows' texts nor a
Python object per row. Other rows (a list, an in-memory pool) are read here and sent to the
workers block by block.

A featurizer is shipped to worker processes by pickling: it must drop whatever it loaded in
this process (a model) when pickled and load it again on first use there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..data.blocks import RowBlock, SharedPool, share_pool
from ..data.pool import Pool
from ..exec import Executor, LocalExecutor
from ..store import FeatureStore, StoreSpec
from ..store.store import warn

#: where shared copies of pools go, under the feature store's root
POOL_FILES = ".pool-files"
#: rows per block when workers compute the store ids of a pool's rows
ID_BLOCK_ROWS = 8192


@runtime_checkable
class Featurizer(Protocol):
    """What :func:`compute_features` needs from a featurizer."""

    #: names the store folder (``<kind>-<hash of cache_key()>``)
    kind: str
    #: ``"gpu"``: a worker wants one GPU where the cluster has them; None: CPU only
    accelerator: str | None

    def cache_key(self) -> dict:
        """Everything that changes the features (model fingerprint, rendering, ...)."""
        ...

    def row_id(self, row: Any) -> str:
        """The store id of one input row."""
        ...

    def block_item(self, row: Any) -> Any:
        """What :meth:`compute_block` needs of one row (picklable, e.g. its text)."""
        ...

    def compute_block(self, items: list) -> Mapping[str, np.ndarray]:
        """Row-aligned arrays (NaN rows allowed) for one block of items."""
        ...


@dataclass
class FeatureResult:
    """Features of every input row (``values``: field -> array, row-aligned with the rows),
    and how many distinct rows were computed now or came from the store."""

    values: dict[str, np.ndarray]
    rows_computed: int
    rows_cached: int


def open_store(featurizer: Featurizer, cache_dir: str | os.PathLike | None) -> FeatureStore:
    """The store of ``featurizer``'s current configuration under ``cache_dir`` (None: the
    default cache root)."""
    return FeatureStore(cache_dir, featurizer.kind, featurizer.cache_key())


@dataclass(frozen=True, eq=False)
class StoreWriter:
    """Worker factory: builds, in the worker, the function that computes one block
    ``(ids, items)`` (``items``: the rows' :meth:`Featurizer.block_item`, or a
    :class:`RowBlock` of the rows to read first) with ``featurizer`` and writes it into the
    store ``spec`` names; it returns the block's row count. Unhashable on purpose: an in-process executor must not keep
    it (and the model its featurizer holds) after the run."""

    featurizer: Any
    spec: StoreSpec
    on_rows: Callable[[int], None] | None = None  # per-batch progress (in-process runs only)
    __hash__ = None  # type: ignore[assignment]

    def __call__(self) -> Callable[[tuple[list, list]], int]:
        featurizer, store, on_rows = self.featurizer, self.spec.open(), self.on_rows

        def run(block: tuple[list, list | RowBlock]) -> int:
            ids, items = block
            if isinstance(items, RowBlock):
                items = [featurizer.block_item(ex) for ex in items.examples()]
            kw = {"on_rows": on_rows} if on_rows is not None else {}
            store.write(ids, featurizer.compute_block(list(items), **kw))
            return len(ids)

        return run


def compute_features(featurizer: Featurizer, rows: Sequence[Any], store: FeatureStore,
                     executor: Executor | None = None, *, block_rows: int = 1024, progress: bool = True,
                     desc: str | None = None) -> FeatureResult:
    """Features of ``rows``, computing (through ``executor``, default in-process) and storing
    only the rows ``store`` lacks, ``block_rows`` per block. Duplicate ids are computed once.
    The store's folder must be writable when anything is missing (a one-line ConfigError
    before any computing otherwise)."""
    from tqdm.auto import tqdm

    executor = executor if executor is not None else LocalExecutor()
    remote = not executor.in_process and len(rows) > 0
    by_content = isinstance(rows, Pool) and callable(getattr(featurizer, "content_row_id", None))
    shared = _shared_rows(rows, store) if remote and not by_content else None
    if shared is not None:
        ids = _remote_row_ids(featurizer, rows, shared, executor, max(block_rows, ID_BLOCK_ROWS))
    else:
        ids = row_ids(featurizer, rows)
    uniq, first = np.unique(ids, return_index=True)   # first: each distinct id's first position
    todo = np.sort(first[store.locate_arrays(uniq)[0] < 0])
    cached = len(uniq) - len(todo)
    computed = 0
    if len(todo):
        store.check_writable()
        if remote and by_content:   # rows are copied for the workers only when some must be computed
            shared = _shared_rows(rows, store)
    bar = tqdm(total=len(uniq), initial=cached, desc=desc or f"{featurizer.kind} features", unit="row",
               disable=not progress or not len(uniq), dynamic_ncols=True)
    bar.set_postfix_str(f"{cached:,} from cache")
    if len(todo):
        per_batch = getattr(featurizer, "batch_progress", False) and executor.in_process
        worker = StoreWriter(featurizer, store.spec, on_rows=bar.update if per_batch else None)
        try:
            # a segment may vanish under us (another run moved it aside as corrupt): retry those rows
            for _ in range(3):
                for _, n in executor.map_blocks(worker, _blocks(todo, ids, rows, featurizer, block_rows, shared),
                                                accelerator=featurizer.accelerator):
                    computed += n
                    if not per_batch:
                        bar.update(n)
                todo = np.sort(first[store.locate_arrays(uniq)[0] < 0])
                if not len(todo):
                    break
        finally:
            bar.close()
    else:
        bar.close()
    del first, uniq, todo   # the store's read builds its own arrays: free these first
    values = store.read(ids) if len(ids) else {}
    return FeatureResult(values, rows_computed=computed, rows_cached=cached)


#: ids encoded per chunk of this many rows (the chunk's Python strings are then dropped)
_ID_CHUNK = 65536


def encode_ids(ids: Iterable[str]) -> np.ndarray:
    """Store ids as a numpy bytes array of their UTF-8 encodings (``S<longest>``): about the
    id's length in bytes per row, against ~60 bytes more for a Python string in a list."""
    raw = [str(i).encode("utf-8") for i in ids]
    return np.array(raw, dtype=bytes) if raw else np.zeros(0, dtype="S1")


def _concat_ids(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype="S1")


def row_ids(featurizer: Featurizer, rows: Sequence[Any]) -> np.ndarray:
    """The store id of every row, encoded (:func:`encode_ids`). From the pool's content-id
    column when ``rows`` is a :class:`Pool` and the featurizer derives its ids from content
    ids (``content_row_id``; no row is read), else ``featurizer.row_id`` of each row, read
    a batch at a time."""
    content = getattr(featurizer, "content_row_id", None)
    parts = []
    if isinstance(rows, Pool) and callable(content):
        col = rows.ids
        for s in range(0, len(col), _ID_CHUNK):
            parts.append(encode_ids(content(c) for c in col.slice(s, _ID_CHUNK).to_pylist()))
        return _concat_ids(parts)
    it = iter(rows)
    while True:
        chunk = list(islice(it, _ID_CHUNK))
        if not chunk:
            return _concat_ids(parts)
        parts.append(encode_ids(featurizer.row_id(r) for r in chunk))


def _blocks(todo: np.ndarray, ids: np.ndarray, rows: Sequence[Any], featurizer: Featurizer,
            block_rows: int, shared: SharedPool | None) -> Iterator[tuple[int, tuple[list, list | RowBlock]]]:
    """``(block number, (ids, items))`` for the positions ``todo``, made as they are asked for
    (``items``: a :class:`RowBlock` reference when ``shared``, else the rows' block items)."""
    step = max(1, int(block_rows))
    for b, s in enumerate(range(0, len(todo), step)):
        part = todo[s:s + step]
        if shared is not None:
            items: list | RowBlock = shared.block(rows, part)
        else:   # a pool reads a block's rows batch by batch, not one by one
            got = rows.examples(part) if isinstance(rows, Pool) else [rows[p] for p in part]
            items = [featurizer.block_item(r) for r in got]
        yield b, ([i.decode("utf-8") for i in ids[part].tolist()], items)


def _shared_rows(rows: Sequence[Any], store: FeatureStore) -> SharedPool | None:
    """A copy of a file-backed pool's rows that workers can read (None: the rows are sent)."""
    try:
        return share_pool(rows, store.root / POOL_FILES)
    except OSError as e:
        warn(f"cannot write a copy of the pool for the workers under {store.root / POOL_FILES} "
             f"({e.strerror or type(e).__name__}); the rows are read here and sent to them")
        return None


def block_row_ids(block: RowBlock, *, featurizer: Featurizer) -> list[str]:
    """The store ids of the rows of ``block`` (run by a worker)."""
    return [featurizer.row_id(ex) for ex in block.examples()]


def _remote_row_ids(featurizer: Featurizer, rows: Any, shared: SharedPool, executor: Executor,
                    step: int) -> np.ndarray:
    """The store ids of every row (encoded), computed by the executor's workers from the shared rows."""
    n = len(rows)
    calls = ((b, (shared.block(rows, np.arange(s, min(s + step, n))),))
             for b, s in enumerate(range(0, n, step)))
    parts = {b: encode_ids(got) for b, got in executor.map_tasks(block_row_ids, calls,
                                                                shared={"featurizer": featurizer})}
    return _concat_ids([parts[b] for b in range(len(parts))])
