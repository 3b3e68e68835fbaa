"""One segment of a feature store: the rows of one computed block in a single checksummed file.

File layout (all integers little-endian)::

    b"TSFSEG01" | header length (u64) | header crc32 (u32) | header (JSON, UTF-8)
    | zero padding to a multiple of 64 | data region

The header lists the segment's row count, its ids (a fixed-width byte array) and every field
(dtype, per-row shape, byte offset and length inside the data region); the data region
holds the arrays back to back, each C-ordered and 64-byte aligned, so a field can be
memory-mapped and a few rows read without touching the rest. ``data_crc`` is the crc32 of the
whole data region: :func:`verify` streams it (page cache, not resident memory) and a
truncated, emptied or bit-flipped file fails it.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

MAGIC = b"TSFSEG01"
SUFFIX = ".seg"
_PREFIX = struct.Struct("<8sQI")
_ALIGN = 64
_CHUNK = 1 << 22


class CorruptSegment(Exception):
    """A segment file that is truncated, empty, or fails its checksum (message: why)."""


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _encode_ids(ids: Sequence[str]) -> np.ndarray:
    raw = [str(i).encode("utf-8") for i in ids]
    width = max([len(r) for r in raw] + [1])
    return np.array(raw, dtype=f"S{width}")


def write_segment(path: str | os.PathLike, ids: Sequence[str], fields: Mapping[str, np.ndarray]) -> int:
    """Write ``ids`` and the row-aligned ``fields`` to ``path`` (not atomically: the caller
    writes a temporary name and renames it). Returns the file size."""
    n = len(ids)
    arrays = {"__ids__": _encode_ids(ids)}
    for name, value in fields.items():
        arr = np.ascontiguousarray(value)
        if arr.ndim == 0 or len(arr) != n:
            raise ValueError(f"field {name!r} has {0 if arr.ndim == 0 else len(arr)} rows for {n} ids")
        if arr.dtype.hasobject:
            raise ValueError(f"field {name!r} has dtype object; store fixed-width arrays")
        arrays[str(name)] = arr
    offset, entries = 0, {}
    for name, arr in arrays.items():
        entries[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape[1:]), "offset": offset,
                         "nbytes": int(arr.nbytes)}
        offset = _aligned(offset + arr.nbytes)
    crc = 0
    for name, arr in arrays.items():
        crc = zlib.crc32(memoryview(arr).cast("B"), crc) if arr.nbytes else crc
        pad = entries[name]["offset"] + arr.nbytes
        crc = zlib.crc32(b"\0" * (_aligned(pad) - pad), crc)
    header = json.dumps({"rows": n, "fields": entries, "data_bytes": offset, "data_crc": crc},
                        sort_keys=True).encode()
    start = _aligned(_PREFIX.size + len(header))
    with open(path, "wb") as f:
        f.write(_PREFIX.pack(MAGIC, len(header), zlib.crc32(header)))
        f.write(header)
        f.write(b"\0" * (start - _PREFIX.size - len(header)))
        for name, arr in arrays.items():
            if arr.nbytes:
                f.write(memoryview(arr).cast("B"))
            pad = entries[name]["offset"] + arr.nbytes
            f.write(b"\0" * (_aligned(pad) - pad))
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


@dataclass(frozen=True)
class SegmentHeader:
    """What a segment's header says: row count, fields (name -> dtype, row shape, offset,
    nbytes inside the data region), where the data region starts and its checksum."""

    path: Path
    rows: int
    fields: dict
    data_start: int
    data_bytes: int
    data_crc: int

    @property
    def field_names(self) -> list[str]:
        return [k for k in self.fields if k != "__ids__"]

    def field_spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        e = self.fields[name]
        return np.dtype(e["dtype"]), tuple(e["shape"])


def read_header(path: str | os.PathLike) -> SegmentHeader:
    """Parse and check a segment's header (size, magic, header checksum, layout); raises
    :class:`CorruptSegment`."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise CorruptSegment("empty file")
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise CorruptSegment(f"truncated ({size} bytes)")
        magic, hlen, hcrc = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise CorruptSegment("not a feature segment (bad magic bytes)")
        if hlen > size:
            raise CorruptSegment(f"truncated ({size} bytes)")
        header = f.read(hlen)
    if len(header) != hlen or zlib.crc32(header) != hcrc:
        raise CorruptSegment("header checksum mismatch")
    try:
        h = json.loads(header)
        start = _aligned(_PREFIX.size + hlen)
        out = SegmentHeader(path, int(h["rows"]), dict(h["fields"]), start, int(h["data_bytes"]),
                            int(h["data_crc"]))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptSegment(f"unreadable header ({e})") from None
    if size != out.data_start + out.data_bytes:
        raise CorruptSegment(f"truncated ({size} of {out.data_start + out.data_bytes} bytes)")
    return out


def verify(header: SegmentHeader) -> None:
    """Stream the data region and compare its crc32 with the header's (raises
    :class:`CorruptSegment`). Reads with ``read``, so the file's pages are not charged to
    this process's resident memory."""
    crc, left = 0, header.data_bytes
    with open(header.path, "rb") as f:
        f.seek(header.data_start)
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise CorruptSegment("truncated")
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
    if crc != header.data_crc:
        raise CorruptSegment("data checksum mismatch")


def read_field(header: SegmentHeader, name: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` (all if None) of field ``name``, copied out of a memory map (only the
    pages holding those rows are touched)."""
    dtype, shape = header.field_spec(name)
    e = header.fields[name]
    if header.rows == 0:
        return np.empty((0, *shape), dtype=dtype)
    mm = np.memmap(header.path, dtype=dtype, mode="r", offset=header.data_start + e["offset"],
                   shape=(header.rows, *shape))
    out = np.array(mm if rows is None else mm[np.asarray(rows, dtype=np.int64)])
    del mm
    return out


def read_ids(header: SegmentHeader) -> list[str]:
    """The segment's ids, in row order."""
    return [b.decode("utf-8") for b in read_field(header, "__ids__").tolist()]
