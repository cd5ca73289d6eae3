"""Source stage: open the input and yield it as pandas DataFrame chunks.

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
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd

from .errors import InputUnreadable, MappingError
from .records import Reject

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}


@dataclass
class Chunk:
    """Consecutive rows of the input.

    ``frame`` has the source's column names. CSV cells are strings (``""`` for
    an empty cell); JSONL values keep their JSON types (missing keys are NaN).
    ``records`` and ``lines`` give, per row, the 1-based record number and the
    physical line it starts on. ``rejects`` are the unparseable rows met while
    reading this chunk; ``rows_read`` counts both.
    """

    frame: pd.DataFrame
    records: np.ndarray
    lines: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    bytes_read: int | None = None

    @property
    def rows_read(self) -> int:
        return len(self.frame) + len(self.rejects)


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


def _looks_binary(head: bytes, encoding: str) -> bool:
    if encoding.startswith("utf-16") or not head:
        return False
    return head.count(b"\x00") > max(8, len(head) // 100)


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


class Source:
    """An opened input file. Use as a context manager; iterate :meth:`chunks`."""

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
    ):
        self.path = path
        self.format = detect_format(path, format)
        self.chunk_rows = chunk_rows
        self.max_field_bytes = max_field_bytes
        self.max_columns = max_columns
        self.max_json_depth = max_json_depth
        self._stream, self._counter, compressed, size = _open_binary(path)
        head = _peek(self._stream, SNIFF_BYTES)
        enc, warning = detect_encoding(head, encoding)
        if warning:
            log.warning("%s: %s", path, warning)
        if _looks_binary(head, enc):
            self.close()
            raise InputUnreadable(f"{path}: looks like a binary file, not {self.format.upper()}")
        delim = None
        if self.format == "csv":
            sample = head.decode(enc, errors="replace").lstrip("\ufeff")
            delim = sniff_delimiter(sample, delimiter)
        self.info = SourceInfo(str(path), self.format, enc, delim, compressed, size)
        self.columns: list[str] = []

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
        decompressed, and :class:`MappingError` for a bad CSV header.
        """
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
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputUnreadable(f"{self.path}: the compressed input is damaged ({exc})") from exc

    def _csv_chunks(self) -> Iterator[Chunk]:
        text = io.TextIOWrapper(self._stream, encoding=self.info.encoding, newline="")
        csv.field_size_limit(self.max_field_bytes)
        reader = csv.reader(text, delimiter=self.info.delimiter or ",")
        header: list[str] | None = None
        while header is None:
            try:
                row = next(reader)
            except StopIteration:
                raise InputUnreadable(f"{self.path}: the file is empty (no header)") from None
            except csv.Error as exc:
                raise InputUnreadable(f"{self.path}: the header cannot be parsed ({exc})") from exc
            if row and any(cell.strip() for cell in row):
                header = row
        if header and header[0].startswith("\ufeff"):
            header[0] = header[0][1:]
        self.columns = names = check_header(header, self.max_columns)
        ncols = len(names)
        rows: list[list[str]] = []
        records: list[int] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        record = 0
        prev_line = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                record += 1
                rejects.append(Reject(record, prev_line + 1, f"unparseable CSV record: {exc}"))
                prev_line = reader.line_num
                continue
            start = prev_line + 1
            prev_line = reader.line_num
            if len(row) != ncols:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line is not a record
                record += 1
                rejects.append(Reject(record, start, f"expected {ncols} fields, found {len(row)}"))
            else:
                record += 1
                rows.append(row)
                records.append(record)
                lines.append(start)
            if len(rows) >= self.chunk_rows:
                yield self._csv_chunk(names, rows, records, lines, rejects)
                rows, records, lines, rejects = [], [], [], []
        if rows or rejects:
            yield self._csv_chunk(names, rows, records, lines, rejects)

    def _csv_chunk(
        self,
        names: list[str],
        rows: list[list[str]],
        records: list[int],
        lines: list[int],
        rejects: list[Reject],
    ) -> Chunk:
        if rows:
            columns = list(zip(*rows, strict=True))
            frame = pd.DataFrame(
                {n: np.array(col, dtype=object) for n, col in zip(names, columns, strict=True)}
            )
        else:
            frame = pd.DataFrame({n: np.array([], dtype=object) for n in names})
        return Chunk(
            frame,
            np.array(records, dtype=np.int64),
            np.array(lines, dtype=np.int64),
            rejects,
            self.bytes_read,
        )

    def _jsonl_chunks(self) -> Iterator[Chunk]:
        objects: list[dict[str, Any]] = []
        numbers: list[int] = []
        rejects: list[Reject] = []
        limit = self.max_field_bytes * 4
        lineno = 0
        encoding = self.info.encoding
        stream: Any = self._stream
        if encoding not in ("utf-8", "utf-8-sig"):
            stream = io.TextIOWrapper(self._stream, encoding=encoding, newline="")
        for raw in stream:
            lineno += 1
            line = raw.encode() if isinstance(raw, str) else raw
            if lineno == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[3:]
            if not line.strip():
                continue
            if len(line) > limit:
                rejects.append(Reject(lineno, lineno, f"line longer than {limit} bytes"))
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                rejects.append(Reject(lineno, lineno, f"not valid JSON: {exc.args[0]}"))
                continue
            if not isinstance(obj, dict):
                kind = type(obj).__name__.replace("dict", "object").replace("list", "array")
                rejects.append(Reject(lineno, lineno, f"expected a JSON object, found {kind}"))
                continue
            if _nesting_exceeds(line, self.max_json_depth) and _depth(obj) > self.max_json_depth:
                rejects.append(
                    Reject(lineno, lineno, f"JSON nested deeper than {self.max_json_depth} levels")
                )
                continue
            if len(obj) > self.max_columns:
                rejects.append(
                    Reject(lineno, lineno, f"more than {self.max_columns} keys in one record")
                )
                continue
            objects.append(obj)
            numbers.append(lineno)
            if len(objects) >= self.chunk_rows:
                yield self._jsonl_chunk(objects, numbers, rejects)
                objects, numbers, rejects = [], [], []
        if objects or rejects:
            yield self._jsonl_chunk(objects, numbers, rejects)

    def _jsonl_chunk(
        self, objects: list[dict[str, Any]], numbers: list[int], rejects: list[Reject]
    ) -> Chunk:
        frame = pd.DataFrame.from_records(objects) if objects else pd.DataFrame()
        frame = frame.astype(object)
        frame.columns = [str(c) for c in frame.columns]
        nums = np.array(numbers, dtype=np.int64)
        return Chunk(frame, nums, nums.copy(), rejects, self.bytes_read)


def _nesting_exceeds(line: bytes, depth: int) -> bool:
    """Cheap pre-check: could this line nest deeper than ``depth``?"""
    return line.count(b"{") + line.count(b"[") > depth


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def read_chunks(path: str | Path, **kwargs: Any) -> Iterator[Chunk]:
    """Open ``path`` and yield its chunks; keyword arguments as for :class:`Source`."""
    with Source(path, **kwargs) as source:
        yield from source.chunks()
