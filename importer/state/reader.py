"""Look-ups for the producer thread: rows already done, payloads unchanged, rejects written.

Owns nothing on disk: it only reads, through a connection of its own opened
in the thread that uses it (WAL lets it see every batch the writer committed).

Must not: write to the state.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..records import CONFLICT, FIELD_DROPPED, Customer, Reject
from .store import RANGE_SPAN, Account, RunInfo, StateStore


class StateReader:
    """What the producer may skip, a chunk at a time, so memory does not grow with the state."""

    def __init__(self, store: StateStore, run: RunInfo, account: Account):
        self.store = store
        self.run = run
        self.account = account
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.store.connect()
        return self._conn

    def close(self) -> None:
        """Close the connection (from the thread that used the reader)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def skip_done(self, customers: Sequence[Customer]) -> tuple[Sequence[Customer], int]:
        """The customers an earlier attempt of this run did not settle, and how many it did."""
        if not self.run.resumed or not customers:
            return customers, 0
        first, last = min(c.record for c in customers), max(c.record for c in customers)
        done: set[int] = set()
        for lo, hi in self.conn.execute(
            "SELECT lo, hi FROM done WHERE run_id = ? AND lo BETWEEN ? AND ? AND hi >= ?",
            (self.run.run_id, first - RANGE_SPAN, last, first),
        ):
            done.update(range(max(lo, first), min(hi, last) + 1))
        kept = [c for c in customers if c.record not in done]
        return kept, len(customers) - len(kept)

    @property
    def through(self) -> int:
        """Records up to this one had their rejects written and their rows counted by an
        earlier attempt of the run (0: none)."""
        return self.run.rejects_through if self.run.resumed else 0

    def new_rejects(self, rejects: list[Reject]) -> list[Reject]:
        """Rejects not yet written to the rejects file by an earlier attempt."""
        return [r for r in rejects if r.record > self.through]

    def new_counts(
        self, new_rejects: list[Reject], merged: Sequence[Customer], unchanged: Sequence[Customer]
    ) -> tuple[int, int, int]:
        """The rows no earlier attempt counted: rejected (among ``new_rejects``), merged into
        the ``merged`` customers, and skipped as ``unchanged``; for the job's totals."""
        through = self.through
        return (
            sum(r.outcome not in (FIELD_DROPPED, CONFLICT) for r in new_rejects),
            sum(len(c.merged_records) for c in merged if c.record > through),
            sum(c.record > through for c in unchanged),
        )

    def skip_unchanged(
        self, customers: Sequence[Customer]
    ) -> tuple[list[Customer], list[Customer]]:
        """The customers whose payload differs from the last confirmed one (or is new),
        and those skipped."""
        query = "SELECT hash FROM payloads WHERE id = ?"
        account = self.account
        kept: list[Customer] = []
        skipped: list[Customer] = []
        for customer in customers:
            row = self.conn.execute(query, (account.customer(customer.identifier or ""),))
            found = row.fetchone()
            changed = found is None or found[0] != account.payload(customer.encoded)
            (kept if changed else skipped).append(customer)
        return kept, skipped
