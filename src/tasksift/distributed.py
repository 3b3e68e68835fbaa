"""Scaling out on Ray: feature extraction by actors that each hold one model copy, and
neighbour search over a sharded candidate set.

Features: the missing rows of a :class:`~tasksift.features.cache.FeatureCache` are split into
blocks; a pool of actors (one per GPU when there are GPUs, else ``num_workers`` CPU actors)
builds the model once each and computes blocks. Each actor writes its block straight into the
row-level cache as one atomic shard (the cache folder must be on a filesystem all workers
see), so a worker that dies loses at most the block it was on (Ray restarts the actor and
retries the block), and a driver that dies loses nothing already written: rerunning computes
only what is missing. Results equal the in-process backend's (same model, same rows).

Neighbour search: candidates are split into shards of at most ``shard_rows`` rows; each shard
is searched exactly (faiss Flat) by a Ray task and the per-shard top-k lists are merged. A
worker holds one shard (``shard_rows x d x 4`` bytes) plus its top-k lists
(``M x k x 12`` bytes), whatever the number of candidates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError
from .features.cache import FeatureCache


def ray_init(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Connect to a Ray cluster (``address``, else ``$RAY_ADDRESS``), or start a local one."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'tasksift[ray]'") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                  "include_dashboard": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    return ray


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


def _make_worker_class(ray: Any, num_gpus: float):
    @ray.remote(num_gpus=num_gpus, max_restarts=3, max_task_retries=3)
    class FeatureWorker:
        def __init__(self, factory: Callable[[], Callable[[list], Any]], cache_root: str, kind: str,
                     config: dict) -> None:
            self.compute = factory()
            self.cache = FeatureCache(cache_root, kind, config)

        def run(self, ids: list[str], items: list) -> int:
            out = self.compute(items)
            if not isinstance(out, dict):
                out = {"values": out}
            self.cache.write_shard(ids, out)
            return len(ids)

        def pid(self) -> int:
            return os.getpid()

    return FeatureWorker


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
        ray = ray_init(address)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = num_workers or (gpus if gpus else max(1, int(ray.cluster_resources().get("CPU", 1))))
        Worker = _make_worker_class(ray, 1 if gpus else 0)
        workers = [Worker.remote(factory, str(cache.root), cache.kind, cache.config) for _ in range(n)]
        from ray.util import ActorPool

        pool = ActorPool(workers)
        blocks = [todo[s:s + block_size] for s in range(0, len(todo), block_size)]
        bar = tqdm(total=len(todo), desc=f"{desc} (ray x{n})", unit="row", disable=not progress,
                   dynamic_ncols=True)
        try:
            for done in pool.map_unordered(
                    lambda w, blk: w.run.remote([ids[p] for p in blk], [items[p] for p in blk]), blocks):
                bar.update(done)
        finally:
            bar.close()
            for w in workers:
                ray.kill(w)
        cache._index = None  # shards were written by other processes: re-read the folder
        cache._shard_data.clear()
    return cache.load(list(ids))


# ---------------------------------------------------------------------------------------
# Sharded neighbour search
# ---------------------------------------------------------------------------------------
def _search_shard(query: np.ndarray, shard: Any, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Search one shard: an array, or ``(path of a .npy file, start, end)`` read by the worker."""
    import faiss

    if isinstance(shard, tuple):
        path, s, e = shard
        shard = np.load(path, mmap_mode="r")[s:e]
    x = np.ascontiguousarray(shard, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1]) if metric == "l2" else faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(np.ascontiguousarray(query, dtype=np.float32), min(k, len(x)))


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray, int]], k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard (distances, local ids, offset) into the global top-k per query.
    Ties are broken by lower global id, as a single exact index would."""
    D = np.concatenate([d for d, _, _ in parts], axis=1)
    I = np.concatenate([np.where(i >= 0, i + off, -1) for _, i, off in parts], axis=1)
    key = D if metric == "l2" else -D
    key = np.where(I < 0, np.inf, key)
    order = np.lexsort((I, key), axis=1)[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def sharded_search(query: np.ndarray, candidates: "np.ndarray | str | os.PathLike", k: int, *, metric: str = "l2",
                   shard_rows: int = 250_000, backend: str = "local", address: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of each query among ``candidates`` (squared L2 distances
    for ``metric="l2"``, inner products for ``"ip"``), searched shard by shard.

    ``candidates`` may be an array, a ``np.memmap``, or the path of a ``.npy`` file, which
    each worker memory-maps and reads only its own shard of (the path must be visible to
    every worker). ``backend="ray"`` searches the shards in parallel Ray tasks.
    """
    path = None
    if isinstance(candidates, (str, os.PathLike)):
        path = os.fspath(candidates)
        candidates = np.load(path, mmap_mode="r")
    if metric not in ("l2", "ip"):
        raise ConfigError(f"metric must be 'l2' or 'ip', got {metric!r}")
    n = len(candidates)
    k = min(k, n)
    bounds = [(s, min(n, s + shard_rows)) for s in range(0, n, shard_rows)]
    q = np.ascontiguousarray(query, dtype=np.float32)
    if backend == "local":
        parts = [(*_search_shard(q, candidates[s:e], k, metric), s) for s, e in bounds]
    elif backend == "ray":
        ray = ray_init(address)
        task = ray.remote(_search_shard)
        q_ref = ray.put(q)
        futures = [task.remote(q_ref, (path, s, e) if path else np.asarray(candidates[s:e], dtype=np.float32),
                               k, metric) for s, e in bounds]
        parts = [(*ray.get(f), s) for f, (s, _) in zip(futures, bounds)]
    else:
        raise ConfigError(f"backend must be 'local' or 'ray', got {backend!r}")
    return merge_topk(parts, k, metric)
