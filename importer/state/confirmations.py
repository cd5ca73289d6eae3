"""The run's only writer: one transaction per batch the API answered, from the event loop.

Owns what a run writes while it goes: the ranges of records it settled
(``done``), the payload hashes the API confirmed (``payloads``), and the run's
counts and progress notes (``runs``), and marking the run finished.

Must not: start, resume or supersede runs (that is :mod:`.store`), or read
for the producer (that is :mod:`.reader`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..records import Outcome
from .store import RunInfo, StateStore, payload_hash, record_ranges, transaction


class ConfirmationWriter:
    """Records confirmed batches, each committed before its worker goes on.

    Make it, and call every method, in the event loop's thread: it opens its
    connection there. Progress notes from the producer (input checkpoint,
    rejects file position) are kept in memory and written with the next
    confirmation.
    """

    def __init__(self, store: StateStore, run: RunInfo, target: str):
        self.store = store
        self.run = run
        self.target = target
        self.checkpoint = (run.checkpoint_bytes, run.checkpoint_hash)
        self.rejects = (run.rejects_through, run.rejects_offset)
        self.dead_letter_offset = run.dead_letter_offset
        self.conn = store.connect()

    def start(self, rejects_offset: int | None, dead_letter_offset: int | None) -> None:
        """Record where the output files end as the run (re)starts."""
        self.rejects = (self.rejects[0], rejects_offset)
        self.dead_letter_offset = dead_letter_offset
        with transaction(self.conn):
            self._write_progress()

    def note_input(self, checkpoint: tuple[int, str]) -> None:
        """The producer hashed the input up to here: ``(bytes, sha256 hexdigest)``."""
        self.checkpoint = checkpoint

    def note_rejects(self, through: int, offset: int | None) -> None:
        """Rejects of records up to ``through`` are written; the rejects file ends at ``offset``."""
        self.rejects = (through, offset)

    def record(self, outcomes: Sequence[Outcome], dead_letter_offset: int | None) -> None:
        """Commit ``outcomes``: their records as done, the delivered payloads' hashes.

        ``outcomes`` are those of one batch (after a stop, possibly of only
        some of its customers); ``dead_letter_offset`` is where the dead-letter
        file ends after their failures were written (None: unchanged).
        """
        if dead_letter_offset is not None:
            self.dead_letter_offset = dead_letter_offset
        settled = [r for o in outcomes for r in (o.customer.record, *o.customer.merged_records)]
        delivered = [o.customer for o in outcomes if o.delivered]
        now = time.time()
        run_id = self.run.run_id
        with transaction(self.conn) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO done VALUES (?, ?, ?)",
                [(run_id, lo, hi) for lo, hi in record_ranges(settled)],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO payloads VALUES (?, ?, ?, ?)",
                [
                    (self.target, c.identifier, payload_hash(c.encoded), now)
                    for c in delivered
                    if c.identifier is not None  # nothing to look it up by later
                ],
            )
            self._write_progress(len(delivered), len(outcomes) - len(delivered))

    def finish(self, status: str, content_hash: str | None = None) -> None:
        """Mark the run ``completed`` (forgetting its done ranges), ``interrupted`` or ``stopped``.

        ``content_hash`` is the SHA-256 of the whole input, for a completed run.
        """
        with transaction(self.conn) as conn:
            self._write_progress()
            conn.execute(
                "UPDATE runs SET status = ?, pid = NULL, content_hash = ? WHERE id = ?",
                (status, content_hash, self.run.run_id),
            )
            if status == "completed":
                # Only an unfinished run is ever resumed: its record numbers are no longer needed.
                conn.execute("DELETE FROM done WHERE run_id = ?", (self.run.run_id,))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _write_progress(self, confirmed: int = 0, dead_lettered: int = 0) -> None:
        """Add to the run's counts and write its progress notes (in the caller's transaction)."""
        self.conn.execute(
            "UPDATE runs SET confirmed = confirmed + ?, dead_lettered = dead_lettered + ?, "
            "checkpoint_bytes = ?, checkpoint_hash = ?, rejects_through = ?, rejects_offset = ?, "
            "dead_letter_offset = ?, updated_at = ? WHERE id = ?",
            (
                confirmed,
                dead_lettered,
                *self.checkpoint,
                *self.rejects,
                self.dead_letter_offset,
                time.time(),
                self.run.run_id,
            ),
        )
