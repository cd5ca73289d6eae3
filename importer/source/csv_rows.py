"""CSV records, parsed with the standard library's :mod:`csv`: the header, then chunks of rows.

Owns: strict quoting, fields over several lines, the header's checks, record
and physical line numbers, ragged rows, recovering the lines an unterminated
quote swallowed, and the CSV limits (characters per field and per line,
columns). A record that cannot be parsed becomes a
:class:`~importer.records.Reject` with its numbers; the rest is still read.

Must not: open files or decode bytes (it is given text), or look at what a cell means.
"""

from __future__ import annotations

import csv
from collections import Counter, deque
from collections.abc import Iterator
from typing import IO

import numpy as np
import pandas as pd

from ..errors import InputUnreadable, MappingError
from ..options import ImportOptions
from ..records import Reject
from .chunk import Chunk, read_line, shorten

#: The first chunk is smaller: the first request waits for it (column types come from it).
FIRST_CHUNK_ROWS = 10_000


def check_header(header: list[str], max_columns: int) -> list[str]:
    """The header's names, stripped.

    Raises :class:`InputUnreadable` for more than ``max_columns`` columns and
    :class:`MappingError` for blank or duplicate names.
    """
    if len(header) > max_columns:
        raise InputUnreadable(
            f"the header has {len(header)} columns, more than the limit of {max_columns}"
        )
    names = [h.strip() for h in header]
    blanks = [str(i + 1) for i, h in enumerate(names) if not h]
    if blanks:
        raise MappingError(f"blank column name(s) in the header at position(s) {', '.join(blanks)}")
    dups = [repr(h) for h, n in Counter(names).items() if n > 1]
    if dups:
        raise MappingError(f"duplicate column name(s) in the header: {', '.join(dups)}")
    return names


class _OverlongLine(Exception):
    """Raised through the reader for a physical line over the length limit (already skipped)."""

    def __init__(self, lineno: int, limit: int):
        super().__init__(f"line {lineno} is longer than {limit} characters")
        self.limit = limit


class _LineFeeder:
    """Hands physical lines to :func:`csv.reader`, numbering them and keeping the current record's.

    A line longer than ``max_chars`` is dropped and raises :class:`_OverlongLine`.
    Lines put in ``pending`` are handed out again first: that is how the rest
    of a record swallowed by an unterminated quote is read again.
    """

    def __init__(self, text: IO[str], max_chars: int):
        self.text = text
        self.max_chars = max_chars
        self.lineno = 0
        self.pending: deque[tuple[int, str]] = deque()
        self.current: list[tuple[int, str]] = []  # (number, line) of the record being read

    def __iter__(self) -> _LineFeeder:
        return self

    def __next__(self) -> str:
        if not self.pending:
            line = read_line(self.text, self.max_chars)
            if line == "":
                raise StopIteration
            self.lineno += 1
            if line is None:
                raise _OverlongLine(self.lineno, self.max_chars)
            self.pending.append((self.lineno, line))
        self.current.append(self.pending.popleft())
        return self.current[-1][1]

    def start_line(self) -> int:
        """The physical line the current record starts on."""
        return self.current[0][0] if self.current else self.lineno

    def record_text(self) -> str:
        return shorten("".join(line for _, line in self.current).rstrip("\r\n"))


class CsvRows:
    """The records of CSV ``text``: :attr:`columns` from the header, then :meth:`chunks`.

    Reading the header raises :class:`InputUnreadable` for an empty file or a
    header that cannot be parsed or breaks a limit, and :class:`MappingError`
    for blank or duplicate names; ``name`` names the input in the messages.
    """

    def __init__(self, text: IO[str], delimiter: str, options: ImportOptions, name: str):
        self.options = options
        self.delimiter = delimiter
        # The csv module's only bound on a field (process-wide): set for every file read.
        csv.field_size_limit(options.max_field_bytes)
        self.feeder = _LineFeeder(text, options.max_line_bytes)
        self.reader = csv.reader(self.feeder, delimiter=delimiter, strict=True)
        row: list[str] = []
        while not any(cell.strip() for cell in row):  # blank lines before the header
            try:
                row = next(self.reader)
            except StopIteration:
                raise InputUnreadable(f"{name}: the file is empty (no header)") from None
            except _OverlongLine as exc:
                raise InputUnreadable(
                    f"{name}: the header line is longer than {exc.limit} characters"
                ) from None
            except csv.Error as exc:
                raise InputUnreadable(f"{name}: the header cannot be parsed ({exc})") from exc
        row[0] = row[0].removeprefix("\ufeff")
        self.columns = check_header(row, options.max_columns)

    def chunks(self) -> Iterator[Chunk]:
        """Chunks of up to ``chunk_rows`` rows (fewer in the first), with unparseable records."""
        feeder, ncols = self.feeder, len(self.columns)
        rows: list[list[str]] = []
        records: list[int] = []
        lines: list[int] = []
        rejects: list[Reject] = []
        record = 0
        limit = min(self.options.chunk_rows, FIRST_CHUNK_ROWS)
        while True:
            feeder.current = []
            try:
                row = next(self.reader)
            except StopIteration:
                break
            except _OverlongLine as exc:
                record += 1
                rejects.append(Reject(record, feeder.start_line(), str(exc)))
                continue
            except csv.Error as exc:
                record += 1
                if "field limit" in str(exc):
                    why = f"a field is larger than {self.options.max_field_bytes} characters"
                else:
                    why = "unterminated quote" if "unexpected end of data" in str(exc) else str(exc)
                rejects.append(self._broken(record, f"unparseable CSV record: {why}"))
                continue
            if len(row) == ncols:
                record += 1
                rows.append(row)
                records.append(record)
                lines.append(feeder.current[0][0])
                if len(rows) >= limit:
                    yield self._chunk(rows, records, lines, rejects)
                    rows, records, lines, rejects = [], [], [], []
                    limit = self.options.chunk_rows
            elif len(row) > 1 or (row and row[0].strip()):  # a blank line is not a record
                record += 1
                reason = f"ragged row: expected {ncols} fields, found {len(row)}"
                rejects.append(self._broken(record, reason))
        if rows or rejects:
            yield self._chunk(rows, records, lines, rejects)

    def _broken(self, record: int, reason: str) -> Reject:
        """The reject for the record just read, whose later lines get another chance.

        An unterminated quote swallows the lines after it into one field. When
        the record's second line parses alone as a complete row, only the first
        line is the broken record: the rest is pushed back to be read again.
        """
        start, current = self.feeder.start_line(), self.feeder.current
        if len(current) > 1:
            try:
                alone = next(csv.reader([current[1][1]], delimiter=self.delimiter, strict=True))
            except (csv.Error, StopIteration):
                alone = []
            if len(alone) == len(self.columns):
                self.feeder.pending.extendleft(reversed(current[1:]))
                del current[1:]
        return Reject(record, start, reason, value=self.feeder.record_text())

    def _chunk(
        self, rows: list[list[str]], records: list[int], lines: list[int], rejects: list[Reject]
    ) -> Chunk:
        # Typed explicitly: CSV cells are text, never inferred numbers or dates.
        frame = pd.DataFrame(rows, columns=self.columns, dtype=object)
        numbers = np.array([records, lines], dtype=np.int64)  # two rows of equal length
        return Chunk(frame, numbers[0], numbers[1], rejects)
