"""The exceptions blueshift-import raises, all rooted at :class:`ImporterError`.

A bad row is never an exception: it becomes a reject with a reason. Only what
stops a whole run raises. The tree, and when each is raised::

    ImporterError
    ├── UsageError (also ValueError)         a bad option or configuration   exit 2
    │   └── MappingError                     columns cannot be mapped         exit 2
    ├── InputUnreadable (also OSError)       the input cannot be opened/read  exit 2
    ├── StateError                           the state store refuses the run  exit 2
    │   ├── StateLocked                      another run holds the state
    │   └── InputChanged                     --resume on a different input
    ├── SharedLimitUnavailable               no Redis for --shared-limit      exit 2
    ├── RunStopped                           the run stopped early            exit 3
    │   ├── ApiKeyRejected                   HTTP 401 or 403
    │   ├── ApiUnavailable                   nothing succeeded for too long
    │   └── ApiUnreachable                   wrong host, port or certificate  exit 2
    └── AccountingMismatch                   the outcome counts do not add up (a bug)

Messages speak of options by their :class:`~importer.options.ImportOptions`
names (``batch_size``); ``options`` lists the names a message uses, and the
command line shows each as its flag (``--batch-size``).

aiohttp exceptions never leave :mod:`importer.sending`; a failed attempt
becomes a :class:`TransientApiError` there, caught by the retry loop (it is
internal: a record that fails for good is dead-lettered, not raised).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .outcomes import ImportReport
    from .records import Outcome


class ImporterError(Exception):
    """Root of every exception raised by blueshift-import."""

    exit_code: int = 2

    def __init__(self, message: str, *options: str) -> None:
        super().__init__(message)
        #: The option names (``ImportOptions`` fields) the message speaks of.
        self.options: tuple[str, ...] = options


class UsageError(ImporterError, ValueError):
    """An option, a combination of options or a configuration file is invalid."""


class MappingError(UsageError):
    """The input's columns cannot be mapped to Blueshift fields unambiguously."""


class InputUnreadable(ImporterError, OSError):
    """The input file is missing, unreadable, or not in a format we can parse."""


class StateError(ImporterError):
    """The state store cannot be used for this run."""


class StateLocked(StateError):
    """Another run is using the same state store."""


class InputChanged(StateError):
    """``--resume`` was asked for, but the input differs from the interrupted run's."""


class SharedLimitUnavailable(ImporterError):
    """The Redis server named by ``--shared-limit`` cannot be reached.

    Raised before anything is sent when it is out of reach at the start; once a run
    is under way it is caught inside :mod:`importer.pacing`, which falls back to
    the process's share of the rate.
    """


class RunStopped(ImporterError):
    """The run stopped before the end of the input; a report is still written.

    ``report`` is the run's report (set by the pipeline); ``outcomes`` those of
    the part of the batch in hand that was settled before the stop.
    """

    exit_code = 3

    def __init__(self, message: str, *options: str) -> None:
        super().__init__(message, *options)
        self.report: ImportReport | None = None
        self.outcomes: list[Outcome] = []


class ApiKeyRejected(RunStopped):
    """The API answered 401 or 403: the key is wrong or lacks permission."""


class ApiUnavailable(RunStopped):
    """No request succeeded for longer than ``give_up_after`` seconds."""


class ApiUnreachable(RunStopped):
    """The API's host was never reached: its name does not resolve, nothing listens on
    its port, or its TLS certificate is not trusted. Retrying cannot help: the
    base URL (or the network) needs fixing, so it exits like a usage error."""

    exit_code = 2


class AccountingMismatch(ImporterError):
    """The outcome counts do not add up to the rows read. Always a bug; ``report`` says how."""

    exit_code = 1

    def __init__(self, message: str, report: ImportReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class TransientApiError(ImporterError):
    """A failed attempt worth retrying; raised and caught inside :mod:`importer.sending`.

    ``status`` is the HTTP status, None when no answer came; ``kind`` (``http``,
    ``timeout``, ``connection``, ``record`` or ``unconfirmed``) goes to the
    dead-letter line if the retries run out.
    """

    def __init__(self, message: str, status: int | None, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
