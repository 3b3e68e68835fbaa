"""Loading a JSON-lines pool with the executor's workers, so the driver parses no row.

With an executor whose workers are other processes (Ray), :func:`load_jsonl_spread` cuts each
plain ``.jsonl`` file of the input into byte ranges at line starts; each worker parses one
range (JSON, layout, content ids) into a part of Arrow record batches and the rows' columns
(:meth:`~tasksift.data.pool.PoolWriter.save_part`) under a folder the workers and the driver
share; the driver joins the parts' columns in file order, shifting each part's row numbers by
the lines before its range, and the parts' Arrow files become the pool's storage as written
(:class:`~tasksift.data.pool.PoolParts`: never decoded here; one open file per part). The driver itself reads only each file's first
batch of rows, to detect its layout as the in-process loader does.

The result equals :func:`~tasksift.data.loading.load_examples` run in the process (same rows,
ids, row numbers, layouts, sources) because it is used only where the two cannot differ: every
row is good. A range with a bad row, an input that is not plain JSON lines, a layout that
needs the whole file (``oasst_tree``) or that the first batch cannot tell, a ``limit``, an
empty input, or parts the driver cannot see (workers on other machines writing to a folder
that is not shared) make :func:`load_jsonl_spread` return None, and the caller loads in the
process instead: bad-row errors, skipped-row reports and messages stay exactly those of the
in-process loader.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import DataError
from .layouts import detect_layout, normalise, parse_fields
from .pool import BATCH_ROWS, Pool, PoolParts, PoolWriter
from .readers import RawRows, count_lines, file_format, iter_jsonl, iter_jsonl_range, jsonl_split_points

#: bytes of a JSON-lines file per worker task
RANGE_BYTES = 64 << 20


@dataclass
class SpreadLoad:
    """What :func:`load_jsonl_spread` read: the pool, and per file (by its name) its
    RawRows header (rows dropped) and layout; ``multi``: the input was a folder."""

    pool: Pool
    sources: dict[str, RawRows]
    layouts: dict[str, str]
    multi: bool


def spreadable_files(source: Any) -> tuple[list[tuple[str, Path]], bool] | None:
    """``([(name, path)], multi)`` of a path whose data files are all plain (uncompressed)
    JSON lines, in the order the in-process loader reads them (``name``: the file's path below
    the folder; ``multi``: a folder), else None."""
    from .readers import data_files, is_hf_folder

    if not isinstance(source, (str, os.PathLike)):
        return None
    p = Path(source)
    if p.is_file():
        files, multi = [(p.name, p)], False
    elif p.is_dir() and not is_hf_folder(p):
        files, multi = [(str(f.relative_to(p)), f) for f in data_files(p)], True
    else:
        return None
    if not files or any(file_format(f) != "jsonl" or f.name.lower().endswith(".gz") for _, f in files):
        return None
    return files, multi


def _file_layout(path: Path, layout: str, fields: dict, role: str) -> tuple[str, RawRows] | None:
    """(layout, the first chunk) as the in-process loader settles them on the first batch of
    ``path``, or None when it would need more rows (or the batch has a bad row)."""
    chunks = iter_jsonl(path, chunk_rows=BATCH_ROWS)
    try:
        first = next(chunks)
    finally:
        chunks.close()
    lay = layout
    if layout == "auto":
        if not any(isinstance(r, Mapping) for r in first.rows) and not fields:
            return None
        lay = detect_layout(first, fields, role) if first.rows else "auto"
    return (None if lay in ("auto", "oasst_tree") else (lay, first))


def parse_range(path: str, start: int, end: int, dest: str, layout: str, fields: dict, source: str | None,
                role: str, detected: bool) -> dict:
    """(Run by a worker.) Parse the lines ``start:end`` of ``path`` with ``layout`` into a pool
    part at ``dest``: ``{"rows", "lines", "layouts"}``, or ``{"bad": True}`` when a row is bad
    (the caller then loads in-process, which reports it)."""
    writer = PoolWriter(Path(dest).parent)
    used: set[str] = set()
    try:
        for chunk in iter_jsonl_range(Path(path), start, end, chunk_rows=BATCH_ROWS):
            exs, _ = normalise(chunk, layout, fields, source=source, skip_bad=False, role=role, detected=detected)
            used.update(ex.layout for ex in exs)
            writer.add(exs, chunk.texts)   # no row was skipped: exs and texts are aligned
    except DataError:
        writer.abort()
        return {"bad": True}
    except BaseException:
        writer.abort()
        raise
    rows = writer.save_part(dest)
    return {"rows": rows, "lines": count_lines(Path(path), start, end), "layouts": sorted(used)}


def load_jsonl_spread(source: Any, executor: Any, *, layout: str = "auto", fields: Any = None,
                      role: str = "pool", pool_dir: str | os.PathLike | None = None,
                      range_bytes: int | None = None) -> SpreadLoad | None:
    """``source`` loaded by ``executor``'s workers, or None where the in-process loader must
    run (see the module doc). The parts go to a temporary folder under ``pool_dir`` (default:
    the system temp folder), which workers on other machines must share; ``range_bytes``:
    bytes per task (default :data:`RANGE_BYTES`)."""
    found = spreadable_files(source)
    if found is None:
        return None
    files, multi = found
    try:
        fields_d = parse_fields(fields, role)
        heads = [_file_layout(path, layout, fields_d, role) for _, path in files]
    except DataError:
        return None
    if any(h is None for h in heads):
        return None
    work = Path(tempfile.mkdtemp(prefix="tasksift-load-", dir=pool_dir))
    parts = PoolParts(work)
    try:
        calls, where = [], []
        for f, ((rel, path), (lay, _)) in enumerate(zip(files, heads)):
            cuts = jsonl_split_points(path, max(1, int(range_bytes or RANGE_BYTES)))
            for a, b in zip(cuts[:-1], cuts[1:]):
                key = len(calls)
                calls.append((key, (str(path), a, b, str(work / f"part-{key}"), lay, fields_d,
                                    rel if multi else None, role, layout == "auto")))
                where.append(f)
        done: dict[int, dict] = {}
        lines = [0] * len(files)
        used: list[set[str]] = [set() for _ in files]
        nxt = 0
        for key, res in executor.map_tasks(parse_range, iter(calls)):
            done[key] = res
            if res.get("bad"):
                return None
            while nxt in done:   # append the parts in file order as they arrive
                res, f = done.pop(nxt), where[nxt]
                part = work / f"part-{nxt}"
                if not (part / "rows.arrow").exists():   # a worker on another machine, no shared folder
                    print(f"tasksift: warning: the workers' parts of {source} are not visible here under "
                          f"{work}; loading it in this process (set the pool folder to one every worker "
                          f"shares)", file=sys.stderr, flush=True)
                    return None
                parts.add(part, row_offset=lines[f])
                lines[f] += res["lines"]
                used[f].update(res["layouts"])
                nxt += 1
        if parts.count == 0:
            return None
        pool = parts.finish()   # the parts' Arrow files, as the workers wrote them, hold the rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    layouts = {rel: (u.pop() if len(u) == 1 else "mixed") if u else lay
               for (rel, _), u, (lay, _) in zip(files, used, heads)}
    sources = {rel: replace(first, rows=[], row_numbers=[], skipped=[], texts=None)
               for (rel, _), (_, first) in zip(files, heads)}
    return SpreadLoad(pool, sources, layouts, multi)
