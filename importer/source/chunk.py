"""What the CSV and JSONL readers share: the :class:`Chunk` they hand on and
reading one physical line within a limit.

Owns: the shape of a chunk and splitting one in two. Must not: open files or clean values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO

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

    def split(self, n: int) -> tuple[Chunk, Chunk]:
        """The first ``n`` rows and the rest; each reject goes with the rows around it."""
        cut = int(self.records[n - 1]) if 0 < n <= len(self.records) else 0
        head = [r for r in self.rejects if r.record <= cut]
        tail = [r for r in self.rejects if r.record > cut]
        return (
            Chunk(self.frame.iloc[:n], self.records[:n], self.lines[:n], head),
            Chunk(self.frame.iloc[n:], self.records[n:], self.lines[n:], tail),
        )
