"""The one model fingerprint of every featurizer: a string that changes when the weights change."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: files whose contents make up a model folder's fingerprint
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model")
ADAPTER_FILE_SUFFIXES = (".safetensors", ".bin", ".json")


def file_digest(path: str | os.PathLike, limit: int = 1 << 20) -> str:
    """sha1 of a file's size plus its first and last ``limit`` bytes (cheap for big weights)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
        if size > limit:
            f.seek(-limit, os.SEEK_END)
            h.update(f.read(limit))
    return h.hexdigest()[:16]


def model_fingerprint(path: str, weights_file: str | None = None, adapter: str | None = None) -> str:
    """Fingerprint of the model at ``path`` (a local folder, or a hub id used as is):
    ``weights_file`` (e.g. a ``.gguf`` in that folder) alone when given, else a digest of
    every weight/config file in the folder; plus the ``adapter`` folder's files."""
    p = Path(path)
    parts: list[str] = []
    if p.exists():
        if weights_file:
            parts.append(f"{weights_file}:{file_digest(p / weights_file)}")
        else:
            parts.append(p.name)
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix in MODEL_FILE_SUFFIXES:
                    parts.append(f"{f.relative_to(p)}:{file_digest(f)}")
    else:
        parts.append(path)
    if adapter:
        parts.append("adapter")
        for f in sorted(Path(adapter).glob("*")):
            if f.is_file() and f.suffix in ADAPTER_FILE_SUFFIXES:
                parts.append(f"{f.name}:{file_digest(f)}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20] + ":" + Path(path).name
