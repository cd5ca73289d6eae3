"""Outcomes stage: where every row ends up, and the report that counts them.

Owns: the rejects file (CSV or JSONL by extension), the dead-letter file
(re-importable JSONL), the :class:`ImportReport` and its JSON form, the
accounting invariant (:attr:`ImportReport.accounting_ok`), and the run
directories of ``--output-dir``. Files holding records are created with mode
0600 on their first line (a run with nothing to write leaves no file) and
written in whole lines, flushed per write, so a crash never leaves a line a
re-import would choke on.

Must not: decide whether a row is valid or whether a request is retried.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import itertools
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import urlsplit

import numpy as np
import orjson

from .errors import UsageError
from .records import CONFLICT, FIELD_DROPPED, Outcome, Reject
from .source import Chunk

REPORT_SCHEMA_VERSION = 1
#: Columns (CSV) or keys (JSONL) a rejects file adds to the row: where the row was, what
#: became of it, the column and value at fault, why, and how the run read the file's
#: columns (the types and date orders its first chunk decided), and the input file the row
#: is in (one of a run's several). A re-import leaves them out.
REJECTS_COLUMNS = ("_line", "_outcome", "_column", "_value", "_reason", "_read_as", "_source")
#: A cell a spreadsheet would run as a formula, possibly behind guards already.
_FORMULA = re.compile(r"'*[=+\-@\t\r]")
_GUARDED = re.compile(r"'+[=+\-@\t\r]")
#: The stamp :func:`default_rejects_path` puts in a name.
_STAMPED = re.compile(r"\.rejects-\d{8}T\d{6}Z(-\d+)?$")
_CSV_SUFFIXES = (".csv", ".tsv")
log = logging.getLogger(__name__)
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


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
        raise _already_exists(path, can_append=True) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab" if append else "wb")


def refuse_existing(path: Path, *, overwrite: bool = False, can_append: bool = False) -> None:
    """Raise :class:`UsageError` before a run if ``path`` exists and may not be replaced.

    For the report, written only at the end: a run must not do all its work
    and then fail to record it, or silently replace a previous run's report.
    ``can_append``: the message also offers ``resume`` (a file of records).
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise _already_exists(path, can_append)


def _already_exists(path: Path, can_append: bool) -> UsageError:
    if can_append:
        return UsageError(
            f"{path} already exists; pass overwrite to replace it (or resume to append)",
            "overwrite",
            "resume",
        )
    return UsageError(f"{path} already exists; pass overwrite to replace it", "overwrite")


def stamped_dir(parent: Path) -> Path:
    """Make and return a new directory ``parent/<UTC time>`` (``2026-12-04T023000Z``),
    never one another run made: a second run in the same second gets ``-2``."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        for n in itertools.count(1):
            with contextlib.suppress(FileExistsError):
                path = Path(parent) / (stamp if n == 1 else f"{stamp}-{n}")
                path.mkdir(mode=0o700)
                return path
    except OSError as exc:
        raise UsageError(f"cannot write in {parent}: {exc.strerror or exc}") from exc
    raise AssertionError("unreachable")


def point_latest(run_dir: Path) -> None:
    """Point ``latest`` beside ``run_dir`` at it (a relative symlink, replaced atomically)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


def check_writable(path: Path, what: str) -> None:
    """Raise :class:`UsageError` unless a file can be created at ``path`` (the ``what``).

    Checked before a run, so a run never does its work and then fails to record
    it. The nearest existing directory on the way to ``path`` is probed by
    creating (and at once removing) an unnamed file in it: it is what the
    writes will need, also for root and on a read-only mount. Creates nothing.
    """
    path = Path(path).absolute()
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        if not directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "permission denied", str(path))
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        where = exc.filename or directory
        raise UsageError(
            f"cannot write the {what} {path}: {exc.strerror or exc} ({where})"
        ) from None


def neutralise_formula(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would run as a formula with ``'``.

    A cell already starting with ``'`` before such a character gets one more,
    so :func:`restore_formula` gives back exactly the cell (``'6812`` stays as it is).
    """
    if isinstance(value, str) and _FORMULA.match(value):
        return "'" + value
    return value


def restore_formula(value: Any) -> Any:
    """Undo :func:`neutralise_formula`."""
    if isinstance(value, str) and _GUARDED.match(value):
        return value[1:]
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _RecordFile:
    """A file of records opened with :func:`open_private` on its first line, written in
    whole lines. An existing file is refused (or, with ``overwrite``, removed) at once,
    before anything is sent; with ``append`` it is added to."""

    def __init__(self, path: Path, source: str, *, overwrite: bool = False, append: bool = False):
        self.path = Path(path)
        self.source = source
        self._append = append
        self._file: IO[bytes] | None = None
        refuse_existing(self.path, overwrite=overwrite or append, can_append=True)
        if overwrite and not append and self.path.is_file():  # never a device or a pipe
            self.path.unlink()

    @property
    def size(self) -> int:
        """The file's length in bytes (what a resumed run trims it back to; 0 if none)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _first_line(self) -> bytes:
        """What a new file starts with (a CSV header)."""
        return b""

    def _write_json_lines(self, records: Iterable[dict[str, Any]]) -> None:
        self._write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in records))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None:
            self._file = open_private(self.path, overwrite=not self._append, append=self._append)
            if self.size == 0:
                data = self._first_line() + data
        self._file.write(data)
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class RejectsWriter(_RecordFile):
    """The rejects file: the rows cleaning refused or sent with a remark, in the input's format.

    Each line is one problem: the row's cells exactly as read (CSV: every
    column in the input's order; JSONL and Parquet: the keys the row had, as
    JSONL) plus :data:`REJECTS_COLUMNS`, so that ``run`` imports the file
    again once it is fixed (see :func:`unwrap_rejects`). The file is created
    at its first line, never empty; an existing one is refused at once unless
    ``overwrite`` (it is removed) or ``append`` (a resumed run). A name whose
    extension says the other format raises :class:`UsageError`.
    """

    def __init__(
        self, path: Path, input_format: str, *, overwrite: bool = False, append: bool = False
    ):
        path = Path(path)
        wanted = rejects_format(input_format)
        if path.suffix.lower() in (_JSONL_SUFFIXES if wanted == "csv" else _CSV_SUFFIXES):
            raise UsageError(
                f"{path}: rejects of a {input_format} input are written as "
                f"{wanted.upper()}, so it can be imported again; name it {path.stem}.{wanted}"
            )
        super().__init__(path, "", overwrite=overwrite, append=append)
        self.csv = wanted == "csv"
        self._header: list[str] | None = None

    @property
    def created(self) -> bool:
        """True once the file exists (this run or the interrupted one it resumes wrote to it)."""
        return self.path.is_file()

    def write(
        self, rejects: list[Reject], chunk: Chunk, read_as: dict[str, Any] | None = None
    ) -> None:
        """Append a line per reject, with its row's cells taken from ``chunk``.

        A row that could not be parsed has no cells: its line carries the raw
        text in ``_value``. ``read_as`` (``types``: field → type, ``date_orders``:
        column → order) goes in ``_read_as``, so a re-import of a few rows reads
        them as the whole file was read: ``5`` in a text column stays text.
        """
        if not rejects:
            return
        where = {record: pos for pos, record in enumerate(chunk.records.tolist())}
        positions = [where.get(r.record, -1) for r in rejects]
        found = [p for p in positions if p >= 0]
        cells = dict(
            zip(found, chunk.frame.iloc[found].to_numpy(dtype=object).tolist(), strict=True)
        )
        columns = chunk.column_names
        if self.csv:
            self._write_csv(rejects, [cells.get(p) for p in positions], columns, read_as)
        else:
            self._write(
                b"".join(
                    orjson.dumps(
                        {**_present(columns, cells.get(p)), **self._extras(r, read_as)},
                        default=str,
                    )
                    + b"\n"
                    for r, p in zip(rejects, positions, strict=True)
                )
            )

    def _write_csv(
        self,
        rejects: list[Reject],
        rows: list[list[Any] | None],
        columns: list[str],
        read_as: dict[str, Any] | None,
    ) -> None:
        out: list[list[Any]] = []
        if self._header is None:
            self._header = columns
            if self.size == 0:
                out.append([neutralise_formula(c) for c in (*columns, *REJECTS_COLUMNS)])
        if missing := [c for c in columns if c not in self._header]:
            # A later file of a set with other columns: its lines keep the first file's.
            log.warning(
                "%s: columns %s are not in the rejects file's header; its lines leave them out",
                self.source,
                ", ".join(missing),
            )
        empty = [""] * len(columns)
        for r, row in zip(rejects, rows, strict=True):
            by_name = dict(zip(columns, row if row is not None else empty, strict=True))
            cells = [by_name.get(c, "") for c in self._header]
            extras = [_as_text(v) for v in self._extras(r, read_as).values()]
            out.append([neutralise_formula(c) for c in (*cells, *extras)])
        buf = io.StringIO()
        # With "\r\n" as the terminator the writer also quotes cells holding a bare CR,
        # which would otherwise split one line into two for any CSV reader.
        csv.writer(buf, lineterminator="\r\n").writerows(out)
        self._write(buf.getvalue().encode())

    def _extras(self, r: Reject, read_as: dict[str, Any] | None) -> dict[str, Any]:
        """The values of :data:`REJECTS_COLUMNS` for ``r`` (``source``: the file being read)."""
        return {"_line": r.line, "_outcome": r.outcome, "_column": r.column, "_value": r.value,
                "_reason": r.reason, "_read_as": read_as or None,
                "_source": self.source}  # fmt: skip


def rejects_format(input_format: str) -> str:
    """The rejects file's format for an input's: CSV for CSV, else JSONL (Parquet's values
    are JSON's: integers stay integers, text stays text)."""
    return "csv" if input_format == "csv" else "jsonl"


def default_rejects_path(input_name: str, input_format: str, report_path: Path | None) -> Path:
    """Where rejects go without ``rejects_path``: beside the report, else in the working
    directory, named ``<input stem>.rejects-<UTC time>.<csv|jsonl>`` (``-2``, ``-3``... after
    the time if taken) so no run's file collides with another's; the stamp of a rejects file
    given as input is replaced."""
    name = Path(urlsplit(input_name).path).name if input_name != "-" else "stdin"
    name = name.removesuffix(".gz")
    stem = _STAMPED.sub("", Path(name).stem or "input")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = report_path.parent if report_path is not None else Path()
    path = folder / f"{stem}.rejects-{stamp}.{rejects_format(input_format)}"
    n = 1
    while path.exists():  # another run of the same input in the same second
        n += 1
        path = folder / f"{stem}.rejects-{stamp}-{n}.{rejects_format(input_format)}"
    return path


class ReadBack(NamedTuple):
    """A rejects file's chunk made ready to import again (see :func:`unwrap_rejects`)."""

    chunk: Chunk
    #: Lines of rows that were sent already, left out.
    sent: int
    #: How the run that wrote the file read its columns (``_read_as``), or empty.
    read_as: dict[str, Any]


def unwrap_rejects(chunk: Chunk, *, guarded: bool) -> ReadBack | None:
    """A chunk of a rejects file given as input, ready to import again, or None.

    A chunk is one when it has the ``_line`` and ``_reason`` columns (a user
    may have deleted the others). Its lines of rows that were sent (outcome
    ``field dropped`` or ``conflict``) are left out and counted (the second
    item); the first ``_read_as`` is parsed (the third); the
    :data:`REJECTS_COLUMNS` are removed, and with ``guarded`` (CSV) the
    formula guard :class:`RejectsWriter` added is undone, so every cell is
    what the original input held.
    """
    frame = chunk.frame
    if not {"_line", "_reason"} <= set(frame.columns):
        return None
    sent = np.zeros(len(frame), bool)
    if "_outcome" in frame.columns:
        outcomes = frame["_outcome"].map(lambda v: v.strip() if isinstance(v, str) else v)
        sent = outcomes.isin([FIELD_DROPPED, CONFLICT]).to_numpy()
    kept = frame.loc[~sent, [c for c in frame.columns if c not in REJECTS_COLUMNS]]
    if guarded:
        kept = kept.map(restore_formula).rename(columns=restore_formula)
    read_as = _first_read_as(frame["_read_as"].tolist() if "_read_as" in frame.columns else [])
    kept_chunk = Chunk(kept, chunk.records[~sent], chunk.lines[~sent], chunk.rejects)
    return ReadBack(kept_chunk, int(sent.sum()), read_as)


def _first_read_as(values: list[Any]) -> dict[str, Any]:
    """The first ``_read_as`` that is an object (JSONL) or JSON text of one (CSV), else {}.

    A cell a user garbled is passed over: the columns are then read afresh.
    """
    for value in values:
        if isinstance(value, str) and value.strip():
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(value)
        if isinstance(value, dict):
            return value
    return {}


def _present(columns: list[str], row: list[Any] | None) -> dict[str, Any]:
    """A JSONL row's keys and values as read: NaN marks a key the row did not have."""
    if row is None:
        return {}
    return {
        c: v
        for c, v in zip(columns, row, strict=True)
        if not (isinstance(v, float) and math.isnan(v))
    }


def _as_text(value: Any) -> str:
    if value is None:
        return ""
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
    #: Requests per second over the run; None for a dry run, which sends nothing.
    achieved_rate: float | None = 0.0
    final_rate: float = 0.0
    #: The lowest pace the sender fell to after 429s (equal to ``rate_limit`` when none came).
    lowest_rate: float = 0.0
    first_request_s: float | None = None
    last_request_s: float | None = None
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
    #: For a run that continued earlier ones (``--resume``): the whole job's counts over
    #: all its runs, from the state (see :meth:`~importer.state.StateStore.job_totals`).
    job: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    mapping: list[tuple[str, str]] = field(default_factory=list)
    #: The platform preset applied (see :mod:`importer.presets`), None: none.
    preset: str | None = None
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
        if self.dry_run:
            self.achieved_rate = None
        elif self.first_request_s is not None and self.last_request_s is not None:
            # The pace between the first start and the last: n starts make n - 1 intervals.
            span = self.last_request_s - self.first_request_s
            self.achieved_rate = round((self.requests - 1) / span, 3) if span > 0 else None
        else:
            self.achieved_rate = None

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
        try:
            with open_private(tmp, overwrite=True) as f:
                f.write(orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2) + b"\n")
            os.replace(tmp, path)
        except BaseException:
            # No half-written report left behind (a full disk, a read-only directory).
            tmp.unlink(missing_ok=True)
            raise


def _tally(counts: dict[str, int], reason: str) -> None:
    """Count ``reason`` without the varying detail after a colon."""
    key = reason.split(":", 1)[0].strip()
    counts[key] = counts.get(key, 0) + 1
