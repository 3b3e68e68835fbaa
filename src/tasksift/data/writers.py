"""Write a selected subset back in the input's own format and layout, plus score columns.

- one input file -> ``selected.<same ext>`` with the original rows untouched (same keys,
  same order of keys) and ``tasksift_*`` score columns appended; a wrapped JSON file
  (``{"examples": [...]}``) keeps its wrapper; a headerless TSV/CSV stays headerless with
  score cells appended in the order the manifest lists.
- a Hugging Face dataset -> ``selected/`` (``save_to_disk``).
- a folder of several files -> ``selected.jsonl`` (each row as in its file, plus
  ``tasksift_source``).
- with ``export`` -> every row rebuilt from its normalised Example in one training layout
  (:mod:`tasksift.data.export`), jsonl (or json, parquet), plus the same score columns.
All writes are atomic (a temporary file renamed into place) and stream the subset a batch at
a time from the pool (CSV/TSV and Parquet take two passes: column names/types, then rows); only
a column-wise JSON wrapper and a Hugging Face dataset hold the subset's rows at once.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path
from ..errors import DataError
from .export import export_format, export_row
from .loading import LoadedData

OUTPUT_FORMATS = ("json", "jsonl", "csv", "tsv", "parquet", "hf")


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Fail early (before any expensive work) if ``out_dir`` cannot be written."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".tasksift-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise DataError(f"output folder is not writable ({e.strerror or e})", file=str(out)) from None
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


#: Selected rows turned into output rows per step (bounded memory, whatever the subset size).
WRITE_BATCH = 8192


def score_rows(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray],
               first_rank: int = 1) -> list[dict]:
    """Per selected row: its score cells (``tasksift_id``, ``tasksift_rank`` and the named
    columns, each prefixed ``tasksift_`` unless it already is). Ranks start at ``first_rank``."""
    idx = np.asarray(indices, dtype=np.int64)
    ids = data.pool.id_list(idx)
    sources = data.pool.sources_at(idx)
    out = []
    for rank, (i, id_, source) in enumerate(zip(idx, ids, sources), start=first_rank):
        cells = {"tasksift_id": id_, "tasksift_rank": rank}
        for name, col in columns.items():
            key = name if name.startswith("tasksift_") else f"tasksift_{name}"
            cells[key] = _plain(col[int(i)])
        if source is not None:
            cells["tasksift_source"] = source
        out.append(cells)
    return out


def _merged(raw: Any, cells: dict) -> dict:
    row = dict(raw) if isinstance(raw, Mapping) else {"row": raw}
    for k, v in cells.items():
        row[k] = v
    return row


def output_rows(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray],
                batch: int = WRITE_BATCH, export: str | None = None) -> Iterator[list[dict]]:
    """The output rows (original row, or the example in the row layout ``export`` (see
    :mod:`tasksift.data.export`), + score cells) of ``indices``, in that order, a batch at a
    time; only that batch's Examples are built."""
    idx = np.asarray(indices, dtype=np.int64)
    for s in range(0, len(idx), batch):
        part = idx[s:s + batch]
        exs = data.pool.examples(part)
        cells = score_rows(data, part, columns, first_rank=s + 1)
        if export is None:
            yield [_merged(ex.raw, c) for ex, c in zip(exs, cells)]
        else:
            yield [{**export_row(ex, export, data.path), **c} for ex, c in zip(exs, cells)]


_ROWS_MARK = "\u0000tasksift-rows\u0000"


def _json_rows_document(head_obj: Any, batches: Iterator[list[dict]], f: Any) -> None:
    """Write ``head_obj`` as ``json.dumps(indent=2)`` would, with the list of rows streamed
    in place of the one value equal to the marker string."""
    text = json.dumps(head_obj, ensure_ascii=False, indent=2, default=_plain)
    mark = json.dumps(_ROWS_MARK, ensure_ascii=False)
    at = text.index(mark)
    line_start = text.rfind("\n", 0, at) + 1
    depth = (len(text[line_start:at]) - len(text[line_start:at].lstrip(" "))) // 2
    f.write(text[:at])
    pad = "  " * (depth + 1)
    first = True
    for rows in batches:
        for r in rows:
            item = json.dumps(r, ensure_ascii=False, indent=2, default=_plain).replace("\n", "\n" + pad)
            f.write(("[\n" if first else ",\n") + pad + item)
            first = False
    f.write("[]" if first else "\n" + "  " * depth + "]")
    f.write(text[at + len(mark):] + "\n")


def _csv_keys(batches: Iterator[list[dict]]) -> list[str]:
    keys: dict[str, None] = {}
    for rows in batches:
        for r in rows:
            for k in r:
                keys.setdefault(k, None)
    return list(keys)


def _parquet_schema(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray],
                    export: str | None = None) -> Any:
    """The schema ``pa.Table.from_pylist`` would infer for all output rows (names from the
    first row, each column's type unified over every batch)."""
    import pyarrow as pa

    names: list[str] | None = None
    schemas = []
    for rows in output_rows(data, indices, columns, export=export):
        names = names if names is not None else list(rows[0])
        schemas.append(pa.table({k: pa.array([r.get(k) for r in rows]) for k in names}).schema)
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


def write_subset(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray],
                 out_dir: str | os.PathLike, fmt: str | None = None,
                 export: str | None = None) -> tuple[Path, list[str]]:
    """Write the subset, streaming it a batch at a time to a temporary file renamed into
    place; returns (path written, score column names in order). ``export``: a row layout of
    :data:`tasksift.data.export.ROW_BUILDERS` to write every row in (default: each row as
    read); it is written as jsonl unless ``fmt`` names json or parquet."""
    out = check_writable(out_dir)
    if export is not None:
        fmt = export_format(fmt, export)
    fmt = fmt or ("jsonl" if data.format == "mixed" else data.format)
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format '{fmt}'; choose from {', '.join(OUTPUT_FORMATS)}")
    indices = np.asarray(indices, dtype=np.int64)
    score_cols = list(score_rows(data, indices[:1], columns)[0]) if len(indices) else []
    single = next(iter(data.sources.values())) if len(data.sources) == 1 and export is None else None
    header = single.header if single is not None and fmt == data.format else True
    rows = (lambda: output_rows(data, indices, columns, export=export))
    if fmt == "jsonl":
        path = out / "selected.jsonl"
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for batch in rows():
                f.write("".join(json.dumps(r, ensure_ascii=False, default=_plain) + "\n" for r in batch))
    elif fmt == "json":
        path = out / "selected.json"
        wrapper = single.wrapper if single is not None and data.format == "json" else None
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            if wrapper and wrapper.get("columnar"):   # column-wise: needs every row at once
                all_rows = [r for batch in rows() for r in batch]
                keys = list(all_rows[0]) if all_rows else []
                obj = {k: [r.get(k) for r in all_rows] for k in keys}
                f.write(json.dumps(obj, ensure_ascii=False, indent=2, default=_plain) + "\n")
            else:
                head: Any = {**wrapper["rest"], wrapper["key"]: _ROWS_MARK} if wrapper and wrapper.get("key") \
                    else _ROWS_MARK
                _json_rows_document(head, rows(), f)
    elif fmt in ("csv", "tsv"):
        path = out / f"selected.{fmt}"
        keys = _csv_keys(rows())
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="," if fmt == "csv" else "\t", lineterminator="\n",
                           quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                           escapechar=None if fmt == "csv" else "\\")
            if header:
                w.writerow(keys)
            for batch in rows():
                for r in batch:
                    w.writerow([_cell(r.get(k)) for k in keys])
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out / "selected.parquet"
        schema = _parquet_schema(data, indices, columns, export)
        with atomic_path(path, suffix=".parquet") as tmp:
            with pq.ParquetWriter(str(tmp), schema) as w:
                for batch in rows():
                    w.write_table(pa.table({f.name: pa.array([r.get(f.name) for r in batch], type=f.type)
                                            for f in schema}, schema=schema))
                if not len(indices):
                    w.write_table(schema.empty_table())
    else:  # hf: datasets builds its own Arrow table from the subset's rows
        import datasets
        import shutil

        path = out / "selected"
        tmp = out / ".selected.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        datasets.Dataset.from_list([r for batch in rows() for r in batch]).save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path, score_cols


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(_plain(v))
