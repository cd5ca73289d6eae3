"""Plain values passed between the pipeline stages.

Nothing here does I/O or holds a reference to another stage's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

Payload = dict[str, Any]


#: What became of a row the rejects file lists: not sent; sent without the named
#: field; sent as its own customer although its email is another customer_id's,
#: or merged with a row of the same email and another platform record id.
REJECTED, FIELD_DROPPED, CONFLICT = "rejected", "field dropped", "conflict"


@dataclass(frozen=True, slots=True)
class Reject:
    """A line of the rejects file: a row refused, or a row sent with a remark.

    ``record`` is the 1-based record number in the input, header excluded
    (for JSONL, the line number); ``line`` the physical line it starts on.
    ``column`` and ``value`` name the offending cell when there is one.
    ``outcome`` is :data:`REJECTED` (the row was not sent),
    :data:`FIELD_DROPPED` (sent without that field) or :data:`CONFLICT`
    (another row has its email and another customer_id, so it was sent
    unmerged; or another platform record id, so it was merged).
    """

    record: int
    line: int
    reason: str
    column: str | None = None
    value: Any = None
    identifier: str | None = None
    outcome: str = REJECTED


@dataclass(frozen=True, slots=True, repr=False)
class Customer:
    """One clean payload ready to send, with where it came from.

    ``payload`` is the dict sent for this customer (read-only: customers of
    one chunk share values, and ``encoded``, its JSON exactly as a request
    carries it, is made from it once). ``record`` and ``line`` locate its row;
    ``merged_records`` lists the records merged into it, for accounting.
    Customers compare by everything but ``encoded``.
    """

    payload: Payload
    record: int
    line: int
    merged_records: tuple[int, ...] = ()
    encoded: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded", encode_payload(self.payload))

    @property
    def key(self) -> str | None:
        """The merge key (see :func:`customer_key`)."""
        return customer_key(self.payload)

    @property
    def identifier(self) -> str | None:
        """The email if there is one, else the customer_id."""
        key = self.key
        return None if key is None else key.removeprefix("\0")

    def __repr__(self) -> str:
        # Field names only: the values are personal data.
        return (
            f"Customer(record={self.record}, line={self.line}, "
            f"merged_records={self.merged_records!r}, fields={sorted(self.payload)!r})"
        )


def customer_key(payload: Payload) -> str | None:
    """The merge key: the email, else ``\\0`` + customer_id (the two never collide)."""
    email = payload.get("email")
    if email:
        return str(email)
    cid = payload.get("customer_id")
    return None if cid is None or cid == "" else "\0" + str(cid)


def encode_payload(payload: Payload) -> bytes:
    """Strict JSON for one payload (orjson writes NaN and Infinity as null, never bare).

    Keys are sorted, at every level, so the bytes do not depend on the order of
    the input's columns: the state hashes exactly these bytes to tell whether a
    customer changed since the last confirmed import.
    """
    # orjson returns its working buffer (some 4 KiB whatever the payload's size): a copy
    # of the JSON's own length keeps a chunk of 20,000 customers at 5 MB instead of 80.
    return memoryview(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).tobytes()


@dataclass(frozen=True, slots=True)
class Batch:
    """At most 50 customers that travel in one API call."""

    customers: tuple[Customer, ...]
    seq: int = 0

    def __len__(self) -> int:
        return len(self.customers)

    def body(self) -> bytes:
        """The request body ``{"customers": [...]}`` for this batch."""
        return b'{"customers":[' + b",".join(c.encoded for c in self.customers) + b"]}"

    def split(self) -> tuple[Batch, Batch]:
        """Two halves (the first one larger when the size is odd)."""
        mid = (len(self.customers) + 1) // 2
        return (
            Batch(self.customers[:mid], self.seq),
            Batch(self.customers[mid:], self.seq),
        )


class Outcome(NamedTuple):
    """What finally happened to one customer after the sender was done with it."""

    customer: Customer
    delivered: bool
    status: int | None = None
    error: str | None = None
    attempts: int = 1
    #: ``http``, ``record`` (an error in a 2xx), ``timeout``, ``connection`` or ``unconfirmed``.
    kind: str = "http"
