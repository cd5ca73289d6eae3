"""The source: open the input, tell what it holds, and read it as chunks of rows.

Owns: opening a path (or stdin for ``-``) and counting the bytes read from it,
gzip (known by its magic bytes), telling the format, encoding and CSV
delimiter, refusing binary files, decoding (a guessed encoding reads each
undecodable byte sequence as cp1252, and a warning counts them), and the
errors met while reading, as :class:`~importer.errors.InputUnreadable`.

Must not: parse records (``csv_rows`` and ``jsonl_rows`` do), clean values or map columns.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import os
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import InputUnreadable
from ..options import ImportOptions
from .chunk import Chunk
from .csv_rows import CsvRows
from .jsonl_rows import jsonl_chunks

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
#: Undecodable bytes as the ``surrogateescape`` error handler leaves them in the text.
_ESCAPED = re.compile("[\udc80-\udcff]+")
#: Each of those as its byte in cp1252 (latin-1 for the five bytes cp1252 leaves undefined).
_AS_CP1252 = {
    0xDC00 + b: bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0x100)
}
#: Bytes that never appear in a text file (controls other than tab, newlines and form feed).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"


def detect_format(path: str | Path, override: str | None = None) -> str:
    """``csv`` or ``jsonl``, from ``override`` or the file name's extension (``.gz`` ignored).

    Raises :class:`InputUnreadable` when the extension says nothing and there
    is no override.
    """
    if override:
        return override
    suffix = Path(str(path).lower().removesuffix(".gz")).suffix
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


def detect_encoding(head: bytes, override: str | None = None) -> tuple[str, str | None]:
    """The text encoding of a file that starts with ``head``, and a warning if guessed.

    ``override`` wins (raises :class:`InputUnreadable` if unknown); then a BOM
    (UTF-8 or UTF-16); then UTF-8 if ``head`` decodes as UTF-8, else cp1252.
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
        warning = "input is not valid UTF-8; reading it as cp1252 (pass --encoding to choose)"
        return "cp1252", warning


def _looks_binary(head: bytes, encoding: str) -> bool:
    """True when ``head`` has too many control bytes (or NULs) to be text in ``encoding``."""
    if encoding.lower().replace("_", "-").startswith("utf-16") or not head:
        return False
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls > max(8, len(head) // 50)


def sniff_delimiter(sample: str, override: str | None = None) -> str:
    """The CSV delimiter: ``override``, else the one of ``,;<tab>|`` the header uses most."""
    if override:
        return override
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        first = sample.split("\n", 1)[0]
        best = max(DELIMITERS, key=first.count)
        return best if first.count(best) else ","


class _ByteCounter(io.RawIOBase):
    """The input's bytes, counted as they are read (for progress); closes all but stdin."""

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
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


def _open_counted(path: str | Path) -> _ByteCounter:
    """``path`` (stdin for ``-``) opened for reading; raises :class:`InputUnreadable`."""
    if str(path) == "-":
        return _ByteCounter(sys.stdin.buffer, owned=False)
    if Path(path).is_dir():
        raise InputUnreadable(f"{path}: is a directory, not a file")
    try:
        return _ByteCounter(open(path, "rb"))  # noqa: SIM115 - Source closes it
    except FileNotFoundError as exc:
        raise InputUnreadable(f"{path}: no such file") from exc
    except PermissionError as exc:
        raise InputUnreadable(f"{path}: permission denied") from exc
    except OSError as exc:
        raise InputUnreadable(f"{path}: cannot open ({exc.strerror or exc})") from exc


class _Cp1252Fallback(io.TextIOWrapper):
    """Text whose bytes the ``surrogateescape`` error handler left undecoded are read as
    cp1252 by :meth:`readline`; :attr:`fallbacks` counts the byte sequences read so."""

    fallbacks = 0

    # typeshed's TextIOWrapper.readline ignores the same clash with IOBase's bytes version.
    def readline(self, size: int = -1, /) -> str:  # type: ignore[override]
        line = super().readline(size)
        if line.isascii() or not _ESCAPED.search(line):
            return line
        self.fallbacks += len(_ESCAPED.findall(line))
        return line.translate(_AS_CP1252)


@dataclass(frozen=True)
class SourceInfo:
    """What was detected about the input; ``size`` is None for stdin."""

    name: str
    format: str
    encoding: str
    delimiter: str | None
    size: int | None


class Source:
    """An opened input file. Use as a context manager; iterate :meth:`chunks`.

    Of ``options`` (defaults if None) it reads the input section: ``format``,
    ``encoding`` and ``delimiter`` override what is detected (an encoding
    given is applied strictly, a guessed one reads undecodable bytes as
    cp1252), ``chunk_rows``, and the options, each a row reject with its
    numbers or, for the header, a refusal of the file: ``max_field_bytes`` per
    CSV cell, ``max_columns`` per header (and distinct JSONL keys in the
    file), ``max_json_depth`` nesting per JSONL record, ``max_line_bytes`` per
    physical line (counted in characters for CSV, in UTF-8 bytes for JSONL).

    Raises :class:`InputUnreadable` when the input cannot be opened or
    decompressed, its format or encoding is unknown, or it looks binary.
    """

    def __init__(self, path: str | Path, options: ImportOptions | None = None):
        self.path = path
        self.options = options = options or ImportOptions()
        format, encoding, delimiter = options.format, options.encoding, options.delimiter
        #: The CSV header's names, once :meth:`chunks` has read it.
        self.columns: list[str] = []
        self._counter = _open_counted(path)
        try:
            stream = io.BufferedReader(self._counter, buffer_size=SNIFF_BYTES)
            try:
                if stream.peek(2)[:2] == b"\x1f\x8b":
                    gz = gzip.GzipFile(fileobj=stream, mode="rb")
                    stream = io.BufferedReader(gz, buffer_size=SNIFF_BYTES)  # type: ignore[arg-type]
                head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
            except (OSError, EOFError, zlib.error) as exc:
                raise InputUnreadable(f"cannot decompress the input: {exc}") from exc
            fmt = detect_format(path, format)
            enc, warning = detect_encoding(head, encoding)
            if warning:
                log.warning("%s: %s", path, warning)
            if _looks_binary(head, enc):
                raise InputUnreadable(
                    f"{path}: looks like a binary file, not {fmt.upper()} text "
                    "(UTF-16 without a byte order mark needs --encoding utf-16)"
                )
            delim = None
            if fmt == "csv":
                delim = sniff_delimiter(head.decode(enc, "replace").lstrip("\ufeff"), delimiter)
            size = None if str(path) == "-" else os.path.getsize(path)
        except BaseException:
            self._counter.close()
            raise
        self.info = SourceInfo(str(path), fmt, enc, delim, size)
        # An encoding the user chose is applied strictly; a guessed one falls back per byte.
        errors = "strict" if encoding else "surrogateescape"
        self._text = _Cp1252Fallback(stream, encoding=enc, errors=errors, newline="")

    def close(self) -> None:
        """Close the input file (stdin stays open); the streams over it go with it."""
        self._counter.close()

    @property
    def bytes_read(self) -> int:
        """Bytes consumed from the file on disk (compressed bytes for .gz)."""
        return self._counter.count

    def chunks(self) -> Iterator[Chunk]:
        """Yield the input as chunks of at most ``chunk_rows`` parsed rows.

        Raises :class:`InputUnreadable` for a file that cannot be decoded or
        decompressed or whose header breaks a limit, and
        :class:`~importer.errors.MappingError` for blank or duplicate header names.
        """
        try:
            if self.info.format == "csv":
                rows = CsvRows(self._text, self.info.delimiter or ",", self.options, str(self.path))
                self.columns = rows.columns
                yield from rows.chunks()
            else:
                yield from jsonl_chunks(self._text, self.options)
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
            if self._text.fallbacks:
                log.warning(
                    "%s: %d byte sequence(s) were not valid %s and were read as cp1252 "
                    "(pass --encoding to choose)",
                    self.path,
                    self._text.fallbacks,
                    self.info.encoding,
                )

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_chunks(path: str | Path, **options: Any) -> Iterator[Chunk]:
    """Open ``path`` and yield its chunks; keyword arguments are :class:`ImportOptions` fields."""
    with Source(path, ImportOptions(**options)) as source:
        yield from source.chunks()
