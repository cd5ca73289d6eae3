"""Batching stage: pack clean customers into API calls of at most 50.

Owns: the 50-per-call hard limit and the request-body byte ceiling. Each
customer's JSON comes with it (cleaning encodes it; a customer made from a
dict encodes itself once) and is reused by every attempt. Batches are full
across chunk boundaries: only the last one may be partial. A chunk's
customers usually arrive as a :class:`~importer.records.CustomerBlock`;
its ``Customer`` objects are made here, all at once, and its payload sizes
are read off the block's arrays.

Must not: send, retry, or look at why a customer exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .options import MAX_BATCH_SIZE
from .records import Batch, Customer, CustomerBlock, encode_payload

__all__ = ["BatchPacker", "encode_payload", "pack_batches"]

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
        self._encoded: list[bytes] = []
        self._nbytes = _ENVELOPE
        self._seq = 0

    def _emit(self) -> Batch:
        batch = Batch(tuple(self._group), tuple(self._encoded), self._seq)
        self._seq += 1
        self._group, self._encoded, self._nbytes = [], [], _ENVELOPE
        return batch

    def add(self, customers: Iterable[Customer]) -> list[Batch]:
        """Add customers; return the batches that became full."""
        if isinstance(customers, CustomerBlock):
            return self._add_block(customers)
        done: list[Batch] = []
        for customer in customers:
            self._add_one(customer, customer.encoded, done)
        return done

    def _add_one(self, customer: Customer, data: bytes, done: list[Batch]) -> None:
        if self._group and (
            len(self._group) >= self.size or self._nbytes + len(data) + 1 > self.max_bytes
        ):
            done.append(self._emit())
        self._group.append(customer)
        self._encoded.append(data)
        self._nbytes += len(data) + 1

    def _add_block(self, block: CustomerBlock) -> list[Batch]:
        """:meth:`add` for a block: whole stretches at a time where they fit the byte ceiling."""
        done: list[Batch] = []
        customers, encoded = block.customers_and_encodings()
        sizes = block.encoded_sizes() + 1  # each with its comma
        n, i = len(customers), 0
        while i < n:
            if len(self._group) >= self.size:
                done.append(self._emit())
            stop = min(i + self.size - len(self._group), n)
            nbytes = int(sizes[i:stop].sum())
            if self._nbytes + nbytes <= self.max_bytes:
                self._group.extend(customers[i:stop])
                self._encoded.extend(encoded[i:stop])
                self._nbytes += nbytes
                i = stop
            else:
                self._add_one(customers[i], encoded[i], done)
                i += 1
        return done

    def flush(self) -> list[Batch]:
        """The last, possibly partial, batch (or nothing)."""
        return [self._emit()] if self._group else []
