"""The source stage: encodings, delimiters, broken lines and limits, with exact numbers."""

from __future__ import annotations

import codecs
import gzip
import io
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from importer.errors import InputChanged, InputUnreadable, MappingError
from importer.options import ImportOptions
from importer.source import (
    InputHasher,
    Source,
    detect_encoding,
    read_chunks,
    sniff_delimiter,
)


def _read(path: Path, **kw):
    """All rows as ``(record, line, {column: value})`` and all rejects, from every chunk."""
    rows, rejects = [], []
    for chunk in read_chunks(path, **kw):
        for rec, line, row in zip(
            chunk.records.tolist(),
            chunk.lines.tolist(),
            chunk.frame.to_dict("records"),
            strict=True,
        ):
            rows.append((rec, line, row))
        rejects.extend(chunk.rejects)
    return rows, rejects


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        ("email,name\na@x.io,Zoë\n".encode(), "utf-8"),
        (codecs.BOM_UTF8 + "email,name\na@x.io,Zoë\n".encode(), "utf-8-sig"),
        ("\ufeffemail,name\na@x.io,Zoë\n".encode("utf-16-le"), "utf-16"),
        ("\ufeffemail,name\na@x.io,Zoë\n".encode("utf-16-be"), "utf-16"),
    ],
)
def test_source_detects_encoding_and_reads_text(tmp_path, encoded, expected):
    path = _write(tmp_path, "c.csv", encoded)
    with Source(path) as source:
        assert source.info.encoding == expected
    rows, rejects = _read(path)
    assert rows == [(1, 2, {"email": "a@x.io", "name": "Zoë"})]
    assert not rejects


def test_source_cp1252_fallback_warns(tmp_path, caplog):
    path = _write(tmp_path, "c.csv", "email,name\na@x.io,Zoë €\n".encode("cp1252"))
    with caplog.at_level(logging.WARNING):
        rows, _ = _read(path)
    assert rows[0][2]["name"] == "Zoë €"
    assert "cp1252" in caplog.text


def test_source_invalid_utf8_after_the_sniffed_head_is_read_as_cp1252(tmp_path, caplog):
    good = "".join(f"u{i}@x.io,Ann\n" for i in range(8000)).encode()
    path = _write(tmp_path, "c.csv", b"email,name\n" + good + "z@x.io,Ren\xe9e\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        rows, rejects = _read(path)
    assert len(rows) == 8001 and not rejects
    assert rows[-1][2]["name"] == "Renée"
    assert "1 byte sequence(s) were not valid utf-8" in caplog.text


def test_source_encoding_override_wins(tmp_path):
    path = _write(tmp_path, "c.csv", "email,name\na@x.io,Øyvind\n".encode("latin-1"))
    rows, _ = _read(path, encoding="latin-1")
    assert rows[0][2]["name"] == "Øyvind"
    assert detect_encoding(b"abc", "latin-1") == ("latin-1", None)
    for name in ("no-such-codec", "rot13", "base64"):
        with pytest.raises(InputUnreadable, match="unknown text encoding"):
            detect_encoding(b"abc", name)


def test_source_wrong_encoding_override_is_one_clear_error(tmp_path):
    path = _write(tmp_path, "c.csv", "email,name\na@x.io,Zoë\n".encode("cp1252"))
    with pytest.raises(InputUnreadable, match="not valid utf-8 text"):
        _read(path, encoding="utf-8")
    utf16 = _write(tmp_path, "u.csv", "email,name\na@x.io,Zoë\n".encode("utf-16-le"))
    with pytest.raises(InputUnreadable, match="binary.*--encoding utf-16"):
        _read(utf16, encoding="utf-8")


# -- delimiters ------------------------------------------------------------------------------


@pytest.mark.parametrize("delim", [",", ";", "\t", "|"])
def test_source_sniffs_delimiter(tmp_path, delim):
    text = delim.join(["email", "name", "city"]) + "\n"
    text += delim.join(["a@x.io", "Ann", "Oslo"]) + "\n"
    text += delim.join(["b@x.io", "Bob", "Rome"]) + "\n"
    path = _write(tmp_path, "c.csv", text.encode())
    with Source(path) as source:
        assert source.info.delimiter == delim
    rows, _ = _read(path)
    assert [r[2]["city"] for r in rows] == ["Oslo", "Rome"]


def test_source_delimiter_override(tmp_path):
    path = _write(tmp_path, "c.csv", b"email;name,x\na@x.io;Ann,1\n")
    rows, _ = _read(path, delimiter=";")
    assert rows[0][2] == {"email": "a@x.io", "name,x": "Ann,1"}
    assert sniff_delimiter("a|b|c\n1|2|3\n") == "|"


# -- record and line numbers -----------------------------------------------------------------


def test_source_numbers_with_bom_multiline_quotes_blank_lines_and_broken_rows(tmp_path):
    text = (
        "email,note,city\n"  # line 1 (with a BOM)
        "a@x.io,plain,Oslo\n"  # line 2, record 1
        "\n"  # line 3, blank: not a record
        'b@x.io,"two\nlines",Rome\n'  # lines 4-5, record 2
        "c@x.io,ragged\n"  # line 6, record 3: rejected
        "\r\n"  # line 7, blank
        'd@x.io,"three\n\nlines",Lima\n'  # lines 8-10, record 4
        'e@x.io,"unterminated,Kyiv\n'  # line 11, record 5: rejected
        "f@x.io,after,Baku\n"  # line 12, record 6: still read
        "g@x.io,x,y,z\n"  # line 13, record 7: rejected
        "h@x.io,last,Doha\n"  # line 14, record 8
    )
    path = _write(tmp_path, "c.csv", codecs.BOM_UTF8 + text.encode())
    rows, rejects = _read(path, chunk_rows=2)
    assert [(r, line, row["email"]) for r, line, row in rows] == [
        (1, 2, "a@x.io"),
        (2, 4, "b@x.io"),
        (4, 8, "d@x.io"),
        (6, 12, "f@x.io"),
        (8, 14, "h@x.io"),
    ]
    assert rows[1][2]["note"] == "two\nlines"
    assert rows[2][2]["note"] == "three\n\nlines"
    assert [(r.record, r.line) for r in rejects] == [(3, 6), (5, 11), (7, 13)]
    assert "expected 3 fields, found 2" in rejects[0].reason
    assert rejects[1].value == 'e@x.io,"unterminated,Kyiv'
    assert "expected 3 fields, found 4" in rejects[2].reason


def test_source_unterminated_quote_at_end_of_file_is_rejected(tmp_path):
    path = _write(tmp_path, "c.csv", b'email,name\na@x.io,Ann\nb@x.io,"Bob\nc@x.io,Cy,extra\n')
    rows, rejects = _read(path)
    assert [r[:2] for r in rows] == [(1, 2)]
    assert [(r.record, r.line) for r in rejects] == [(2, 3)]
    assert "unterminated quote" in rejects[0].reason


def test_source_stray_quote_in_a_field_is_rejected_not_mangled(tmp_path):
    path = _write(tmp_path, "c.csv", b'email,name\na@x.io,"An"n"\nb@x.io,Bob\n')
    rows, rejects = _read(path)
    assert [row["email"] for _, _, row in rows] == ["b@x.io"]
    assert [(r.record, r.line) for r in rejects] == [(1, 2)]


def test_source_nul_bytes_in_a_cell_are_read_and_binary_files_refused(tmp_path):
    path = _write(tmp_path, "c.csv", b"email,name\na@x.io,A\x00nn\n")
    rows, _ = _read(path)
    assert rows[0][2]["name"] == "A\x00nn"
    garbage = _write(tmp_path, "g.csv", bytes(range(256)) * 64)
    with pytest.raises(InputUnreadable, match="binary"):
        _read(garbage)


# -- headers ---------------------------------------------------------------------------------


def test_source_duplicate_headers_named(tmp_path):
    path = _write(tmp_path, "c.csv", b"email,Name,city,Name\na@x.io,A,B,C\n")
    with pytest.raises(MappingError, match="duplicate column name.*'Name'"):
        _read(path)


def test_source_blank_headers_named_by_position(tmp_path):
    path = _write(tmp_path, "c.csv", b"email, ,city,\na@x.io,A,B,C\n")
    with pytest.raises(MappingError, match=r"blank column name.*position\(s\) 2, 4"):
        _read(path)


def test_source_empty_and_header_only_files(tmp_path):
    with pytest.raises(InputUnreadable, match="empty"):
        _read(_write(tmp_path, "e.csv", b""))
    with pytest.raises(InputUnreadable, match="empty"):
        _read(_write(tmp_path, "blank.csv", b"\n\n\n"))
    assert _read(_write(tmp_path, "h.csv", b"email,name\n")) == ([], [])
    assert _read(_write(tmp_path, "e.jsonl", b"")) == ([], [])


def test_source_too_many_columns_refused(tmp_path):
    path = _write(tmp_path, "c.csv", (",".join(f"c{i}" for i in range(20)) + "\n").encode())
    with pytest.raises(InputUnreadable, match="20 columns, more than the limit of 10"):
        _read(path, max_columns=10)


# -- limits ----------------------------------------------------------------------------------


def test_source_long_field_and_long_line_rejected_rest_read(tmp_path):
    big = "x" * 500
    text = f"email,note\na@x.io,{big}\nb@x.io,ok\nc@x.io,{big * 10}\nd@x.io,ok\n"
    path = _write(tmp_path, "c.csv", text.encode())
    rows, rejects = _read(path, max_field_bytes=100, max_line_bytes=1000)
    assert [(r, line) for r, line, _ in rows] == [(2, 3), (4, 5)]
    assert [(r.record, r.line) for r in rejects] == [(1, 2), (3, 4)]
    assert "larger than 100 characters" in rejects[0].reason
    assert "longer than 1000 characters" in rejects[1].reason
    assert len(rejects[0].value) <= 1001


def test_source_jsonl_rejects_by_line(tmp_path):
    lines = [
        b'{"email": "a@x.io"}',  # 1
        b"",  # 2 blank
        b"{not json",  # 3
        b'["a@x.io"]',  # 4
        b'"=cmd()"',  # 5
        b'{"email": "b@x.io", "deep": ' + b"[" * 40 + b"]" * 40 + b"}",  # 6
        b'{"email": "c@x.io", "k1": 1, "k2": 2, "k3": 3}',  # 7: too many keys
        b'{"email": "d@x.io", "n": 1}',  # 8
        b'{"email": "e@x.io", "tail": "' + b"y" * 300 + b'"}',  # 9: line too long
        b'{"email": "f@x.io"}',  # 10
    ]
    path = _write(tmp_path, "c.jsonl", codecs.BOM_UTF8 + b"\n".join(lines) + b"\n")
    rows, rejects = _read(path, max_json_depth=32, max_columns=3, max_line_bytes=200)
    assert [(r, line, row["email"]) for r, line, row in rows] == [
        (1, 1, "a@x.io"),
        (8, 8, "d@x.io"),
        (10, 10, "f@x.io"),
    ]
    assert [(r.line, r.reason.split(":")[0]) for r in rejects] == [
        (3, "not valid JSON"),
        (4, "expected a JSON object, found an array"),
        (5, "expected a JSON object, found a string"),
        (6, "JSON nested deeper than 32 levels"),
        (7, "more than 3 keys in one record"),
        (9, "line longer than 200 bytes"),
    ]
    assert rejects[2].value == "=cmd()"


def test_source_jsonl_distinct_keys_limit(tmp_path):
    lines = [f'{{"email": "u{i}@x.io", "k{i}": 1}}' for i in range(5)]
    path = _write(tmp_path, "c.jsonl", "\n".join(lines).encode())
    rows, rejects = _read(path, max_columns=4)
    assert [r for r, _, _ in rows] == [1, 2, 3]
    assert [r.line for r in rejects] == [4, 5]
    assert "distinct keys" in rejects[0].reason


def test_source_jsonl_cp1252_line_read_with_fallback(tmp_path):
    path = _write(tmp_path, "c.jsonl", b'{"email": "a@x.io"}\n{"name": "Ren\xe9e"}\n')
    rows, rejects = _read(path)
    assert not rejects
    assert rows[1][2]["name"] == "Renée"


def test_source_jsonl_values_keep_their_json_types(tmp_path):
    lines = b'{"email": "a@x.io", "n": 1, "big": 9007199254740993}\n{"email": "b", "z": null}\n'
    rows, _ = _read(_write(tmp_path, "c.jsonl", lines))
    first, second = rows[0][2], rows[1][2]
    assert (type(first["n"]), first["big"], second["z"]) == (int, 9007199254740993, None)


def test_source_jsonl_utf16(tmp_path):
    path = _write(tmp_path, "c.jsonl", '{"email": "a@x.io", "n": "Zoë"}\n'.encode("utf-16"))
    rows, _ = _read(path)
    assert rows[0][2]["n"] == "Zoë"


# -- files -----------------------------------------------------------------------------------


def test_source_gzip_by_content_and_truncated_gzip(tmp_path):
    data = b"email,name\n" + b"".join(f"u{i}@x.io,N{i}\n".encode() for i in range(50_000))
    path = _write(tmp_path, "c.csv.gz", gzip.compress(data))
    rows, _ = _read(path)
    assert len(rows) == 50_000
    cut = _write(tmp_path, "cut.csv.gz", gzip.compress(data)[:-2000])
    with pytest.raises(InputUnreadable, match="damaged or truncated|cannot decompress"):
        _read(cut)


def test_source_directory_and_missing_file(tmp_path):
    with pytest.raises(InputUnreadable, match="is a directory"):
        Source(tmp_path)
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(InputUnreadable, match="is a directory"):
        Source(tmp_path / "d.csv")
    with pytest.raises(InputUnreadable, match="no such file"):
        Source(tmp_path / "missing.csv")


# -- chunks ----------------------------------------------------------------------------------


def _flatten(chunks):
    """Every chunk's content; CSV cells must be Python str in object columns."""
    columns, frames, records, lines, rejects = None, [], [], [], []
    for chunk in chunks:
        assert all(dtype is np.dtype(object) for dtype in chunk.frame.dtypes)
        frames.extend(chunk.frame.itertuples(index=False, name=None))
        records.extend(chunk.records.tolist())
        lines.extend(chunk.lines.tolist())
        rejects.extend((r.record, r.line, r.reason, r.value) for r in chunk.rejects)
        columns = chunk.column_names
    for row in frames:
        assert all(type(v) is str for v in row)
    return columns, frames, records, lines, rejects


_cell = st.one_of(
    st.sampled_from(
        ["", " ", "a@x.io", "Zoë", "O'Brien", "x,y", 'say "hi"', "a\nb", "c\r\nd", "A\x00nn"]
    ),
    st.text(alphabet='ab ,;"\n\r\t€é', max_size=6),
)
#: Cells of rows with the wrong number of fields stay on one line: a broken record that
#: spans lines is the recovery's business, tested on its own.
_one_line_cell = st.text(alphabet='ab ,;"\t€é', max_size=6)
_row = st.one_of(
    st.lists(_cell, min_size=3, max_size=3),
    st.lists(_one_line_cell, min_size=1, max_size=5),
)


def _render(cells: list[str], delim: str, quote_all: bool) -> str:
    out = []
    for cell in cells:
        needs = (
            quote_all or any(c in cell for c in (delim, '"', "\n", "\r")) or cell != cell.strip()
        )
        out.append('"' + cell.replace('"', '""') + '"' if needs else cell)
    return delim.join(out)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    body=st.lists(_row, max_size=25),
    delim=st.sampled_from([",", ";", "\t"]),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    bom=st.booleans(),
    quote_all=st.booleans(),
    final_newline=st.booleans(),
    chunk_rows=st.sampled_from([1, 3, 1000]),
)
def test_source_reads_every_record_with_its_numbers(
    tmp_path, body, delim, newline, bom, quote_all, final_newline, chunk_rows
):
    rendered = [_render(cells, delim, quote_all) for cells in body]
    text = newline.join([delim.join(["email", "name", "note"]), *rendered])
    if final_newline:
        text += newline
    path = tmp_path / "p.csv"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode())
    # What the file says: a line of whitespace alone is not a record; a row of three
    # fields is one, any other a ragged row; every line end counts, \r\n as one.
    rows, records, lines, rejects = [], [], [], []
    record, line = 0, 2
    for cells, raw in zip(body, rendered, strict=True):
        if len(cells) == 3:
            record += 1
            rows.append(tuple(cells))
            records.append(record)
            lines.append(line)
        elif len(cells) > 1 or cells[0].strip():
            record += 1
            reason = f"ragged row: expected 3 fields, found {len(cells)}"
            rejects.append((record, line, reason, raw))
        line += 1 + len(re.findall(r"\r\n|\r|\n", raw))
    try:
        got = _flatten(read_chunks(path, delimiter=delim, chunk_rows=chunk_rows))
    except InputUnreadable as exc:
        # Enough NULs in the first bytes make the file look binary.
        assert "looks like a binary file" in str(exc)
        assert text.count("\x00") > 8
        return
    event("rejects" if rejects else "no rejects")
    columns = ["email", "name", "note"] if rows or rejects else None  # no chunk, no columns
    assert got == (columns, rows, records, lines, rejects)


def test_source_reads_quotes_crlf_and_blank_lines(tmp_path):
    text = 'email,name,note\r\n\r\na@x.io,Ann,"two\nlines"\nb@x.io,"B, ""Bob""",\n\n,,\n'
    path = _write(tmp_path, "c.csv", codecs.BOM_UTF8 + text.encode())
    _, rows, records, lines, rejects = _flatten(read_chunks(path))
    assert rows == [("a@x.io", "Ann", "two\nlines"), ("b@x.io", 'B, "Bob"', ""), ("", "", "")]
    assert (records, lines, rejects) == ([1, 2, 3], [3, 5, 7], [])


def test_source_unterminated_quote_mid_file_loses_and_repeats_nothing(tmp_path):
    good = [f"u{i}@x.io,N{i}\n" for i in range(60_000)]
    good[30_000] = 'broken@x.io,"Ann\n'
    path = _write(tmp_path, "c.csv", ("email,name\n" + "".join(good)).encode())
    rows, rejects = _read(path, chunk_rows=5000)
    assert [(r.record, r.line) for r in rejects] == [(30_001, 30_002)]
    assert "unterminated quote" in rejects[0].reason
    expected = [(i + 1, i + 2, f"u{i}@x.io") for i in range(60_000) if i != 30_000]
    assert [(r, line, row["email"]) for r, line, row in rows] == expected


def test_source_reads_little_ahead_of_the_rows_taken(tmp_path):
    rows = "".join(f"u{i}@x.io,Name {i},{i % 97}\n" for i in range(200_000))
    path = _write(tmp_path, "c.csv", ("email,name,n\n" + rows).encode())
    with Source(path, ImportOptions(chunk_rows=1000)) as source:
        chunks = source.chunks()
        first = next(chunks)
        # A chunk of 1,000 rows (some 30 kB) is read through a few 64 kB buffers.
        assert source.bytes_read <= 4 * 64 * 1024
        assert first.records[0] == 1
        assert len(first.frame) + sum(len(c.frame) for c in chunks) == 200_000


@pytest.mark.parametrize(
    ("kw", "data"),
    [
        ({"max_field_bytes": 100}, "a@x.io," + "x" * 150),
        ({"max_line_bytes": 300}, "a@x.io," + "y" * 400),
        ({}, 'a@x.io,"An"n"'),
        ({}, 'a@x.io,"multi\nline,ragged",x'),
    ],
)
def test_source_limits_and_broken_rows_reject_one_record_mid_file(tmp_path, kw, data):
    rows = [f"u{i}@x.io,N{i}" for i in range(3000)]
    text = "email,name\n" + "\n".join(rows[:1500] + [data] + rows[1500:]) + "\n"
    path = _write(tmp_path, "c.csv", text.encode())
    _, frame, records, lines, rejects = _flatten(read_chunks(path, chunk_rows=100, **kw))
    assert len(frame) == 3000 and len(set(records)) == 3000
    assert [r[:2] for r in rejects] == [(1501, 1502)]


@pytest.mark.parametrize(
    ("kw", "cell", "kept"),
    [
        # Limits count characters: more bytes than the limit but fewer characters is fine.
        ({"max_field_bytes": 100}, "é" * 90, True),
        ({"max_field_bytes": 100}, "é" * 101, False),
        ({"max_line_bytes": 300}, "é" * 140, True),
        ({"max_line_bytes": 300}, "é" * 300, False),
    ],
)
def test_source_limits_count_characters_not_bytes(tmp_path, kw, cell, kept):
    rows = [f"u{i}@x.io,N{i}" for i in range(50)]
    rows[20] = f"a@x.io,{cell}"
    path = _write(tmp_path, "c.csv", ("email,name\n" + "\n".join(rows) + "\n").encode())
    _, frame, _, _, rejects = _flatten(read_chunks(path, **kw))
    assert (("a@x.io", cell) in frame) is kept
    assert [r[0] for r in rejects] == ([] if kept else [21])


def test_source_reads_gzip_other_encodings_and_stdin_alike(tmp_path, monkeypatch):
    data = b"email,name\n" + b"".join(f"u{i}@x.io,Né{i}\n".encode() for i in range(500))
    expected = _flatten(read_chunks(_write(tmp_path, "c.csv", data)))
    assert expected[1][0] == ("u0@x.io", "Né0") and len(expected[1]) == 500
    gz = _write(tmp_path, "c.csv.gz", gzip.compress(data))
    latin = _write(tmp_path, "l.csv", data.decode().encode("latin-1"))
    utf16 = _write(tmp_path, "u.csv", data.decode().encode("utf-16"))
    for path in (gz, latin, utf16):
        assert _flatten(read_chunks(path)) == expected
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert _flatten(read_chunks("-", format="csv")) == expected


def test_source_counts_cp1252_fallbacks_per_source(tmp_path, caplog):
    # UTF-8 in the sniffed head, then two bytes that are not; cp1252 with one undefined byte.
    good = b"".join(f"u{i}@x.io,Ann\n".encode() for i in range(8000))
    two = _write(tmp_path, "two.csv", b"email,name\n" + good + b"a@x.io,Ren\xe9e\nb@x.io,Jos\xe9\n")
    one = _write(tmp_path, "one.jsonl", b'{"email": "c@x.io", "name": "Zo\xeb \x81"}\n')
    with caplog.at_level(logging.WARNING), Source(two) as first, Source(one) as second:
        a, b = first.chunks(), second.chunks()
        rows = [*next(b).frame["name"], *next(a).frame["name"][-2:]]
        assert list(a) == list(b) == []
    assert rows == ["Zoë \x81", "Renée", "José"]
    warned = [r.getMessage() for r in caplog.records if "were read as cp1252" in r.getMessage()]
    assert len(warned) == 2
    assert any("one.jsonl: 1 byte sequence(s) were not valid cp1252" in w for w in warned)
    assert any("two.csv: 2 byte sequence(s) were not valid utf-8" in w for w in warned)


def test_source_chunk_counts_and_splits(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("email,city\na@x.io,Oslo\nb@x.io\nc@x.io, Rome \nd@x.io,Bern\n")
    (chunk,) = list(read_chunks(path))
    head, tail = chunk.split(2)
    assert chunk.column_names == head.column_names == tail.column_names == ["email", "city"]
    assert (chunk.num_rows, head.num_rows, tail.num_rows) == (3, 2, 1)
    assert (chunk.rows_read, head.rows_read, tail.rows_read) == (4, 3, 1)
    assert head.frame["city"].tolist() == ["Oslo", " Rome "]
    assert tail.frame["city"].tolist() == ["Bern"]
    assert all(dtype is np.dtype(object) for dtype in head.frame.dtypes)


def test_source_chunk_split_keeps_rows_and_rejects_in_order(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("email,city\na@x.io,Oslo\nb@x.io\nc@x.io,Rome\nd@x.io,Bern\n,\n")
    (chunk,) = list(read_chunks(path))
    head, tail = chunk.split(1)
    assert head.frame["email"].tolist() == ["a@x.io"]
    assert tail.frame["email"].tolist() == ["c@x.io", "d@x.io", ""]
    assert head.records.tolist() == [1] and tail.records.tolist() == [3, 4, 5]
    assert head.lines.tolist() == [2] and tail.lines.tolist() == [4, 5, 6]
    assert [r.record for r in head.rejects] == [] and [r.record for r in tail.rejects] == [2]
    assert head.rows_read + tail.rows_read == chunk.rows_read


def test_source_chunks_hold_chunk_rows_rows(tmp_path):
    rows = [f"u{i}@x.io,Name {i}\n" for i in range(20_000)]
    rows[7_000] = "ragged,row,here\n"
    path = _write(tmp_path, "c.csv", ("email,name\n" + "".join(rows)).encode())
    with Source(path, ImportOptions(chunk_rows=5000)) as source:
        chunks = list(source.chunks())
    assert [c.num_rows for c in chunks] == [5000, 5000, 5000, 4999]
    assert [r.record for c in chunks for r in c.rejects] == [7001]
    assert [len(c.rejects) for c in chunks] == [0, 1, 0, 0]
    records = np.concatenate([c.records for c in chunks]).tolist()
    assert records == [r for r in range(1, 20_001) if r != 7001]
    emails = [e for c in chunks for e in c.frame["email"]]
    assert emails == [f"u{i}@x.io" for i in range(20_000) if i != 7000]


# -- the input's hash, for resuming ----------------------------------------------------------


def test_input_hasher_checks_the_checkpoint_when_it_passes_it(tmp_path):
    src = _write(tmp_path, "in.csv", b"x" * 5000)
    hasher = InputHasher(src)
    checkpoint = hasher.advance(3000)
    hasher.close()
    ok = InputHasher(src, checkpoint)
    assert not ok.verified
    ok.advance(1000)
    assert not ok.verified
    ok.advance(4000)
    assert ok.verified
    ok.close()
    src.write_text("y" + "x" * 4999)
    bad = InputHasher(src, checkpoint)
    with pytest.raises(InputChanged, match="content changed"):
        bad.finish()
    bad.close()


def test_source_first_csv_chunk_is_smaller_so_the_first_request_leaves_early(tmp_path):
    rows = "".join(f"u{i}@example.com\n" for i in range(25_000))
    path = _write(tmp_path, "c.csv", ("email\n" + rows).encode())
    sizes = [chunk.num_rows for chunk in read_chunks(path)]
    assert sizes == [10_000, 15_000]
    assert [chunk.num_rows for chunk in read_chunks(path, chunk_rows=4_000)][:2] == [4_000, 4_000]
