"""Read raw rows from JSON, JSONL (optionally gzipped), CSV/TSV, Parquet and Hugging Face
datasets. Every row comes back as it is in the file (a dict), with its 1-based row number;
problems raise :class:`~tasksift.errors.DataError` naming the file and row."""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import DataError

#: File endings we read, mapped to the format name written back on output.
SUFFIX_FORMATS = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json.gz": "json",
    ".jsonl.gz": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
}
#: Keys under which a JSON object wraps its list of rows (BIG-bench, BBH, ...).
WRAPPER_KEYS = ("examples", "data", "rows", "instances", "train", "items", "records")


@dataclass
class RawRows:
    """Rows read from one source."""

    rows: list[Any]
    row_numbers: list[int]          # 1-based position in the file (line for JSONL)
    format: str                     # json | jsonl | csv | tsv | parquet | hf
    path: str                       # what the user named (file, folder or hub id)
    skipped: list[dict] = field(default_factory=list)   # {"file", "row", "reason"}
    header: bool = True             # csv/tsv: whether the file had a header line
    wrapper: dict | None = None     # json: the wrapping object (minus its row list) and its key
    json_safe: bool = True          # every value survives a JSON round trip unchanged
    texts: list[str] | None = None  # streamed JSON lines: each row's own JSON text


def file_format(path: Path) -> str | None:
    name = path.name.lower()
    for suf in sorted(SUFFIX_FORMATS, key=len, reverse=True):
        if name.endswith(suf):
            return SUFFIX_FORMATS[suf]
    return None


@contextlib.contextmanager
def _open_errors(path: Path) -> Iterator[None]:
    """Turn the OS errors of opening ``path`` into one-line DataErrors naming it."""
    try:
        yield
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise DataError("is a folder, expected a data file", file=str(path)) from None
    except PermissionError:
        raise DataError("permission denied", file=str(path)) from None


def _open_bytes(path: Path) -> bytes:
    with _open_errors(path):
        data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"not a valid gzip file ({e})", file=str(path)) from None
    return data


def _decode(data: bytes, path: Path, row: int | None = None) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if row is None:  # find the line of the bad byte
            row = data[:e.start].count(b"\n") + 1
            raise DataError(f"line {row} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start}); re-encode the file as UTF-8", file=str(path)) from None
        raise DataError(f"not valid UTF-8 (byte 0x{data[e.start]:02x}); re-encode the file as UTF-8",
                        file=str(path), row=row) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_json(path: Path) -> RawRows:
    text = _decode(_open_bytes(path), path)
    if not text.strip():
        raise DataError("file is empty", file=str(path))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        # A JSON-lines file with a .json name is common: try that before giving up.
        if e.msg == "Extra data":
            return read_jsonl(path, fmt="json")
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=str(path)) from None
    wrapper = None
    if isinstance(obj, dict):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), list)), None)
        if key is not None:
            wrapper = {"key": key, "rest": {k: v for k, v in obj.items() if k != key}}
            obj = obj[key]
        elif obj and all(isinstance(v, list) for v in obj.values()) and len({len(v) for v in obj.values()}) == 1:
            cols = list(obj)
            obj = [dict(zip(cols, vals)) for vals in zip(*obj.values())]  # columnar
            wrapper = {"key": None, "columnar": True}
        else:
            obj = [obj]
    if not isinstance(obj, list):
        raise DataError("expected a list of rows (or an object holding one under 'examples'/'data')",
                        file=str(path))
    return RawRows(rows=obj, row_numbers=list(range(1, len(obj) + 1)), format="json", path=str(path),
                   wrapper=wrapper)


def _jsonl_row(raw: bytes, path: Path, lineno: int, skip_bad: bool, skipped: list[dict]
               ) -> tuple[Any, str] | None:
    """One JSON line parsed, with its text; None for a blank line or (with ``skip_bad``) a bad
    one, which is recorded in ``skipped``."""
    if not raw.strip():
        return None
    try:
        line = _decode(raw, path, row=lineno)
        return json.loads(line), line
    except DataError as e:
        if not skip_bad:
            raise
        skipped.append({"file": str(path), "row": lineno, "reason": str(e).split(": ", 1)[-1]})
    except json.JSONDecodeError as e:
        if not skip_bad:
            raise DataError(f"malformed JSON line ({e.msg} at column {e.colno})", file=str(path),
                            row=lineno) from None
        skipped.append({"file": str(path), "row": lineno, "reason": f"malformed JSON ({e.msg})"})
    return None


def read_jsonl(path: Path, *, skip_bad: bool = False, fmt: str = "jsonl") -> RawRows:
    data = _open_bytes(path)
    rows, numbers, skipped = [], [], []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        parsed = _jsonl_row(raw, path, lineno, skip_bad, skipped)
        if parsed is not None:
            rows.append(parsed[0])
            numbers.append(lineno)
    return RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), skipped=skipped)


_HEADER_CELL = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .\-/]{0,63}$")


def looks_like_header(first: list[str], path: Path | str = "") -> bool:
    """Whether a CSV/TSV's first line is a header: every cell a short identifier. A header
    that repeats a name is still a header, but rows could not keep both columns, so it is a
    one-line DataError naming the name (before, it was read as a data row)."""
    names = [c.strip() for c in first]
    if not all(_HEADER_CELL.match(n) for n in names):
        return False
    seen: dict[str, int] = {}
    for i, n in enumerate(names, start=1):
        if n in seen:
            raise DataError(f"header repeats column name '{n}' (columns {seen[n]} and {i}); "
                            f"rename one of them", file=str(path), row=1)
        seen[n] = i
    return True


def read_delimited(path: Path, delimiter: str, header: bool | None = None) -> RawRows:
    """CSV/TSV. ``header=None`` guesses: a first line whose cells are all short, distinct
    identifiers is a header; otherwise columns are named ``column_1``, ``column_2``, ..."""
    text = _decode(_open_bytes(path), path)
    fmt = "tsv" if delimiter == "\t" else "csv"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter,
                        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
    try:
        table = [r for r in reader]
    except csv.Error as e:
        raise DataError(f"malformed {fmt.upper()}: {e}", file=str(path), row=reader.line_num) from None
    table = [r for r in table if any(c.strip() for c in r)]
    if not table:
        raise DataError("file is empty", file=str(path))
    first = table[0]
    if header is None:
        header = looks_like_header(first, path)
    cols = [c.strip() for c in first] if header else [f"column_{i + 1}" for i in range(len(first))]
    body = table[1:] if header else table
    rows, numbers = [], []
    for i, cells in enumerate(body, start=2 if header else 1):
        if len(cells) != len(cols):
            raise DataError(f"has {len(cells)} cells, expected {len(cols)}", file=str(path), row=i)
        rows.append(dict(zip(cols, cells)))
        numbers.append(i)
    return RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), header=header)


def read_parquet(path: Path) -> RawRows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError("file not found", file=str(path)) from None
    except Exception as e:
        raise DataError(f"not a readable Parquet file ({type(e).__name__}: {str(e).splitlines()[0]})",
                        file=str(path)) from None
    rows = table.to_pylist()
    return RawRows(rows=rows, row_numbers=list(range(1, len(rows) + 1)), format="parquet", path=str(path),
                   json_safe=arrow_schema_is_json_safe(table.schema))


def open_hf(obj: Any, name: str, split: str | None = None) -> Any:
    """The ``datasets.Dataset`` named by ``obj``: a ``Dataset``/``DatasetDict`` (``split``, or
    "train"), a ``save_to_disk`` folder or a hub id. Rows are not read."""
    import datasets

    if isinstance(obj, (str, Path)):
        p = Path(obj)
        try:
            if p.is_dir():
                obj = datasets.load_from_disk(str(p))
            else:
                obj = datasets.load_dataset(str(obj), split=split)
        except Exception as e:
            raise DataError(f"cannot load Hugging Face dataset ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})", file=name) from None
    if isinstance(obj, datasets.DatasetDict):
        want = split or ("train" if "train" in obj else None)
        if want is None or want not in obj:
            raise DataError(f"dataset has splits {sorted(obj)}; name one with --split", file=name)
        obj = obj[want]
    return obj


def read_hf(obj: Any, name: str, split: str | None = None) -> RawRows:
    """A ``datasets.Dataset``/``DatasetDict``, a ``save_to_disk`` folder or a hub id, read whole."""
    ds = open_hf(obj, name, split)
    rows = ds.to_list()
    return RawRows(rows=rows, row_numbers=list(range(1, len(rows) + 1)), format="hf", path=name,
                   json_safe=arrow_schema_is_json_safe(ds.data.schema))


def iter_hf(ds: Any, name: str, *, chunk_rows: int = 2048) -> Iterator[RawRows]:
    """Like :func:`read_hf` on an opened Dataset (:func:`open_hf`), streamed: RawRows of at
    most ``chunk_rows`` rows (at least one, maybe empty), each a contiguous ``select`` of
    the (memory-mapped) dataset turned into rows as ``Dataset.to_list`` does."""
    safe = arrow_schema_is_json_safe(ds.data.schema)
    n = len(ds)
    for s in range(0, max(n, 1), chunk_rows):
        rows = ds.select(range(s, min(n, s + chunk_rows))).to_list() if n else []
        yield RawRows(rows=rows, row_numbers=list(range(s + 1, s + len(rows) + 1)), format="hf", path=name,
                      json_safe=safe)


def arrow_type_is_json_safe(t: Any) -> bool:
    """Whether values of Arrow type ``t`` come back from ``to_pylist`` as JSON values that a
    JSON round trip leaves unchanged (no bytes, dates, decimals, maps, ...)."""
    import pyarrow as pa
    import pyarrow.types as pt

    if pt.is_string(t) or pt.is_large_string(t) or pt.is_boolean(t) or pt.is_null(t) or pt.is_integer(t) \
            or pt.is_float32(t) or pt.is_float64(t):
        return True
    if pt.is_list(t) or pt.is_large_list(t) or pt.is_fixed_size_list(t):
        return arrow_type_is_json_safe(t.value_type)
    if pt.is_struct(t):
        return all(arrow_type_is_json_safe(t.field(i).type) for i in range(t.num_fields))
    if isinstance(t, pa.DictionaryType):
        return arrow_type_is_json_safe(t.value_type)
    return False


def arrow_schema_is_json_safe(schema: Any) -> bool:
    return all(arrow_type_is_json_safe(f.type) for f in schema)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()
                              or (path / "dataset_dict.json").exists())


def read_file(path: Path, *, skip_bad: bool = False) -> RawRows:
    fmt = file_format(path)
    if fmt == "jsonl":
        return read_jsonl(path, skip_bad=skip_bad)
    if fmt == "json":
        return read_json(path)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "," if fmt == "csv" else "\t")
    if fmt == "parquet":
        return read_parquet(path)
    raise DataError(f"unsupported file type; use one of {', '.join(sorted(set(SUFFIX_FORMATS)))}",
                    file=str(path))


def iter_jsonl(path: Path, *, skip_bad: bool = False, fmt: str = "jsonl",
               chunk_rows: int = 2048) -> Iterator[RawRows]:
    """Like :func:`read_jsonl`, streamed: RawRows of at most ``chunk_rows`` rows each (at
    least one, maybe empty), with the same row numbers, errors and skipped-row reasons."""
    with _open_errors(path):
        f = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    with f:
        yield from _jsonl_chunks(f, path, skip_bad, fmt, chunk_rows)


def iter_jsonl_range(path: Path, start: int, end: int, *, skip_bad: bool = False,
                     chunk_rows: int = 2048) -> Iterator[RawRows]:
    """The JSON lines of an uncompressed ``path`` between byte offsets ``start`` and ``end``
    (both at the start of a line, or the file's end), as :func:`iter_jsonl` yields them but
    with row numbers counted from the range's first line (1). The range's line count is
    :func:`count_lines` of the same range."""
    with _open_errors(path):
        f = open(path, "rb")
    with f:
        f.seek(start)
        yield from _jsonl_chunks(_lines_until(f, end - start), path, skip_bad, "jsonl", chunk_rows)


def _lines_until(f: Any, size: int) -> Iterator[bytes]:
    """The lines of ``f`` in its next ``size`` bytes (which end at a line's end)."""
    left = size
    for raw in f:
        if left <= 0:
            return
        left -= len(raw)
        yield raw


def count_lines(path: Path, start: int, end: int) -> int:
    """How many lines (as iterating the file counts them) lie between byte offsets ``start``
    and ``end`` of ``path`` (both at a line's start or the file's end)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(left, READ_BYTES))
            if not block:
                break
            n += block.count(b"\n")
            last, left = block[-1:], left - len(block)
    return n + (last != b"\n")


def jsonl_split_points(path: Path, size: int) -> list[int]:
    """Byte offsets cutting ``path`` into ranges of about ``size`` bytes, each cut at a line's
    start: ``[0, ..., file size]``."""
    total = path.stat().st_size
    points = [0]
    with open(path, "rb") as f:
        while points[-1] + size < total:
            f.seek(points[-1] + size)
            f.readline()
            cut = f.tell()
            if cut >= total:
                break
            points.append(cut)
    return points + [total] if total else [0, 0]


def _jsonl_chunks(lines: Iterable[bytes], path: Path, skip_bad: bool, fmt: str, chunk_rows: int
                  ) -> Iterator[RawRows]:
    """RawRows of at most ``chunk_rows`` parsed ``lines`` (numbered from 1; at least one RawRows)."""
    rows, numbers, skipped, texts = [], [], [], []
    yielded = False
    for lineno, raw in enumerate(lines, start=1):
        parsed = _jsonl_row(raw[:-1] if raw.endswith(b"\n") else raw, path, lineno, skip_bad, skipped)
        if parsed is not None:
            rows.append(parsed[0])
            numbers.append(lineno)
            texts.append(parsed[1])
        if len(rows) >= chunk_rows:
            yield RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), skipped=skipped,
                          texts=texts)
            rows, numbers, skipped, texts, yielded = [], [], [], [], True
    if rows or skipped or not yielded:
        yield RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), skipped=skipped, texts=texts)


#: Bytes read at a time by the streaming CSV/TSV and JSON-array readers.
READ_BYTES = 1 << 20
_JSON_WS = b" \t\n\r"           # what JSON counts as whitespace
_NON_WS = re.compile(r"[^ \t\n\r]")


def _chunked(raw: RawRows, chunk_rows: int) -> Iterator[RawRows]:
    """A RawRows read whole, as RawRows of at most ``chunk_rows`` rows (at least one)."""
    rows, numbers = raw.rows, raw.row_numbers
    for s in range(0, max(len(rows), 1), chunk_rows):
        yield replace(raw, rows=rows[s:s + chunk_rows], row_numbers=numbers[s:s + chunk_rows],
                      skipped=raw.skipped if s == 0 else [])


def _line_blocks(f: Any) -> Iterator[bytes]:
    """The bytes of binary file ``f`` in blocks of about :data:`READ_BYTES` that end with a
    newline (the last one maybe not), so that each block decodes and splits into lines alone."""
    parts: list[bytes] = []   # the line in progress (joined once it ends: long lines stay linear)
    while True:
        block = f.read(READ_BYTES)
        if not block:
            if parts:
                yield b"".join(parts)
            return
        cut = block.rfind(b"\n") + 1
        if not cut:
            parts.append(block)
            continue
        parts.append(block[:cut])
        yield b"".join(parts)
        parts = [block[cut:]] if cut < len(block) else []


def _delimited_chunks(path: Path, delimiter: str, header: bool | None, chunk_rows: int) -> Iterator[RawRows]:
    fmt = "tsv" if delimiter == "\t" else "csv"
    with _open_errors(path):
        f = open(path, "rb")

    def lines() -> Iterator[str]:
        for i, block in enumerate(_line_blocks(f)):
            text = block.decode("utf-8")
            yield from io.StringIO(text[1:] if i == 0 and text.startswith("\ufeff") else text, newline="")

    with f:
        reader = csv.reader(lines(), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        cols: list[str] | None = None
        number = 0          # non-blank rows so far: the whole-file reader's row numbers
        rows, numbers = [], []
        yielded = False
        try:
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                number += 1
                if cols is None:
                    if header is None:
                        header = looks_like_header(cells, path)
                    cols = [c.strip() for c in cells] if header else [f"column_{i + 1}" for i in range(len(cells))]
                    if header:
                        continue
                if len(cells) != len(cols):
                    raise DataError(f"has {len(cells)} cells, expected {len(cols)}", file=str(path), row=number)
                rows.append(dict(zip(cols, cells)))
                numbers.append(number)
                if len(rows) >= chunk_rows:
                    yield RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), header=bool(header))
                    rows, numbers, yielded = [], [], True
        except csv.Error as e:
            raise DataError(f"malformed {fmt.upper()}: {e}", file=str(path), row=reader.line_num) from None
        if cols is None:
            raise DataError("file is empty", file=str(path))
        if rows or not yielded:
            yield RawRows(rows=rows, row_numbers=numbers, format=fmt, path=str(path), header=bool(header))


def iter_delimited(path: Path, delimiter: str, header: bool | None = None, *,
                   chunk_rows: int = 2048) -> Iterator[RawRows]:
    """Like :func:`read_delimited`, streamed: the file is decoded and parsed a block of lines
    at a time and comes back as RawRows of at most ``chunk_rows`` rows (at least one, maybe
    empty), with the same header guess and row numbers. On any problem the whole-file reader
    is run to name it, so the message is the one it has always been (a file with several
    problems reports the one the whole-file reader finds first)."""
    try:
        yield from _delimited_chunks(path, delimiter, header, chunk_rows)
    except (DataError, UnicodeDecodeError) as e:
        read_delimited(path, delimiter, header)
        if isinstance(e, DataError):
            raise
        raise DataError(f"not valid UTF-8 ({e})", file=str(path)) from None


def iter_parquet(path: Path, *, chunk_rows: int = 2048) -> Iterator[RawRows]:
    """Like :func:`read_parquet`, streamed with ``ParquetFile.iter_batches``: RawRows of at
    most ``chunk_rows`` rows (at least one, maybe empty). A file that cannot be read is
    reported as :func:`read_parquet` reports it."""
    import pyarrow.parquet as pq

    n = 0
    try:
        pf = pq.ParquetFile(path)
        safe = arrow_schema_is_json_safe(pf.schema_arrow)
        for batch in pf.iter_batches(batch_size=chunk_rows):
            rows = batch.to_pylist()
            if rows:
                yield RawRows(rows=rows, row_numbers=list(range(n + 1, n + len(rows) + 1)), format="parquet",
                              path=str(path), json_safe=safe)
                n += len(rows)
    except Exception as e:
        read_parquet(path)   # raises the whole-file reader's message for this file
        raise DataError(f"not a readable Parquet file ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})",
                        file=str(path)) from None
    if n == 0:
        yield RawRows(rows=[], row_numbers=[], format="parquet", path=str(path), json_safe=safe)


class _NotAnArray(Exception):
    """The JSON file's first value is not an array (an object, a wrapper, JSON lines...)."""


class _JsonText:
    """The text of a binary file, decoded a block at a time; ``buf[pos:]`` is what is unread."""

    def __init__(self, f: Any) -> None:
        self.f, self.decoder = f, codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof, self.started = "", 0, False, False

    def fill(self) -> bool:
        """Append the next block (at least as long as what is unread); False at end of file."""
        if self.eof:
            return False
        block = self.f.read(max(READ_BYTES, len(self.buf) - self.pos))
        self.eof = not block
        text = self.decoder.decode(block, final=self.eof)
        if not self.started and text:
            self.started, text = True, text[1:] if text.startswith("\ufeff") else text
        self.buf, self.pos = self.buf[self.pos:] + text, 0
        return True

    def next_char(self) -> str:
        """The next non-whitespace character (not consumed); "" at end of file."""
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self.fill():
                return ""


def _json_array_items(f: Any) -> Iterator[Any]:
    """The items of the JSON array that is binary file ``f``, each parsed by ``json``'s own
    decoder (so values are exactly those of ``json.loads``). Raises :class:`_NotAnArray`
    before yielding anything when the file is not an array, and ValueError (UnicodeDecodeError,
    JSONDecodeError) when it is malformed or followed by more data."""
    text, decoder = _JsonText(f), json.JSONDecoder()
    if text.next_char() != "[":
        raise _NotAnArray
    text.pos += 1
    if text.next_char() == "]":
        text.pos += 1
    else:
        while True:
            text.next_char()
            while True:
                try:
                    item, end = decoder.raw_decode(text.buf, text.pos)
                except json.JSONDecodeError:
                    if text.fill():
                        continue   # the item runs past the block
                    raise
                if end == len(text.buf) and text.fill():
                    continue       # a number may go on in the next block
                break
            text.pos = end
            yield item
            c = text.next_char()
            text.pos += 1
            if c == "]":
                break
            if c != ",":
                raise ValueError(f"expected ',' or ']', got {c!r}")
    if text.next_char():
        raise ValueError("extra data after the array")


def _ends_with_bracket(path: Path) -> bool:
    """Whether the last non-whitespace byte of the file is ``]``."""
    with _open_errors(path), open(path, "rb") as f:
        end = f.seek(0, 2)
        while end > 0:
            start = max(0, end - 4096)
            f.seek(start)
            tail = f.read(end - start).rstrip(_JSON_WS)
            if tail:
                return tail.endswith(b"]")
            end = start
    return False


def iter_json(path: Path, *, chunk_rows: int = 2048) -> Iterator[RawRows]:
    """Like :func:`read_json`, streamed where the file is one JSON array (the usual shape of a
    big file): its items are parsed one at a time and come back as RawRows of at most
    ``chunk_rows`` rows (at least one, maybe empty). Everything else is read whole by
    :func:`read_json` (an object wrapping its rows, columnar or single-row objects, JSON lines
    named .json, gzipped files): its wrapper key or columns are only known once the whole object
    is read. A malformed file is reported by :func:`read_json`, in its words; an array followed
    by more data, which :func:`read_json` reads as JSON lines, is an error here."""
    if path.name.lower().endswith(".gz") or not _ends_with_bracket(path):
        yield from _chunked(read_json(path), chunk_rows)
        return
    with _open_errors(path):
        f = open(path, "rb")
    rows: list[Any] = []
    n = 0
    with f:
        try:
            for item in _json_array_items(f):
                rows.append(item)
                if len(rows) >= chunk_rows:
                    yield RawRows(rows=rows, row_numbers=list(range(n + 1, n + len(rows) + 1)), format="json",
                                  path=str(path))
                    n += len(rows)
                    rows = []
        except _NotAnArray:
            yield from _chunked(read_json(path), chunk_rows)
            return
        except ValueError as e:
            read_json(path)   # raises the whole-file reader's message for a malformed file
            raise DataError(f"a JSON array followed by more data ({e}); a file of JSON lines should be "
                            f"named .jsonl", file=str(path)) from None
    if rows or n == 0:
        yield RawRows(rows=rows, row_numbers=list(range(n + 1, n + len(rows) + 1)), format="json", path=str(path))


def _iter_jsonl_checked(path: Path, skip_bad: bool, chunk_rows: int) -> Iterator[RawRows]:
    """:func:`iter_jsonl`; for a gzipped file, a problem is named by :func:`read_jsonl` (a
    damaged stream is found only where it is reached, the whole-file reader names it first)."""
    if not path.name.lower().endswith(".gz"):
        yield from iter_jsonl(path, skip_bad=skip_bad, chunk_rows=chunk_rows)
        return
    try:
        yield from iter_jsonl(path, skip_bad=skip_bad, chunk_rows=chunk_rows)
    except (DataError, OSError, EOFError) as e:
        read_jsonl(path, skip_bad=skip_bad)
        if isinstance(e, DataError):
            raise
        raise DataError(f"not a valid gzip file ({e})", file=str(path)) from None


def iter_file_chunks(path: Path, *, skip_bad: bool = False, chunk_rows: int = 2048) -> Iterator[RawRows]:
    """The rows of a data file as RawRows of at most ``chunk_rows`` rows (at least one, maybe
    empty), the same rows, row numbers and errors as :func:`read_file`. JSON lines, CSV/TSV,
    Parquet and JSON arrays are streamed, JSON lines also gzipped (see :func:`iter_json` for
    the JSON files read whole)."""
    fmt = file_format(path)
    if fmt == "jsonl":
        yield from _iter_jsonl_checked(path, skip_bad, chunk_rows)
    elif fmt == "json":
        yield from iter_json(path, chunk_rows=chunk_rows)
    elif fmt in ("csv", "tsv"):
        yield from iter_delimited(path, "," if fmt == "csv" else "\t", chunk_rows=chunk_rows)
    elif fmt == "parquet":
        yield from iter_parquet(path, chunk_rows=chunk_rows)
    else:
        yield from _chunked(read_file(path, skip_bad=skip_bad), chunk_rows)


def data_files(folder: Path) -> Iterator[Path]:
    """Data files below ``folder`` (sorted; hidden files and unknown endings skipped)."""
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts) \
                and file_format(p) is not None:
            yield p
