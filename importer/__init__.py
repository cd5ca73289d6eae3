"""blueshift-import: bulk-import customer files into Blueshift's customers API.

The library does the work; the ``blueshift-import`` command is a thin layer
over :func:`import_file`.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from .errors import (
    AccountingMismatch,
    ApiKeyRejected,
    ApiUnavailable,
    ImporterError,
    InputChanged,
    InputUnreadable,
    MappingError,
    RunStopped,
    StateError,
    StateLocked,
    UsageError,
)
from .options import ImportOptions
from .outcomes import ImportReport
from .pipeline import import_file

try:
    __version__ = version("blueshift-import")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

# A library prints nothing unless asked: without this, Python's last-resort
# handler would write our warnings to stderr of whatever application embeds us.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "AccountingMismatch",
    "ApiKeyRejected",
    "ApiUnavailable",
    "ImportOptions",
    "ImportReport",
    "ImporterError",
    "InputChanged",
    "InputUnreadable",
    "MappingError",
    "RunStopped",
    "StateError",
    "StateLocked",
    "UsageError",
    "__version__",
    "import_file",
]
