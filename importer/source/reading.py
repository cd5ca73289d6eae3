"""The source: open the input, tell what it holds, and read it as chunks of rows.

Owns: opening the input (a path or URL through ``location``, or stdin for
``-``) and counting the bytes read from it, gzip (known by its magic bytes),
telling the format, encoding and CSV delimiter, refusing binary files,
decoding (a guessed encoding reads each undecodable byte sequence as cp1252,
and a warning counts them), and the errors met while reading, as
:class:`~importer.errors.InputUnreadable`.

Must not: parse records (``csv_rows``, ``jsonl_rows`` and ``parquet_rows`` do),
clean values or map columns.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from ..errors import InputUnreadable
from ..options import ImportOptions
from .chunk import Chunk
from .csv_rows import CsvRows
from .jsonl_rows import jsonl_chunks
from .location import describe_error, display_name, local_path, open_input, url_scheme

if TYPE_CHECKING:
    from .parquet_rows import ParquetRows

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
FORMAT_OF_SUFFIX = {
    **dict.fromkeys((".csv", ".tsv", ".txt"), "csv"),
    **dict.fromkeys((".jsonl", ".ndjson", ".json"), "jsonl"),
    ".parquet": "parquet",
}
#: Undecodable bytes as the ``surrogateescape`` error handler leaves them in the text.
_ESCAPED = re.compile("[\udc80-\udcff]+")
#: Each of those as its byte in cp1252 (latin-1 for the five bytes cp1252 leaves undefined).
_AS_CP1252 = {
    0xDC00 + b: bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0x100)
}
#: Bytes that never appear in a text file (controls other than tab, newlines and form feed).
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"


def detect_format(name: str, override: str | None = None) -> str:
    """``csv``, ``jsonl`` or ``parquet``, from ``override`` or the extension of ``name``
    (a path or a URL without its query; ``.gz`` ignored).

    Raises :class:`InputUnreadable` when the extension says nothing and there
    is no override.
    """
    suffix = PurePosixPath(name.lower().removesuffix(".gz")).suffix
    found = override or FORMAT_OF_SUFFIX.get(suffix)
    if found:
        return found
    if name == "-":
        raise InputUnreadable("reading stdin needs --format csv or --format jsonl")
    raise InputUnreadable(
        f"{name}: cannot tell the format from the extension {suffix or '(none)'!r}; "
        "use .csv, .jsonl, .ndjson (optionally .gz) or .parquet, or pass --format"
    )


def detect_encoding(head: bytes, override: str | None = None) -> tuple[str, str | None]:
    """The text encoding of a file that starts with ``head``, and a warning if guessed.

    ``override`` wins (raises :class:`InputUnreadable` if unknown); then a BOM
    (UTF-8 or UTF-16); then UTF-8 if ``head`` decodes as UTF-8, else cp1252.
    """
    if override:
        try:
            b"\0\0\0\0".decode(override, "replace")  # also refuses codecs like rot13
        except LookupError as exc:
            raise InputUnreadable(f"unknown text encoding {override!r}") from exc
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
    """The input's bytes, counted as they are read (for progress); closes all but stdin.

    Seekable when the input is (Parquet reads its footer first).
    """

    def __init__(self, inner: IO[bytes], owned: bool = True):
        self.inner = inner
        self.owned = owned
        self.count = 0
        # A stream at its end is not asked again: aiohttp logs a warning when it is.
        self.at_end = False

    def close(self) -> None:
        if self.owned and not self.closed:
            self.inner.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.at_end:
            return 0
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        self.at_end = len(buffer) > 0 and not data
        return len(data)

    def seekable(self) -> bool:
        return self.inner.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.at_end = False
        return self.inner.seek(offset, whence)

    def tell(self) -> int:
        return self.inner.tell()


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
    """What was detected about the input.

    ``name`` identifies it for the state: the absolute path, the URL without
    credentials or query (see :func:`~.location.display_name`), or ``-``.
    ``size`` and ``mtime_ns`` are None where unknown (stdin, some servers);
    ``encoding`` is None for Parquet.
    """

    name: str
    format: str
    encoding: str | None
    delimiter: str | None
    size: int | None
    mtime_ns: int | None = None


class Source:
    """An opened input. Use as a context manager; iterate :meth:`chunks`.

    ``path`` is a local path, a URL (``s3://``, ``gs://``, ``az://``,
    ``https://``, ``http://``, ``file://``) or ``-`` for stdin. Of ``options``
    (defaults if None) it reads the input section: ``storage_options`` for a
    URL's store; ``format``, ``encoding`` and ``delimiter`` override what is
    detected (an encoding given is applied strictly, a guessed one reads
    undecodable bytes as cp1252), ``chunk_rows``, and the limits, each a row
    reject with its numbers or, for the header, a refusal of the file:
    ``max_field_bytes`` per CSV cell, ``max_columns`` per header (and distinct
    JSONL keys in the file, and Parquet columns), ``max_json_depth`` nesting
    per JSONL record, ``max_line_bytes`` per physical line (counted in
    characters for CSV, in UTF-8 bytes for JSONL).

    Raises :class:`InputUnreadable` when the input cannot be opened or
    decompressed, its format or encoding is unknown, or it looks binary (and
    as :func:`~.location.open_input` says for a URL).
    """

    def __init__(self, path: str | Path, options: ImportOptions | None = None):
        self.path = path = local_path(path)
        self.name = name = display_name(path)
        self.options = options = options or ImportOptions()
        format, encoding, delimiter = options.format, options.encoding, options.delimiter
        #: The column names (a CSV header, a Parquet schema), once known.
        self.columns: list[str] = []
        self._parquet: ParquetRows | None = None
        # Parquet is read by seeking, which decides how a URL is opened.
        parquet = (format or FORMAT_OF_SUFFIX.get(PurePosixPath(name.lower()).suffix)) == "parquet"
        if name == "-":
            if parquet:
                raise InputUnreadable("Parquet cannot be read from stdin: give its path or URL")
            self._counter = _ByteCounter(sys.stdin.buffer, owned=False)
            size = mtime_ns = None
        else:
            inner, size, mtime_ns = open_input(
                path, dict(options.storage_options), seekable=parquet
            )
            self._counter = _ByteCounter(inner)
        try:
            fmt = detect_format(name, format)
            if fmt == "parquet":
                # Imported here: pyarrow costs every other run time and memory.
                from .parquet_rows import ParquetRows

                self._parquet = ParquetRows(self._counter, options, name)
                self.columns = self._parquet.columns
                enc, delim = None, None
            else:
                enc, delim = self._open_text(encoding, delimiter, fmt)
        except BaseException:
            self._counter.close()
            raise
        key = name if name == "-" or url_scheme(path) else str(Path(path).resolve())
        self.info = SourceInfo(key, fmt, enc, delim, size, mtime_ns)

    def _open_text(
        self, encoding: str | None, delimiter: str | None, fmt: str
    ) -> tuple[str, str | None]:
        """Set up decompression and decoding; the encoding and CSV delimiter found."""
        stream = io.BufferedReader(self._counter, buffer_size=SNIFF_BYTES)
        try:
            if stream.peek(2)[:2] == b"\x1f\x8b":
                gz = gzip.GzipFile(fileobj=stream, mode="rb")
                stream = io.BufferedReader(gz, buffer_size=SNIFF_BYTES)  # type: ignore[arg-type]
            head = stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
        except (OSError, EOFError, zlib.error) as exc:
            raise InputUnreadable(f"cannot decompress the input: {exc}") from exc
        enc, warning = detect_encoding(head, encoding)
        if warning:
            log.warning("%s: %s", self.name, warning)
        if head.startswith(b"PAR1"):
            raise InputUnreadable(
                f"{self.name}: a Parquet file; name it .parquet or pass --format parquet"
            )
        if _looks_binary(head, enc):
            raise InputUnreadable(
                f"{self.name}: looks like a binary file, not {fmt.upper()} text "
                "(UTF-16 without a byte order mark needs --encoding utf-16)"
            )
        delim = None
        if fmt == "csv":
            delim = sniff_delimiter(head.decode(enc, "replace").lstrip("\ufeff"), delimiter)
        # An encoding the user chose is applied strictly; a guessed one falls back per byte.
        errors = "strict" if encoding else "surrogateescape"
        self._text = _Cp1252Fallback(stream, encoding=enc, errors=errors, newline="")
        return enc, delim

    def close(self) -> None:
        """Close the input (stdin stays open); the streams over it go with it."""
        self._counter.close()

    @property
    def bytes_read(self) -> int:
        """Bytes read from the input as stored (compressed bytes for .gz)."""
        return self._counter.count

    def chunks(self) -> Iterator[Chunk]:
        """Yield the input as chunks of at most ``chunk_rows`` parsed rows.

        Raises :class:`InputUnreadable` for an input that cannot be read,
        decoded or decompressed or whose header breaks a limit, and
        :class:`~importer.errors.MappingError` for blank or duplicate header names.
        """
        if self._parquet is not None:
            yield from self._parquet.chunks()
            return
        try:
            if self.info.format == "csv":
                rows = CsvRows(self._text, self.info.delimiter or ",", self.options, self.name)
                self.columns = rows.columns
                yield from rows.chunks()
            else:
                yield from jsonl_chunks(self._text, self.options)
        except UnicodeDecodeError as exc:
            raise InputUnreadable(
                f"{self.name}: not valid {self.info.encoding} text ({exc.reason}); "
                "pass --encoding to choose another encoding"
            ) from exc
        except UnicodeError as exc:
            raise InputUnreadable(f"{self.name}: cannot decode the input ({exc})") from exc
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputUnreadable(
                f"{self.name}: the compressed input is damaged or truncated ({exc})"
            ) from exc
        except InputUnreadable:
            raise
        except OSError as exc:  # a network or disk error while reading
            raise InputUnreadable(f"{self.name}: reading failed ({describe_error(exc)})") from exc
        finally:
            if self._text.fallbacks:
                log.warning(
                    "%s: %d byte sequence(s) were not valid %s and were read as cp1252 "
                    "(pass --encoding to choose)",
                    self.name,
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
