"""Outcomes stage: where every row ends up, and the report that counts them.

Owns: the rejects file (CSV or JSONL by extension), the dead-letter file
(re-importable JSONL), the :class:`ImportReport` and its JSON form, and the
accounting invariant (:attr:`ImportReport.accounting_ok`). Files holding records
are created with mode 0600 and written in whole lines, flushed per write, so a
crash never leaves a line a re-import would choke on.

Must not: decide whether a row is valid or whether a request is retried.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from .errors import UsageError
from .records import CONFLICT, FIELD_DROPPED, Outcome, Reject

REPORT_SCHEMA_VERSION = 1
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def open_private(path: Path, *, overwrite: bool = False, append: bool = False) -> IO[bytes]:
    """Open ``path`` for writing records, created with mode 0600.

    An existing file is appended to when ``append``, replaced when
    ``overwrite``, and otherwise refused with :class:`UsageError` so a
    previous run's records are never lost by accident.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT
    if append:
        flags |= os.O_APPEND
    elif overwrite:
        flags |= os.O_TRUNC
    else:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(
            f"{path} already exists; pass --overwrite to replace it (or --resume to append)"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab" if append else "wb")


def refuse_existing(path: Path, *, overwrite: bool = False) -> None:
    """Raise :class:`UsageError` before a run if ``path`` exists and may not be replaced.

    For the report, written only at the end: a run must not do all its work
    and then fail to record it, or silently replace a previous run's report.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")


def neutralise_formula(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would run as a formula with ``'``."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _RecordFile:
    """A file of records opened with :func:`open_private`, written in whole lines."""

    def __init__(self, path: Path, source: str, *, overwrite: bool = False, append: bool = False):
        self.path = Path(path)
        self.source = source
        self._file = open_private(self.path, overwrite=overwrite, append=append)

    @property
    def size(self) -> int:
        """The file's length in bytes (what a resumed run trims it back to)."""
        return self.path.stat().st_size

    def _write_json_lines(self, records: Iterable[dict[str, Any]]) -> None:
        self._write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in records))

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class RejectsWriter(_RecordFile):
    """Appends rejects to a CSV or JSONL file (chosen by the file's extension)."""

    COLUMNS = ("record", "line", "identifier", "column", "value", "reason", "outcome", "source")

    def __init__(self, path: Path, source: str, *, overwrite: bool = False, append: bool = False):
        super().__init__(path, source, overwrite=overwrite, append=append)
        self.csv = self.path.suffix.lower() in (".csv", ".tsv")
        if self.csv and self.size == 0:
            self._write_csv_rows([self.COLUMNS])

    def _write_csv_rows(self, rows: list[Any]) -> None:
        buf = io.StringIO()
        # With "\r\n" as the terminator the writer also quotes cells holding a bare CR,
        # which would otherwise split one reject into two lines for any CSV reader.
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        self._write(buf.getvalue().encode())

    def write(self, rejects: list[Reject]) -> None:
        if self.csv:
            self._write_csv_rows(
                [
                    [
                        r.record,
                        r.line,
                        neutralise_formula(r.identifier or ""),
                        neutralise_formula(r.column or ""),
                        neutralise_formula("" if r.value is None else _as_text(r.value)),
                        r.reason,
                        r.outcome,
                        neutralise_formula(self.source),
                    ]
                    for r in rejects
                ]
            )
        else:
            self._write_json_lines({"source": self.source, **asdict(r)} for r in rejects)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


class DeadLetterWriter(_RecordFile):
    """Appends undeliverable customers to a JSONL file that ``run`` can re-import.

    One line per customer, in the shape the README's Outputs section describes.
    """

    def write(self, outcomes: list[Outcome]) -> None:
        at = _now()
        self._write_json_lines(
            {
                # The very bytes that were sent, not a re-encoding of them.
                "payload": orjson.Fragment(o.customer.encoded),
                "source": self.source,
                "record": o.customer.record,
                "line": o.customer.line,
                "status": o.status,
                "kind": o.kind,
                "error": o.error,
                "attempts": o.attempts,
                "at": at,
            }
            for o in outcomes
            if not o.delivered
        )


@dataclass
class ImportReport:
    """Everything a run did, counted. ``to_dict`` is the JSON report's content."""

    source: str
    dry_run: bool = False
    started_at: str = field(default_factory=_now)
    finished_at: str | None = None
    duration_s: float = 0.0
    rows_read: int = 0
    #: Bytes consumed from the input on disk (compressed bytes for .gz) and its
    #: size (None for stdin): progress displays project the ETA from them.
    bytes_read: int = 0
    bytes_total: int | None = None
    succeeded: int = 0
    rejected: int = 0
    dropped_fields: int = 0
    dead_lettered: int = 0
    merged_duplicates: int = 0
    unchanged_skipped: int = 0
    already_done: int = 0
    not_sent: int = 0
    requests: int = 0
    retries: int = 0
    splits: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    #: Fields dropped from rows still sent: column → reason → count.
    dropped_field_reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Rows sent unmerged although another row of the chunk has their email and
    #: another customer_id (both rows are counted).
    identifier_conflicts: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    rate_limit: float = 0.0
    achieved_rate: float = 0.0
    final_rate: float = 0.0
    #: The lowest pace the sender fell to after 429s (equal to ``rate_limit`` when none came).
    lowest_rate: float = 0.0
    first_request_s: float | None = None
    #: Seconds the API took to answer: ``mean`` over the run; ``p50``, ``p90``, ``p99``
    #: over the recent answers.
    answer_time_s: dict[str, float] = field(default_factory=dict)
    #: Requests in flight: the limit in use at the end (it follows the answer times
    #: unless --concurrency fixes it), its ceiling, and the most under way at once.
    concurrency: int = 0
    concurrency_ceiling: int = 0
    peak_in_flight: int = 0
    #: True when the ceiling, not the rate, limited the pace: rate × mean answer time
    #: (the calls in flight the rate needs) was above it.
    concurrency_limited: bool = False
    #: The --shared-limit Redis (password hidden), the processes last seen sharing it,
    #: and why this run went on alone at its share of the rate (None: it never did).
    shared_limit: str | None = None
    shared_processes: int | None = None
    shared_limit_fallback: str | None = None
    stopped: str | None = None
    #: One section per input file, in the order read: ``source``, ``status``
    #: (``completed``, ``interrupted``, ``stopped``, ``skipped: …``, ``not read``)
    #: and, for a file read, its share of the counts above.
    inputs: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    mapping: list[tuple[str, str]] = field(default_factory=list)
    #: Day and month order of each date column holding dates like 3/4/2021:
    #: column → ``{"order": ..., "decided_by": "file" | "default" | "option"}``.
    date_orders: dict[str, dict[str, str]] = field(default_factory=dict)
    preview: list[dict[str, Any]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    @property
    def accounted(self) -> int:
        """The right-hand side of the accounting invariant."""
        return sum(n for _, n in self.accounting_terms())

    @property
    def error_rate(self) -> float:
        """Rejected plus dead-lettered rows as a fraction of the rows read (0 when none)."""
        return (self.rejected + self.dead_lettered) / max(self.rows_read, 1)

    @property
    def accounting_ok(self) -> bool:
        return self.rows_read == self.accounted

    def accounting_terms(self) -> list[tuple[str, int]]:
        """The right-hand side of the accounting equation as (label, count); zero optional terms
        (unchanged, already done, not sent) are left out."""
        terms = [
            ("succeeded", self.succeeded),
            ("rejected", self.rejected),
            ("dead-lettered", self.dead_lettered),
            ("merged", self.merged_duplicates),
        ]
        optional = [
            ("unchanged", self.unchanged_skipped),
            ("already done", self.already_done),
            ("not sent", self.not_sent),
        ]
        return terms + [(label, n) for label, n in optional if n]

    def accounting_line(self) -> str:
        """``rows_read N = succeeded + rejected + ...`` with the figures, and whether it holds."""
        parts = [f"{label} {n}" for label, n in self.accounting_terms()]
        mismatch = self.rows_read - self.accounted
        verdict = f"MISMATCH by {mismatch}" if mismatch else "balanced"
        return f"rows read {self.rows_read} = {' + '.join(parts)} ({verdict})"

    def count_rejects(self, rejects: list[Reject]) -> None:
        """Count the lines of the rejects file: rejected rows, dropped fields, conflicts."""
        for r in rejects:
            if r.outcome == FIELD_DROPPED:
                self.dropped_fields += 1
                _tally(self.dropped_field_reasons.setdefault(r.column or "", {}), r.reason)
            elif r.outcome == CONFLICT:
                self.identifier_conflicts += 1
            else:
                self.rejected += 1
                _tally(self.reject_reasons, r.reason)

    def count_outcomes(self, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.delivered:
                self.succeeded += 1
            else:
                self.dead_lettered += 1
                _tally(self.dead_letter_reasons, o.error or o.kind)

    def finish(self) -> None:
        self.finished_at = _now()
        self.duration_s = round(time.monotonic() - self._t0, 3)
        if self.duration_s > 0 and self.requests:
            self.achieved_rate = round(self.requests / self.duration_s, 3)

    def started_monotonic(self) -> float:
        """``time.monotonic()`` when the run started, for timing events against it."""
        return self._t0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("_t0", "preview")}
        data["error_rate"] = round(self.error_rate, 6)
        data["accounting"] = {"balanced": self.accounting_ok, "line": self.accounting_line()}
        return {"schema_version": REPORT_SCHEMA_VERSION, **data}

    def write(self, path: Path) -> None:
        """Write the JSON report atomically (temp file, then rename), mode 0600."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open_private(tmp, overwrite=True) as f:
            f.write(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
        os.replace(tmp, path)


def _tally(counts: dict[str, int], reason: str) -> None:
    """Count ``reason`` without the varying detail after a colon."""
    key = reason.split(":", 1)[0].strip()
    counts[key] = counts.get(key, 0) + 1
