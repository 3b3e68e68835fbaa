"""The streaming readers against the whole-file ones: CSV/TSV, Parquet, JSON arrays and
Hugging Face datasets give the same rows, row numbers, header/wrapper facts and error
messages, in chunks of bounded size, without reading the whole file first."""
from __future__ import annotations

import json

import pytest

import tasksift.data.readers as readers
from tasksift.data import load_examples
from tasksift.data.layouts import normalise
from tasksift.data.readers import iter_file_chunks, iter_hf, open_hf, read_file, read_hf
from tasksift.errors import DataError

from test_pool import as_tuples, tiny_batches, whole_file_examples  # noqa: F401  (fixture)


@pytest.fixture()
def small_reads(monkeypatch):
    """7-byte reads, so that every value, line, escape and UTF-8 sequence is cut somewhere."""
    monkeypatch.setattr(readers, "READ_BYTES", 7)


def joined(chunks, chunk_rows):
    """(rows, row numbers, skipped, formats, headers, wrappers, json_safe) of a chunk stream,
    checking every chunk is within ``chunk_rows``."""
    chunks = list(chunks)
    assert chunks and all(len(c.rows) <= chunk_rows for c in chunks)
    assert all(len(c.rows) == len(c.row_numbers) for c in chunks)
    return ([r for c in chunks for r in c.rows], [n for c in chunks for n in c.row_numbers],
            [s for c in chunks for s in c.skipped], {c.format for c in chunks}, {c.header for c in chunks},
            {json.dumps(c.wrapper) for c in chunks}, {c.json_safe for c in chunks})


def whole(raw):
    return (raw.rows, raw.row_numbers, raw.skipped, {raw.format}, {raw.header}, {json.dumps(raw.wrapper)},
            {raw.json_safe})


def message(fn):
    with pytest.raises(DataError) as e:
        fn()
    return str(e.value)


TRICKY = [
    {"instruction": "Brackets ] [ } { and \"quotes\", commas", "input": "", "output": "caf\u00e9 \u4e2d\u6587 \U0001f600"},
    {"instruction": "escapes \\\" \\\\ \\n \\u00e9", "input": "a\nb", "output": "x"},
    {"instruction": "numbers", "input": "", "output": "y", "n": 12345678901234567890123, "f": 1.5e-300,
     "neg": -0.0, "nested": [[1, 2, {"a": [3]}], {}], "t": True, "z": None},
    {"instruction": "lone surrogate \ud800 kept", "input": "", "output": "z"},
    {"instruction": "last", "input": " ", "output": "1"},
]


@pytest.mark.parametrize("style", ["compact", "indent", "one_per_line", "bom_crlf"])
def test_json_array_streams_the_same_rows(tmp_path, small_reads, style):
    rows = TRICKY * 3
    if style == "compact":
        text = json.dumps(rows, separators=(",", ":"))
    elif style == "indent":
        text = json.dumps(rows, indent=2)
    elif style == "one_per_line":
        text = "[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n\n"
    else:
        text = "\ufeff \r\n[" + " ,\r\n ".join(json.dumps(r, ensure_ascii="\ud800" in r["instruction"]) for r in rows) + "]\r\n"
    p = tmp_path / "rows.json"
    p.write_text(text, encoding="utf-8")
    p.write_bytes(p.read_bytes().replace(b"1.5e-300", b"NaN", 1))   # json.loads reads NaN; so must we
    assert joined(iter_file_chunks(p, chunk_rows=4), 4) == whole(read_file(p))


def test_json_array_numbers_cut_at_a_block_end(tmp_path, monkeypatch):
    p = tmp_path / "n.json"
    p.write_text("[123456,7,[8]]")
    for size in range(1, 15):   # a bare number must not be taken as ended where a read stops
        monkeypatch.setattr(readers, "READ_BYTES", size)
        assert joined(iter_file_chunks(p, chunk_rows=2), 2)[0] == [123456, 7, [8]]


@pytest.mark.parametrize("text", ["[]", " [ ] \n", '{"examples": [{"text": "a"}, {"text": "b"}], "name": "x"}',
                                  '{"text": ["a", "b"], "id": [1, 2]}', '{"text": "one"}',
                                  '{"text": "a"}\n{"text": "b"}\n'])
def test_json_files_that_are_not_one_array_read_as_before(tmp_path, small_reads, text):
    p = tmp_path / "w.json"
    p.write_text(text)
    assert joined(iter_file_chunks(p, chunk_rows=1), 1) == whole(read_file(p))


@pytest.mark.parametrize("text", ['[{"a": 1},]', '[{"a": 1}', '[{"a": 1} {"b": 2}]', "[1, 2] x",
                                  '[{"a": "\\x"}]', '   ', '[{"a": tru}]', "[1]\n[2]\n"])
def test_malformed_json_gives_the_whole_file_message(tmp_path, small_reads, text):
    p = tmp_path / "bad.json"
    p.write_text(text)
    try:
        want = message(lambda: read_file(p))
    except pytest.fail.Exception:   # read whole, this file is JSON lines: the one case that differs
        assert text == "[1]\n[2]\n"
        assert "a JSON array followed by more data" in message(lambda: list(iter_file_chunks(p)))
        return
    assert message(lambda: list(iter_file_chunks(p, chunk_rows=1))) == want


@pytest.mark.parametrize("name, data, where", [
    ("bad.json", b'[{"text": "ok"},\n {"text": "caf\xe9"}]', "line 2 is not valid UTF-8"),   # a JSON array
    ("bad.csv", b"text,id\nok,1\ncaf\xe9,2\n", "line 3 is not valid UTF-8"),
])
def test_bad_utf8_gives_the_whole_file_message(tmp_path, small_reads, name, data, where):
    p = tmp_path / name
    p.write_bytes(data)
    want = message(lambda: read_file(p))
    assert where in want
    assert message(lambda: list(iter_file_chunks(p))) == want


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_big_file_is_not_read_whole(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(readers, "READ_BYTES", 1 << 16)
    p = tmp_path / f"big.{fmt}"
    rows = [{"text": f"row {i} " + "w " * 50} for i in range(20_000)]
    p.write_text(json.dumps(rows) if fmt == "json" else "text\n" + "".join(r["text"] + "\n" for r in rows))
    seen = []
    real_open = open

    def spy(*a, **k):
        f = real_open(*a, **k)
        seen.append(f)
        return f

    gen = readers.iter_file_chunks(p, chunk_rows=100)
    readers.open = spy   # the module's own name: only the reader's opens are watched
    try:
        first = next(gen)
        pos = seen[-1].tell()
    finally:
        del readers.open
        gen.close()
    assert len(first.rows) == 100 and first.row_numbers[0] == (1 if fmt == "json" else 2)
    assert pos <= 2 * readers.READ_BYTES < p.stat().st_size / 2


CSV_TEXT = ('\ufeffinstruction,input,output\r\n"Add, with comma",,"5"\r\n\r\n"multi\nline ""quoted""",x,y\n'
            'caf\u00e9 \u4e2d,,"\U0001f600"\n,  ,\nlast,row,here')

TSV_TEXT = ('\ufeffinstruction\tinput\toutput\r\nAdd, with comma\t\t"5"\r\n\r\n\t \t\nmulti ""q""\tx\ty\r'
            'caf\u00e9 \u4e2d\t\t\U0001f600\nlast\trow\there')


@pytest.mark.parametrize("delim", [",", "\t"])
@pytest.mark.parametrize("header", [True, False])
def test_delimited_streams_the_same_rows(tmp_path, small_reads, delim, header):
    text = CSV_TEXT if header else CSV_TEXT.split("\r\n", 1)[1]
    if delim == "\t":   # TSV has no quoting: no delimiters or newlines inside cells
        text = (TSV_TEXT if header else TSV_TEXT.split("\r\n", 1)[1])
    p = tmp_path / ("t.csv" if delim == "," else "t.tsv")
    p.write_text(text, encoding="utf-8", newline="")
    got = joined(iter_file_chunks(p, chunk_rows=2), 2)
    assert got == whole(read_file(p))
    assert got[4] == {header}


@pytest.mark.parametrize("text,where", [
    ("a,b\n1,2\n3\n4,5\n", "row 3"),                     # a row short of cells
    ("a,b\n1,2\n\n\n3,4,5\n", "row 3"),                  # blank lines do not count
    ("a,b\n1,2\n3," + "x" * 140_000 + "\n", "malformed"),   # a field past csv's limit
    ("a,a\n1,2\n", "repeats column name"),
    ("\n , \n\n", "empty"),
])
def test_bad_csv_gives_the_whole_file_message(tmp_path, small_reads, text, where):
    p = tmp_path / "bad.csv"
    p.write_text(text, newline="")
    want = message(lambda: read_file(p))
    assert where in want
    assert message(lambda: list(iter_file_chunks(p, chunk_rows=1))) == want


def test_parquet_streams_row_groups_and_batches(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": f"t{i}", "tags": [str(i)] * (i % 3), "meta": {"k": i}} for i in range(23)]
    p = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=5)
    assert joined(iter_file_chunks(p, chunk_rows=4), 4) == whole(read_file(p))
    dated = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "day": [datetime.date(2024, 1, 1)] * 2}), dated)
    got = joined(iter_file_chunks(dated, chunk_rows=1), 1)
    assert got == whole(read_file(dated)) and got[6] == {False}
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    assert joined(iter_file_chunks(empty), 2048) == whole(read_file(empty))


def test_unreadable_parquet_gives_the_whole_file_message(tmp_path):
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1 not really")
    want = message(lambda: read_file(p))
    assert "not a readable Parquet file" in want
    assert message(lambda: list(iter_file_chunks(p))) == want


def test_hf_dataset_streams_the_same_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(11)]
    ds = datasets.Dataset.from_list(rows)
    shuffled = ds.shuffle(seed=3).select(range(1, 9))   # an indices mapping, not the table's order
    for obj in (ds, shuffled, datasets.DatasetDict(train=shuffled)):
        want = whole(read_hf(obj, "<dataset>"))
        assert joined(iter_hf(open_hf(obj, "<dataset>"), "<dataset>", chunk_rows=3), 3) == want
    folder = tmp_path / "saved"
    shuffled.save_to_disk(str(folder))
    assert joined(iter_hf(open_hf(folder, str(folder)), str(folder), chunk_rows=3), 3) == \
        whole(read_hf(folder, str(folder)))
    empty = ds.select([])
    assert joined(iter_hf(empty, "e", chunk_rows=3), 3)[:2] == ([], [])


@pytest.mark.parametrize("fmt", ["json", "csv", "tsv", "parquet", "hf"])
def test_loaded_examples_equal_the_whole_file_path(tmp_path, tiny_batches, small_reads, fmt):
    rows = [{"instruction": f"Q{i} ,\"x\"", "input": "" if i % 2 else f"in {i}", "output": f"A{i}"} for i in range(10)]
    if fmt == "hf":
        import datasets

        src = tmp_path / "hf"
        datasets.Dataset.from_list(rows).save_to_disk(str(src))
        want, _ = normalise(read_hf(src, str(src)), "auto", None)
    else:
        src = tmp_path / f"in.{fmt}"
        if fmt == "json":
            src.write_text(json.dumps(rows, indent=1))
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=4)
        else:
            import csv

            with open(src, "w", newline="") as f:
                w = csv.writer(f, delimiter="," if fmt == "csv" else "\t", quoting=csv.QUOTE_MINIMAL
                               if fmt == "csv" else csv.QUOTE_NONE, escapechar=None if fmt == "csv" else "\\")
                w.writerow(["instruction", "input", "output"])
                for r in rows:
                    w.writerow([r["instruction"].replace('"', "") if fmt == "tsv" else r["instruction"],
                                r["input"], r["output"]])
        want, _, _ = whole_file_examples(src)
    d = load_examples(str(src), pool_dir=tmp_path)
    assert as_tuples(d.examples) == as_tuples(want)
    assert len(want) == 10 and d.layout == "alpaca"


def test_bad_row_message_through_load_examples_is_unchanged(tmp_path, tiny_batches, small_reads):
    p = tmp_path / "pool.csv"
    p.write_text("instruction,input,output,history\n" + "".join(f"q{i},,a{i},\n" for i in range(7))
                 + 'q7,,a7,"[1]"\n')
    d_msg = message(lambda: load_examples(str(p), role="pool", pool_dir=tmp_path))
    raw = read_file(p)
    assert message(lambda: normalise(raw, "auto", None, role="pool")) == d_msg
    assert "row 9" in d_msg and "history[0]" in d_msg and str(p) in d_msg and "\n" not in d_msg


@pytest.mark.parametrize("damage", ["none", "truncated", "not_gzip", "bad_line"])
def test_gzipped_jsonl_streams_with_the_whole_file_messages(tmp_path, damage):
    import gzip

    lines = [json.dumps({"text": f"row {i}"}) for i in range(30)]
    if damage == "bad_line":
        lines[17] = '{"text": oops}'
    blob = gzip.compress(("\n".join(lines) + "\n\n").encode())
    p = tmp_path / "rows.jsonl.gz"
    p.write_bytes(blob[: len(blob) - 9] if damage == "truncated" else b"plain" if damage == "not_gzip" else blob)
    if damage == "none":
        assert joined(iter_file_chunks(p, chunk_rows=4), 4)[:4] == whole(read_file(p))[:4]
        return
    want = message(lambda: read_file(p))
    assert message(lambda: list(iter_file_chunks(p, chunk_rows=4))) == want
    if damage == "bad_line":
        got = joined(iter_file_chunks(p, skip_bad=True, chunk_rows=4), 4)
        assert got[:3] == whole(read_file(p, skip_bad=True))[:3] and got[2][0]["row"] == 18
