"""Logging for the command line: text or JSON lines on stderr, and a key that never leaks.

Owns: the handler the ``blueshift-import`` command installs on the
``importer`` logger (``-v`` info, ``-vv`` debug; ``--log-format text|json``)
and :class:`SecretFilter`, which replaces the API key (and its Basic-auth
encoding) with ``***`` in every record that passes the handler, whatever
module logged it.

The library itself installs nothing but a :class:`logging.NullHandler`: an
application that imports it decides where its log lines go.

Must not: print progress or summaries (that is :mod:`importer.progress`).
"""

from __future__ import annotations

import base64
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

LOG_FORMATS = ("text", "json")
LOGGER_NAME = "importer"
MASK = "***"
#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def level_for(verbosity: int) -> int:
    """The log level for ``-v`` counted ``verbosity`` times: warnings, info, then debug."""
    return (logging.WARNING, logging.INFO, logging.DEBUG)[max(0, min(verbosity, 2))]


class SecretFilter(logging.Filter):
    """Masks registered secrets in a record's message, arguments and extras.

    Attach it to a handler (not a logger) so it sees the records of every
    child logger too. Secrets shorter than 4 characters are ignored: masking
    them would garble ordinary words.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Mask ``secret`` and its HTTP Basic encoding from now on."""
        if not secret or len(secret) < 4:
            return
        self._secrets.add(secret)
        self._secrets.add(base64.b64encode(f"{secret}:".encode()).decode("ascii"))

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        # Render the message now so a secret inside an argument is masked too.
        message = record.getMessage()
        record.msg = self.mask(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.mask(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return orjson.dumps(data, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__(stream)
        self._fixed = stream is not None

    def emit(self, record: logging.LogRecord) -> None:
        if not self._fixed:
            self.stream = sys.stderr
        super().emit(record)


_handler: _StderrHandler | None = None
secret_filter = SecretFilter()


def setup_logging(
    verbosity: int = 0, log_format: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the ``importer`` loggers' records to stderr (or ``stream``).

    Calling it again replaces the handler it installed before, so the group's
    and a command's options can both set it. Every record passes
    :data:`secret_filter`.
    """
    global _handler
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    logger = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        logger.removeHandler(_handler)
    handler = _StderrHandler(stream)
    handler.addFilter(secret_filter)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = level_for(verbosity)
    handler.setLevel(level)
    logger.addHandler(handler)
    # Lower the logger's threshold only when asked; otherwise leave it to the
    # application (or the root logger) so embedding code keeps control.
    logger.setLevel(level if verbosity > 0 else logging.NOTSET)
    _handler = handler
    return handler


def protect_secret(secret: str | None) -> None:
    """Never let ``secret`` (an API key) appear in a log line from now on."""
    secret_filter.add(secret)
