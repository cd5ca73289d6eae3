"""Opening the input: its bytes, what they are, and their text as UTF-8.

Owns: opening a path (or stdin for ``-``) and counting the bytes read from it,
gzip (known by its magic bytes), telling the format, encoding and CSV
delimiter, refusing binary files, and decoding with the per-byte cp1252
fallback for a guessed encoding (:class:`Utf8Bytes`, one per source).

Must not: split text into records, number rows or apply the row limits.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import logging
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import InputUnreadable

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
CSV_SUFFIXES = {".csv", ".tsv", ".txt"}
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
#: Bytes cp1252 leaves undefined; the fallback reads them as latin-1.
_CP1252_UNDEFINED = {0x81, 0x8D, 0x8F, 0x90, 0x9D}
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
        return (
            "cp1252",
            "input is not valid UTF-8; reading it as cp1252 (pass --encoding to choose)",
        )


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
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        first = sample.split("\n", 1)[0]
        best = max(DELIMITERS, key=first.count)
        return best if first.count(best) else ","


class ByteCounter(io.RawIOBase):
    """Wraps a binary stream and counts the bytes read from it (for progress)."""

    def __init__(self, inner: IO[bytes], owned: bool):
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


@dataclass(frozen=True)
class SourceInfo:
    """What was detected about the input."""

    name: str
    format: str
    encoding: str
    delimiter: str | None
    compressed: bool
    size: int | None


def open_input(
    path: str | Path, format: str | None, encoding: str | None, delimiter: str | None
) -> tuple[io.BufferedReader[Any], ByteCounter, SourceInfo]:
    """Open ``path`` (stdin for ``-``) and tell what it holds; the overrides win.

    Returns the decompressed bytes, the counter of bytes read from the file
    itself (compressed bytes for gzip) and what was detected; warns when the
    encoding is a guess. Raises :class:`InputUnreadable` when the input cannot
    be opened or decompressed, its format or encoding is unknown, or it looks
    binary.
    """
    stream, counter, compressed, head = _open_bytes(path)
    try:
        fmt = detect_format(path, format)
        enc, warning = detect_encoding(head, encoding)
        if warning:
            log.warning("%s: %s", path, warning)
        if looks_binary(head, enc):
            raise InputUnreadable(
                f"{path}: looks like a binary file, not {fmt.upper()} text "
                "(UTF-16 without a byte order mark needs --encoding utf-16)"
            )
        delim = None
        if fmt == "csv":
            delim = sniff_delimiter(head.decode(enc, "replace").lstrip("\ufeff"), delimiter)
        size = None if str(path) == "-" else os.path.getsize(path)
    except BaseException:
        counter.close()
        raise
    return stream, counter, SourceInfo(str(path), fmt, enc, delim, compressed, size)


def _open_bytes(path: str | Path) -> tuple[io.BufferedReader[Any], ByteCounter, bool, bytes]:
    """The decompressed bytes of ``path``, their counter, whether gzip, and the first bytes."""
    if str(path) == "-":
        counter = ByteCounter(sys.stdin.buffer, owned=False)
    elif Path(path).is_dir():
        raise InputUnreadable(f"{path}: is a directory, not a file")
    else:
        try:
            counter = ByteCounter(open(path, "rb"), owned=True)  # noqa: SIM115 - Source closes it
        except FileNotFoundError as exc:
            raise InputUnreadable(f"{path}: no such file") from exc
        except PermissionError as exc:
            raise InputUnreadable(f"{path}: permission denied") from exc
        except OSError as exc:
            raise InputUnreadable(f"{path}: cannot open ({exc.strerror or exc})") from exc
    stream = io.BufferedReader(counter, buffer_size=SNIFF_BYTES)
    try:
        compressed = stream.peek(2)[:2] == b"\x1f\x8b"
        if compressed:
            gz = gzip.GzipFile(fileobj=stream, mode="rb")
            stream = io.BufferedReader(gz, buffer_size=SNIFF_BYTES)  # type: ignore[arg-type]
        return stream, counter, compressed, stream.peek(SNIFF_BYTES)[:SNIFF_BYTES]
    except (OSError, EOFError, zlib.error) as exc:
        counter.close()
        raise InputUnreadable(f"cannot decompress the input: {exc}") from exc


class Utf8Bytes(io.RawIOBase):
    """The text of ``inner``, bytes in ``encoding``, as UTF-8 bytes.

    With ``fallback`` (for a guessed encoding), each byte sequence the
    encoding cannot decode is read byte by byte as cp1252 (latin-1 for the
    five bytes cp1252 leaves undefined) and counted in :attr:`fallbacks`;
    without it, reading raises :exc:`UnicodeDecodeError`.
    """

    def __init__(self, inner: IO[bytes], encoding: str, fallback: bool):
        self.inner = inner
        self.decoder = codecs.getincrementaldecoder(encoding)()
        self.fallback = fallback
        self.fallbacks = 0
        self.left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.left:
            data = self.inner.read(SNIFF_BYTES)
            self.left = memoryview(self._decode(data, final=not data).encode())
            if not data:
                break
        n = min(len(buffer), len(self.left))
        buffer[:n], self.left = self.left[:n], self.left[n:]
        return n

    def _decode(self, data: bytes, final: bool) -> str:
        text = ""
        while True:
            try:
                return text + self.decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                if not self.fallback:
                    raise
                # exc.object holds every byte not decoded yet, the decoder's buffered ones
                # first: decode those before the error, read the bad ones as cp1252, go on.
                self.decoder.setstate((b"", self.decoder.getstate()[1]))
                text += self.decoder.decode(exc.object[: exc.start])
                text += "".join(
                    bytes([b]).decode("latin-1" if b in _CP1252_UNDEFINED else "cp1252")
                    for b in exc.object[exc.start : exc.end]
                )
                self.fallbacks += 1
                data = exc.object[exc.end :]
