"""The on-disk feature store: checksummed, memory-mappable segments plus an SQLite id index.

:class:`FeatureStore` is what featurizers read and write through
(:func:`tasksift.features.pipeline.compute_features`); see :mod:`tasksift.store.store`.
"""
from __future__ import annotations

from .segment import CorruptSegment
from .store import FeatureStore, StoreSpec, config_hash, default_cache_root, warn

__all__ = ["CorruptSegment", "FeatureStore", "StoreSpec", "config_hash", "default_cache_root", "warn"]
