"""Logging for the command line: text or JSON lines on stderr, and a key that never leaks.

Owns: the handler the command puts on the ``importer`` logger, and the filter
that masks the API key in every record passing it. The library itself installs
only a :class:`logging.NullHandler`. Must not: print progress or summaries.
"""

from __future__ import annotations

import base64
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

LOG_FORMATS = ("text", "json")
MASK = "***"
#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with ``extra=``."""
    names = sorted(vars(record).keys() - _STANDARD_ATTRS)
    return {name: getattr(record, name) for name in names if not name.startswith("_")}


class SecretFilter(logging.Filter):
    """Masks registered secrets in a record's message, traceback and ``extra=`` fields.

    On a handler (not a logger), it sees the records of every child logger too.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        """Mask ``secret`` and its HTTP Basic encoding from now on (not under 4 characters:
        masking those would garble ordinary words)."""
        if secret and len(secret) >= 4:
            self._secrets |= {secret, base64.b64encode(f"{secret}:".encode()).decode("ascii")}

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        # Render the message and traceback now, so a secret in an argument is masked too.
        record.msg, record.args = self.mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        record.exc_info = None
        for key, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, key, self.mask(value))
        return True


def _iso_time(record: logging.LogRecord) -> str:
    """When ``record`` was made, in ISO 8601 UTC to the millisecond."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``2026-12-04T02:30:00.123+00:00 WARNING importer.sending: message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _iso_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _iso_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = record.exc_text
        return orjson.dumps(data, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_handler: logging.Handler | None = None
secret_filter = SecretFilter()


def setup_logging(
    verbosity: int = 0, log_format: str = "text", stream: IO[str] | None = None
) -> logging.Handler:
    """Send the ``importer`` loggers' records through :data:`secret_filter` to stderr (or
    ``stream``) as text or JSON lines: warnings, and with ``verbosity`` 1 info, 2 debug,
    -1 errors only (``--quiet``).

    Calling it again replaces the handler it installed before, so the group's
    and a command's options can both set it.
    """
    global _handler
    logger = logging.getLogger("importer")
    if _handler is not None:
        logger.removeHandler(_handler)
    _handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    _handler.addFilter(secret_filter)
    _handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    levels = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)
    level = levels[max(-1, min(verbosity, 2)) + 1]
    _handler.setLevel(level)
    logger.addHandler(_handler)
    # Lower the logger's threshold only when asked; otherwise leave it to the
    # application (or the root logger) so embedding code keeps control.
    logger.setLevel(level if verbosity > 0 else logging.NOTSET)
    return _handler
