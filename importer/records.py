"""Plain values passed between the pipeline stages.

Nothing here does I/O or holds a reference to another stage's internals.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple, overload

import orjson

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

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


class Customer:
    """One clean payload ready to send, with where it came from.

    The payload exists in two forms: the dict and its JSON encoding, the exact
    bytes a request carries. Cleaning builds the encoding directly, a column
    at a time, so the dict is decoded only when something asks for it (a
    merge, the dead-letter file, a preview); a customer made from a dict is
    encoded once, on first use. ``key`` is the merge key (see
    :func:`customer_key`). Instances are immutable and compare by payload,
    record, line and merged records.
    """

    __slots__ = ("_payload", "_encoded", "_key", "record", "line", "merged_records")

    _payload: Payload | None
    _encoded: bytes | None
    _key: str | None
    record: int
    line: int
    #: Records merged into this one (repeats of the same customer), for accounting.
    merged_records: tuple[int, ...]

    def __init__(
        self,
        payload: Payload | None,
        record: int,
        line: int,
        merged_records: tuple[int, ...] = (),
        *,
        encoded: bytes | None = None,
        key: str | None = None,
    ):
        if payload is None and encoded is None:
            raise ValueError("a customer needs a payload or its encoding")
        setattr_ = object.__setattr__
        setattr_(self, "_payload", payload)
        setattr_(self, "_encoded", encoded)
        setattr_(self, "_key", key)
        setattr_(self, "record", record)
        setattr_(self, "line", line)
        setattr_(self, "merged_records", merged_records)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Customer is immutable: cannot set {name!r}")

    @property
    def payload(self) -> Payload:
        """The payload as a dict (decoded from the JSON on first use)."""
        if self._payload is None:
            object.__setattr__(self, "_payload", orjson.loads(self._encoded))  # type: ignore[arg-type]
        return self._payload  # type: ignore[return-value]

    @property
    def encoded(self) -> bytes:
        """The payload as strict JSON, exactly as a request carries it."""
        if self._encoded is None:
            object.__setattr__(self, "_encoded", encode_payload(self.payload))
        return self._encoded  # type: ignore[return-value]

    @property
    def key(self) -> str | None:
        """The merge key: the email, else ``\\0`` + customer_id; None without either."""
        if self._key is None:
            key = customer_key(self.payload)
            if key is None:
                return None
            object.__setattr__(self, "_key", key)
        return self._key

    @property
    def identifier(self) -> str | None:
        """The email if there is one, else the customer_id."""
        key = self.key
        return None if key is None else key.removeprefix("\0")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Customer):
            return NotImplemented
        return (self.record, self.line, self.merged_records, self.payload) == (
            other.record,
            other.line,
            other.merged_records,
            other.payload,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Customer(record={self.record}, line={self.line}, "
            f"merged_records={self.merged_records!r}, fields={sorted(self.payload)!r})"
        )


_CUSTOMER_SLOTS = ("_payload", "_encoded", "_key", "record", "line", "merged_records")


def new_customers(
    encoded: list[bytes], keys: list[str], records: list[int], lines: list[int]
) -> list[Customer]:
    """``[Customer(None, r, l, encoded=e, key=k) for ...]``, faster: a slot at a time.

    Setting each slot through its descriptor in C loops gives the same objects
    as ``Customer.__init__`` in a fraction of the time.
    """
    n = len(encoded)
    if Customer.__slots__ != _CUSTOMER_SLOTS:  # pragma: no cover - guards a change of Customer
        return [
            Customer(None, r, line, encoded=e, key=k)
            for e, k, r, line in zip(encoded, keys, records, lines, strict=True)
        ]
    with collector_paused():
        customers = list(map(object.__new__, repeat(Customer, n)))
        slots = Customer.__dict__
        for name, values in (
            ("_payload", repeat(None, n)),
            ("_encoded", encoded),
            ("_key", keys),
            ("record", records),
            ("line", lines),
            ("merged_records", repeat((), n)),
        ):
            deque(map(slots[name].__set__, customers, values), maxlen=0)
    return customers


@contextmanager
def collector_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector while many customers are made.

    Tens of thousands of new objects would otherwise set off collections that
    scan them again and again while they are being made. They hold no
    reference cycles, so nothing is left for the collector; it runs as usual
    after. Left disabled if it was.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class CustomerBlock(Sequence[Customer]):
    """The customers of one cleaned chunk, held as columns.

    Cleaning builds every payload's JSON, merge key, record and line a column
    at a time, as pyarrow and numpy arrays. They stay that way until something
    asks for the customers one by one (iterating, indexing, comparing); then
    all the :class:`Customer` objects are made at once and kept. Stages that
    need only the columns, such as looking for repeated keys, never make them.

    ``encoded`` and ``keys`` may hold more rows than the block has customers
    (the whole chunk, rejected rows included): ``positions`` then says which of
    their rows are the customers', in order, so they need not be copied.
    """

    __slots__ = ("encoded", "keys", "records", "lines", "positions", "_items", "_encodings")

    def __init__(
        self,
        encoded: pa.BinaryArray,
        keys: pa.StringArray,
        records: np.ndarray,
        lines: np.ndarray,
        positions: np.ndarray | None = None,
    ):
        rows = len(encoded) if positions is None else len(positions)
        if not (len(encoded) == len(keys) and rows == len(records) == len(lines)):
            raise ValueError("the columns of a customer block differ in length")
        self.encoded = encoded
        self.keys = keys
        self.records = records
        self.lines = lines
        self.positions = positions
        self._items: list[Customer] | None = None
        self._encodings: list[bytes] | None = None

    def _customers(self) -> list[Customer]:
        return self.customers_and_encodings()[0]

    def _mine(self, values: np.ndarray) -> np.ndarray:
        return values if self.positions is None else values[self.positions]

    def customers_and_encodings(self) -> tuple[list[Customer], list[bytes]]:
        """The customers, made now if they were not yet, and each one's encoded payload."""
        if self._items is None or self._encodings is None:
            encodings = self._mine(self.encoded.to_numpy(zero_copy_only=False)).tolist()
            keys = self._mine(self.keys.to_numpy(zero_copy_only=False)).tolist()
            self._encodings = encodings
            self._items = new_customers(encodings, keys, self.records.tolist(), self.lines.tolist())
        return self._items, self._encodings

    def payloads(self) -> pa.BinaryArray:
        """Each customer's encoded payload, as a pyarrow array."""
        return self.encoded if self.positions is None else self.encoded.take(self.positions)

    def merge_keys(self) -> pa.StringArray:
        """Each customer's merge key, as a pyarrow array."""
        return self.keys if self.positions is None else self.keys.take(self.positions)

    def encoded_sizes(self) -> np.ndarray:
        """The length in bytes of each customer's encoded payload."""
        import numpy as np

        offsets = self.encoded.buffers()[1]
        if offsets is None:
            return np.zeros(len(self), np.int64)
        start = self.encoded.offset
        return self._mine(
            np.diff(np.frombuffer(offsets, np.int32)[start : start + len(self.encoded) + 1])
        )

    def has_repeats(self) -> bool:
        """Whether two customers share a merge key (or one has none), from the columns alone."""
        import pyarrow.compute as pc

        keys = self.merge_keys()
        if keys.null_count:
            return True
        return bool(pc.count_distinct(keys).as_py() != len(keys))

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Customer: ...

    @overload
    def __getitem__(self, index: slice) -> list[Customer]: ...

    def __getitem__(self, index: int | slice) -> Customer | list[Customer]:
        return self._customers()[index]

    def __iter__(self) -> Iterator[Customer]:
        return iter(self._customers())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CustomerBlock | list | tuple):
            return self._customers() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CustomerBlock({len(self)} customers)"


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

    The result is copied into a bytes object of its own length: ``orjson.dumps``
    returns its working buffer, which keeps about 4 KiB allocated whatever the
    payload's size, so a chunk of 20,000 encoded customers would hold some
    80 MB instead of 5 MB. The copy costs less than it saves in allocation.
    """
    return memoryview(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).tobytes()


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


class Outcome(NamedTuple):
    """What finally happened to one customer after the sender was done with it.

    A named tuple: one is made per customer sent, so it must be cheap to create.
    """

    customer: Customer
    delivered: bool
    status: int | None = None
    error: str | None = None
    attempts: int = 1
    #: ``http`` (an HTTP status), ``record`` (a per-record error in a 2xx) or ``network``.
    kind: str = "http"


def delivered_outcomes(customers: tuple[Customer, ...], attempts: int) -> list[Outcome]:
    """``[Outcome(c, True, 200, None, attempts) for c in customers]``, made without the
    named tuple's Python-level constructor (the common case: one per customer sent)."""
    new = tuple.__new__
    return [new(Outcome, (c, True, 200, None, attempts, "http")) for c in customers]
