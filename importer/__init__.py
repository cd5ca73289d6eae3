"""blueshift-import: bulk-import customer files into Blueshift's customers API.

The library does the work; the ``blueshift-import`` command is a thin layer
over :func:`import_file`. :func:`import_records` takes dicts or a DataFrame;
:func:`aimport_file` and :func:`aimport_records` are their awaitable twins.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    AccountingMismatch,
    ApiKeyRejected,
    ApiUnavailable,
    ApiUnreachable,
    ImporterError,
    InputChanged,
    InputUnreadable,
    MappingError,
    RunStopped,
    SharedLimitUnavailable,
    StateError,
    StateLocked,
    UsageError,
)
from .options import ImportOptions
from .outcomes import ImportReport

if TYPE_CHECKING:
    from .pipeline import aimport_file, aimport_records, import_file, import_records

    __version__: str


_PIPELINE = ("import_file", "import_records", "aimport_file", "aimport_records")


def __getattr__(name: str) -> Any:
    """The import functions and ``__version__``, loaded on first use.

    The pipeline brings pandas and aiohttp (most of a second), and the version
    importlib.metadata: commands that need neither (``--help``, the fake API,
    the state commands) and ``import importer`` itself start without them.
    """
    found: Any
    if name in _PIPELINE:
        from . import pipeline

        found = getattr(pipeline, name)
    elif name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("blueshift-import")
        except PackageNotFoundError:  # running from a source tree that was not installed
            found = "0.0.0"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = found
    return found


def __dir__() -> list[str]:
    return sorted({*globals(), *_PIPELINE, "__version__"})


# A library prints nothing unless asked: without this, Python's last-resort
# handler would write our warnings to stderr of whatever application embeds us.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AccountingMismatch",
    "ApiKeyRejected",
    "ApiUnavailable",
    "ApiUnreachable",
    "ImportOptions",
    "ImportReport",
    "ImporterError",
    "InputChanged",
    "InputUnreadable",
    "MappingError",
    "RunStopped",
    "SharedLimitUnavailable",
    "StateError",
    "StateLocked",
    "UsageError",
    "__version__",
    "aimport_file",
    "aimport_records",
    "import_file",
    "import_records",
]
