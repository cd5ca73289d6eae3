"""State: what earlier runs confirmed, for ``--resume`` and ``--changed-only``.

Owns one SQLite database (WAL journal, ``synchronous=NORMAL``, mode 0600) and
the lock file beside it that keeps two runs from using one state at once. It
records, per run, the input's fingerprint and checkpoint hash, the options
that shape the payloads and batches, and which source records are done (as
short ranges of record numbers); per customer identifier, a hash of the last
payload the API confirmed. Each batch the API answered is committed in one
transaction before its worker takes another, so a killed run resends at most
the batches in flight. Its parts:

- :mod:`.store` — opening, schema, the lock, starting or resuming a run (and
  refusing a changed input), prune, reset and the summary;
- :mod:`.confirmations` — :class:`ConfirmationWriter`, the only writer during a run;
- :mod:`.reader` — :class:`StateReader`, the producer's look-ups.

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
