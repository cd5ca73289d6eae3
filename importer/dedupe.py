"""Dedupe stage: merge repeated customers before they are sent.

Owns: deciding which clean payloads belong to one customer (the same
normalised email, else the same customer_id) and merging them, later
non-empty values winning, so one profile is updated once, by one record. The
window is the list it is given (the pipeline passes one chunk): repeats
further apart are sent as separate updates, in file order.

Must not: validate or normalise values, or hold customers across calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import Customer, Payload


def merge_payloads(earlier: Payload, later: Payload) -> Payload:
    """``earlier`` updated by ``later``: later non-empty values win.

    A ``None`` (sent as null with ``--empty-as-null``) never overwrites a
    value. ``subscription_groups`` are combined by group id, the later entry
    for an id winning, so a file with one row per membership keeps them all.
    """
    merged = dict(earlier)
    for key, value in later.items():
        if value is None and merged.get(key) is not None:
            continue
        if key == "subscription_groups" and isinstance(value, list):
            merged[key] = _merge_groups(merged.get(key), value)
        else:
            merged[key] = value
    return merged


def _merge_groups(earlier: Any, later: list[Any]) -> list[Any]:
    if not isinstance(earlier, list):
        return list(later)
    by_id: dict[Any, Any] = {}
    for group in [*earlier, *later]:
        by_id[group.get("id") if isinstance(group, dict) else id(group)] = group
    return list(by_id.values())


def merge_repeats(customers: Sequence[Customer]) -> tuple[Sequence[Customer], int]:
    """Merge customers that share a key; return the merged list and how many were merged away.

    The merged customer keeps the first row's place, record and line; the
    records merged into it are listed in ``merged_records``. Customers are
    otherwise returned in their original order. Without repeats, the very
    sequence given is returned.
    """
    keys = [c.key for c in customers]
    if len(set(keys)) == len(keys):
        return customers, 0
    first_at: dict[str, int] = {}
    out: list[Customer | None] = []
    merged = 0
    for customer, key in zip(customers, keys, strict=True):
        at = first_at.get(key) if key is not None else None
        if at is None:
            if key is not None:
                first_at[key] = len(out)
            out.append(customer)
            continue
        kept = out[at]
        assert kept is not None
        out[at] = Customer(
            merge_payloads(kept.payload, customer.payload),
            kept.record,
            kept.line,
            (*kept.merged_records, customer.record, *customer.merged_records),
        )
        merged += 1
    return [c for c in out if c is not None], merged
