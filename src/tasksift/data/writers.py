"""Write a selected subset back in the input's own format and layout, plus score columns.

- one input file -> ``selected.<same ext>`` with the original rows untouched (same keys,
  same order of keys) and ``tasksift_*`` score columns appended; a wrapped JSON file
  (``{"examples": [...]}``) keeps its wrapper; a headerless TSV/CSV stays headerless with
  score cells appended in the order the manifest lists.
- a Hugging Face dataset -> ``selected/`` (``save_to_disk``).
- a folder of several files -> ``selected.jsonl`` (each row as in its file, plus
  ``tasksift_source``).
All writes are atomic.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import atomic_path, write_text
from ..errors import DataError
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


def score_rows(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray]) -> list[dict]:
    """Per selected row: its score cells (``tasksift_id``, ``tasksift_rank`` and the named
    columns, each prefixed ``tasksift_`` unless it already is)."""
    out = []
    for rank, i in enumerate(indices, start=1):
        ex = data.examples[int(i)]
        cells = {"tasksift_id": ex.id, "tasksift_rank": rank}
        for name, col in columns.items():
            key = name if name.startswith("tasksift_") else f"tasksift_{name}"
            cells[key] = _plain(col[int(i)])
        if ex.source is not None:
            cells["tasksift_source"] = ex.source
        out.append(cells)
    return out


def write_subset(data: LoadedData, indices: Sequence[int], columns: Mapping[str, np.ndarray],
                 out_dir: str | os.PathLike, fmt: str | None = None) -> tuple[Path, list[str]]:
    """Write the subset; returns (path written, score column names in order)."""
    out = check_writable(out_dir)
    fmt = fmt or ("jsonl" if data.format == "mixed" else data.format)
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"unknown output format '{fmt}'; choose from {', '.join(OUTPUT_FORMATS)}")
    scores = score_rows(data, indices, columns)
    score_cols = list(scores[0]) if scores else []
    raws = [data.examples[int(i)].raw for i in indices]
    single = next(iter(data.sources.values())) if len(data.sources) == 1 else None
    header = single.header if single is not None and fmt == data.format else True

    def merged(raw: Any, cells: dict) -> dict:
        row = dict(raw) if isinstance(raw, Mapping) else {"row": raw}
        for k, v in cells.items():
            row[k] = v
        return row

    rows = [merged(r, c) for r, c in zip(raws, scores)]
    if fmt == "jsonl":
        path = out / "selected.jsonl"
        write_text(path, "".join(json.dumps(r, ensure_ascii=False, default=_plain) + "\n" for r in rows))
    elif fmt == "json":
        path = out / "selected.json"
        wrapper = single.wrapper if single is not None and data.format == "json" else None
        if wrapper and wrapper.get("key"):
            obj: Any = {**wrapper["rest"], wrapper["key"]: rows}
        elif wrapper and wrapper.get("columnar"):
            keys = list(rows[0]) if rows else []
            obj = {k: [r.get(k) for r in rows] for k in keys}
        else:
            obj = rows
        write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=_plain) + "\n")
    elif fmt in ("csv", "tsv"):
        path = out / f"selected.{fmt}"
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="," if fmt == "csv" else "\t", lineterminator="\n",
                       quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE,
                       escapechar=None if fmt == "csv" else "\\")
        if header:
            w.writerow(keys)
        for r in rows:
            w.writerow([_cell(r.get(k)) for k in keys])
        write_text(path, buf.getvalue())
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out / "selected.parquet"
        with atomic_path(path, suffix=".parquet") as tmp:
            pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:  # hf
        import datasets

        path = out / "selected"
        tmp = out / ".selected.tmp"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path, score_cols


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    return str(_plain(v))
