"""Records handed over in memory: an iterable of dicts or a pandas DataFrame, in chunks.

Owns: reading such records a chunk at a time (a generator is never turned into
a list, so memory stays bounded), their record numbers (the 1-based position),
and turning their values into what a payload carries. A dict's values keep
their types, as a JSONL line's do, under the same limits (keys, nesting); a
DataFrame's NaN, None and NaT are empty cells; numpy numbers become Python
numbers, timestamps ISO 8601 text (as Parquet's do).

Must not: open files or look at what a value means.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from ..options import ImportOptions
from ..records import Reject
from .chunk import Chunk, plain_value
from .jsonl_rows import check_object, objects_chunk
from .reading import SourceInfo

#: How records handed over in memory are named in the report, the state and the outputs.
RECORDS_NAME = "<records>"

#: What :func:`~importer.import_records` takes.
Records: TypeAlias = Iterable[dict[str, Any]] | pd.DataFrame


def record_value(value: Any) -> Any:
    """One value of a dict or a DataFrame cell as a payload carries it (None when empty)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.datetime64):
        value = pd.Timestamp(value)  # .item() of a nanosecond datetime64 is an integer
    elif isinstance(value, np.generic):
        value = value.item()
    if value is None or (not isinstance(value, list | dict | tuple) and pd.isna(value)):
        return None
    return plain_value(value)


class RecordsSource:
    """Records in memory read like an input file: :attr:`info` and :meth:`chunks`.

    Use as a context manager, like :class:`~.reading.Source`; there are no
    bytes to count, so no size and no percentage.
    """

    bytes_read = 0

    def __init__(self, records: Records, options: ImportOptions | None = None):
        self.records = records
        self.options = options or ImportOptions()
        self.info = SourceInfo(RECORDS_NAME, "records", None, None, None)

    def _dicts(self) -> Iterator[Any]:
        if isinstance(self.records, pd.DataFrame):
            n = self.options.chunk_rows
            for start in range(0, len(self.records), n):
                yield from self.records.iloc[start : start + n].to_dict("records")
        else:
            yield from self.records

    def chunks(self) -> Iterator[Chunk]:
        """Chunks of up to ``chunk_rows`` records, the first ``limit`` of them; a record
        that is not a dict, or breaks a limit (``max_columns``, ``max_json_depth``), is a
        reject."""
        keys: set[str] = set()
        # Not one record past ``limit`` is taken: a generator's records may cost to make.
        numbered = enumerate(itertools.islice(self._dicts(), self.options.limit), start=1)
        while batch := list(itertools.islice(numbered, self.options.chunk_rows)):
            objects: list[dict[str, Any]] = []
            numbers: list[int] = []
            rejects: list[Reject] = []
            for number, record in batch:
                if not isinstance(record, dict):
                    reason = f"expected a dict, found {type(record).__name__}"
                    rejects.append(Reject(number, number, reason))
                    continue
                record = {str(k): record_value(v) for k, v in record.items()}
                reject = check_object(record, number, keys, self.options)
                if reject is not None:
                    rejects.append(reject)
                    continue
                objects.append(record)
                numbers.append(number)
            yield objects_chunk(objects, numbers, rejects)

    def close(self) -> None:
        """Nothing to close: the records belong to the caller."""

    def __enter__(self) -> RecordsSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
