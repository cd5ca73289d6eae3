"""Cleaning a chunk: apply the rules to its columns and decide each row's fate.

Owns: trimming cells and telling empty ones, applying each field's rule once
per distinct value of a column (a phone's once per distinct number and row
country), the subscription groups built from two columns, ``--on-invalid``
and ``--empty-as-null``, and the rejects with their reasons. Every row
leaves as a :class:`~importer.records.Customer` or a
:class:`~importer.records.Reject` (with ``drop-field``, a customer and a
reject for each field left out).

Must not: read files, send anything, merge repeated customers, or keep state
between chunks other than the column types and date orders the caller passes in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UsageError
from ..fields import COLUMN_TYPES, GROUP_ID, GROUP_SUBSCRIBED, IDENTIFIERS
from ..mapping import ColumnMapping
from ..options import ImportOptions
from ..records import FIELD_DROPPED, REJECTED, Customer, Reject
from ..source import Chunk
from .rules import (
    FIELD_RULES,
    TYPE_RULES,
    Rule,
    clean_date,
    clean_phone,
    country_code,
    keep_value,
    phone_region,
    translated,
)
from .types import DateOrder, decide_date_orders

#: Marks a value left out of the payload (``None`` is a JSON null, sent only
#: with ``--empty-as-null``).
_OMIT: Any = object()


class InvalidRecord(UsageError):
    """``--on-invalid stop`` met a row it would have rejected; names its record and line."""


@dataclass
class CleanResult:
    """The outcome of cleaning one chunk: the customers to send and the rows refused."""

    customers: list[Customer] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


@dataclass
class _Field:
    """One target field of a chunk after cleaning, one item per row.

    ``values`` holds the payload value (:data:`_OMIT` where empty or invalid),
    ``reasons`` why a cell is invalid; ``column`` and ``raw`` the input column
    and the cell as read, for a reject to quote.
    """

    values: np.ndarray
    reasons: np.ndarray
    empty: np.ndarray
    column: np.ndarray
    raw: np.ndarray
    bad: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.bad = pd.notna(self.reasons)


def clean_chunk(
    chunk: Chunk,
    mapping: ColumnMapping,
    options: ImportOptions | None = None,
    column_types: dict[str, str] | None = None,
    date_orders: dict[str, DateOrder] | None = None,
) -> CleanResult:
    """Clean one chunk into customers and rejects.

    ``mapping`` says which column feeds which field; its ``types`` declare
    custom-attribute types and win over ``column_types`` (from
    :func:`~importer.cleaning.infer_column_types`). Custom attributes without
    a type keep their value as read (CSV text, JSON values). ``date_orders``
    (from :func:`~importer.cleaning.decide_date_orders`, by input column;
    default: decided from this chunk) say which date columns are day first.
    ``options`` supplies ``phone_region``, ``on_invalid``, ``empty_as_null``
    and ``date_order`` (defaults: ``US``, ``drop-field``, False, ``auto``).
    National phone numbers are read in the row's country when
    ``mapping.phone_country`` names a column holding one. Source rejects in
    ``chunk`` come first among the rejects.

    Raises :class:`InvalidRecord` at the chunk's first bad row when
    ``on_invalid`` is ``stop``, and :class:`UsageError` for an unknown phone
    region or column type.
    """
    options = options or ImportOptions()
    region = phone_region(options.phone_region)
    types = {**(column_types or {}), **mapping.types}
    for target, kind in types.items():
        if kind not in COLUMN_TYPES:
            raise UsageError(
                f"unknown type {kind!r} for {target!r}; use one of {', '.join(COLUMN_TYPES)}"
            )
    if date_orders is None:
        date_orders = decide_date_orders(chunk, mapping, types, options.date_order)
    frame = chunk.frame
    fields: dict[str, _Field] = {}
    pair: dict[str, _Field] = {}
    regions = _phone_regions(frame, mapping.phone_country, region)
    for src, target in mapping.targets.items():
        if src not in frame.columns or not len(frame):
            continue
        cells = frame[src].to_numpy(dtype=object)
        spec = mapping.translations.get(src)
        if target == "phone_number" or types.get(target) == "phone":
            cleaned = _clean_phones(src, cells, regions)
        else:
            rule = FIELD_RULES.get(target) or TYPE_RULES.get(types.get(target, ""), keep_value)
            # A column without dates like 3/4/2021 in the first chunk: as --date-order says.
            order = date_orders[src].order if src in date_orders else options.date_order
            if rule is clean_date and order == "day-first":
                rule = partial(clean_date, day_first=True)
            if spec is not None:
                rule = translated(rule, spec.values, spec.invert, spec.split)
            cleaned = _clean_column(rule, src, cells)
        if target in (GROUP_ID, GROUP_SUBSCRIBED):
            pair[target] = cleaned  # combined into subscription_groups below
        else:
            fields[target] = cleaned
    if pair or "subscription_groups" in fields:
        fields["subscription_groups"] = _groups(fields.get("subscription_groups"), pair, len(frame))
    result = _settle(
        fields, np.asarray(chunk.records), np.asarray(chunk.lines), options, mapping.identifier_hint
    )
    result.rejects[:0] = chunk.rejects
    if options.on_invalid == "stop" and result.rejects:
        first = min(result.rejects, key=lambda r: r.record)
        where = f" in column {first.column!r}" if first.column else ""
        raise InvalidRecord(
            f"stopped at record {first.record} (line {first.line}){where}: {first.reason} "
            "(--on-invalid stop)"
        )
    return result


def _clean_column(rule: Rule, src: str, cells: np.ndarray) -> _Field:
    """Trim the cells of one column and apply ``rule`` to those that are not empty.

    Text is cleaned once per distinct value. Other JSON values (numbers,
    booleans, arrays, objects) are cleaned one by one: arrays cannot be
    hashed, and as keys ``1``, ``1.0`` and ``True`` would be one value.
    """
    n = len(cells)
    if pd.api.types.infer_dtype(cells, skipna=False) == "string":
        text = np.ones(n, bool)  # every cell of a CSV chunk
    else:
        text = np.fromiter((isinstance(c, str) for c in cells), bool, n)
    values = np.full(n, _OMIT, object)
    reasons = np.full(n, None, object)
    empty = np.zeros(n, bool)
    if text.any():
        codes, distinct = pd.factorize(cells[text])
        values[text], reasons[text], empty[text] = (a[codes] for a in _apply(rule, distinct))
    if not text.all():
        values[~text], reasons[~text], empty[~text] = _apply(rule, cells[~text])
    return _Field(values, reasons, empty, np.full(n, src, object), cells)


def _phone_regions(frame: pd.DataFrame, column: str | None, default: str) -> np.ndarray:
    """The region each row's national phone numbers are read in.

    The row's country (see :func:`~importer.cleaning.rules.country_code`)
    where ``column`` holds one, ``default`` (``--phone-region``) where it is
    empty or the file has no such column.
    """
    if column is None or column not in frame.columns:
        return np.full(len(frame), default, object)
    # JSON values that are not text (numbers, lists) name no country.
    cells = [c if isinstance(c, str) else None for c in frame[column].to_numpy(dtype=object)]
    codes, countries = pd.factorize(np.asarray(cells, dtype=object))
    regions = [country_code(c) if isinstance(c, str) and c.strip() else default for c in countries]
    # factorize codes a missing cell -1: the last item appended stands for it.
    return np.asarray([*regions, default], dtype=object)[codes]


def _clean_phones(src: str, cells: np.ndarray, regions: np.ndarray) -> _Field:
    """Clean a phone column, each number in its row's region: once per distinct
    (number, region) pair."""
    n = len(cells)
    values = np.full(n, _OMIT, object)
    reasons = np.full(n, None, object)
    empty = np.zeros(n, bool)
    codes, distinct = pd.factorize(regions)
    for i, region in enumerate(distinct.tolist()):
        rows = codes == i
        part = _clean_column(partial(clean_phone, region=region), src, cells[rows])
        values[rows], reasons[rows], empty[rows] = part.values, part.reasons, part.empty
    return _Field(values, reasons, empty, np.full(n, src, object), cells)


def _apply(rule: Rule, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each cell's payload value (or :data:`_OMIT`), reason, and whether it is empty."""
    k = len(cells)
    values = np.full(k, _OMIT, object)
    reasons = np.full(k, None, object)
    empty = np.zeros(k, bool)
    for j, cell in enumerate(cells.tolist()):
        if isinstance(cell, str):
            cell = cell.strip()
            missing = not cell
        else:
            # JSON null, or a key this JSONL line lacks.
            missing = (
                cell is None or cell is pd.NA or (isinstance(cell, float) and math.isnan(cell))
            )
        if missing:
            empty[j] = True
            continue
        value, reason = rule(cell)
        if reason is None:
            values[j] = value
        else:
            reasons[j] = reason
    return values, reasons, empty


def _absent(name: str, n: int) -> _Field:
    """A column the input lacks: every cell empty."""
    return _Field(
        np.full(n, _OMIT, object),
        np.full(n, None, object),
        np.ones(n, bool),
        np.full(n, name, object),
        np.full(n, None, object),
    )


def _groups(json: _Field | None, pair: dict[str, _Field], n: int) -> _Field:
    """``subscription_groups`` per row: the JSON column's groups, then the pair's one group.

    The pair is ``subscription_group_id`` + ``subscription_group_subscribed``;
    both must be filled.
    """
    if not pair and json is not None:
        return json
    ids = pair.get(GROUP_ID) or _absent(GROUP_ID, n)
    flags = pair.get(GROUP_SUBSCRIBED) or _absent(GROUP_SUBSCRIBED, n)
    json = json or _absent("subscription_groups", n)
    values = np.full(n, _OMIT, object)
    reasons = np.full(n, None, object)
    column = json.column.copy()
    raw = json.raw.copy()
    empty = json.empty & ids.empty & flags.empty
    for i in np.flatnonzero(~empty).tolist():
        groups = None if json.empty[i] or json.bad[i] else json.values[i]
        culprit, why = None, ""
        if ids.bad[i]:
            culprit, why = ids, "the id must be text or a number"
        elif flags.bad[i] or (flags.empty[i] and not ids.empty[i]):
            culprit, why = flags, "subscription_group_subscribed must be true or false"
        elif ids.empty[i] and not flags.empty[i]:
            culprit, why = flags, "subscribed without a subscription_group_id"
        elif not ids.empty[i]:
            groups = [*(groups or []), {"id": ids.values[i], "subscribed": flags.values[i]}]
        if json.bad[i]:
            reasons[i] = json.reasons[i]
        elif culprit is not None:
            reasons[i] = f"invalid subscription groups: {why}"
            column[i], raw[i] = culprit.column[i], culprit.raw[i]
        elif groups is not None:
            values[i] = groups
    return _Field(values, reasons, empty, column, raw)


def _settle(
    fields: dict[str, _Field],
    records: np.ndarray,
    lines: np.ndarray,
    options: ImportOptions,
    hint: str | None = None,
) -> CleanResult:
    """Decide each row's fate: a customer, a reject, or (drop-field) both.

    ``hint`` (a ``--map`` that would give rows a ``customer_id``) is added to
    the reason of a row rejected for want of a valid identifier."""
    tail = f" (the file's record id would be one with {hint})" if hint else ""
    missing = "missing identifier: no email or customer_id" + tail
    n = len(records)
    drop_field = options.on_invalid == "drop-field"
    # A reject names the first bad field, identifiers first.
    order = [f for f in IDENTIFIERS if f in fields] + [f for f in fields if f not in IDENTIFIERS]
    has_id = np.zeros(n, bool)
    for name in IDENTIFIERS:
        if name in fields:
            has_id |= ~fields[name].empty & ~fields[name].bad
    any_bad = np.zeros(n, bool)
    for f in fields.values():
        any_bad |= f.bad
    rejected = ~has_id if drop_field else ~has_id | any_bad

    def reject(pos: int, name: str | None, outcome: str = REJECTED) -> Reject:
        if name is None:
            return Reject(int(records[pos]), int(lines[pos]), missing)
        f = fields[name]
        return Reject(
            int(records[pos]),
            int(lines[pos]),
            str(f.reasons[pos]) + ("" if has_id[pos] or outcome != REJECTED else tail),
            column=str(f.column[pos]),
            value=f.raw[pos],
            identifier=_identifier(fields, pos),
            outcome=outcome,
        )

    rejects = [
        reject(pos, next((f for f in order if fields[f].bad[pos]), None))
        for pos in np.flatnonzero(rejected).tolist()
    ]
    if drop_field:
        rejects += [
            reject(pos, f, FIELD_DROPPED)
            for pos in np.flatnonzero(any_bad & ~rejected).tolist()
            for f in order
            if fields[f].bad[pos]
        ]
    keep = np.flatnonzero(~rejected)
    payloads: list[dict[str, Any]] = [{} for _ in range(len(keep))]
    omit = _OMIT
    # A field at a time: less than half the cost of zipping each row's values into a dict.
    for name in order:
        values = fields[name].values
        if options.empty_as_null and name not in IDENTIFIERS:
            values = values.copy()
            values[fields[name].empty] = None
        for payload, value in zip(payloads, values[keep].tolist(), strict=True):
            if value is not omit:
                payload[name] = value
    customers = [
        Customer(payload, record, line)
        for payload, record, line in zip(
            payloads, records[keep].tolist(), lines[keep].tolist(), strict=True
        )
    ]
    return CleanResult(customers, rejects)


def _identifier(fields: dict[str, _Field], pos: int) -> str | None:
    """The row's valid email, else its valid customer_id, else None."""
    for name in IDENTIFIERS:
        f = fields.get(name)
        if f is not None and not f.empty[pos] and not f.bad[pos]:
            return str(f.values[pos])
    return None
