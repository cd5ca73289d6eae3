"""The state database: opening, schema, lock, runs, resume checks, prune and summary.

Owns the file (created with mode 0600, by default one per account in the
user's state directory: :func:`default_state_path`), its schema and the
upgrade from earlier ones, refusing files that are not ours, the lock beside
its resolved path, and the ``runs`` table's life cycle:
:meth:`StateStore.begin_run` starts or resumes a run and decides whether a
resume is allowed. It also defines what the tables hold (:class:`Account`'s
keyed hashes, :func:`record_ranges`) so the writer and the reader agree.

Must not: record confirmations (that is :mod:`.confirmations`), or look up
records and payloads for a run (that is :mod:`.reader`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import sqlite3
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import platformdirs

from ..errors import InputChanged, StateError, StateLocked, UsageError

with warnings.catch_warnings():
    # Where fcntl is missing, filelock falls back to a lock file that records its holder's
    # PID (and is reclaimed when that process is gone), and warns once at import. That is
    # the lock we want there, and a warning on every command would only be noise.
    warnings.filterwarnings("ignore", "only soft file lock is available")
    from filelock import BaseFileLock, FileLock, Timeout

log = logging.getLogger(__name__)

#: 5 counts each run's rejected, merged and unchanged rows and records which invocations
#: worked on it; 4 is upgraded with those counts unknown (NULL). 4 keeps keyed hashes of
#: identifiers instead of the identifiers (see :class:`Account`); 3 and 2 (0.1.0) are
#: upgraded, keeping their runs but not their payload hashes; 1 is refused.
SCHEMA_VERSION = 5
#: A recorded range of record numbers never spans more than this many numbers,
#: so the rows overlapping [a, b] are found with an index scan of lo in [a - span, b].
RANGE_SPAN = 64
#: Small pages: a payload hash lands on a random page, and each page it touches is
#: written whole to the WAL, so smaller pages mean less written per customer.
PAGE_SIZE = 1024
#: Payload hashes are written this many at a time at least, and at most
#: :data:`FLUSH_MAX` (memory); in between, half the database's pages, so one write
#: touches at most about half the pages and the WAL stays below half the database.
FLUSH_MIN, FLUSH_MAX = 2_000, 50_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
    settings TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1, started_at REAL NOT NULL, updated_at REAL NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    checkpoint_bytes INTEGER NOT NULL DEFAULT 0, checkpoint_hash TEXT, content_hash TEXT,
    rejects_path TEXT, rejects_through INTEGER NOT NULL DEFAULT 0, rejects_offset INTEGER,
    dead_letter_path TEXT, dead_letter_offset INTEGER, rejected INTEGER, merged INTEGER,
    unchanged INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_source ON runs (source, id);
-- Which invocations of the command worked on a run (the first and each --resume), so a
-- resumed set of files tells how many runs its job took.
CREATE TABLE IF NOT EXISTS attempts (
    run_id INTEGER NOT NULL, invocation TEXT NOT NULL, PRIMARY KEY (run_id, invocation)
) WITHOUT ROWID;
-- The records an unfinished run settled (confirmed or dead-lettered), as ranges.
CREATE TABLE IF NOT EXISTS done (
    run_id INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (run_id, lo, hi)
) WITHOUT ROWID;
-- Per customer: keyed hashes of its identifier and of its last confirmed payload,
-- and the hour (since 1970) it was confirmed, for prune.
CREATE TABLE IF NOT EXISTS payloads (
    id BLOB PRIMARY KEY, hash BLOB NOT NULL, hour INTEGER NOT NULL
) WITHOUT ROWID;
"""

#: Schema 2 appended each confirmed batch to ``journal`` and applied it later, and kept
#: dead-lettered records in ``failed``: a state a killed run left still holds some.
#: Its done ranges and counts are applied here once; its payloads go with schema 3's.
_UPGRADE_FROM_2 = (
    "INSERT OR IGNORE INTO done SELECT j.run_id, json_extract(r.value, '$[0]'), "
    "json_extract(r.value, '$[1]') FROM journal AS j, json_each(j.done) AS r",
    "INSERT OR IGNORE INTO done SELECT j.run_id, r.value, r.value "
    "FROM journal AS j, json_each(j.failed) AS r",
    """UPDATE runs SET
    confirmed = confirmed + (SELECT sum(confirmed) FROM journal WHERE run_id = runs.id),
    dead_lettered = dead_lettered
        + (SELECT sum(dead_lettered) FROM journal WHERE run_id = runs.id),
    (checkpoint_bytes, checkpoint_hash, rejects_through, rejects_offset, dead_letter_offset,
     updated_at) = (SELECT checkpoint_bytes, checkpoint_hash, rejects_through, rejects_offset,
        dead_letter_offset, confirmed_at FROM journal WHERE run_id = runs.id
        ORDER BY seq DESC LIMIT 1)
    WHERE id IN (SELECT run_id FROM journal)""",
    "DROP TABLE journal",
    "INSERT OR IGNORE INTO done SELECT run_id, record, record FROM failed",
    "DROP TABLE failed",
)
#: Schema 5 adds counts a run of schema 4 or older never kept: NULL stands for unknown
#: (a new run starts them at 0, and ``NULL + n`` stays NULL when an old run is resumed).
_UPGRADE_TO_5 = tuple(
    f"ALTER TABLE runs ADD COLUMN {name} INTEGER" for name in ("rejected", "merged", "unchanged")
)


class Account:
    """The destination account a state's customer hashes belong to, and their key.

    The key is derived from the API key and base URL, and never stored: the
    state file alone tells neither who the customers are nor, by hashing a
    list of guessed e-mails, whether someone is among them. Whoever holds the
    API key can read the customers from Blueshift anyway. A new API key starts
    afresh (the next ``--changed-only`` run sends everyone once).
    """

    def __init__(self, base_url: str, api_key: str | None):
        message = b"blueshift-import state\0" + base_url.rstrip("/").encode()
        self.key = hmac.digest((api_key or "").encode(), message, "sha256")

    def customer(self, identifier: str) -> bytes:
        """16 bytes standing for an identifier (an e-mail or customer_id)."""
        return hmac.digest(self.key, b"i" + identifier.encode(), "sha256")[:16]

    def payload(self, encoded: bytes) -> bytes:
        """8 bytes standing for a payload's JSON as sent (keys sorted, so column order
        does not matter): enough to tell a changed payload from the last one."""
        return hmac.digest(self.key, b"p" + encoded, "sha256")[:8]

    @property
    def file_name(self) -> str:
        """The default state's file name for this account: a digest of the key."""
        return hashlib.sha256(b"file\0" + self.key).hexdigest()[:20] + ".sqlite"


def state_dir() -> Path:
    """Where default states live: the user's state directory (``$XDG_STATE_HOME`` on Linux)."""
    return Path(platformdirs.user_state_dir("blueshift-import"))


def default_state_path(base_url: str, api_key: str | None) -> Path:
    """The state for imports into one account, wherever the command runs from."""
    return state_dir() / Account(base_url, api_key).file_name


def record_ranges(records: Iterable[int], span: int = RANGE_SPAN) -> list[tuple[int, int]]:
    """Compress record numbers into sorted ``(lo, hi)`` runs of consecutive numbers.

    No run covers more than ``span`` numbers, which keeps look-ups indexable.
    """
    ranges: list[tuple[int, int]] = []
    for r in sorted(set(records)):
        if ranges and r == ranges[-1][1] + 1 and r - ranges[-1][0] < span:
            ranges[-1] = (ranges[-1][0], r)
        else:
            ranges.append((r, r))
    return ranges


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """Seconds in an age such as ``90d``, ``12h``, ``2w``, ``30m`` or ``45s``.

    Raises :class:`UsageError` for anything else.
    """
    match = _AGE.match(text.lower())
    if not match:
        raise UsageError(f"expected an age like 90d, 12h or 2w, got {text!r}")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


@dataclass(frozen=True)
class Fingerprint:
    """Which input a run reads (its absolute path, its URL, or ``-``) and its size and
    modification time in nanoseconds (None where unknown: stdin, some servers)."""

    source: str
    size: int | None
    mtime_ns: int | None


@dataclass(frozen=True)
class RunInfo:
    """The run a pipeline is recording into, and what an interrupted attempt left."""

    run_id: int
    resumed: bool
    source: str
    checkpoint_bytes: int = 0
    checkpoint_hash: str | None = None
    rejects_path: str | None = None
    rejects_through: int = 0
    rejects_offset: int | None = None
    dead_letter_path: str | None = None
    dead_letter_offset: int | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (WAL, ``synchronous=NORMAL``) for the calling thread."""
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
    try:
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            # Checkpoint often and give the space back: the WAL never holds much.
            conn.execute("PRAGMA wal_autocheckpoint = 256")
            conn.execute(f"PRAGMA journal_size_limit = {256 * PAGE_SIZE}")
        conn.execute("PRAGMA synchronous = NORMAL")  # see "Durability" in the package docstring
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateError(f"{path} is not a blueshift-import state ({exc})") from exc
    return conn


@contextlib.contextmanager
def state_errors(path: Path) -> Iterator[None]:
    """Turn a failing state file (damaged, unwritable, full disk) into one :class:`StateError`."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise StateError(f"the state {path} cannot be used: {exc}") from exc
    except OSError as exc:
        raise StateError(f"the state {path} cannot be used: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Commit what the block did, or roll it all back if it raised."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _lock(path: Path) -> BaseFileLock:
    return FileLock(path.with_name(path.name + ".lock"), timeout=0, mode=0o600)


def _lock_holder(conn: sqlite3.Connection) -> str:
    """The PID the lock's holder recorded in ``meta`` (filelock's lock file need not say)."""
    with contextlib.suppress(sqlite3.Error):
        row = conn.execute("SELECT value FROM meta WHERE key = 'locked_by'").fetchone()
        return str(row[0])
    return "unknown"


class StateStore:
    """An opened, locked state database. Use as a context manager.

    ``path`` is resolved first (a symlink is followed), so two names for one
    file share one lock. Opening creates the file with mode 0600 (SQLite
    gives its ``-wal`` and ``-shm`` files the same mode), upgrades a state of
    schema 2 or 3, and takes an exclusive lock on ``<path>.lock``; the lock
    is released on close and when the process dies, so a killed run never
    leaves a stale lock. Raises :class:`StateLocked` (naming the holder's
    PID) when another run holds it, and :class:`StateError` when the file
    cannot be written, is another program's database or a damaged one, or
    has a schema this version cannot open. With ``resume``, an empty (0-byte)
    file and one that fails SQLite's quick check are refused too: resuming
    from them would silently send everything again.
    """

    def __init__(self, path: str | Path, *, resume: bool = False):
        given = Path(path)
        self.path = given.resolve()
        if self.path.is_dir():
            raise StateError(f"--state {given} is a directory; give a file name")
        empty = self.path.exists() and self.path.stat().st_size == 0
        if resume and empty:
            raise StateError(
                f"the state {given} is empty, so there is nothing to resume from; "
                "run without --resume to start over (everything is sent again)"
            )
        with state_errors(given):
            self.path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._lock: BaseFileLock | None = _lock(self.path)
            try:
                self._lock.acquire()
            except Timeout:
                conn = connect(self.path, readonly=True)
                holder = _lock_holder(conn)
                conn.close()
                raise StateLocked(
                    f"the state {given} is in use by another run (PID {holder}); "
                    "wait for it to finish, or give this run another --state"
                ) from None
        try:
            with state_errors(given):
                self._open_schema(resume)
        except BaseException:
            self.close()
            raise

    def _open_schema(self, resume: bool) -> None:
        try:
            version = self._inspect(resume)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"the state {self.path} is damaged or not a database ({exc}); give --state "
                "another file, or move this one away to start over (everything is sent again)"
            ) from exc
        if version > SCHEMA_VERSION:
            raise StateError(f"{self.path} has state schema {version}, a newer one")
        if version < 2:
            raise StateError(
                f"{self.path} was made by an older version (state schema {version}); "
                "start a new state with --state"
            )
        with contextlib.closing(self.connect()) as conn:
            with transaction(conn):
                if version == 2:
                    for statement in _UPGRADE_FROM_2:
                        conn.execute(statement)
                if version < 4:
                    # Identifiers in clear: dropped (and erased by the VACUUM below). Runs and
                    # done ranges stay, so an interrupted run still resumes; only
                    # --changed-only starts afresh and sends everyone once.
                    conn.execute("DROP TABLE IF EXISTS payloads")
                if version < 5:
                    for statement in _UPGRADE_TO_5:
                        conn.execute(statement)
                for statement in _SCHEMA.split(";"):  # executescript would commit first
                    conn.execute(statement)
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?), ('locked_by', ?)",
                    (str(SCHEMA_VERSION), str(os.getpid())),
                )
            if version < 4:
                conn.execute("VACUUM")

    def _inspect(self, resume: bool) -> int:
        """The schema version of the file (ours for a new one), read before anything is
        written, so another program's database is left as it is."""
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not tables:
                # Takes effect only as the database is created: here, by switching it to WAL.
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
                conn.execute("PRAGMA journal_mode = WAL")
                return SCHEMA_VERSION
            row = None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                raise StateError(
                    f"{self.path} is a database of another program, not a "
                    "blueshift-import state; give --state another file"
                )
            if resume and (check := conn.execute("PRAGMA quick_check").fetchone()[0]) != "ok":
                raise sqlite3.DatabaseError(check)
            return int(row[0])

    def connect(self) -> sqlite3.Connection:
        """A new connection for the calling thread."""
        return connect(self.path)

    def close(self) -> None:
        """Release the lock (closing twice does nothing)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin_run(
        self,
        fingerprint: Fingerprint,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        force: bool = False,
        rejects_path: Path | None = None,
        dead_letter_path: Path | None = None,
        invocation: str | None = None,
    ) -> RunInfo:
        """Start a run of ``fingerprint``'s input, or continue its interrupted one.

        With ``resume``, the latest unfinished run of the same input is
        continued; its size, modification time and ``settings`` (the options
        that shape payloads and batches) must match, else
        :class:`InputChanged`. ``force`` starts over instead. Without
        ``resume`` (or when nothing was interrupted) a new run starts, and an
        unfinished run of the same input is superseded. ``resume`` of
        standard input raises :class:`UsageError`. ``invocation`` names the
        command's invocation (default: a new one), which :meth:`job_totals`
        counts as one run.
        """
        if resume and fingerprint.source == "-":
            raise UsageError("--resume needs a file: standard input cannot be read again")
        now, source = time.time(), fingerprint.source
        with state_errors(self.path), contextlib.closing(self.connect()) as conn, transaction(conn):
            prev = conn.execute(
                "SELECT id, status, size, mtime_ns, settings, checkpoint_bytes, checkpoint_hash, "
                "rejects_path, rejects_through, rejects_offset, dead_letter_path, "
                "dead_letter_offset FROM runs WHERE source = ? ORDER BY id DESC LIMIT 1",
                (source,),
            ).fetchone()
            unfinished = prev is not None and prev[1] != "completed"
            if resume and unfinished and not force:
                _check_same_input(fingerprint, settings, *prev[2:6], stopped=prev[1] == "stopped")
                conn.execute(
                    "UPDATE runs SET status = 'running', pid = ?, attempts = attempts + 1, "
                    "updated_at = ? WHERE id = ?",
                    (os.getpid(), now, prev[0]),
                )
                _note_attempt(conn, prev[0], invocation)
                return RunInfo(prev[0], True, source, *prev[5:])
            if unfinished:
                if not resume:
                    log.warning(
                        "an earlier run of %s did not finish; starting over "
                        "(pass --resume to continue it instead)",
                        source,
                    )
                conn.execute("UPDATE runs SET status = 'superseded' WHERE id = ?", (prev[0],))
                conn.execute("DELETE FROM done WHERE run_id = ?", (prev[0],))
            elif resume:
                log.info("nothing to resume for %s; starting a new run", source)
            rejects, dead_letter = _resolved(rejects_path), _resolved(dead_letter_path)
            cur = conn.execute(
                "INSERT INTO runs (source, size, mtime_ns, settings, status, pid, started_at, "
                "updated_at, rejects_path, dead_letter_path, rejected, merged, unchanged) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, 0, 0, 0)",
                (source, fingerprint.size, fingerprint.mtime_ns,
                 orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode(),
                 os.getpid(), now, now, rejects, dead_letter),
            )  # fmt: skip
            assert cur.lastrowid is not None
            _note_attempt(conn, cur.lastrowid, invocation)
            return RunInfo(
                cur.lastrowid, False, source, rejects_path=rejects, dead_letter_path=dead_letter
            )

    def finished_run(self, fingerprint: Fingerprint) -> int | None:
        """The id of the latest run of ``fingerprint``'s input if it completed on an
        input of the same size and modification time, else None.

        ``--resume`` of a set of files skips such a file: the interrupted set finished it.
        """
        with state_errors(self.path), contextlib.closing(self.connect()) as conn:
            row = conn.execute(
                "SELECT id, status, size, mtime_ns FROM runs WHERE source = ? "
                "ORDER BY id DESC LIMIT 1",
                (fingerprint.source,),
            ).fetchone()
        if row is None or row[1] != "completed" or fingerprint.source == "-":
            return None
        return int(row[0]) if (row[2], row[3]) == (fingerprint.size, fingerprint.mtime_ns) else None

    def job_totals(self, run_ids: Iterable[int]) -> dict[str, Any]:
        """What the runs ``run_ids`` (one per input of a job) settled over all their attempts.

        Returns ``runs`` (the invocations that worked on them), ``succeeded``,
        ``rejected``, ``dead_lettered``, ``merged_duplicates`` and
        ``unchanged_skipped``, and ``complete``: False when a run began before
        schema 5 counted its rejected, merged and unchanged rows (those sums
        then leave it out).
        """
        ids = sorted(set(run_ids))
        marks = ",".join("?" * len(ids))
        with state_errors(self.path), contextlib.closing(self.connect()) as conn:
            row = conn.execute(
                "SELECT count(*), total(confirmed), total(rejected), total(dead_lettered), "
                "total(merged), total(unchanged), count(rejected) + count(merged) "
                f"+ count(unchanged), max(attempts) FROM runs WHERE id IN ({marks})",  # noqa: S608
                ids,
            ).fetchone()
            invocations = conn.execute(
                f"SELECT count(DISTINCT invocation) FROM attempts WHERE run_id IN ({marks})",  # noqa: S608
                ids,
            ).fetchone()[0]
        runs, succeeded, rejected, dead, merged, unchanged, known, most = row
        return {
            # A run of schema 4 knows how often it was attempted, not by which invocations.
            "runs": max(invocations, most or 0),
            "succeeded": int(succeeded),
            "rejected": int(rejected),
            "dead_lettered": int(dead),
            "merged_duplicates": int(merged),
            "unchanged_skipped": int(unchanged),
            "complete": runs == len(ids) and known == 3 * runs,
        }

    def holds_payloads(self) -> bool:
        """Whether any payload hash is kept (some run used ``--changed-only``)."""
        with state_errors(self.path), contextlib.closing(self.connect()) as conn:
            return conn.execute("SELECT 1 FROM payloads LIMIT 1").fetchone() is not None

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget runs and payload hashes not touched for ``older_than`` seconds
        (payload hashes to the hour), and give the space back.

        Returns how many runs and payload hashes were removed.
        """
        cutoff = time.time() - older_than
        with state_errors(self.path), contextlib.closing(self.connect()) as conn:
            with transaction(conn):
                for table in ("done", "attempts"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE run_id IN "  # noqa: S608 - fixed table names
                        "(SELECT id FROM runs WHERE updated_at < ?)",
                        (cutoff,),
                    )
                runs = conn.execute("DELETE FROM runs WHERE updated_at < ?", (cutoff,)).rowcount
                payloads = conn.execute(
                    "DELETE FROM payloads WHERE hour < ?", (int(cutoff // 3600),)
                ).rowcount
            if runs or payloads:
                conn.execute("VACUUM")
            return {"runs": runs, "payloads": payloads}

    def reset(self) -> None:
        """Forget everything: every run and every payload hash."""
        with state_errors(self.path), contextlib.closing(self.connect()) as conn:
            with transaction(conn):
                for table in ("done", "attempts", "payloads", "runs"):
                    conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            conn.execute("VACUUM")


def _note_attempt(conn: sqlite3.Connection, run_id: int, invocation: str | None) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO attempts VALUES (?, ?)", (run_id, invocation or uuid.uuid4().hex)
    )


def _resolved(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _check_same_input(
    fp: Fingerprint,
    settings: dict[str, Any],
    size: int | None,
    mtime_ns: int | None,
    old: str,
    checkpoint_bytes: int | None = None,
    *,
    stopped: bool = False,
) -> None:
    # A run stopped by a fault (e.g. a damaged input) may be resumed on the input grown
    # since (repaired, its download completed) when the part already read is known by
    # hash: re-reading verifies it. An interrupted run's input must be unchanged.
    grown = (
        stopped
        and bool(checkpoint_bytes)
        and fp.size is not None
        and size is not None
        and fp.size > size
    )
    if (fp.size, fp.mtime_ns) != (size, mtime_ns) and not grown:
        raise InputChanged(
            f"{fp.source} changed since the interrupted run (size {size} → {fp.size} bytes, "
            "or a new modification time); refusing to resume. "
            "Pass --resume --force to start over."
        )
    previous = orjson.loads(old)
    # Options added since the interrupted run was recorded are not compared.
    changed = sorted(k for k in previous.keys() & settings.keys() if previous[k] != settings[k])
    if changed:
        raise InputChanged(
            "the options that shape payloads and batches changed since the interrupted run "
            f"({', '.join(changed)}); resume with the same options, "
            "or pass --resume --force to start over"
        )


def trim_output(path: Path | None, recorded_path: str | None, offset: int | None) -> None:
    """Cut an output file back to what an interrupted run had recorded as written.

    Lines past ``offset`` belong to rows the state does not count as done;
    the resumed run writes them again, so they are removed first. Nothing is
    done when the file is another one than the run used.
    """
    if path is None or offset is None or recorded_path != _resolved(path):
        return
    with contextlib.suppress(FileNotFoundError):
        if Path(path).stat().st_size > offset:
            os.truncate(path, offset)


def open_summary(path: str | Path) -> dict[str, Any]:
    """What a state holds: its size, runs (newest first), payload hashes, and per input
    the time its last run completed (``last_success``, seconds since 1970).

    Safe while a run writes (WAL); it only tries the lock, to say which PID
    holds it (``locked_by``). Raises :class:`StateError` when there is no
    state at ``path`` or it is not one.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise StateError(f"no state at {path}")
    conn = connect(path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        runs = conn.execute(
            "SELECT id, source, status, pid, attempts, started_at, updated_at, confirmed, "
            "rejected, dead_lettered FROM runs ORDER BY id DESC LIMIT 20"
        )
        files = (path, Path(f"{path}-wal"))
        summary = {
            "path": str(path),
            "schema_version": SCHEMA_VERSION,
            "size_bytes": sum(p.stat().st_size for p in files if p.exists()),
            "runs": [dict(r) for r in runs],
            "run_count": conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
            "last_success": {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT source, max(updated_at) FROM runs WHERE status = 'completed' "
                    "GROUP BY source ORDER BY 2 DESC"
                )
            },
            "payload_hashes": conn.execute("SELECT COUNT(*) FROM payloads").fetchone()[0],
            "locked_by": None,
        }
        probe = _lock(path)
        try:
            probe.acquire()
            probe.release()
        except Timeout:
            summary["locked_by"] = _lock_holder(conn)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a blueshift-import state ({exc})") from exc
    finally:
        conn.close()
    return summary
