"""Inferring the type of each custom-attribute column of a CSV file.

Owns: deciding, from a file's first chunk, whether a custom attribute is an
``int``, ``float``, ``bool``, ``date`` or ``string`` column, so that one file
never sends a column with mixed types.

Must not: clean cells or decide a row's fate (that is
:mod:`importer.cleaning.chunk`).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..fields import STANDARD_FIELDS
from ..mapping import ColumnMapping
from ..source import Chunk
from .rules import BOOLEANS, FLOAT_TEXT, clean_date, clean_int

#: What is left of a decimal's text once sign, point and exponent are taken out.
_NOT_DIGITS = re.compile(r"[-.]|[eE].*$")
#: Significant digits that survive a round trip through a double.
_FLOAT_DIGITS = 15


def infer_column_types(chunk: Chunk, mapping: ColumnMapping) -> dict[str, str]:
    """One type per custom-attribute column of a CSV file, from its first chunk.

    A column is ``int``, ``float``, ``bool`` or ``date`` when every non-empty
    value in ``chunk`` parses as that type without loss (so ``00123``, ``+5``
    or ``1.0`` in an integer-looking column keep it text), else ``string``.
    Standard fields and columns typed in ``mapping.types`` are left out.
    Call it once, on the first chunk, and pass the result to every
    :func:`~importer.cleaning.clean_chunk` of the file.
    """
    frame = chunk.frame
    types: dict[str, str] = {}
    for src, target in mapping.targets.items():
        if target in STANDARD_FIELDS or target in mapping.types or src not in frame.columns:
            continue
        types[target] = _column_type(frame[src].to_numpy(dtype=object))
    return types


def _column_type(cells: np.ndarray) -> str:
    if pd.api.types.infer_dtype(cells, skipna=True) != "string":
        return "string"  # all empty, or JSON values that are not text
    # Every test holds for all values exactly when it holds for the distinct ones.
    values = {cell.strip() for cell in pd.unique(cells[pd.notna(cells)]).tolist()} - {""}
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
    if all(clean_date(v)[1] is None for v in values):
        return "date"
    return "string"
