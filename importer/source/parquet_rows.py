"""Parquet records, read through pyarrow a row group at a time, in chunks of rows.

Owns: the schema's column names and their checks (as a CSV header's), turning
Parquet's values into values a payload can carry, and record numbers (the
1-based row; a row has no line of its own, so its line is its record number).
Parquet's types are kept: integers stay integers (a null does not make a
column float), floats floats, booleans booleans, strings strings. Timestamps
become ISO 8601 text (zoned ones in UTC, ending ``Z``), as do dates and
times; decimals without fraction digits become integers, other decimals
floats; binary becomes UTF-8 text; lists and structs keep their shape.

Must not: open files (it is given a seekable binary stream) or look at what a value means.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputUnreadable
from ..options import ImportOptions
from .chunk import Chunk, plain_value
from .csv_rows import check_header
from .location import describe_error

#: What pyarrow, or the store under it, raises for data it cannot read (ArrowInvalid is a
#: ValueError; fsspec raises one for an HTTP server that ignores ranged requests).
_READ_ERRORS = (pa.ArrowException, OSError, ValueError)


class ParquetRows:
    """The rows of a Parquet file: :attr:`columns` from its schema, then :meth:`chunks`.

    Raises :class:`InputUnreadable` for a stream that is not a Parquet file
    or has more columns than ``max_columns``, and
    :class:`~importer.errors.MappingError` for blank or duplicate column names;
    ``name`` names the input in the messages.
    """

    def __init__(self, stream: IO[bytes] | io.RawIOBase, options: ImportOptions, name: str):
        self.options = options
        self.name = name
        try:
            self.file = pq.ParquetFile(stream)
        except _READ_ERRORS as exc:
            raise InputUnreadable(
                f"{name}: cannot read it as a Parquet file ({describe_error(exc)})"
            ) from exc
        self.columns = check_header(self.file.schema_arrow.names, options.max_columns)

    def chunks(self) -> Iterator[Chunk]:
        """Chunks of ``chunk_rows`` rows (the last one fewer); pyarrow decodes one row
        group at a time, and a chunk may span row groups.

        Raises :class:`InputUnreadable` when the data cannot be read or decoded.
        """
        done = 0
        batches = self.file.iter_batches(batch_size=self.options.chunk_rows)
        pending: list[pa.RecordBatch] = []
        while True:
            try:
                batch = next(batches, None)
            except _READ_ERRORS as exc:
                raise InputUnreadable(
                    f"{self.name}: cannot read the Parquet data ({describe_error(exc)})"
                ) from exc
            if batch is not None:
                pending.append(batch)
            rows = sum(b.num_rows for b in pending)
            if rows and (batch is None or rows >= self.options.chunk_rows):
                yield self._chunk(pa.Table.from_batches(pending), done)
                done += rows
                pending = []
            if batch is None:
                return

    def _chunk(self, table: pa.Table, done: int) -> Chunk:
        columns = {name: plain_values(table.column(i)) for i, name in enumerate(self.columns)}
        # Typed explicitly: pandas would turn an integer column with nulls into floats.
        frame = pd.DataFrame(columns, columns=self.columns, dtype=object)
        records = np.arange(done + 1, done + table.num_rows + 1, dtype=np.int64)
        return Chunk(frame, records, records.copy())


#: Arrow types whose Python values a payload carries as they are.
_AS_IS = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
          pa.types.is_large_string, pa.types.is_null)  # fmt: skip


def plain_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """A column's values as Python values a payload can carry (None for a null)."""
    values = column.to_pylist()
    if any(is_type(column.type) for is_type in _AS_IS):
        return values
    return [None if value is None else plain_value(value) for value in values]
