"""Cleaning stage: turn a mapped chunk into customers or rejects.

Owns: normalising values (trim, case, formats), the API's field rules, the
types of custom attributes, and the reasons rows are refused. :mod:`.rules`
holds the rule of each field or type, :mod:`.chunk` applies them (each once
per distinct value of a column) and decides each row's fate, :mod:`.types`
decides from a file's first chunk the type of each custom attribute and the
day and month order of each date column.

Must not: read files, send anything, or merge repeated customers.
"""

from __future__ import annotations

from .chunk import CleanResult, InvalidRecord, clean_chunk
from .types import DateOrder, decide_date_orders, infer_column_types

__all__ = [
    "CleanResult",
    "DateOrder",
    "InvalidRecord",
    "clean_chunk",
    "decide_date_orders",
    "infer_column_types",
]
