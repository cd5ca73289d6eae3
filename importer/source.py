"""Source stage: open the input and yield it as chunks of rows (pandas frames or Arrow text).

Owns: opening paths and stdin, gzip, format, encoding and delimiter detection,
parsing CSV records and JSONL lines, record and line numbers, the structural
limits (field size, column count, JSON depth, line length). Rows that cannot
be parsed leave here as :class:`~importer.records.Reject` values with their
numbers; the rest of the file is still read.

Must not: clean values, map columns or know about the API. It never holds
more than one chunk of the file in memory.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import logging
import sys
import threading
import zlib
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from .errors import InputUnreadable, MappingError
from .records import Reject

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
#: How much raw text of an unparseable record a reject keeps (personal data, possibly huge).
REJECT_TEXT_CHARS = 1_000
#: Codec error handler used when the encoding was guessed: undecodable bytes are read as cp1252
#: (latin-1 for the five bytes cp1252 leaves undefined) instead of stopping the run.
FALLBACK_ERRORS = "blueshift-import-cp1252"
_fallback_hits = [0]


def _decode_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    _fallback_hits[0] += 1
    bad = exc.object[exc.start : exc.end]
    text = "".join(
        b.decode("cp1252") if b not in _CP1252_UNDEFINED else b.decode("latin-1")
        for b in (bytes([x]) for x in bad)
    )
    return text, exc.end


_CP1252_UNDEFINED = {b"\x81", b"\x8d", b"\x8f", b"\x90", b"\x9d"}
codecs.register_error(FALLBACK_ERRORS, _decode_fallback)


class Chunk:
    """Consecutive rows of the input.

    ``frame`` has the source's column names. CSV cells are strings (``""`` for
    an empty cell); JSONL values keep their JSON types (missing keys are NaN).
    ``records`` and ``lines`` give, per row, the 1-based record number and the
    physical line it starts on. ``rejects`` are the unparseable rows met while
    reading this chunk; ``rows_read`` counts both.

    A chunk from the Arrow CSV reader also has ``arrow``: the same cells as a
    record batch of string columns named like the frame's. Its ``frame`` is
    then built only when first asked for; :attr:`column_names`,
    :attr:`num_rows`, :attr:`rows_read` and :meth:`split` never build it, so
    a caller that reads ``arrow`` saves turning every cell into a Python str.
    """

    def __init__(
        self,
        frame: pd.DataFrame | None,
        records: np.ndarray,
        lines: np.ndarray,
        rejects: list[Reject] | None = None,
        bytes_read: int | None = None,
        *,
        arrow: pa.RecordBatch | None = None,
    ):
        if frame is None and arrow is None:
            raise ValueError("a chunk needs a frame or an Arrow record batch")
        self._frame = frame
        self.arrow = arrow
        self.records = records
        self.lines = lines
        self.rejects: list[Reject] = [] if rejects is None else rejects
        self.bytes_read = bytes_read

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            assert self.arrow is not None
            self._frame = _frame_of(self.arrow)
        return self._frame

    @property
    def column_names(self) -> list[str]:
        """The source's column names, in order."""
        if self.arrow is not None:
            return list(self.arrow.schema.names)
        return list(self.frame.columns)

    @property
    def num_rows(self) -> int:
        """Rows parsed (the unparseable ones, in ``rejects``, not counted)."""
        return self.arrow.num_rows if self.arrow is not None else len(self.frame)

    @property
    def rows_read(self) -> int:
        return self.num_rows + len(self.rejects)

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """The first ``n`` rows and the rest; each reject goes with the rows around it."""
        cut = int(self.records[n - 1]) if 0 < n <= len(self.records) else 0
        frame = self._frame
        arrow = self.arrow
        rows = len(self.records[:n])
        head = Chunk(
            None if frame is None else frame.iloc[:n],
            self.records[:n],
            self.lines[:n],
            [r for r in self.rejects if r.record <= cut],
            self.bytes_read,
            arrow=None if arrow is None else arrow.slice(0, rows),
        )
        tail = Chunk(
            None if frame is None else frame.iloc[n:],
            self.records[n:],
            self.lines[n:],
            [r for r in self.rejects if r.record > cut],
            self.bytes_read,
            arrow=None if arrow is None else arrow.slice(rows),
        )
        return head, tail


def _frame_of(cells: pa.RecordBatch) -> pd.DataFrame:
    """The cells as a frame of Python str, one object column per Arrow column."""
    # Column by column: filling one 2-D object array costs half as much again.
    return pd.DataFrame(
        {
            name: column.to_numpy(zero_copy_only=False)
            for name, column in zip(cells.schema.names, cells.columns, strict=True)
        },
        dtype=object,
        copy=False,
    )


@dataclass(frozen=True)
class SourceInfo:
    """What was detected about the input."""

    name: str
    format: str
    encoding: str
    delimiter: str | None
    compressed: bool
    size: int | None


def detect_format(path: str | Path, override: str | None = None) -> str:
    """``csv`` or ``jsonl``, from ``override`` or the file name's extension.

    A trailing ``.gz`` is ignored. Raises :class:`InputUnreadable` when the
    extension says nothing and there is no override.
    """
    if override:
        return override
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if str(path) == "-":
        raise InputUnreadable("reading stdin needs --format csv or --format jsonl")
    raise InputUnreadable(
        f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
        "use .csv, .jsonl or .ndjson (optionally .gz) or pass --format"
    )


class _CountingReader(io.RawIOBase):
    """Wraps a binary stream and counts the bytes read from it (for progress)."""

    def __init__(self, inner: IO[bytes], owned: bool = True):
        self.inner = inner
        self.owned = owned
        self.count = 0

    def close(self) -> None:
        if self.owned and not self.closed:
            self.inner.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n


def _open_binary(path: str | Path) -> tuple[Any, _CountingReader, bool, int | None]:
    """Open ``path`` (or stdin for ``-``) as a buffered, decompressed byte stream."""
    if str(path) == "-":
        raw: IO[bytes] = sys.stdin.buffer
        size = None
    else:
        p = Path(path)
        try:
            if p.is_dir():
                raise InputUnreadable(f"{p}: is a directory, not a file")
            raw = open(p, "rb")  # noqa: SIM115 - closed by the caller's stream
            size = p.stat().st_size
        except InputUnreadable:
            raise
        except FileNotFoundError as exc:
            raise InputUnreadable(f"{p}: no such file") from exc
        except PermissionError as exc:
            raise InputUnreadable(f"{p}: permission denied") from exc
        except OSError as exc:
            raise InputUnreadable(f"{p}: cannot open ({exc.strerror or exc})") from exc
    counting = _CountingReader(raw, owned=str(path) != "-")
    buffered = io.BufferedReader(counting, buffer_size=SNIFF_BYTES)
    compressed = buffered.peek(2)[:2] == b"\x1f\x8b"
    if compressed:
        gz = gzip.GzipFile(fileobj=buffered, mode="rb")
        buffered = io.BufferedReader(gz, buffer_size=SNIFF_BYTES)  # type: ignore[arg-type]
    return buffered, counting, compressed, size


def _peek(stream: io.BufferedReader, n: int) -> bytes:
    """Up to ``n`` bytes from the start of ``stream`` without consuming them."""
    try:
        return stream.peek(n)[:n]
    except (OSError, EOFError, zlib.error) as exc:
        raise InputUnreadable(f"cannot decompress the input: {exc}") from exc


def detect_encoding(head: bytes, override: str | None = None) -> tuple[str, str | None]:
    """The text encoding of a file that starts with ``head``, and a warning if guessed.

    A BOM decides (UTF-8 or UTF-16); otherwise UTF-8 if ``head`` decodes as
    UTF-8, else cp1252 with a warning. ``override`` wins.
    """
    if override:
        try:
            codecs.lookup(override)
        except LookupError as exc:
            raise InputUnreadable(f"unknown encoding {override!r}") from exc
        return override, None
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", None
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8", None
    except UnicodeDecodeError:
        return (
            "cp1252",
            "input is not valid UTF-8; reading it as cp1252 (pass --encoding to choose)",
        )


#: Bytes that never appear in a text file (controls other than tab, newlines and form feed).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"


def looks_binary(head: bytes, encoding: str) -> bool:
    """True when ``head`` has too many control bytes (or NULs) to be text in ``encoding``."""
    if encoding.lower().replace("_", "-").startswith("utf-16") or not head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls > max(8, len(head) // 50)


def sniff_delimiter(sample: str, override: str | None = None) -> str:
    """The CSV delimiter: ``override``, else the one of ``,;<tab>|`` the header uses most."""
    if override:
        return override
    first = sample.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: first.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def check_header(header: list[str], max_columns: int) -> list[str]:
    """Strip header names and refuse blank, duplicate or too many columns."""
    if len(header) > max_columns:
        raise InputUnreadable(
            f"the header has {len(header)} columns, more than the limit of {max_columns}"
        )
    names = [h.strip() for h in header]
    blanks = [i + 1 for i, h in enumerate(names) if not h]
    if blanks:
        raise MappingError(
            f"blank column name(s) in the header at position(s) {', '.join(map(str, blanks))}"
        )
    seen: dict[str, int] = {}
    dups = []
    for h in names:
        seen[h] = seen.get(h, 0) + 1
        if seen[h] == 2:
            dups.append(h)
    if dups:
        raise MappingError(f"duplicate column name(s) in the header: {', '.join(map(repr, dups))}")
    return names


class _OverlongLine(Exception):
    """Raised by the line feeder for a physical line over the length limit (already skipped)."""

    def __init__(self, lineno: int, limit: int):
        super().__init__(lineno)
        self.lineno = lineno
        self.limit = limit


class _LineFeeder:
    """Hands physical lines to :func:`csv.reader`, numbering them and keeping the current record's.

    Lines longer than ``max_chars`` are read and thrown away in pieces (memory
    stays bounded) and reported by raising :class:`_OverlongLine` through the
    reader. Lines can be pushed back to be parsed again, which is how the rest
    of a record swallowed by an unterminated quote is recovered.
    """

    def __init__(self, text: IO[str], max_chars: int):
        self.text = text
        self.max_chars = max_chars
        self.lineno = 0
        self.pending: deque[tuple[int, str]] = deque()
        self.current: list[tuple[int, str]] = []

    def __iter__(self) -> _LineFeeder:
        return self

    def __next__(self) -> str:
        if self.pending:
            item = self.pending.popleft()
            self.current.append(item)
            return item[1]
        line = self.text.readline(self.max_chars + 1)
        if not line:
            raise StopIteration
        self.lineno += 1
        if len(line) > self.max_chars and not line.endswith(("\n", "\r")):
            while True:
                rest = self.text.readline(self.max_chars)
                if not rest or rest.endswith(("\n", "\r")):
                    break
            raise _OverlongLine(self.lineno, self.max_chars)
        self.current.append((self.lineno, line))
        return line

    def push_back(self, lines: list[tuple[int, str]]) -> None:
        self.pending.extendleft(reversed(lines))

    def record_text(self) -> str:
        text = "".join(line for _, line in self.current).rstrip("\r\n")
        return text if len(text) <= REJECT_TEXT_CHARS else text[:REJECT_TEXT_CHARS] + "…"


class Source:
    """An opened input file. Use as a context manager; iterate :meth:`chunks`.

    Limits (each a row reject with its line number, or for the header a
    refusal of the file): ``max_field_bytes`` per CSV cell, ``max_columns``
    per header (and distinct JSONL keys in the file), ``max_json_depth``
    nesting per JSONL record, ``max_line_bytes`` per physical line (counted
    in characters once decoded for CSV, in bytes for UTF-8 JSONL).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str | None = None,
        encoding: str | None = None,
        delimiter: str | None = None,
        chunk_rows: int = 20_000,
        max_field_bytes: int = 1_000_000,
        max_columns: int = 1_000,
        max_json_depth: int = 32,
        max_line_bytes: int = 4_000_000,
    ):
        self.path = path
        self.chunk_rows = chunk_rows
        self.max_field_bytes = max_field_bytes
        self.max_columns = max_columns
        self.max_json_depth = max_json_depth
        self.max_line_bytes = max(max_line_bytes, 1)
        self._scan: _RawScan | None = None  # the stream Arrow reads, while it does
        self._stream, self._counter, compressed, size = _open_binary(path)
        try:
            self.format = detect_format(path, format)
            head = _peek(self._stream, SNIFF_BYTES)
            enc, warning = detect_encoding(head, encoding)
            if warning:
                log.warning("%s: %s", path, warning)
            if looks_binary(head, enc):
                raise InputUnreadable(
                    f"{path}: looks like a binary file, not {self.format.upper()} text "
                    "(UTF-16 without a byte order mark needs --encoding utf-16)"
                )
            delim = None
            if self.format == "csv":
                sample = head.decode(enc, errors="replace").lstrip("\ufeff")
                delim = sniff_delimiter(sample, delimiter)
        except BaseException:
            self.close()
            raise
        # An encoding the user chose is applied strictly; a guessed one falls back per byte.
        self._errors = "strict" if encoding else FALLBACK_ERRORS
        self.info = SourceInfo(str(path), self.format, enc, delim, compressed, size)
        self.columns: list[str] = []

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._scan is not None:
            self._scan.stop()
        # Closing a half-read gzip stream may complain; there is nothing left to lose.
        with contextlib.suppress(Exception):
            self._stream.close()

    @property
    def bytes_read(self) -> int:
        """Bytes consumed from the file on disk (compressed bytes for .gz)."""
        return self._counter.count

    def chunks(self) -> Iterator[Chunk]:
        """Yield the input as chunks of at most ``chunk_rows`` parsed rows.

        Raises :class:`InputUnreadable` for a file that cannot be decoded or
        decompressed or whose header breaks a limit, and :class:`MappingError`
        for blank or duplicate header names.
        """
        hits = _fallback_hits[0]
        try:
            if self.format == "csv":
                yield from self._csv_chunks()
            else:
                yield from self._jsonl_chunks()
        except UnicodeDecodeError as exc:
            raise InputUnreadable(
                f"{self.path}: not valid {self.info.encoding} text ({exc.reason}); "
                "pass --encoding to choose another encoding"
            ) from exc
        except UnicodeError as exc:
            raise InputUnreadable(f"{self.path}: cannot decode the input ({exc})") from exc
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputUnreadable(
                f"{self.path}: the compressed input is damaged or truncated ({exc})"
            ) from exc
        finally:
            fallbacks = _fallback_hits[0] - hits
            if fallbacks:
                log.warning(
                    "%s: %d byte sequence(s) were not valid %s and were read as cp1252 "
                    "(pass --encoding to choose)",
                    self.path,
                    fallbacks,
                    self.info.encoding,
                )

    # -- CSV ------------------------------------------------------------------

    def _csv_chunks(self) -> Iterator[Chunk]:
        """CSV chunks from the Arrow reader where it gives the exact result, else Python's.

        The Arrow reader gives up at the first batch it cannot vouch for (a broken
        quote, a field or line near a limit, undecodable bytes, any error of its
        own); the file is then opened again and the Python reader carries on after
        the last record already yielded, so no record is lost or yielded twice.
        """
        start = self._arrow_start()
        if start is None:
            yield from self._csv_python_chunks()
            return
        done = 0
        rows = _rechunk(_ArrowRows(self, start).chunks(), self.chunk_rows)
        while True:
            try:
                chunk = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # every failure has the same remedy
                log.debug(
                    "%s: the fast CSV reader gave up after record %d: %s", self.path, done, exc
                )
                break
            done = max(done, int(chunk.records[-1]) if len(chunk.records) else 0)
            done = max([done, *(r.record for r in chunk.rejects)])
            yield chunk
        rows.close()
        self.close()
        self._stream, self._counter, _, _ = _open_binary(self.path)
        yield from self._csv_python_chunks(skip=done)

    def _arrow_start(self) -> _ArrowStart | None:
        """Read the header with the Python reader and leave the stream after it.

        ``None`` (nothing consumed) when the Arrow reader cannot be used: stdin
        (no second chance to read it), an encoding other than UTF-8, an unusual
        delimiter, or a header it is not sure about.
        """
        if str(self.path) == "-":
            return None
        encoding = codecs.lookup(self.info.encoding).name
        delimiter = self.info.delimiter or ","
        if encoding not in ("utf-8", "utf-8-sig") or not (
            len(delimiter) == 1 and delimiter.isascii() and delimiter not in '"\r\n'
        ):
            return None
        head = _peek(self._stream, SNIFF_BYTES)
        try:
            text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
        except UnicodeDecodeError:
            return None
        feeder = _LineFeeder(io.StringIO(text, newline=""), self.max_line_bytes)
        csv.field_size_limit(self.max_field_bytes)
        reader = csv.reader(feeder, delimiter=delimiter, strict=True)
        try:
            names = self._csv_header(reader, feeder)
        except (InputUnreadable, MappingError):
            return None  # the Python reader says why, from the start
        consumed = "".join(line for _, line in feeder.current)
        if len(consumed) >= len(text) or not consumed.endswith(("\n", "\r")):
            return None
        size = len(consumed.encode("utf-8"))
        if encoding == "utf-8-sig" and head.startswith(codecs.BOM_UTF8):
            size += len(codecs.BOM_UTF8)
        if len(self._stream.read(size)) != size:
            raise InputUnreadable(f"{self.path}: the input ended while reading the header")
        return _ArrowStart(names, feeder.lineno, delimiter, ord(consumed[-1]))

    def _csv_python_chunks(self, skip: int = 0) -> Iterator[Chunk]:
        """CSV chunks read with Python's csv module; records up to ``skip`` are left out."""
        text = io.TextIOWrapper(
            self._stream, encoding=self.info.encoding, errors=self._errors, newline=""
        )
        # The csv module's limit is process-wide; set it for every file read.
        csv.field_size_limit(self.max_field_bytes)
        feeder = _LineFeeder(text, self.max_line_bytes)
        reader = csv.reader(feeder, delimiter=self.info.delimiter or ",", strict=True)
        names = self._csv_header(reader, feeder)
        ncols = len(names)
        rows: list[list[str]] = []
        records: list[int] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        record = 0
        while True:
            if record <= skip:
                rows, records, lines, rejects = [], [], [], []
            feeder.current = []
            try:
                row = next(reader)
            except StopIteration:
                break
            except _OverlongLine as exc:
                start = feeder.current[0][0] if feeder.current else exc.lineno
                record += 1
                rejects.append(
                    Reject(
                        record, start, f"line {exc.lineno} is longer than {exc.limit} characters"
                    )
                )
                continue
            except csv.Error as exc:
                record += 1
                start = feeder.current[0][0] if feeder.current else feeder.lineno
                reason = str(exc)
                if "field limit" in reason:
                    reason = f"a field is larger than {self.max_field_bytes} characters"
                elif "unexpected end of data" in reason:
                    reason = "unterminated quote"
                self._recover(feeder, ncols)
                rejects.append(
                    Reject(
                        record,
                        start,
                        f"unparseable CSV record: {reason}",
                        value=feeder.record_text(),
                    )
                )
                continue
            if len(row) == ncols:
                record += 1
                rows.append(row)
                records.append(record)
                lines.append(feeder.current[0][0])
            elif not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line is not a record
            else:
                record += 1
                self._recover(feeder, ncols)
                rejects.append(
                    Reject(
                        record,
                        feeder.current[0][0],
                        f"ragged row: expected {ncols} fields, found {len(row)}",
                        value=feeder.record_text(),
                    )
                )
            if record <= skip:
                rows, records, lines, rejects = [], [], [], []
            if len(rows) >= self.chunk_rows:
                yield self._csv_chunk(names, rows, records, lines, rejects)
                rows, records, lines, rejects = [], [], [], []
        if record > skip and (rows or rejects):
            yield self._csv_chunk(names, rows, records, lines, rejects)

    def _csv_header(self, reader: Any, feeder: _LineFeeder) -> list[str]:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                raise InputUnreadable(f"{self.path}: the file is empty (no header)") from None
            except _OverlongLine as exc:
                raise InputUnreadable(
                    f"{self.path}: the header line is longer than {exc.limit} characters"
                ) from None
            except csv.Error as exc:
                raise InputUnreadable(f"{self.path}: the header cannot be parsed ({exc})") from exc
            if row and any(cell.strip() for cell in row):
                break
        if row[0].startswith("\ufeff"):
            row[0] = row[0][1:]
        self.columns = check_header(row, self.max_columns)
        return self.columns

    def _recover(self, feeder: _LineFeeder, ncols: int) -> None:
        """After a bad record that spans several lines, give its later lines another chance.

        An unterminated quote swallows the lines after it into one field. When
        the record's second line parses alone as a complete row, only the first
        line is the broken record: the rest is pushed back to be read again.
        """
        if len(feeder.current) < 2:
            return
        second = feeder.current[1][1]
        try:
            alone = next(csv.reader([second], delimiter=self.info.delimiter or ",", strict=True))
        except (csv.Error, StopIteration):
            return
        if len(alone) == ncols:
            feeder.push_back(feeder.current[1:])
            del feeder.current[1:]

    def _csv_chunk(
        self,
        names: list[str],
        rows: list[list[str]],
        records: list[int],
        lines: list[int],
        rejects: list[Reject],
    ) -> Chunk:
        if rows:
            # One 2-D object array, typed explicitly: pandas would otherwise scan every
            # text column for dates, which costs more than parsing the CSV.
            cells = np.empty((len(rows), len(names)), dtype=object)
            cells[:] = rows
            frame = pd.DataFrame(cells, columns=names, dtype=object, copy=False)
        else:
            frame = pd.DataFrame({n: np.array([], dtype=object) for n in names})
        return Chunk(
            frame,
            np.array(records, dtype=np.int64),
            np.array(lines, dtype=np.int64),
            rejects,
            self.bytes_read,
        )

    # -- JSONL ----------------------------------------------------------------

    def _jsonl_lines(self) -> Iterator[tuple[int, bytes | None]]:
        """``(line number, UTF-8 line)``; ``None`` for a line over the length limit (skipped)."""
        limit = self.max_line_bytes
        stream: Any = self._stream
        encoded = self.info.encoding not in ("utf-8", "utf-8-sig")
        if encoded:
            stream = io.TextIOWrapper(
                self._stream, encoding=self.info.encoding, errors=self._errors, newline=""
            )
        ends: tuple[Any, ...] = ("\n", "\r") if encoded else (b"\n",)
        lineno = 0
        while True:
            raw = stream.readline(limit + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > limit and not raw.endswith(ends):
                while True:
                    rest = stream.readline(limit)
                    if not rest or rest.endswith(ends):
                        break
                yield lineno, None
                continue
            line = raw.encode() if encoded else raw
            if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[3:]
            yield lineno, line

    def _jsonl_chunks(self) -> Iterator[Chunk]:
        objects: list[dict[str, Any]] = []
        numbers: list[int] = []
        rejects: list[Reject] = []
        keys: set[str] = set()
        for lineno, line in self._jsonl_lines():
            if line is None:
                rejects.append(
                    Reject(lineno, lineno, f"line longer than {self.max_line_bytes} bytes")
                )
                continue
            if not line.strip():
                continue
            reject = None
            try:
                obj = _loads(line, self._errors)
            except orjson.JSONDecodeError as exc:
                reject = Reject(
                    lineno, lineno, f"not valid JSON: {exc.args[0]}", value=_excerpt(line)
                )
            else:
                reject = self._check_object(obj, lineno, keys)
            if reject is not None:
                rejects.append(reject)
                continue
            objects.append(obj)
            numbers.append(lineno)
            if len(objects) >= self.chunk_rows:
                yield self._jsonl_chunk(objects, numbers, rejects)
                objects, numbers, rejects = [], [], []
        if objects or rejects:
            yield self._jsonl_chunk(objects, numbers, rejects)

    def _check_object(self, obj: Any, lineno: int, keys: set[str]) -> Reject | None:
        """A reject when a parsed JSONL line is not an object or breaks a limit, else None."""
        if not isinstance(obj, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
            found = kind.get(type(obj), "a number")
            value = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
            return Reject(
                lineno,
                lineno,
                f"expected a JSON object, found {found}",
                value=value[:REJECT_TEXT_CHARS],
            )
        if len(obj) > self.max_columns:
            return Reject(lineno, lineno, f"more than {self.max_columns} keys in one record")
        if _depth(obj, self.max_json_depth + 1) > self.max_json_depth:
            return Reject(lineno, lineno, f"JSON nested deeper than {self.max_json_depth} levels")
        new = obj.keys() - keys
        if new:
            if len(keys) + len(new) > self.max_columns:
                return Reject(
                    lineno,
                    lineno,
                    f"brings the file over {self.max_columns} distinct keys (columns)",
                )
            keys.update(new)
        return None

    def _jsonl_chunk(
        self, objects: list[dict[str, Any]], numbers: list[int], rejects: list[Reject]
    ) -> Chunk:
        frame = pd.DataFrame.from_records(objects) if objects else pd.DataFrame()
        frame = frame.astype(object)
        frame.columns = [str(c) for c in frame.columns]
        nums = np.array(numbers, dtype=np.int64)
        return Chunk(frame, nums, nums.copy(), rejects, self.bytes_read)


def _loads(line: bytes, errors: str) -> Any:
    """Parse one JSONL line; with a guessed encoding, non-UTF-8 bytes are read as cp1252."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        if errors == "strict":
            raise
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return orjson.loads(line.decode("utf-8", errors=errors).encode())
        raise


def _excerpt(line: bytes) -> str:
    text = line[: REJECT_TEXT_CHARS * 4].decode("utf-8", errors="replace").rstrip("\r\n")
    return text if len(text) <= REJECT_TEXT_CHARS else text[:REJECT_TEXT_CHARS] + "…"


def _depth(value: Any, cap: int) -> int:
    """Nesting depth of ``value`` (objects and arrays), counting no further than ``cap``."""
    if cap <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, cap - 1) for v in children), default=0)


# -- CSV fast path --------------------------------------------------------------------------


def _rechunk(chunks: Generator[Chunk, None, None], rows: int) -> Generator[Chunk, None, None]:
    """The rows of ``chunks`` again, ``rows`` at a time (the last chunk may hold fewer).

    The Arrow reader hands over one record batch per block it parsed, about
    10,000 rows of a typical customer file per megabyte; cleaning a chunk
    costs milliseconds however few rows it holds, so chunks are filled up to
    ``--chunk-rows``. The first batch goes on alone, so the first request does
    not wait for a second block. Rows not yet handed on when ``chunks`` fails
    are simply read again by the fallback, which starts after the last record
    yielded.
    """
    pending: Chunk | None = None
    first = True
    try:
        for chunk in chunks:
            pending = chunk if pending is None else _joined(pending, chunk)
            while pending.num_rows >= rows:
                head, pending = pending.split(rows)
                first = False
                yield head
            if first and pending.rows_read:
                first = False
                yield pending
                pending = None
        if pending is not None and pending.rows_read:
            yield pending
    finally:
        chunks.close()


def _has_line_break(column: pa.StringArray) -> bool:
    """Whether any value of ``column`` holds a CR or LF byte (nulls hold no bytes)."""
    _, offsets_buf, data_buf = column.buffers()
    if data_buf is None or offsets_buf is None or not len(column):
        return False
    offsets = np.frombuffer(offsets_buf, np.int32)
    data = np.frombuffer(data_buf, np.uint8)
    seg = data[offsets[column.offset] : offsets[column.offset + len(column)]]
    return bool((seg == _LF).any() or (seg == _CR).any())


def _joined(first: Chunk, second: Chunk) -> Chunk:
    """One chunk of the rows of two consecutive Arrow chunks."""
    assert first.arrow is not None and second.arrow is not None
    return Chunk(
        None,
        np.concatenate((first.records, second.records)),
        np.concatenate((first.lines, second.lines)),
        first.rejects + second.rejects,
        second.bytes_read,
        arrow=pa.concat_batches([first.arrow, second.arrow]),
    )


#: Bytes Arrow parses per block: bounds memory; a record longer than this falls back.
ARROW_BLOCK_BYTES = 1 << 20
#: Blocks Arrow may read after each record batch taken from it. Its streaming reader
#: reads up to 32 blocks ahead on a thread of its own, and each block passes through
#: :class:`_RawScan` in Python: unbounded, that readahead held the GIL for about a third
#: of a second while the first chunk was read and cleaned (and made the input hasher hash
#: 14 MB before the first request).
ARROW_READ_AHEAD_BLOCKS = 2
#: How long a read beyond the window waits while the reader waits for a batch, before
#: it goes ahead anyway: a batch needs more blocks when a record spans several.
ARROW_READ_AHEAD_GRACE_S = 0.05
_LF, _CR, _QUOTE = 10, 13, 34
_NEVER = 1 << 62


class _FastPathUnsure(Exception):
    """The Arrow reader cannot promise the Python reader's exact result from here on."""


class _RawScan:
    """The byte stream handed to Arrow, checked on its way through.

    Keeps what the Python reader's numbering needs and Arrow does not report:
    the indices of empty physical lines (blank lines are not records but count
    as lines). Also checks that every quote sits where strict CSV allows it:
    the Python reader rejects a closing quote followed by anything but a
    delimiter, a line end or another quote, and a quote left open at the end
    of the input; Arrow accepts both silently, so either sets ``bad``.
    """

    def __init__(self, stream: Any, delimiter: str, prev: int):
        self.stream = stream
        self.delim = ord(delimiter)
        self.prev = prev  # the byte before the data: the header's line end
        # The read-ahead window (see ARROW_READ_AHEAD_BLOCKS): after the reader takes a
        # batch, Arrow's thread may read that many blocks, then waits in read() for the
        # next batch to be taken. While the reader itself waits for a batch, a read never
        # waits longer than ARROW_READ_AHEAD_GRACE_S, so the two never wait for each other.
        self._window = threading.Condition()
        self.wanted = True  # opening the reader reads the first batch
        self.ahead = 0  # blocks read since the reader last took a batch
        self.stopped = False
        self.lines = 0  # line ends seen so far
        self.quotes = 0  # quotes seen so far
        self.close_at_end = False  # the last block ended with a closing quote
        self.empty: deque[int] = deque()  # data-line indices of empty physical lines
        self.bad_line = _NEVER  # data-line index of the first quote Arrow would misread
        self.open_line = 0  # data-line index of the last opening quote
        self.closed = False
        self.held = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.stop()

    def want_batch(self) -> None:
        """The reader waits for Arrow's next batch."""
        with self._window:
            self.wanted = True
            self._window.notify_all()

    def took_batch(self) -> None:
        """The reader has its batch: Arrow may read the window's blocks again."""
        with self._window:
            self.wanted = False
            self.ahead = 0
            self._window.notify_all()

    def stop(self) -> None:
        """Nobody takes batches any more: every read, waiting or to come, fails.

        Arrow's thread then leaves Python at once instead of waiting in :meth:`read`
        (or reading on) while the source closes, or the interpreter exits. A failed
        read, like one from a closed file, ends Arrow's reading; an empty one would
        pass for the end of the input and have it parse a truncated last record.
        """
        with self._window:
            self.stopped = True
            self._window.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self._window:
            while not self.stopped and self.ahead >= ARROW_READ_AHEAD_BLOCKS:
                if not self._window.wait(ARROW_READ_AHEAD_GRACE_S) and self.wanted:
                    break
            if self.stopped:
                raise ValueError("the CSV reader stopped reading this stream")
            self.ahead += 1
        data = self.held + self.stream.read(n if n is not None and n >= 0 else -1)
        self.held = b""
        # Arrow drops the \n of a quoted \r\n split between two blocks: never end on a \r.
        if len(data) > 1 and data.endswith(b"\r"):
            data, self.held = data[:-1], data[-1:]
        if data:
            self._scan(bytes([self.prev]) + data)
            self.prev = data[-1]
        elif self.quotes % 2:
            self.bad_line = min(self.bad_line, self.open_line)  # never closed
        return data

    def _scan(self, head: bytes) -> None:
        """Scan one block; ``head`` is the block after the previous block's last byte."""
        base = self.lines
        # Most files have no \r at all: one count then spares the searches that need one.
        crs = head.count(b"\r")
        if b"\n\n" in head or (crs and (b"\n\r" in head or b"\r\r" in head)):
            self._scan_lines(head)
        else:
            self.lines += head.count(b"\n") + crs - (head.count(b"\r\n") if crs else 0)
            if head[0] in (_LF, _CR):
                self.lines -= 1  # counted with the previous block
        if self.close_at_end:
            self.close_at_end = False
            if head[1] not in (self.delim, _LF, _CR, _QUOTE):
                self._bad_at(head, 1, base)
        if b'"' in head:
            self._scan_quotes(head, base)

    def _bad_at(self, head: bytes, pos: int, base: int) -> None:
        """Note a misplaced quote at ``head[pos]``; ``base`` counts the lines before ``head``."""
        self.bad_line = min(self.bad_line, _line_at(head, pos, base))

    def _scan_lines(self, head: bytes) -> None:
        arr = np.frombuffer(head, dtype=np.uint8)
        size = len(arr)
        ends = (arr == _LF) | (arr == _CR)
        crlf_tail = np.zeros(size, dtype=bool)  # the \n of a \r\n
        crlf_tail[1:] = (arr[1:] == _LF) & (arr[:-1] == _CR)
        first = ends & ~crlf_tail
        first[0] = False
        starts = np.flatnonzero(first)
        nxt = np.minimum(starts + 1, size - 1)
        last = starts + ((arr[starts] == _CR) & (arr[nxt] == _LF) & (starts + 1 < size))
        line_start = np.empty(len(starts), dtype=np.int64)
        if len(starts):
            line_start[1:] = last[:-1] + 1
            if head[0] in (_LF, _CR):
                line_start[0] = 2 if head[0] == _CR and size > 1 and head[1] == _LF else 1
            else:
                line_start[0] = -1  # the line began in an earlier block, with text
        empty = np.flatnonzero(line_start == starts) + self.lines
        self.empty.extend(empty.tolist())
        self.lines += len(starts)

    def _scan_quotes(self, head: bytes, base: int) -> None:
        arr = np.frombuffer(head, dtype=np.uint8)
        size = len(arr)
        pos = np.flatnonzero(arr[1:] == _QUOTE) + 1
        allowed = (arr == self.delim) | (arr == _LF) | (arr == _CR) | (arr == _QUOTE)
        # Quote number k (over the whole input) opens a field when k is even, closes it
        # when odd. Strict CSV: an opening quote follows a field boundary (or the closing
        # quote of a doubled pair), a closing one is followed by a boundary or a quote.
        opening = (np.arange(len(pos)) + self.quotes) % 2 == 0
        ok = np.empty(len(pos), dtype=bool)
        ok[opening] = allowed[pos[opening] - 1]
        closing = pos[~opening]
        inside = closing + 1 < size
        ok_close = np.ones(len(closing), dtype=bool)
        ok_close[inside] = allowed[closing[inside] + 1]
        ok[~opening] = ok_close
        if not ok.all():
            self._bad_at(head, int(pos[np.argmin(ok)]), base)
        if len(pos) and not opening[-1] and pos[-1] == size - 1:
            self.close_at_end = True
        if len(pos) and opening[-1]:
            self.open_line = _line_at(head, int(pos[-1]), base)
        self.quotes += len(pos)


def _line_at(head: bytes, pos: int, base: int) -> int:
    """Data-line index of ``head[pos]``; ``base`` counts the lines before ``head``."""
    seg = head[1:pos]
    line = base + seg.count(b"\n") + seg.count(b"\r") - seg.count(b"\r\n")
    if head[:2] == b"\r\n" and pos > 1:
        line -= 1  # that \n ends a line counted with the previous block
    return line


@dataclass
class _ArrowStart:
    """Where the Arrow reader takes over: after the header, read with the Python reader."""

    names: list[str]
    header_lines: int
    delimiter: str
    prev: int


class _ArrowRows:
    """Turns Arrow record batches into chunks numbered exactly as the Python reader numbers them.

    Raises :class:`_FastPathUnsure` (before yielding anything of the batch concerned)
    whenever it cannot promise that.
    """

    def __init__(self, source: Source, start: _ArrowStart):
        self.source = source
        self.names = start.names
        self.ncols = len(start.names)
        self.first_line = start.header_lines + 1
        self.delimiter = start.delimiter
        self.scan = _RawScan(source._stream, start.delimiter, start.prev)
        source._scan = self.scan
        self.invalid: deque[tuple[int, int, str]] = deque()
        self.unnumbered = False
        self.rows_done = 0  # Arrow rows (valid and invalid) handled
        self.record = 0
        self.line = 0  # data-line index of the next row

    def _on_invalid(self, row: Any) -> str:
        if row.number is None or row.number < 0:
            self.unnumbered = True
        else:
            self.invalid.append((row.number, row.actual_columns, row.text))
        return "skip"

    def chunks(self) -> Generator[Chunk, None, None]:
        columns = [f"f{i}" for i in range(self.ncols)]
        reader = pa_csv.open_csv(
            self.scan,
            read_options=pa_csv.ReadOptions(
                column_names=columns, block_size=ARROW_BLOCK_BYTES, use_threads=False
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=self.delimiter,
                quote_char='"',
                double_quote=True,
                escape_char=False,
                newlines_in_values=True,
                ignore_empty_lines=True,
                invalid_row_handler=self._on_invalid,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.string() for c in columns},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                null_values=[],
                check_utf8=True,
            ),
        )
        # One batch is held back until the next arrives: only then has Arrow read far
        # enough for the scan to have seen everything the held batch depends on.
        held = None
        try:
            while True:
                self.scan.want_batch()
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                finally:
                    self.scan.took_batch()
                if held is not None:
                    yield from self._batch_chunks(held)
                held = batch
            if held is not None:
                yield from self._batch_chunks(held)
            yield from self._batch_chunks(None)
        finally:
            self.scan.stop()

    def _batch_chunks(self, batch: pa.RecordBatch | None) -> Iterator[Chunk]:
        scan = self.scan
        if self.unnumbered:
            raise _FastPathUnsure("rows without numbers")
        valid = 0 if batch is None else batch.num_rows
        # The invalid rows Arrow skipped among (or, at the end, after) this batch's rows.
        taken: list[tuple[int, int, str]] = []
        while self.invalid and (
            batch is None or self.invalid[0][0] <= self.rows_done + valid + len(taken)
        ):
            taken.append(self.invalid.popleft())
        total = valid + len(taken)
        if total == 0:
            return
        is_valid = np.ones(total, dtype=bool)
        slots = np.array([n for n, _, _ in taken], dtype=np.int64) - self.rows_done - 1
        if len(slots) and (slots.min() < 0 or slots.max() >= total):
            raise _FastPathUnsure("invalid rows out of order")
        is_valid[slots] = False
        nlines = np.ones(total, dtype=np.int64)
        if batch is not None:
            if valid:
                self._check_lengths(batch)
            breaks = np.zeros(valid, dtype=np.int64)
            if scan.quotes:
                for column in batch.columns:
                    if not _has_line_break(column):
                        continue  # the usual case, settled at a glance over the bytes
                    breaks += (
                        pc.count_substring(column, "\n").to_numpy()
                        + pc.count_substring(column, "\r").to_numpy()
                        - pc.count_substring(column, "\r\n").to_numpy()
                    )
            nlines[is_valid] += breaks
        # Invalid rows: blank-looking lines are skipped, the rest are ragged rows.
        is_record = is_valid.copy()
        reasons: dict[int, tuple[str, str]] = {}
        for slot, (_, found, text) in zip(slots.tolist(), taken, strict=True):
            if "\n" in text or "\r" in text or len(text) + 2 >= self.source.max_line_bytes:
                raise _FastPathUnsure("an invalid row over several lines or near the limit")
            try:
                row = next(csv.reader([text], delimiter=self.delimiter, strict=True))
            except (csv.Error, StopIteration) as exc:
                raise _FastPathUnsure("an invalid row the strict reader rejects") from exc
            if len(row) != found or len(row) == self.ncols:
                raise _FastPathUnsure("an invalid row counted differently")
            if len(row) == 1 and not row[0].strip():
                continue
            is_record[slot] = True
            value = text if len(text) <= REJECT_TEXT_CHARS else text[:REJECT_TEXT_CHARS] + "…"
            reasons[slot] = (f"ragged row: expected {self.ncols} fields, found {len(row)}", value)
        starts = self._start_lines(nlines)
        if self.line > scan.bad_line:
            raise _FastPathUnsure("a quote the strict reader rejects")
        records = self.record + np.cumsum(is_record)
        self.record = int(records[-1])
        self.rows_done += total
        row_records = records[is_valid]
        row_lines = starts[is_valid] + self.first_line
        rejects = [
            Reject(int(records[s]), int(starts[s]) + self.first_line, reason, value=value)
            for s, (reason, value) in sorted(reasons.items())
        ]
        if batch is None:
            columns = [pa.array([], type=pa.string()) for _ in self.names]
        else:
            columns = batch.columns
        cells = pa.RecordBatch.from_arrays(columns, names=self.names)
        yield from self._slices(cells, row_records, row_lines, rejects)

    def _check_lengths(self, batch: pa.RecordBatch) -> None:
        """Raise :class:`_FastPathUnsure` for a field at the size limit or a line near its limit.

        Both limits count characters. A cell's bytes bound its characters from above
        and cost next to nothing to read, so characters are counted only when the
        bytes come near a limit.
        """
        for measure in (pc.binary_length, pc.utf8_length):
            widest = 0
            lengths = np.zeros(batch.num_rows, dtype=np.int64)
            for column in batch.columns:
                size = measure(column).to_numpy()
                widest = max(widest, int(size.max()))
                lengths += size
            # Upper bound on a physical line's length: every character a doubled quote.
            longest = 2 * int(lengths.max()) + 3 * self.ncols + 1
            if widest < self.source.max_field_bytes and longest < self.source.max_line_bytes:
                return
        if widest >= self.source.max_field_bytes:
            raise _FastPathUnsure("a field at the size limit")
        raise _FastPathUnsure("a line near the length limit")

    def _start_lines(self, nlines: np.ndarray) -> np.ndarray:
        """Data-line index where each row starts, skipping the empty lines between rows."""
        base = np.cumsum(nlines) - nlines + self.line
        end = int(base[-1] + nlines[-1])
        empty = self.scan.empty
        shift = 0
        blank_before: list[int] = []
        while empty and empty[0] < end + shift:
            line = empty.popleft()
            i = int(np.searchsorted(base, line - shift, side="left"))
            if i < len(base) and base[i] + shift == line:
                blank_before.append(i)  # a row never starts on an empty line
                shift += 1
            elif i == 0 or line >= base[i - 1] + shift + nlines[i - 1]:
                raise _FastPathUnsure("an empty line between rows that was not expected")
        offsets = np.zeros(len(base) + 1, dtype=np.int64)
        np.add.at(offsets, blank_before, 1)
        starts = base + np.cumsum(offsets[:-1])
        self.line = end + shift
        return starts

    def _slices(
        self,
        cells: pa.RecordBatch,
        records: np.ndarray,
        lines: np.ndarray,
        rejects: list[Reject],
    ) -> Iterator[Chunk]:
        step = self.source.chunk_rows
        count = len(records)
        start = 0
        while True:
            stop = min(start + step, count)
            last = stop >= count
            upto = records[stop - 1] if stop > start else 0
            mine = rejects if last else [r for r in rejects if r.record <= upto]
            rejects = [] if last else rejects[len(mine) :]
            if stop > start or mine:
                # The cells stay Arrow text: cleaning reads them as they are, and only a
                # caller that asks for the chunk's frame pays for Python strings.
                yield Chunk(
                    None,
                    records[start:stop],
                    lines[start:stop],
                    mine,
                    self.source.bytes_read,
                    arrow=cells.slice(start, stop - start),
                )
            if last:
                return
            start = stop


def read_chunks(path: str | Path, **kwargs: Any) -> Iterator[Chunk]:
    """Open ``path`` and yield its chunks; keyword arguments as for :class:`Source`."""
    with Source(path, **kwargs) as source:
        yield from source.chunks()
