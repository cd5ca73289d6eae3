"""The source: an opened input and the chunks of rows it yields.

Owns: putting the parts together (open and detect, decode, then CSV or JSONL
records), the errors met while reading as :class:`~importer.errors.InputUnreadable`,
and the warning that counts the bytes read with the cp1252 fallback.

Must not: parse records itself, clean values, map columns or know about the API.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputUnreadable
from .chunk import Chunk, Limits
from .csv_rows import CsvRows
from .jsonl_rows import jsonl_chunks
from .opening import SNIFF_BYTES, Utf8Bytes, open_input

log = logging.getLogger(__name__)


class Source:
    """An opened input file. Use as a context manager; iterate :meth:`chunks`.

    ``format``, ``encoding`` and ``delimiter`` override what is detected; an
    encoding given is applied strictly, a guessed one reads undecodable bytes
    as cp1252. Limits (each a row reject with its numbers, or for the header
    a refusal of the file): ``max_field_bytes`` per CSV cell, ``max_columns``
    per header (and distinct JSONL keys in the file), ``max_json_depth``
    nesting per JSONL record, ``max_line_bytes`` per physical line (counted
    in characters for CSV, in UTF-8 bytes for JSONL). Never more than one
    chunk of the file is held in memory.

    Raises :class:`InputUnreadable` when the input cannot be opened, its
    format or encoding is unknown, or it looks binary.
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
        self.limits = Limits(
            chunk_rows, max_field_bytes, max_columns, max_json_depth, max(max_line_bytes, 1)
        )
        #: The CSV header's names, once :meth:`chunks` has read it.
        self.columns: list[str] = []
        stream, self._counter, self.info = open_input(path, format, encoding, delimiter)
        self.format = self.info.format
        # An encoding the user chose is applied strictly; a guessed one falls back per byte.
        self._utf8 = Utf8Bytes(stream, self.info.encoding, fallback=not encoding)

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
        utf8 = io.BufferedReader(self._utf8, buffer_size=SNIFF_BYTES)
        try:
            if self.format == "csv":
                text = io.TextIOWrapper(utf8, encoding="utf-8", newline="")
                rows = CsvRows(text, self.info.delimiter or ",", self.limits, str(self.path))
                self.columns = rows.columns
                yield from rows.chunks(lambda: self.bytes_read)
            else:
                yield from jsonl_chunks(utf8, self.limits, lambda: self.bytes_read)
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
            if self._utf8.fallbacks:
                log.warning(
                    "%s: %d byte sequence(s) were not valid %s and were read as cp1252 "
                    "(pass --encoding to choose)",
                    self.path,
                    self._utf8.fallbacks,
                    self.info.encoding,
                )

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_chunks(path: str | Path, **kwargs: Any) -> Iterator[Chunk]:
    """Open ``path`` and yield its chunks; keyword arguments as for :class:`Source`."""
    with Source(path, **kwargs) as source:
        yield from source.chunks()
