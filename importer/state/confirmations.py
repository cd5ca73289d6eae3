"""The run's only writer: one transaction per batch the API answered, from the event loop.

Owns what a run writes while it goes: the ranges of records it settled
(``done``), the payload hashes the API confirmed (``payloads``), and the run's
counts (over all its attempts: delivered, dead-lettered, rejected, merged,
unchanged) and progress notes (``runs``), and marking the run finished.

Must not: start, resume or supersede runs (that is :mod:`.store`), or read
for the producer (that is :mod:`.reader`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..records import Outcome
from .store import (
    FLUSH_MAX,
    FLUSH_MIN,
    Account,
    RunInfo,
    StateStore,
    record_ranges,
    state_errors,
    transaction,
)


class ConfirmationWriter:
    """Records confirmed batches, each committed before its worker goes on.

    Make it, and call every method, in the event loop's thread: it opens its
    connection there. Progress notes from the producer (input checkpoint,
    rejects file position) are kept in memory and written with the next
    confirmation. Payload hashes are kept only with an ``account`` (for
    ``--changed-only``), and written some thousands at a time: one customer's
    hash lands on a random page of the table, so writing them per batch would
    write most of a page per customer. Hashes not yet written when a run is
    killed only make the next ``--changed-only`` run send those customers again.
    Raises :class:`~importer.errors.StateError` when the state cannot be written.
    """

    def __init__(self, store: StateStore, run: RunInfo, account: Account | None):
        self.store = store
        self.run = run
        self.account = account
        self.checkpoint = (run.checkpoint_bytes, run.checkpoint_hash)
        self.rejects = (run.rejects_through, run.rejects_offset)
        self.dead_letter_offset = run.dead_letter_offset
        #: Rejected, merged and unchanged rows noted and not yet written.
        self.counted = [0, 0, 0]
        self.pending: dict[bytes, bytes] = {}
        self.flush_at = FLUSH_MIN
        with state_errors(store.path):
            self.conn = store.connect()

    def start(self, rejects_offset: int | None, dead_letter_offset: int | None) -> None:
        """Record where the output files end as the run (re)starts."""
        self.rejects = (self.rejects[0], rejects_offset)
        self.dead_letter_offset = dead_letter_offset
        with state_errors(self.store.path), transaction(self.conn):
            self._write_progress()
        self.counted = [0, 0, 0]

    def note_input(self, checkpoint: tuple[int, str]) -> None:
        """The producer hashed the input up to here: ``(bytes, sha256 hexdigest)``."""
        self.checkpoint = checkpoint

    def note_rejects(
        self, through: int, offset: int | None, counted: tuple[int, int, int] = (0, 0, 0)
    ) -> None:
        """Rejects of records up to ``through`` are written; the rejects file ends at ``offset``.

        ``counted`` adds the rows of records up to ``through`` rejected, merged
        into another and skipped as unchanged that no earlier attempt counted;
        they are written with the rejects file's position, so after a kill the
        counts match what the resumed attempt does not read as new.
        """
        self.rejects = (through, offset)
        self.counted = [n + m for n, m in zip(self.counted, counted, strict=True)]

    def record(self, outcomes: Sequence[Outcome], dead_letter_offset: int | None) -> None:
        """Commit ``outcomes``: their records as done; note the delivered payloads' hashes.

        ``outcomes`` are those of one batch (after a stop, possibly of only
        some of its customers); ``dead_letter_offset`` is where the dead-letter
        file ends after their failures were written (None: unchanged).
        """
        if dead_letter_offset is not None:
            self.dead_letter_offset = dead_letter_offset
        settled = [r for o in outcomes for r in (o.customer.record, *o.customer.merged_records)]
        delivered = [o.customer for o in outcomes if o.delivered]
        if self.account is not None:
            for c in delivered:
                if c.identifier is not None:  # nothing to look it up by later
                    self.pending[self.account.customer(c.identifier)] = self.account.payload(
                        c.encoded
                    )
        run_id = self.run.run_id
        with state_errors(self.store.path), transaction(self.conn) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO done VALUES (?, ?, ?)",
                [(run_id, lo, hi) for lo, hi in record_ranges(settled)],
            )
            self._write_progress(len(delivered), len(outcomes) - len(delivered))
        self.counted = [0, 0, 0]
        if len(self.pending) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        """Write the payload hashes noted so far, in key order, then checkpoint the WAL."""
        if not self.pending:
            return
        hour = int(time.time() // 3600)
        with state_errors(self.store.path):
            # Checkpoints never wait for the reader. The one before lets the flush start
            # the WAL over, the one after lets the next commit do so and cut the file
            # back to journal_size_limit: the WAL never holds much more than one flush.
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with transaction(self.conn) as conn:
                conn.executemany(
                    "INSERT OR REPLACE INTO payloads VALUES (?, ?, ?)",
                    [(k, v, hour) for k, v in sorted(self.pending.items())],
                )
            self.pending.clear()
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        self.flush_at = min(max(FLUSH_MIN, 2 * pages), FLUSH_MAX)

    def finish(self, status: str, content_hash: str | None = None) -> None:
        """Mark the run ``completed`` (forgetting its done ranges), ``interrupted`` or ``stopped``.

        ``content_hash`` is the SHA-256 of the whole input, for a completed run.
        """
        self.flush()
        with state_errors(self.store.path), transaction(self.conn) as conn:
            self._write_progress()
            conn.execute(
                "UPDATE runs SET status = ?, pid = NULL, content_hash = ? WHERE id = ?",
                (status, content_hash, self.run.run_id),
            )
            if status == "completed":
                # Only an unfinished run is ever resumed: its record numbers are not needed.
                conn.execute("DELETE FROM done WHERE run_id = ?", (self.run.run_id,))
        self.counted = [0, 0, 0]

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _write_progress(self, confirmed: int = 0, dead_lettered: int = 0) -> None:
        """Add to the run's counts and write its progress notes (in the caller's transaction).

        The counts noted are forgotten only once the transaction commits.
        """
        self.conn.execute(
            "UPDATE runs SET confirmed = confirmed + ?, dead_lettered = dead_lettered + ?, "
            "rejected = rejected + ?, merged = merged + ?, unchanged = unchanged + ?, "
            "checkpoint_bytes = ?, checkpoint_hash = ?, rejects_through = ?, rejects_offset = ?, "
            "dead_letter_offset = ?, updated_at = ? WHERE id = ?",
            (
                confirmed,
                dead_lettered,
                *self.counted,
                *self.checkpoint,
                *self.rejects,
                self.dead_letter_offset,
                time.time(),
                self.run.run_id,
            ),
        )
