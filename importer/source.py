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
from collections import deque
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
            if len(rows) >= self.chunk_rows:
                yield self._csv_chunk(names, rows, records, lines, rejects)
                rows, records, lines, rejects = [], [], [], []
        if rows or rejects:
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


def read_chunks(path: str | Path, **kwargs: Any) -> Iterator[Chunk]:
    """Open ``path`` and yield its chunks; keyword arguments as for :class:`Source`."""
    with Source(path, **kwargs) as source:
        yield from source.chunks()
