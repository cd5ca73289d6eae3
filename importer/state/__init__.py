"""State: what earlier runs confirmed, for ``--resume`` and ``--changed-only``.

Owns one SQLite database (WAL, ``synchronous=NORMAL``, mode 0600) and the lock
file beside it: per run, the input's fingerprint and checkpoint hash, the
options that shape payloads and batches, the records done (as short
ranges), its counts over all its attempts and the invocations that made
them; per customer, keyed hashes of its identifier and of the last payload
the API confirmed (never the identifier: see :class:`Account`).
:mod:`.store` opens it and starts or resumes runs, :class:`ConfirmationWriter`
commits each answered batch in one transaction before its worker takes
another, :class:`StateReader` answers the producer's look-ups.

Must not: send anything, read the input's records, or decide validity.
"""

from .confirmations import ConfirmationWriter
from .reader import StateReader
from .store import (
    Account,
    Fingerprint,
    RunInfo,
    StateStore,
    default_state_path,
    open_summary,
    parse_age,
    state_dir,
    trim_output,
)

__all__ = [
    "Account",
    "ConfirmationWriter",
    "Fingerprint",
    "RunInfo",
    "StateReader",
    "StateStore",
    "default_state_path",
    "open_summary",
    "parse_age",
    "state_dir",
    "trim_output",
]
