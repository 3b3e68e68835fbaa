"""Scaling out on Ray: feature extraction by actors that each hold one model copy.

Features: the missing rows of a :class:`~tasksift.features.cache.FeatureCache` are split into
blocks; a pool of actors (one per GPU when there are GPUs, else ``num_workers`` CPU actors)
builds the model once each and computes blocks. Each actor writes its block straight into the
row-level cache as one atomic shard (the cache folder must be on a filesystem all workers
see), so a worker that dies loses at most the block it was on (Ray restarts the actor and
retries the block), and a driver that dies loses nothing already written: rerunning computes
only what is missing. Results equal the in-process backend's (same model, same rows).

(Sharded neighbour search and TSDS on Ray run through the executor seam:
:func:`tasksift.neighbors.sharded_search`, :func:`tasksift.methods.tsds.tsds` with an
executor from :func:`tasksift.exec.make_executor`.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .features.cache import FeatureCache


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster or start a local one (see :func:`tasksift.exec.ray.ray_init`)."""
    from .exec.ray import ray_init as _init

    return _init(address, num_cpus)


# ---------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedWorkerFactory:
    """Builds, inside a worker, the function that embeds a list of texts."""

    config: Any  # EmbedConfig

    def __call__(self) -> Callable[[list], np.ndarray]:
        from .features.embed import Embedder

        emb = Embedder(self.config, cache_dir=None, progress=False)
        return emb.encode_texts


@dataclass(frozen=True)
class CachingWorkerFactory:
    """Wraps a worker factory so that each worker writes its block into the feature cache
    itself (one atomic shard) and returns only the row count."""

    factory: Any
    cache_root: str
    kind: str
    config: Any

    def __call__(self) -> Callable[[tuple[list, list]], int]:
        compute = self.factory()
        cache = FeatureCache(self.cache_root, self.kind, self.config)

        def run(block: tuple[list, list]) -> int:
            ids, items = block
            out = compute(items)
            if not isinstance(out, dict):
                out = {"values": out}
            cache.write_shard(ids, out)
            return len(ids)

        return run


def get_or_compute_ray(cache: FeatureCache, ids: Sequence[str], items: Sequence[Any],
                       factory: Callable[[], Callable[[list], Any]], *, block_size: int = 1024,
                       num_workers: int | None = None, progress: bool = True, desc: str = "features",
                       address: str | None = None) -> dict[str, np.ndarray]:
    """Like :meth:`FeatureCache.get_or_compute`, with the missing rows computed by Ray actors.

    ``items[i]`` is what the worker function needs for ``ids[i]`` (e.g. the text to embed);
    ``factory()`` runs once per actor and returns ``f(items) -> array | dict of arrays``.
    """
    from tqdm.auto import tqdm

    first: dict[str, int] = {}
    for pos, ex_id in enumerate(ids):
        first.setdefault(ex_id, pos)
    uniq = list(first)
    todo = [first[uniq[i]] for i in cache.missing(uniq)]
    if todo:
        from .exec.ray import RayExecutor

        ex = RayExecutor(workers=num_workers, address=address)
        blocks = ((b, ([ids[p] for p in todo[s:s + block_size]], [items[p] for p in todo[s:s + block_size]]))
                  for b, s in enumerate(range(0, len(todo), block_size)))
        worker = CachingWorkerFactory(factory, str(cache.root), cache.kind, cache.config)
        bar = tqdm(total=len(todo), desc=f"{desc} (ray)", unit="row", disable=not progress,
                   dynamic_ncols=True)
        try:
            for _, done in ex.map_blocks(worker, blocks, accelerator="gpu"):
                bar.update(done)
        finally:
            bar.close()
        cache._index = None  # shards were written by other processes: re-read the folder
        cache._shard_data.clear()
    return cache.load(list(ids))
