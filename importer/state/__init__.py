"""State: what earlier runs confirmed, for ``--resume`` and ``--changed-only``.

Owns one SQLite database (WAL, ``synchronous=NORMAL``, mode 0600) and the lock
file beside it: per run, the input's fingerprint and checkpoint hash, the
options that shape payloads and batches, and the records done (as short
ranges); per customer identifier, a hash of the last payload the API
confirmed. :mod:`.store` opens it and starts or resumes runs,
:class:`ConfirmationWriter` commits each answered batch in one transaction
before its worker takes another, :class:`StateReader` answers the producer's
look-ups.

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
