"""State: what earlier runs confirmed, for ``--resume`` and ``--changed-only``.

Owns one SQLite database (stdlib ``sqlite3``, WAL journal, ``synchronous=NORMAL``),
created with mode 0600, and the lock file beside it that keeps two runs from
using one state at once. It records, per run, the input's fingerprint, the
options that shape the payloads and batches, which source records are done
(as short ranges of record numbers), and, per customer identifier, a hash of
the last payload the API confirmed. Its parts:

- :mod:`.store` — opening, schema and upgrades, the lock, starting or resuming
  a run (and refusing a changed input), prune, reset and the summary;
- :mod:`.confirmations` — :class:`ConfirmationWriter`, the only writer during a
  run: one transaction per batch the API answered, progress notes, the finish;
- :mod:`.reader` — :class:`StateReader`, the producer's look-ups.

Durability: each batch the API answered is committed, in one transaction,
from the event loop's thread before the worker that sent it takes another
batch. A commit survives the process being killed (``kill -9``, a crash, an
out-of-memory kill): with WAL it is in the operating system's cache as soon
as it returns. So ``--resume`` after a kill sends again at most the batches
that were in flight. With ``synchronous=NORMAL`` the WAL is flushed to disk
only at checkpoints, not at each commit: a power loss or kernel crash may
undo the last commits before the next checkpoint; the state is not
corrupted, and those batches count as not done, so ``--resume`` sends them
again (the API upserts, so that is harmless). ``synchronous=FULL`` would add
an fsync to every commit, one per batch.

Resuming a changed input is refused: the run records a *checkpoint* of the
input (bytes read so far and their SHA-256, see :class:`importer.source.InputHasher`) before
any row of the chunk it covers can be confirmed, so every row marked done lies
within the checkpointed bytes; a resumed run sends nothing until its re-read
has passed the checkpoint with the same hash.

Must not: send anything, read the input's records, or decide validity.
"""

from .confirmations import ConfirmationWriter
from .reader import StateReader
from .store import (
    Fingerprint,
    RunInfo,
    StateStore,
    open_summary,
    parse_age,
    payload_hash,
    target_tag,
    trim_output,
)

__all__ = [
    "ConfirmationWriter",
    "Fingerprint",
    "RunInfo",
    "StateReader",
    "StateStore",
    "open_summary",
    "parse_age",
    "payload_hash",
    "target_tag",
    "trim_output",
]
