"""Cleaning stage: turn a mapped chunk into payloads or rejects, vectorised.

Owns: normalising values (trim, case, formats), the API's field rules, and
the reasons rows are refused. Every row of a chunk leaves either as a
:class:`~importer.records.Customer` payload or as a
:class:`~importer.records.Reject`. Works column by column with pandas; per-row
Python only where a payload dict is finally built.

Must not: read files, send anything, or keep state between chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .mapping import ColumnMapping
from .records import Customer, Reject
from .source import Chunk

IDENTIFIERS = ("email", "customer_id")


@dataclass
class CleanResult:
    """The outcome of cleaning one chunk."""

    customers: list[Customer] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _strip_text(series: pd.Series) -> pd.Series:
    """Trim string cells and turn empty or missing cells into None; leave other types alone."""
    values = series.astype(object)
    is_text = values.map(type).eq(str)
    if is_text.all():
        stripped = values.str.strip()
    else:
        stripped = values.copy()
        stripped[is_text] = values[is_text].str.strip()
    empty = stripped.isna() | (is_text & stripped.eq(""))
    return stripped.where(~empty, None).astype(object)


def clean_chunk(chunk: Chunk, mapping: ColumnMapping) -> CleanResult:
    """Clean one chunk: map columns, trim, drop empty cells, check identifiers.

    Rows with neither ``email`` nor ``customer_id`` are rejected. Empty cells
    are left out of the payload so an import never blanks a profile field.
    """
    result = CleanResult(rejects=list(chunk.rejects))
    frame = chunk.frame
    if frame.empty:
        return result
    columns = {src: tgt for src, tgt in mapping.targets.items() if src in frame.columns}
    data = pd.DataFrame(
        {tgt: _strip_text(frame[src]) for src, tgt in columns.items()}, index=frame.index
    )
    if "email" in data:
        email = data["email"]
        is_text = email.map(type).eq(str)
        data.loc[is_text, "email"] = email[is_text].str.lower()
    has_id = pd.Series(False, index=data.index)
    for ident in IDENTIFIERS:
        if ident in data:
            has_id |= data[ident].notna()
    records = chunk.records
    lines = chunk.lines
    for pos in (~has_id).to_numpy().nonzero()[0]:
        result.rejects.append(
            Reject(
                int(records[pos]), int(lines[pos]), "missing identifier: no email or customer_id"
            )
        )
    keep = has_id.to_numpy()
    rows = data[keep].to_dict("records")
    kept_records = records[keep].tolist()
    kept_lines = lines[keep].tolist()
    result.customers = [
        Customer({k: v for k, v in row.items() if v is not None}, rec, line)
        for row, rec, line in zip(rows, kept_records, kept_lines, strict=True)
    ]
    return result
