"""Batching stage: pack clean customers into API calls of at most 50.

Owns: the 50-per-call hard limit and the request-body byte ceiling. Each
customer's JSON comes with it (encoded once, when the customer is made) and
is reused by every attempt. Batches are full across chunk boundaries: only
the last one may be partial.

Must not: send, retry, or look at why a customer exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .options import MAX_BATCH_SIZE
from .records import Batch, Customer

#: Bytes of ``{"customers":[`` + ``]}``.
_ENVELOPE = 16


def pack_batches(
    customers: Iterable[Customer], size: int = MAX_BATCH_SIZE, max_bytes: int = 1_000_000
) -> Iterator[Batch]:
    """Yield batches of ``min(size, 50)`` customers whose body stays under ``max_bytes``.

    A customer whose payload alone exceeds ``max_bytes`` still travels, alone
    in its batch: the API, not the packer, decides whether it is too large.
    """
    packer = BatchPacker(size, max_bytes)
    for customer in customers:
        yield from packer.add((customer,))
    yield from packer.flush()


class BatchPacker:
    """Incremental form of :func:`pack_batches` for a stream fed chunk by chunk.

    ``add`` returns the batches completed so far; ``flush`` the last partial one.
    """

    def __init__(self, size: int = MAX_BATCH_SIZE, max_bytes: int = 1_000_000):
        self.size = min(size, MAX_BATCH_SIZE)
        self.max_bytes = max_bytes
        self._group: list[Customer] = []
        self._nbytes = _ENVELOPE
        self._seq = 0

    def _emit(self) -> Batch:
        batch = Batch(tuple(self._group), self._seq)
        self._seq += 1
        self._group, self._nbytes = [], _ENVELOPE
        return batch

    def add(self, customers: Iterable[Customer]) -> list[Batch]:
        """Add customers; return the batches that became full."""
        done: list[Batch] = []
        for customer in customers:
            data = customer.encoded
            if self._group and (
                len(self._group) >= self.size or self._nbytes + len(data) + 1 > self.max_bytes
            ):
                done.append(self._emit())
            self._group.append(customer)
            self._nbytes += len(data) + 1
        return done

    def flush(self) -> list[Batch]:
        """The last, possibly partial, batch (or nothing)."""
        return [self._emit()] if self._group else []
