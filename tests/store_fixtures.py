"""A toy featurizer for the feature-store and pipeline tests (module level, so Ray workers and
subprocesses can import it)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def toy_values(rows) -> dict[str, np.ndarray]:
    """The features ToyFeaturizer computes for integer rows: a 2-column vector (NaN for rows
    divisible by 7), an int column and a bool column."""
    x = np.asarray(rows, dtype=np.float64)
    vec = np.stack([x, x ** 2], axis=1).astype(np.float32)
    vec[np.asarray(rows) % 7 == 0] = np.nan
    return {"vec": vec, "n": np.asarray(rows, dtype=np.int64) * 3, "odd": np.asarray(rows) % 2 == 1}


class ToyFeaturizer:
    """Rows are integers; ``log``: a file each computed block's rows are appended to;
    ``die_on``: the first worker to see that row kills its own process (once: ``marker``);
    ``sleep``: seconds per block."""

    kind = "toy"
    accelerator = None

    def __init__(self, version: int = 1, log: str | None = None, die_on: int | None = None,
                 marker: str | None = None, sleep: float = 0.0) -> None:
        self.version, self.log, self.die_on, self.marker, self.sleep = version, log, die_on, marker, sleep

    def cache_key(self) -> dict:
        return {"v": self.version}

    def row_id(self, row) -> str:
        return f"r{row}"

    def block_item(self, row):
        return int(row)

    def compute_block(self, items: list) -> dict[str, np.ndarray]:
        if self.die_on is not None and self.die_on in items and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        if self.sleep:
            time.sleep(self.sleep)
        if self.log:
            with open(self.log, "a") as f:
                f.write("".join(f"{x}\n" for x in items))
        return toy_values(items)


def logged_rows(log) -> list[int]:
    p = Path(log)
    return sorted(int(x) for x in p.read_text().split()) if p.exists() else []


def corrupt_file(path: Path, how: str) -> None:
    """Damage a segment file: ``truncated`` (half of it), ``empty``, ``bitflip`` (one bit in the
    data region) or ``header`` (one bit in the header)."""
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "bitflip":
        data[-5] ^= 0x10                      # inside the data region, header intact
        path.write_bytes(bytes(data))
    elif how == "header":
        data[30] ^= 0x01
        path.write_bytes(bytes(data))
