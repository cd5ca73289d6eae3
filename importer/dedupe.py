"""Dedupe stage: merge repeated customers before they are sent.

Owns: deciding which clean payloads belong to one customer (the same
normalised email, else the same customer_id) and merging them, later
non-empty values winning, so one profile is updated once, by one record.
Rows that share an email but carry different customer_ids are different
customers: they are never merged, and each such row is reported as a
conflict. Rows that share an email and carry different platform record ids
(a preset's ``record_id``, e.g. Stripe's ``cus_`` id, kept as an attribute)
are one Blueshift profile, keyed by that email: they are merged, and each
is reported as a conflict naming both ids, so no id is lost unseen. The
window is the list it is given (the pipeline passes one
chunk): repeats further apart are sent as separate updates, in file order.

Must not: validate or normalise values, or hold customers across calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import CONFLICT, Customer, Payload, Reject


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


def merge_repeats(
    customers: Sequence[Customer], record_id: str | None = None
) -> tuple[Sequence[Customer], int, list[Reject]]:
    """Merge customers that share a key; return the merged list, how many were merged away,
    and the conflicts.

    The merged customer keeps the first row's place, record and line; the
    records merged into it are listed in ``merged_records``. A customer whose
    email an earlier one has, but with another customer_id, keeps a place of
    its own; both rows get a :data:`~importer.records.CONFLICT` line (the
    earlier one once). ``record_id`` names the payload field holding the
    platform's record id (:attr:`importer.mapping.ColumnMapping.record_id`):
    a customer merged into one whose value of it differs is merged all the
    same, and both get a conflict line naming the other's id. Customers are
    otherwise returned in their original order. Without repeats, the very
    sequence given is returned.
    """
    keys = [c.key for c in customers]
    if len(set(keys)) == len(keys):
        return customers, 0, []
    places: dict[str, list[int]] = {}
    out: list[Customer] = []
    merged = 0
    conflicts: dict[int, Reject] = {}
    ids: dict[int, dict[Any, Customer]] = {}
    for customer, key in zip(customers, keys, strict=True):
        taken = places.setdefault(key, []) if key is not None else []
        at = next((i for i in taken if _same_customer(out[i], customer)), None)
        if at is None:
            if taken:
                first = out[taken[0]]
                conflicts.setdefault(first.record, _conflict(first, customer))
                conflicts[customer.record] = _conflict(customer, first)
            taken.append(len(out))
            out.append(customer)
            continue
        kept = out[at]
        if record_id is not None:
            # The rows merged into this profile by their record id, the first of each:
            # later rows overwrite the profile's value, so each id is named here instead.
            seen = ids.setdefault(at, _record_ids([kept], record_id))
            theirs = customer.payload.get(record_id)
            other = next(iter(seen.values()), None)
            if theirs is not None and theirs not in seen and other is not None:
                conflicts.setdefault(other.record, _merged(other, customer, record_id))
                conflicts[customer.record] = _merged(customer, other, record_id)
            if theirs is not None:
                seen.setdefault(theirs, customer)
        out[at] = Customer(
            merge_payloads(kept.payload, customer.payload),
            kept.record,
            kept.line,
            (*kept.merged_records, customer.record, *customer.merged_records),
        )
        merged += 1
    return out, merged, sorted(conflicts.values(), key=lambda r: r.record)


def _same_customer(kept: Customer, later: Customer) -> bool:
    """False when both carry a customer_id and the two differ."""
    ids = kept.payload.get("customer_id"), later.payload.get("customer_id")
    return None in ids or ids[0] == ids[1]


def _record_ids(customers: list[Customer], record_id: str) -> dict[Any, Customer]:
    return {c.payload[record_id]: c for c in customers if c.payload.get(record_id) is not None}


def _merged(customer: Customer, other: Customer, record_id: str) -> Reject:
    """The rejects-file line saying ``customer`` was merged with ``other``, which has
    another platform record id."""
    return Reject(
        customer.record,
        customer.line,
        f"conflict: email shared with {record_id} {other.payload[record_id]} "
        f"(record {other.record}); merged into one profile, later values winning",
        column=record_id,
        value=customer.payload[record_id],
        identifier=customer.identifier,
        outcome=CONFLICT,
    )


def _conflict(customer: Customer, other: Customer) -> Reject:
    """The rejects-file line saying ``customer`` was sent unmerged from ``other``."""
    return Reject(
        customer.record,
        customer.line,
        f"conflict: email shared with customer_id {other.payload['customer_id']} "
        f"(record {other.record}); sent as separate customers, not merged",
        column="customer_id",
        value=customer.payload["customer_id"],
        identifier=customer.identifier,
        outcome=CONFLICT,
    )
