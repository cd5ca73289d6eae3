"""What the CSV and JSONL readers share: the :class:`Chunk` they hand on and
reading one physical line within a limit.

Owns: the shape of a chunk and splitting one in two. Must not: open files or clean values.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import IO, Any

import numpy as np
import pandas as pd

from ..records import Reject

#: How much raw text of an unparseable record a reject keeps (personal data, possibly huge).
REJECT_TEXT_CHARS = 1_000


def shorten(text: str) -> str:
    """``text`` cut to :data:`REJECT_TEXT_CHARS` characters, marked with an ellipsis if cut."""
    return text if len(text) <= REJECT_TEXT_CHARS else text[:REJECT_TEXT_CHARS] + "…"


def read_line(text: IO[str], limit: int) -> str | None:
    """The next physical line of ``text`` (``""`` at the end), or None for a line longer
    than ``limit`` characters, which is read and dropped in pieces (memory stays bounded)."""
    line = text.readline(limit + 1)
    if len(line) <= limit or line.endswith(("\n", "\r")):
        return line
    while line and not line.endswith(("\n", "\r")):
        line = text.readline(limit)
    return None


@dataclass(frozen=True, eq=False)
class Chunk:
    """Consecutive rows of the input.

    ``frame`` has the source's column names. CSV cells are Python strings in
    object columns (``""`` for an empty cell, no type inferred); JSONL values
    keep their JSON types (missing keys are NaN); Parquet values are the plain
    values ``parquet_rows`` makes of them (None for a null). ``records`` and ``lines``
    give, per row, the 1-based record number and the physical line it starts
    on. ``rejects`` are the unparseable rows met while reading this chunk;
    ``rows_read`` counts both.
    """

    frame: pd.DataFrame
    records: np.ndarray
    lines: np.ndarray
    rejects: list[Reject] = field(default_factory=list)

    @property
    def column_names(self) -> list[str]:
        """The source's column names, in order."""
        return list(self.frame.columns)

    @property
    def num_rows(self) -> int:
        """Rows parsed (the unparseable ones, in ``rejects``, not counted)."""
        return len(self.frame)

    @property
    def rows_read(self) -> int:
        return self.num_rows + len(self.rejects)

    def head(self, n: int) -> Chunk:
        """The first ``n`` rows read, parsed or unparseable, in record order."""
        numbers = sorted([*self.records.tolist(), *(r.record for r in self.rejects)])
        if n >= len(numbers):
            return self
        cut = numbers[n - 1] if n > 0 else 0
        keep = self.records <= cut
        rejects = [r for r in self.rejects if r.record <= cut]
        return Chunk(self.frame[keep], self.records[keep], self.lines[keep], rejects)

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """The first ``n`` rows and the rest; each reject goes with the rows around it."""
        cut = int(self.records[n - 1]) if 0 < n <= len(self.records) else 0
        head = [r for r in self.rejects if r.record <= cut]
        tail = [r for r in self.rejects if r.record > cut]
        return (
            Chunk(self.frame.iloc[:n], self.records[:n], self.lines[:n], head),
            Chunk(self.frame.iloc[n:], self.records[n:], self.lines[n:], tail),
        )


def first_rows(chunks: Iterable[Chunk], limit: int | None) -> Iterator[Chunk]:
    """The chunks holding the first ``limit`` rows read (all when None), the last one
    cut short; nothing after them is read."""
    left = limit
    for chunk in chunks:
        if left is not None:
            chunk = chunk.head(left)
            left -= chunk.rows_read
        yield chunk
        if left is not None and left <= 0:
            return


def plain_value(value: Any) -> Any:
    """A temporal, decimal, binary or nested value as JSON can carry it (Parquet's values,
    a DataFrame's): datetimes as ISO 8601 (zoned ones in UTC, ending ``Z``), whole
    decimals as integers, bytes as UTF-8 text; lists and dicts keep their shape."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        exponent = value.as_tuple().exponent
        return int(value) if isinstance(exponent, int) and exponent >= 0 else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {key: None if v is None else plain_value(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [None if v is None else plain_value(v) for v in value]
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)  # durations, intervals: their text
