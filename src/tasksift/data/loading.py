"""``load_examples``: one entry point from a path, folder, hub id or Dataset to a :class:`Pool`.

Every input is read in batches of rows (JSON lines, CSV/TSV, Parquet, JSON arrays and Hugging
Face datasets are streamed; see :func:`~tasksift.data.readers.iter_file_chunks` for the few
files read whole) and each batch's Examples go straight into an Arrow-backed
:class:`~tasksift.data.pool.Pool`, so neither the whole input's rows nor a whole-input list of
Example objects is ever held.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import DataError
from .example import Example
from .layouts import detect_layout, normalise, parse_fields
from .pool import BATCH_ROWS, NotJsonSafe, Pool, PoolWriter, as_pool
from .readers import (RawRows, arrow_schema_is_json_safe, data_files, is_hf_folder, iter_file_chunks,
                      iter_hf, open_hf)
from .spread_load import load_jsonl_spread


class LoadedData:
    """Examples loaded from one input (a :class:`Pool`), plus what is needed to write a
    subset back. ``sources`` holds, per file, its :class:`RawRows` header (format, CSV header,
    JSON wrapper) with the rows themselves dropped."""

    def __init__(self, examples: Pool | Sequence[Example], path: str, format: str, layout: str,
                 skipped: list[dict] | None = None, sources: dict[str, RawRows] | None = None,
                 layouts: dict[str, str] | None = None) -> None:
        self.pool = as_pool(examples)
        self.path, self.format, self.layout = path, format, layout
        self.skipped = list(skipped or [])
        self.sources = dict(sources or {})
        self.layouts = dict(layouts or {})

    @property
    def examples(self) -> Pool:
        """The pool (a lazy ``Sequence[Example]``)."""
        return self.pool

    def __len__(self) -> int:
        return len(self.pool)

    def fingerprint(self) -> str:
        """Hash of the example ids in order: equal for equal content, whatever the file."""
        return self.pool.fingerprint()

    def counts_by_source(self, depth: int = 1) -> dict[str, int]:
        """Rows per source (first ``depth`` path parts of each file below the folder)."""
        out: dict[str, int] = {}
        for src, n in self.pool.source_counts().items():
            key = "/".join(Path(src).parts[:depth]) if src else Path(self.path).name
            out[key] = out.get(key, 0) + n
        return dict(sorted(out.items()))


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not Path(s).suffix and not s.startswith((".", "/"))


@dataclass
class _Input:
    """One file (or dataset) of the input: where its rows come from."""

    rel: str
    chunks: Iterator[RawRows]
    json_safe: bool = True


def _hf_input(rel: str, obj: Any, split: str | None) -> _Input:
    ds = open_hf(obj, rel, split)
    return _Input(rel=rel, chunks=iter_hf(ds, rel, chunk_rows=BATCH_ROWS),
                  json_safe=arrow_schema_is_json_safe(ds.data.schema))


def _inputs(source: Any, role: str, split: str | None, skip_bad: bool) -> tuple[str, list[_Input], bool]:
    """(name, inputs, multi): the files of ``source``, not read yet where they can stream."""
    if not isinstance(source, (str, os.PathLike)):
        try:
            import datasets
        except ImportError:  # pragma: no cover
            datasets = None
        if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
            return "<dataset>", [_hf_input("<dataset>", source, split)], False
    p = Path(source)
    name = str(source)
    if p.is_dir() and is_hf_folder(p):
        return name, [_hf_input(name, p, split)], False
    if p.is_dir():
        files = list(data_files(p))
        if not files:
            raise DataError(f"{role} folder has no data files (.json, .jsonl, .csv, .tsv, .parquet)", file=name)
        return name, [_Input(rel=str(f.relative_to(p)),
                             chunks=iter_file_chunks(f, skip_bad=skip_bad, chunk_rows=BATCH_ROWS))
                      for f in files], True
    if p.exists():
        return name, [_Input(rel=p.name, chunks=iter_file_chunks(p, skip_bad=skip_bad, chunk_rows=BATCH_ROWS))], False
    if _looks_like_hub_id(str(source)):
        return name, [_hf_input(name, str(source), split)], False
    raise DataError(f"{role} file not found", file=name)


def _merge(a: RawRows, b: RawRows) -> RawRows:
    texts = a.texts + b.texts if a.texts is not None and b.texts is not None else None
    return replace(b, rows=a.rows + b.rows, row_numbers=a.row_numbers + b.row_numbers,
                   skipped=a.skipped + b.skipped, texts=texts)


def _raw_texts(exs: list[Example], chunk: RawRows) -> list[str] | None:
    """Each example's row as the JSON text it was read from (JSON lines), else None."""
    if chunk.texts is None:
        return None
    by_row = dict(zip(chunk.row_numbers, chunk.texts))
    return [by_row[ex.row] for ex in exs]


def _file_examples(chunks: Iterator[RawRows], layout: str, fields: Any, source: str | None, skip_bad: bool,
                   read_skipped: list, row_skipped: list, info: dict, role: str = "pool"
                   ) -> Iterator[tuple[list[Example], list[str] | None]]:
    """Examples of one file, a batch at a time. The layout is detected on the first batch that
    holds an object row (as on the whole file); ``oasst_tree`` threads need the whole file, so
    its rows are gathered first. ``info`` receives the file's RawRows header and layout."""
    fields_d = parse_fields(fields, role)
    held: RawRows | None = None
    lay = layout
    used: set[str] = set()
    for chunk in chunks:
        info["raw"] = chunk
        read_skipped.extend(chunk.skipped)
        chunk = replace(chunk, skipped=[])
        if lay == "auto":
            held = chunk if held is None else _merge(held, chunk)
            if not any(isinstance(r, Mapping) for r in held.rows) and not fields_d:
                continue
            lay = detect_layout(held, fields_d, role) if held.rows else "auto"
            if lay == "auto":
                continue
            chunk, held = held, None
        if lay == "oasst_tree":
            chunk = chunk if held is None else _merge(held, chunk)
            held = chunk
            continue
        exs, got = normalise(chunk, lay, fields_d, source=source, skip_bad=skip_bad, role=role,
                             detected=layout == "auto")
        used.add(got)
        row_skipped.extend(chunk.skipped)
        yield exs, _raw_texts(exs, chunk)
    if held is not None and held.rows:   # oasst_tree, or rows that never held an object
        exs, got = normalise(held, lay, fields_d, source=source, skip_bad=skip_bad, role=role,
                             detected=layout == "auto")
        used.add(got)
        row_skipped.extend(held.skipped)
        yield exs, _raw_texts(exs, held)
    info["layout"] = (used.pop() if len(used) == 1 else "mixed") if used else lay


def load_examples(source: Any, *, layout: str = "auto", fields: Mapping[str, str] | str | None = None,
                  skip_bad: bool = False, split: str | None = None, limit: int | None = None,
                  role: str = "input", pool_dir: str | os.PathLike | None = None,
                  executor: Any = None) -> LoadedData:
    """Load examples from a JSON/JSONL/CSV/TSV/Parquet file, a folder of such files (each
    file's layout detected on its own; ``source`` = path below the folder), a
    ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, or a hub id.

    ``layout``: "auto" or a layout name (see :mod:`tasksift.data.layouts`); ``fields``
    names the fields when detection cannot (``prompt=question,response=answer``).
    ``skip_bad``: skip malformed rows (counted in ``.skipped``) instead of failing.
    ``limit``: keep the first ``limit`` examples. ``role`` ("pool"/"target") is used in
    error messages only. ``pool_dir``: where the pool's Arrow file is written while loading
    (default: the system temp folder; the file is removed as soon as it is opened).
    ``executor``: one whose workers are other processes (Ray) parses plain JSON-lines files
    there, a byte range per task, so this process parses none of their rows (see
    :mod:`tasksift.data.spread_load`: same result; inputs it cannot spread load here).
    """
    if executor is not None and not executor.in_process and limit is None:
        got = load_jsonl_spread(source, executor, layout=layout, fields=fields, role=role, pool_dir=pool_dir)
        if got is not None:
            return LoadedData(got.pool, path=str(source), format="mixed" if got.multi else "jsonl",
                              layout=next(iter(got.layouts.values())) if len(set(got.layouts.values())) == 1
                              else "mixed", skipped=[], sources=got.sources, layouts=got.layouts)
    name, inputs, multi = _inputs(source, role, split, skip_bad)
    in_memory = not all(i.json_safe for i in inputs)
    try:
        return _load(name, inputs, multi, layout, fields, skip_bad, limit, role, in_memory, pool_dir)
    except NotJsonSafe:
        name, inputs, multi = _inputs(source, role, split, skip_bad)
        return _load(name, inputs, multi, layout, fields, skip_bad, limit, role, True, pool_dir)


def _load(name: str, inputs: list[_Input], multi: bool, layout: str, fields: Any, skip_bad: bool,
          limit: int | None, role: str, in_memory: bool, pool_dir: Any) -> LoadedData:
    writer = None if in_memory else PoolWriter(pool_dir)
    kept: list[Example] = []
    count = 0
    skipped: list[dict] = []
    layouts: dict[str, str] = {}
    sources: dict[str, RawRows] = {}
    try:
        for inp in inputs:
            read_skipped: list[dict] = []
            row_skipped: list[dict] = []
            info: dict[str, Any] = {}
            full = False
            for exs, texts in _file_examples(inp.chunks, layout, fields, inp.rel if multi else None, skip_bad,
                                      read_skipped, row_skipped, info, role):
                if limit is not None and count + len(exs) >= limit:
                    exs, full = exs[:limit - count], True
                    texts = None if texts is None else texts[:len(exs)]
                if writer is not None and not info["raw"].json_safe:
                    raise NotJsonSafe(inp.rel)   # e.g. dates or bytes in a Parquet file: keep rows in memory
                count += len(exs)
                if writer is None:
                    kept.extend(exs)
                else:
                    writer.add(exs, texts)
                if full:
                    break
            layouts[inp.rel] = info.get("layout", layout)
            if "raw" in info:
                sources[inp.rel] = replace(info["raw"], rows=[], row_numbers=[], skipped=[], texts=None)
            skipped.extend(read_skipped + row_skipped)
            if full:
                break
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if count == 0:
        if writer is not None:
            writer.abort()
        raise DataError(f"{role} is empty (no usable rows)" + (f"; {len(skipped)} rows skipped" if skipped else ""),
                        file=name)
    pool = Pool.from_examples(kept) if writer is None else writer.finish()
    fmts = {r.format for r in sources.values()}
    return LoadedData(pool, path=name, format=fmts.pop() if len(fmts) == 1 and not multi else "mixed",
                      layout=next(iter(layouts.values())) if len(set(layouts.values())) == 1 else "mixed",
                      skipped=skipped, sources=sources, layouts=layouts)
