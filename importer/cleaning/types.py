"""What a file's first chunk decides for the whole file.

Owns: deciding whether a custom attribute of a CSV file is an ``int``,
``float``, ``bool``, ``date`` or ``string`` column, so that one file never
sends a column with mixed types; and the day and month order of each date
column's dates like ``3/4/2021``, from the file's own evidence.

Must not: clean cells or decide a row's fate (that is
:mod:`importer.cleaning.chunk`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..fields import STANDARD_FIELDS
from ..mapping import ColumnMapping
from ..source import Chunk
from .rules import BOOLEANS, FIELD_RULES, FLOAT_TEXT, SLASH_DATE, clean_date, clean_int

#: What is left of a decimal's text once sign, point and exponent are taken out.
_NOT_DIGITS = re.compile(r"[-.]|[eE].*$")
#: Significant digits that survive a round trip through a double.
_FLOAT_DIGITS = 15


class DateOrder(NamedTuple):
    """How one column's dates like ``3/4/2021`` are read, and what decided it."""

    #: ``month-first`` or ``day-first``.
    order: str
    #: ``file`` (a part above 12 showed it), ``default`` (nothing did) or ``option``.
    decided_by: str


def infer_column_types(
    chunk: Chunk, mapping: ColumnMapping, date_order: str = "auto"
) -> dict[str, str]:
    """One type per custom-attribute column of a CSV file, from its first chunk.

    A column is ``int``, ``float``, ``bool`` or ``date`` when every non-empty
    value in ``chunk`` parses as that type without loss (so ``00123``, ``+5``
    or ``1.0`` in an integer-looking column keep it text), else ``string``.
    Standard fields and columns typed in ``mapping.types`` are left out.
    Dates like ``3/4/2021`` are read in the order ``date_order`` gives (see
    :func:`decide_date_orders`). Call it once, on the first chunk, and pass
    the result to every :func:`~importer.cleaning.clean_chunk` of the file.
    """
    frame = chunk.frame
    types: dict[str, str] = {}
    for src, target in mapping.targets.items():
        if target in STANDARD_FIELDS or target in mapping.types or src not in frame.columns:
            continue
        values = _distinct_text(frame[src].to_numpy(dtype=object))
        types[target] = _column_type(values, date_order)
    return types


def decide_date_orders(
    chunk: Chunk, mapping: ColumnMapping, column_types: dict[str, str], date_order: str = "auto"
) -> dict[str, DateOrder]:
    """The order of each date column (by input column) whose cells in ``chunk`` hold dates
    like ``3/4/2021``.

    ``date_order`` ``month-first`` or ``day-first`` decides for every such
    column; ``auto`` decides per column: day first if a first part is above
    12, month first if a second part is (or, with neither, by default).
    Date columns are the standard ones and those ``column_types`` or
    ``mapping.types`` say are dates. Call it once, on the first chunk, and
    pass the result to every :func:`~importer.cleaning.clean_chunk` of the
    file; a column not in it is read month first (or as ``date_order`` says).
    """
    types = {**column_types, **mapping.types}
    orders: dict[str, DateOrder] = {}
    for src, target in mapping.targets.items():
        is_date = FIELD_RULES.get(target) is clean_date or types.get(target) == "date"
        if is_date and src in chunk.frame.columns:
            values = _distinct_text(chunk.frame[src].to_numpy(dtype=object))
            order = _date_order(values, date_order)
            if order is not None:
                orders[src] = order
    return orders


def _date_order(values: Iterable[str], date_order: str) -> DateOrder | None:
    """The order of ``values``' dates like ``3/4/2021``; None if none of them is one."""
    parts = [(int(m[1]), int(m[3])) for value in values if (m := SLASH_DATE.match(value))]
    if not parts:
        return None
    if date_order != "auto":
        return DateOrder(date_order, "option")
    if any(first > 12 for first, _ in parts):
        return DateOrder("day-first", "file")
    if any(second > 12 for _, second in parts):
        return DateOrder("month-first", "file")
    return DateOrder("month-first", "default")


def _distinct_text(cells: np.ndarray) -> set[str]:
    """The distinct trimmed non-empty text cells of a column (JSON values that are not text
    are left out)."""
    text = np.asarray([cell for cell in cells.tolist() if isinstance(cell, str)], dtype=object)
    return {cell.strip() for cell in pd.unique(text).tolist()} - {""}


def _column_type(values: set[str], date_order: str) -> str:
    # Every test holds for all values exactly when it holds for the distinct ones.
    if not values:
        return "string"
    if all(clean_int(v)[1] is None for v in values):
        return "int"
    if all(
        FLOAT_TEXT.fullmatch(v) and len(_NOT_DIGITS.sub("", v).lstrip("0")) <= _FLOAT_DIGITS
        for v in values
    ):
        return "float"
    if all(v.lower() in BOOLEANS for v in values):
        return "bool"
    order = _date_order(values, date_order)
    day_first = order is not None and order.order == "day-first"
    if all(clean_date(v, day_first)[1] is None for v in values):
        return "date"
    return "string"
