"""A row-level, on-disk feature cache keyed by (example id, featurizer config).

Layout: ``<root>/<kind>-<config hash>/`` holds ``config.json`` and shard files
``shard-<uuid>.npz``; each shard stores the example ids it covers and one array per named
feature field, row-aligned. Shards are written atomically after every ``flush_every``
computed rows, so an interrupted run keeps everything flushed so far and the next run only
computes the rest. Two runs that share a cache never overwrite each other's shards.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path, write_json

ComputeFn = Callable[[Sequence[int]], "Mapping[str, np.ndarray] | np.ndarray"]


def default_cache_root() -> Path:
    """``$TASKSIFT_CACHE`` if set, else ``~/.cache/tasksift``."""
    env = os.environ.get("TASKSIFT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tasksift"


def config_hash(config: Mapping) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


class FeatureCache:
    """Cache of per-example features for one featurizer configuration.

    ``config`` must hold everything that changes the features (model fingerprint, text
    rendering, max length, ...). Values are arrays whose first axis is the example.
    """

    def __init__(self, root: str | os.PathLike | None, kind: str, config: Mapping) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.kind = kind
        self.config = dict(config)
        self.dir = self.root / f"{kind}-{config_hash(self.config)}"
        self._index: dict[str, tuple[Path, int]] | None = None
        self._shard_data: dict[Path, dict[str, np.ndarray]] = {}

    # ---- reading -----------------------------------------------------------------------
    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.npz")) if self.dir.exists() else []

    def _load_index(self) -> dict[str, tuple[Path, int]]:
        if self._index is None:
            index: dict[str, tuple[Path, int]] = {}
            for shard in self._shards():
                data = self._read_shard(shard)
                for row, ex_id in enumerate(data["__ids__"].tolist()):
                    index.setdefault(ex_id, (shard, row))
            self._index = index
        return self._index

    def _read_shard(self, shard: Path) -> dict[str, np.ndarray]:
        if shard not in self._shard_data:
            with np.load(shard, allow_pickle=False) as z:
                self._shard_data[shard] = {k: z[k] for k in z.files}
        return self._shard_data[shard]

    def missing(self, ids: Sequence[str]) -> list[int]:
        """Positions in ``ids`` that have no cached value."""
        index = self._load_index()
        return [i for i, ex_id in enumerate(ids) if ex_id not in index]

    def __len__(self) -> int:
        return len(self._load_index())

    def load(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached fields for ``ids``, row-aligned (KeyError if one is missing)."""
        index = self._load_index()
        if not ids:
            return {}
        locs = [index[i] for i in ids]
        fields = [k for k in self._read_shard(locs[0][0]) if k != "__ids__"]
        out: dict[str, np.ndarray] = {}
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, (shard, row) in enumerate(locs):
            by_shard.setdefault(shard, []).append((pos, row))
        for name in fields:
            first = self._read_shard(locs[0][0])[name]
            arr = np.empty((len(ids),) + first.shape[1:], dtype=first.dtype)
            for shard, pairs in by_shard.items():
                pos, rows = (np.array(x) for x in zip(*pairs))
                arr[pos] = self._read_shard(shard)[name][rows]
            out[name] = arr
        return out

    # ---- writing -----------------------------------------------------------------------
    def write_shard(self, ids: Sequence[str], values: Mapping[str, np.ndarray]) -> Path:
        """Atomically write one shard of computed rows."""
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg = self.dir / "config.json"
        if not cfg.exists():
            write_json(cfg, {"kind": self.kind, "config": self.config})
        path = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        arrays = {k: np.asarray(v) for k, v in values.items()}
        for k, v in arrays.items():
            if len(v) != len(ids):
                raise ValueError(f"field {k!r} has {len(v)} rows for {len(ids)} ids")
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, __ids__=np.asarray(list(ids), dtype=str), **arrays)
        if self._index is not None:
            for row, ex_id in enumerate(ids):
                self._index.setdefault(ex_id, (path, row))
            self._shard_data[path] = {"__ids__": np.asarray(list(ids), dtype=str), **arrays}
        return path

    def get_or_compute(self, ids: Sequence[str], compute: ComputeFn, *, flush_every: int = 1024,
                       progress: bool = True, desc: str | None = None) -> dict[str, np.ndarray]:
        """Return features for ``ids``, computing (and caching) only the missing ones.

        ``compute(positions)`` gets positions into ``ids`` (at most ``flush_every`` at a time,
        in order) and returns an array or a dict of arrays, row-aligned with ``positions``.
        A bare array is stored under the field name ``"values"``.
        """
        from tqdm.auto import tqdm

        # Duplicate ids are computed once.
        first_pos: dict[str, int] = {}
        for pos, ex_id in enumerate(ids):
            first_pos.setdefault(ex_id, pos)
        unique_ids = list(first_pos)
        todo = [first_pos[unique_ids[i]] for i in self.missing(unique_ids)]
        if todo:
            bar = tqdm(total=len(todo), desc=desc or f"{self.kind} features", unit="row",
                       disable=not progress, dynamic_ncols=True)
            try:
                for start in range(0, len(todo), flush_every):
                    chunk = todo[start:start + flush_every]
                    vals = compute(chunk)
                    if not isinstance(vals, Mapping):
                        vals = {"values": vals}
                    self.write_shard([ids[p] for p in chunk], vals)
                    bar.update(len(chunk))
            finally:
                bar.close()
        return self.load(list(ids))
