"""Plain values passed between the pipeline stages.

Nothing here does I/O or holds a reference to another stage's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Payload = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Reject:
    """A row (or one field of it) that validation refused.

    ``record`` is the 1-based record number in the input, header excluded
    (for JSONL, the line number); ``line`` the physical line it starts on.
    ``column`` and ``value`` name the offending cell when there is one.
    ``dropped_field`` is true when only that field was dropped and the row
    was still sent (``--on-invalid drop-field``).
    """

    record: int
    line: int
    reason: str
    column: str | None = None
    value: Any = None
    identifier: str | None = None
    dropped_field: bool = False


@dataclass(frozen=True, slots=True)
class Customer:
    """One clean payload ready to send, with where it came from."""

    payload: Payload
    record: int
    line: int
    #: Records merged into this one (repeats of the same customer), for accounting.
    merged_records: tuple[int, ...] = ()

    @property
    def identifier(self) -> str | None:
        """The email if there is one, else the customer_id."""
        ident = self.payload.get("email") or self.payload.get("customer_id")
        return None if ident is None else str(ident)


@dataclass(frozen=True, slots=True)
class Batch:
    """At most 50 customers that travel in one API call."""

    customers: tuple[Customer, ...]
    #: Each customer's payload as JSON, encoded once by batching and reused by every attempt.
    encoded: tuple[bytes, ...]
    seq: int = 0

    def __len__(self) -> int:
        return len(self.customers)

    def body(self) -> bytes:
        """The request body ``{"customers": [...]}`` for this batch."""
        return b'{"customers":[' + b",".join(self.encoded) + b"]}"

    def split(self) -> tuple[Batch, Batch]:
        """Two halves (the first one larger when the size is odd)."""
        mid = (len(self.customers) + 1) // 2
        return (
            Batch(self.customers[:mid], self.encoded[:mid], self.seq),
            Batch(self.customers[mid:], self.encoded[mid:], self.seq),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What finally happened to one customer after the sender was done with it."""

    customer: Customer
    delivered: bool
    status: int | None = None
    error: str | None = None
    attempts: int = 1
    #: ``http`` (an HTTP status), ``record`` (a per-record error in a 2xx) or ``network``.
    kind: str = "http"
    extra: dict[str, Any] = field(default_factory=dict)
