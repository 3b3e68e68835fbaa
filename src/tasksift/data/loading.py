"""``load_examples``: one entry point from a path, folder, hub id or Dataset to Examples."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import DataError
from .example import Example
from .layouts import normalise
from .readers import RawRows, data_files, is_hf_folder, read_file, read_hf


@dataclass
class LoadedData:
    """Examples loaded from one input, plus what is needed to write a subset back."""

    examples: list[Example]
    path: str
    format: str                       # json | jsonl | csv | tsv | parquet | hf | mixed
    layout: str                       # the layout, or "mixed" for a folder of several
    skipped: list[dict] = field(default_factory=list)
    sources: dict[str, RawRows] = field(default_factory=dict)   # per file, for writing back
    layouts: dict[str, str] = field(default_factory=dict)        # per file

    def __len__(self) -> int:
        return len(self.examples)

    def fingerprint(self) -> str:
        """Hash of the example ids in order: equal for equal content, whatever the file."""
        h = hashlib.sha1()
        for ex in self.examples:
            h.update(ex.id.encode())
        return h.hexdigest()[:16]

    def counts_by_source(self, depth: int = 1) -> dict[str, int]:
        """Rows per source (first ``depth`` path parts of each file below the folder)."""
        out: dict[str, int] = {}
        for ex in self.examples:
            key = "/".join(Path(ex.source).parts[:depth]) if ex.source else Path(self.path).name
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items()))


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not Path(s).suffix and not s.startswith((".", "/"))


def load_examples(source: Any, *, layout: str = "auto", fields: Mapping[str, str] | str | None = None,
                  skip_bad: bool = False, split: str | None = None, limit: int | None = None,
                  role: str = "input") -> LoadedData:
    """Load examples from a JSON/JSONL/CSV/TSV/Parquet file, a folder of such files (each
    file's layout detected on its own; ``source`` = path below the folder), a
    ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder, or a hub id.

    ``layout``: "auto" or a layout name (see :mod:`tasksift.data.layouts`); ``fields``
    names the fields when detection cannot (``prompt=question,response=answer``).
    ``skip_bad``: skip malformed rows (counted in ``.skipped``) instead of failing.
    ``limit``: keep the first ``limit`` examples. ``role`` ("pool"/"target") is used in
    error messages only.
    """
    try:
        import datasets

        hf_types: tuple = (datasets.Dataset, datasets.DatasetDict)
    except ImportError:  # pragma: no cover
        hf_types = ()
    if hf_types and isinstance(source, hf_types):
        raws = {"<dataset>": read_hf(source, "<dataset>", split)}
        name = "<dataset>"
    else:
        p = Path(source)
        name = str(source)
        if p.is_dir() and is_hf_folder(p):
            raws = {name: read_hf(p, name, split)}
        elif p.is_dir():
            files = list(data_files(p))
            if not files:
                raise DataError(f"{role} folder has no data files (.json, .jsonl, .csv, .tsv, .parquet)", file=name)
            raws = {str(f.relative_to(p)): read_file(f, skip_bad=skip_bad) for f in files}
        elif p.exists():
            raws = {p.name: read_file(p, skip_bad=skip_bad)}
        elif _looks_like_hub_id(str(source)):
            raws = {name: read_hf(str(source), name, split)}
        else:
            raise DataError(f"{role} file not found", file=name)
    examples: list[Example] = []
    skipped: list[dict] = []
    layouts: dict[str, str] = {}
    multi = len(raws) > 1 or (Path(name).is_dir() and not is_hf_folder(Path(name)))
    for rel, raw in raws.items():
        exs, lay = normalise(raw, layout, fields, source=rel if multi else None, skip_bad=skip_bad, role=role)
        layouts[rel] = lay
        skipped.extend(raw.skipped)
        examples.extend(exs)
        if limit is not None and len(examples) >= limit:
            examples = examples[:limit]
            break
    if not examples:
        raise DataError(f"{role} is empty (no usable rows)" + (f"; {len(skipped)} rows skipped" if skipped else ""),
                        file=name)
    fmts = {r.format for r in raws.values()}
    return LoadedData(examples=examples, path=name, format=fmts.pop() if len(fmts) == 1 and not multi else "mixed",
                      layout=next(iter(layouts.values())) if len(set(layouts.values())) == 1 else "mixed",
                      skipped=skipped, sources=raws, layouts=layouts)
