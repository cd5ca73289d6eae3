"""State store: what earlier runs confirmed, for ``--resume`` and ``--changed-only``.

Owns: one SQLite database (stdlib ``sqlite3``, WAL journal, ``synchronous=NORMAL``),
created with mode 0600, and the lock file beside it that keeps two runs from
using one state at once. It records, per run, the input's fingerprint, the
options that shape the payloads and batches, which source records are done
(as short ranges of record numbers), and, per customer identifier, a hash of
the last payload the API confirmed.

Written only after the API confirmed a batch (:class:`ConfirmationWriter`).

Durability: with WAL and ``synchronous=NORMAL`` a commit is not flushed to
disk at once (only checkpoints are). A committed batch survives the process
being killed (``kill -9``, a crash, an out-of-memory kill): it is in the
operating system's cache. A power loss or kernel crash may undo the last
commits before the next checkpoint; the state is not corrupted, and those
batches count as not done, so ``--resume`` sends them again (the API upserts,
so that is harmless). ``synchronous=FULL`` would add an fsync to every commit,
about one per batch when the API answers fast.

Threads: a :mod:`sqlite3` connection belongs to the thread that opened it.
The pipeline reads in its producer thread through a :class:`StateReader`
(its own connection) and writes through a :class:`ConfirmationWriter`: it
appends each confirmed batch to a journal table from the event loop (one
short statement, no wait for the disk), and checkpoints the WAL and applies
the journal to the other tables in its writer thread, with a second
connection. WAL lets the reader see every committed batch meanwhile. After a
crash the journal is applied when the state is next opened (see the comment
above ``_JOURNAL_COLUMNS``).

How the content hash is checked on resume: a hash of the whole file is only
known at its end, so the run records a *checkpoint* instead — the number of
bytes read so far and the SHA-256 of exactly those bytes, taken as each chunk
is read (by hashing the same bytes from a second handle, so the first request
is never delayed by a scan). A chunk's checkpoint is recorded before any of
its rows can be confirmed, so every row marked done lies within the
checkpointed bytes. On ``--resume``, size and modification time are compared
at once; the content is re-hashed as the file is read again, and no batch is
sent until the re-read reaches the checkpoint and the hashes match. A
mismatch raises :class:`~importer.errors.InputChanged` before anything from
the changed file was sent.

Must not: send anything, read the input's records, or decide validity.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from .batching import encode_payload
from .errors import InputChanged, StateError, StateLocked, UsageError
from .records import Batch, Customer, Outcome, Reject

log = logging.getLogger(__name__)

#: The default state store, relative to the working directory.
DEFAULT_STATE_PATH = Path(".blueshift-import") / "state.sqlite"
SCHEMA_VERSION = 2
#: Earlier schemas this version upgrades in place (2 added ``journal``).
UPGRADES_FROM = (1,)
#: A recorded range of record numbers never spans more than this many numbers,
#: so the rows overlapping [a, b] are found with an index scan of lo in [a - span, b].
RANGE_SPAN = 64
#: Identifiers per ``IN (...)`` query: well under SQLite's variable limit.
LOOKUP_BATCH = 500
#: Confirmed batches between two checkpoints of the WAL (about 1,000 pages).
CHECKPOINT_EVERY = 500

#: The options that decide what the payloads and batches of a file are: a resumed
#: run must use the same ones, or rows "already done" would mean something else.
SETTINGS_FIELDS = (
    "format",
    "encoding",
    "delimiter",
    "max_field_bytes",
    "max_columns",
    "max_json_depth",
    "column_map",
    "drop_columns",
    "drop_unmapped",
    "mapping_file",
    "phone_region",
    "on_invalid",
    "empty_as_null",
    "batch_size",
    "max_batch_bytes",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    checkpoint_bytes INTEGER NOT NULL DEFAULT 0,
    checkpoint_hash TEXT,
    content_hash TEXT,
    rejects_path TEXT,
    rejects_through INTEGER NOT NULL DEFAULT 0,
    rejects_offset INTEGER,
    dead_letter_path TEXT,
    dead_letter_offset INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_source ON runs (source, id);
CREATE TABLE IF NOT EXISTS done (
    run_id INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL,
    PRIMARY KEY (run_id, lo, hi)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failed (
    run_id INTEGER NOT NULL,
    record INTEGER NOT NULL,
    PRIMARY KEY (run_id, record)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (
    target TEXT NOT NULL,
    identifier TEXT NOT NULL,
    hash BLOB NOT NULL,
    confirmed_at REAL NOT NULL,
    PRIMARY KEY (target, identifier)
) WITHOUT ROWID;
-- Not indexed by age: `state prune` scans, rather than every confirmed customer
-- costing an index update.
DROP INDEX IF EXISTS payloads_by_age;
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    target TEXT NOT NULL,
    confirmed_at REAL NOT NULL,
    done TEXT NOT NULL,
    failed TEXT,
    identifiers TEXT NOT NULL,
    hashes BLOB NOT NULL,
    confirmed INTEGER NOT NULL,
    dead_lettered INTEGER NOT NULL,
    checkpoint_bytes INTEGER NOT NULL,
    checkpoint_hash TEXT,
    rejects_through INTEGER NOT NULL,
    rejects_offset INTEGER,
    dead_letter_offset INTEGER
);
"""

# How confirmations are written. A confirmed batch is one ``journal`` row, appended:
# its record ranges and failed records (JSON arrays), its counts, the run's progress
# notes, and its payload hashes (the identifiers as a JSON array, their 16-byte hashes
# concatenated in the same order). A commit is then one statement that writes a page
# or two. Writing each customer's hash straight into ``payloads`` would cost a
# statement per customer and dirty a B-tree page per customer (identifiers arrive in
# random order), and every commit would write those pages to the WAL again.
#
# The journal is applied to ``done``, ``failed``, ``runs`` and ``payloads`` in one
# transaction when the run ends, or, after a crash, when the state is next opened,
# before anything reads those tables. Hashes are merged in identifier order, so each
# page is written once; of two confirmations of one identifier the later one wins.
# Until then, ``--changed-only`` look-ups in a run do not see the hashes that run
# confirmed (a customer repeated in the file is compared with the earlier runs only).
_JOURNAL_COLUMNS = (
    "run_id, target, confirmed_at, done, failed, identifiers, hashes, confirmed, "
    "dead_lettered, checkpoint_bytes, checkpoint_hash, rejects_through, rejects_offset, "
    "dead_letter_offset"
)
_APPEND_JOURNAL = (
    f"INSERT INTO journal ({_JOURNAL_COLUMNS}) "  # noqa: S608 - fixed column names
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_PAYLOAD = """
INSERT INTO payloads (target, identifier, hash, confirmed_at) {rows}
ON CONFLICT (target, identifier) DO UPDATE
SET hash = excluded.hash, confirmed_at = excluded.confirmed_at
"""
_APPLY_JOURNAL = (
    "INSERT OR IGNORE INTO done (run_id, lo, hi) "
    "SELECT l.run_id, json_extract(r.value, '$[0]'), json_extract(r.value, '$[1]') "
    "FROM journal AS l, json_each(l.done) AS r",
    "INSERT OR IGNORE INTO failed (run_id, record) "
    "SELECT l.run_id, r.value FROM journal AS l, json_each(l.failed) AS r",
    # Sorted on the identifier first: SQLite's sorter compares a leading text key fast.
    _UPSERT_PAYLOAD.format(
        rows="SELECT l.target, i.value, substr(l.hashes, 16 * i.key + 1, 16), l.confirmed_at "
        "FROM journal AS l, json_each(l.identifiers) AS i WHERE true "
        "ORDER BY i.value, l.target, l.seq, i.key"
    ),
)
#: The runs' counts and latest progress notes, from their journal rows.
_APPLY_PROGRESS = """
UPDATE runs SET
    confirmed = confirmed
        + (SELECT coalesce(sum(confirmed), 0) FROM journal WHERE run_id = runs.id),
    dead_lettered = dead_lettered
        + (SELECT coalesce(sum(dead_lettered), 0) FROM journal WHERE run_id = runs.id),
    (checkpoint_bytes, checkpoint_hash, rejects_through, rejects_offset, dead_letter_offset,
     updated_at) = (
        SELECT checkpoint_bytes, checkpoint_hash, rejects_through, rejects_offset,
            dead_letter_offset, confirmed_at
        FROM journal WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1)
WHERE id IN (SELECT run_id FROM journal)
"""


# -- pure helpers --------------------------------------------------------------


def payload_hash(payload: dict[str, Any]) -> bytes:
    """A 16-byte digest of a payload, independent of its keys' order.

    It hashes the bytes :func:`~importer.batching.encode_payload` sends, and
    is the same digest as ever (of the JSON with sorted keys).
    """
    return payload_digest(encode_payload(payload))


def payload_digest(encoded: bytes) -> bytes:
    """The :func:`payload_hash` of a payload from its :func:`encode_payload` bytes."""
    return hashlib.blake2b(encoded, digest_size=16).digest()


def run_settings(options: Any) -> dict[str, Any]:
    """The :data:`SETTINGS_FIELDS` of ``options`` as plain JSON-able values."""
    settings = {}
    for name in SETTINGS_FIELDS:
        value = getattr(options, name, None)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, Path):
            value = str(value)
        settings[name] = value
    return settings


def target_tag(base_url: str, api_key: str | None) -> str:
    """Which account a payload hash was confirmed by: the base URL and a digest of the key.

    The key itself is never stored; an unkeyed digest of a random API key does
    not reveal it, but keeps imports into two accounts apart.
    """
    key_digest = hashlib.blake2b((api_key or "").encode(), digest_size=6).hexdigest()
    return f"{base_url.rstrip('/')}#{key_digest}"


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
    """Seconds in an age such as ``90d``, ``12h``, ``2w``, ``30m`` or ``45s``."""
    match = _AGE.match(text.lower())
    if not match:
        raise UsageError(f"expected an age like 90d, 12h or 2w, got {text!r}")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


@dataclass(frozen=True)
class Fingerprint:
    """Where the input is and what it looked like on disk (None fields for stdin)."""

    source: str
    size: int | None
    mtime_ns: int | None

    @classmethod
    def of(cls, path: str | Path) -> Fingerprint:
        if str(path) == "-":
            return cls("-", None, None)
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            # The source stage reports missing or unreadable input with a better message.
            return cls(str(p.resolve()), None, None)
        return cls(str(p.resolve()), st.st_size, st.st_mtime_ns)


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
    confirmed: int = 0


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
        # See "Durability" in the module docstring.
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateError(f"{path} is not a blueshift-import state ({exc})") from exc
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _apply_journal(conn: sqlite3.Connection, *, records: bool = True) -> None:
    """Apply the ``journal`` to the tables it stands for and empty it (in a transaction).

    ``records=False`` skips the record numbers (``done``, ``failed``): a run
    that completed no longer needs them.
    """
    if conn.execute("SELECT 1 FROM journal LIMIT 1").fetchone() is None:
        return
    statements = _APPLY_JOURNAL if records else _APPLY_JOURNAL[2:]
    try:
        for statement in statements:
            conn.execute(statement)
    except sqlite3.OperationalError as exc:
        if "json_each" not in str(exc):
            raise
        # An SQLite built without its JSON functions: unpack the journal here instead.
        _apply_journal_rows(conn, records=records)
    conn.execute(_APPLY_PROGRESS)
    conn.execute("DELETE FROM journal")


def _apply_journal_rows(conn: sqlite3.Connection, *, records: bool) -> None:
    rows = conn.execute(
        "SELECT run_id, target, confirmed_at, done, failed, identifiers, hashes "
        "FROM journal ORDER BY seq"
    ).fetchall()
    for run_id, target, at, done, failed, idents, hashes in rows:
        if records:
            conn.executemany(
                "INSERT OR IGNORE INTO done (run_id, lo, hi) VALUES (?, ?, ?)",
                [(run_id, lo, hi) for lo, hi in orjson.loads(done)],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO failed (run_id, record) VALUES (?, ?)",
                [(run_id, r) for r in orjson.loads(failed or "[]")],
            )
        conn.executemany(
            _UPSERT_PAYLOAD.format(rows="VALUES (?, ?, ?, ?)"),
            [
                (target, ident, hashes[16 * i : 16 * i + 16], at)
                for i, ident in enumerate(orjson.loads(idents))
            ],
        )


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _create_private(path: Path) -> None:
    """Create ``path`` (and its directory) with owner-only permissions if missing."""
    if path.parent != Path("") and not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)


# -- the store -----------------------------------------------------------------


class StateStore:
    """An opened, locked state database. Use as a context manager.

    Opening creates the file with mode 0600 (SQLite gives its ``-wal`` and
    ``-shm`` files the same mode) and takes an exclusive lock on
    ``<path>.lock``; the lock is released on close and by the OS when the
    process dies, so a killed run never leaves a stale lock. Raises
    :class:`StateLocked` (naming the holder's PID) when another run holds it,
    and :class:`StateError` when the file is not a state database.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: IO[str] | None = None
        try:
            if self.path.is_dir():
                raise StateError(f"--state {self.path} is a directory; give a file name")
            _create_private(self.path)
            self._acquire_lock()
            conn = _connect(self.path)
            try:
                self._check_schema(conn)
            finally:
                conn.close()
        except BaseException:
            self.close()
            raise

    def _acquire_lock(self) -> None:
        lock_path = _lock_path(self.path)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise StateLocked(
                f"the state {self.path} is in use by another run (PID {holder}); "
                "wait for it to finish, or give this run another --state"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        try:
            conn.executescript(_SCHEMA)  # idempotent: every statement is IF NOT EXISTS
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path} is not a blueshift-import state ({exc})") from exc
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif int(row[0]) in UPGRADES_FROM:
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has state schema {row[0]}, this version reads {SCHEMA_VERSION}"
            )
        with _transaction(conn):
            _apply_journal(conn)  # what a run that was killed had confirmed

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.seek(0)
                self._lock.truncate()
            self._lock.close()  # closing the descriptor releases the lock
            self._lock = None

    def connect(self) -> sqlite3.Connection:
        """A new connection for the calling thread."""
        return _connect(self.path)

    # -- runs --

    def begin_run(
        self,
        fingerprint: Fingerprint,
        settings: dict[str, Any],
        *,
        resume: bool = False,
        force: bool = False,
        rejects_path: Path | None = None,
        dead_letter_path: Path | None = None,
    ) -> RunInfo:
        """Start a run of ``fingerprint``'s input, or continue its interrupted one.

        With ``resume``, the latest unfinished run of the same input is
        continued; its size, modification time and ``settings`` (the options
        that shape payloads and batches) must match, else
        :class:`InputChanged`. ``force`` starts over instead. Without
        ``resume`` (or when nothing was interrupted) a new run starts, and an
        unfinished run of the same input is superseded.
        """
        if resume and fingerprint.source == "-":
            raise UsageError("--resume needs a file: standard input cannot be read again")
        settings_json = orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode()
        now = time.time()
        conn = self.connect()
        try:
            with _transaction(conn):
                prev = conn.execute(
                    "SELECT id, status, size, mtime_ns, settings, checkpoint_bytes, "
                    "checkpoint_hash, rejects_path, rejects_through, rejects_offset, "
                    "dead_letter_path, dead_letter_offset, confirmed "
                    "FROM runs WHERE source = ? ORDER BY id DESC LIMIT 1",
                    (fingerprint.source,),
                ).fetchone()
                unfinished = prev is not None and prev[1] != "completed"
                if resume and unfinished and not force:
                    _check_same_input(fingerprint, settings, prev[2], prev[3], prev[4])
                    conn.execute(
                        "UPDATE runs SET status = 'running', pid = ?, attempts = attempts + 1, "
                        "updated_at = ? WHERE id = ?",
                        (os.getpid(), now, prev[0]),
                    )
                    return RunInfo(
                        run_id=prev[0],
                        resumed=True,
                        source=fingerprint.source,
                        checkpoint_bytes=prev[5],
                        checkpoint_hash=prev[6],
                        rejects_path=prev[7],
                        rejects_through=prev[8],
                        rejects_offset=prev[9],
                        dead_letter_path=prev[10],
                        dead_letter_offset=prev[11],
                        confirmed=prev[12],
                    )
                if resume and not unfinished:
                    log.info("nothing to resume for %s; starting a new run", fingerprint.source)
                if unfinished:
                    if not resume:
                        log.warning(
                            "an earlier run of %s did not finish; starting over "
                            "(pass --resume to continue it instead)",
                            fingerprint.source,
                        )
                    self._supersede(conn, prev[0])
                cur = conn.execute(
                    "INSERT INTO runs (source, size, mtime_ns, settings, status, pid, "
                    "started_at, updated_at, rejects_path, dead_letter_path) "
                    "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                    (
                        fingerprint.source,
                        fingerprint.size,
                        fingerprint.mtime_ns,
                        settings_json,
                        os.getpid(),
                        now,
                        now,
                        _resolved(rejects_path),
                        _resolved(dead_letter_path),
                    ),
                )
                assert cur.lastrowid is not None
                return RunInfo(
                    run_id=cur.lastrowid,
                    resumed=False,
                    source=fingerprint.source,
                    rejects_path=_resolved(rejects_path),
                    dead_letter_path=_resolved(dead_letter_path),
                )
        finally:
            conn.close()

    @staticmethod
    def _supersede(conn: sqlite3.Connection, run_id: int) -> None:
        conn.execute("UPDATE runs SET status = 'superseded' WHERE id = ?", (run_id,))
        conn.execute("DELETE FROM done WHERE run_id = ?", (run_id,))
        conn.execute("DELETE FROM failed WHERE run_id = ?", (run_id,))

    # -- management --

    def summary(self) -> dict[str, Any]:
        """What the state holds: runs (newest first) and payload hashes per destination."""
        conn = self.connect()
        try:
            return _summary(conn, self.path)
        finally:
            conn.close()

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget runs and payload hashes not touched for ``older_than`` seconds.

        Returns how many runs and payload hashes were removed.
        """
        cutoff = time.time() - older_than
        conn = self.connect()
        try:
            with _transaction(conn):
                old = [
                    r[0]
                    for r in conn.execute("SELECT id FROM runs WHERE updated_at < ?", (cutoff,))
                ]
                for run_id in old:
                    conn.execute("DELETE FROM done WHERE run_id = ?", (run_id,))
                    conn.execute("DELETE FROM failed WHERE run_id = ?", (run_id,))
                    conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
                payloads = conn.execute(
                    "DELETE FROM payloads WHERE confirmed_at < ?", (cutoff,)
                ).rowcount
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return {"runs": len(old), "payloads": payloads}
        finally:
            conn.close()

    def reset(self) -> None:
        """Forget everything: every run and every payload hash."""
        conn = self.connect()
        try:
            with _transaction(conn):
                for table in ("done", "failed", "payloads", "journal", "runs"):
                    conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            conn.execute("VACUUM")
        finally:
            conn.close()


def _resolved(path: Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def _check_same_input(
    fp: Fingerprint, settings: dict[str, Any], size: int | None, mtime_ns: int | None, old: str
) -> None:
    if (fp.size, fp.mtime_ns) != (size, mtime_ns):
        raise InputChanged(
            f"{fp.source} changed since the interrupted run (size {size} → {fp.size} bytes, "
            "or a new modification time); refusing to resume. "
            "Pass --resume --force to start over."
        )
    previous = orjson.loads(old)
    changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
    if changed:
        raise InputChanged(
            "the options that shape payloads and batches changed since the interrupted run "
            f"({', '.join(changed)}); resume with the same options, "
            "or pass --resume --force to start over"
        )


def open_summary(path: str | Path) -> dict[str, Any]:
    """Read a state's summary without taking its lock (safe during a run, thanks to WAL)."""
    path = Path(path)
    if not path.is_file():
        raise StateError(f"no state at {path}")
    conn = _connect(path, readonly=True)
    try:
        summary = _summary(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is not a blueshift-import state ({exc})") from exc
    finally:
        conn.close()
    lock = _lock_path(path)
    summary["locked_by"] = None
    if lock.exists():
        with open(lock) as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                summary["locked_by"] = f.read().strip() or "unknown"
    return summary


def _summary(conn: sqlite3.Connection, path: Path) -> dict[str, Any]:
    # A run in progress (or killed) has confirmed batches not applied from the journal yet
    # (a state of schema 1 not yet opened by this version has no journal).
    journal = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone()
    pending: dict[int, tuple[int, int]] = {}
    if journal:
        pending = {
            r[0]: (r[1], r[2])
            for r in conn.execute(
                "SELECT run_id, SUM(confirmed), SUM(dead_lettered) FROM journal GROUP BY run_id"
            )
        }
    runs = [
        {
            "id": r[0],
            "source": r[1],
            "status": r[2],
            "pid": r[3],
            "attempts": r[4],
            "started_at": r[5],
            "updated_at": r[6],
            "confirmed": r[7] + pending.get(r[0], (0, 0))[0],
            "dead_lettered": r[8] + pending.get(r[0], (0, 0))[1],
        }
        for r in conn.execute(
            "SELECT id, source, status, pid, attempts, started_at, updated_at, confirmed, "
            "dead_lettered FROM runs ORDER BY id DESC LIMIT 20"
        )
    ]
    targets = dict(conn.execute("SELECT target, COUNT(*) FROM payloads GROUP BY target").fetchall())
    if journal:
        with contextlib.suppress(sqlite3.OperationalError):  # an SQLite without JSON functions
            for target, count in conn.execute(
                "SELECT l.target, COUNT(DISTINCT i.value) "
                "FROM journal AS l, json_each(l.identifiers) AS i WHERE NOT EXISTS (SELECT 1 "
                "FROM payloads AS p WHERE p.target = l.target AND p.identifier = i.value) "
                "GROUP BY l.target"
            ):
                targets[target] = targets.get(target, 0) + count
    return {
        "path": str(path),
        "schema_version": SCHEMA_VERSION,
        "size_bytes": sum(
            p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        ),
        "runs": runs,
        "run_count": conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
        "payload_hashes": targets,
    }


# -- the producer side ------------------------------------------------------------


class StateReader:
    """Look-ups for the producer thread: rows already done, payloads unchanged.

    Opens its own connection in the thread that first uses it. Look-ups go to
    SQLite a chunk (or :data:`LOOKUP_BATCH` identifiers) at a time, so memory
    does not grow with the size of the state.
    """

    def __init__(self, store: StateStore, run: RunInfo, target: str):
        self.store = store
        self.run = run
        self.target = target
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.store.connect()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def done_records(self, first: int, last: int) -> set[int]:
        """Record numbers in ``[first, last]`` that an earlier attempt of this run finished."""
        if not self.run.resumed or last < first:
            return set()
        rows = self.conn.execute(
            "SELECT lo, hi FROM done WHERE run_id = ? AND lo BETWEEN ? AND ? AND hi >= ?",
            (self.run.run_id, first - RANGE_SPAN, last, first),
        ).fetchall()
        rows += self.conn.execute(
            "SELECT record, record FROM failed WHERE run_id = ? AND record BETWEEN ? AND ?",
            (self.run.run_id, first, last),
        ).fetchall()
        done: set[int] = set()
        for lo, hi in rows:
            done.update(range(max(lo, first), min(hi, last) + 1))
        return done

    def skip_done(self, customers: Sequence[Customer]) -> tuple[Sequence[Customer], int]:
        """The customers not yet done, and how many were skipped (a chunk at a time)."""
        if not self.run.resumed or not customers:
            return customers, 0
        records = [c.record for c in customers]
        done = self.done_records(min(records), max(records))
        if not done:
            return customers, 0
        kept = [c for c in customers if c.record not in done]
        return kept, len(customers) - len(kept)

    def new_rejects(self, rejects: list[Reject]) -> list[Reject]:
        """Rejects not yet written to the rejects file by an earlier attempt."""
        through = self.run.rejects_through if self.run.resumed else 0
        return [r for r in rejects if r.record > through] if through else rejects

    def skip_unchanged(self, customers: Sequence[Customer]) -> tuple[list[Customer], int]:
        """The customers whose payload differs from the last confirmed one (or is new)."""
        kept: list[Customer] = []
        for start in range(0, len(customers), LOOKUP_BATCH):
            group = customers[start : start + LOOKUP_BATCH]
            idents = [c.identifier or "" for c in group]
            marks = ",".join("?" * len(idents))
            known = dict(
                self.conn.execute(
                    f"SELECT identifier, hash FROM payloads WHERE target = ? "  # noqa: S608
                    f"AND identifier IN ({marks})",
                    (self.target, *idents),
                ).fetchall()
            )
            for customer, ident in zip(group, idents, strict=True):
                old = known.get(ident)
                if old is None or old != payload_digest(customer.encoded):
                    kept.append(customer)
        return kept, len(customers) - len(kept)


# -- the writer side ----------------------------------------------------------------


@dataclass
class _Progress:
    """Bookkeeping that travels with the next confirmation."""

    checkpoint_bytes: int = 0
    checkpoint_hash: str | None = None
    rejects_through: int = 0
    rejects_offset: int | None = None
    dead_letter_offset: int | None = None


def _confirmed_hashes(delivered: list[Customer]) -> tuple[list[str], bytes]:
    """The identifiers of ``delivered`` customers and their payload hashes.

    The hashes are of the bytes that were sent (see :func:`payload_digest`),
    16 bytes each, in one string. This runs for every confirmed customer, so
    it sticks to comprehensions and C-level loops, and never decodes a payload.
    """
    idents: list[Any] = [c.identifier for c in delivered]
    encoded = [c.encoded for c in delivered]
    if None in idents:  # no identifier: nothing to look it up by later
        kept = [i for i, ident in enumerate(idents) if ident is not None]
        idents = [idents[i] for i in kept]
        encoded = [encoded[i] for i in kept]
    blake2b = hashlib.blake2b
    return idents, b"".join([blake2b(data, digest_size=16).digest() for data in encoded])


class ConfirmationWriter:
    """Records confirmed batches, each committed before its worker goes on.

    :meth:`record` runs in the event loop and appends the batch's ``journal``
    row (see the comment on ``_JOURNAL_COLUMNS``) in one statement that
    commits at once, so a batch counts as done in the state before its worker
    takes the next one: a crash re-sends at most the batches in flight. The
    commit does not wait for the disk (``synchronous=NORMAL``, and this
    connection never checkpoints): it holds the event loop for well under a
    millisecond, and costs less CPU than handing each batch to another thread
    and waking the worker from there. The WAL is checkpointed every
    :data:`CHECKPOINT_EVERY` batches, and the journal applied when the run
    ends, in a writer thread with a connection of its own. Progress notes
    (input checkpoint, rejects file position) from the producer are kept in
    memory and written with the next confirmation.
    """

    def __init__(self, store: StateStore, run: RunInfo, target: str):
        self.store = store
        self.run = run
        self.target = target
        self.progress = _Progress(
            checkpoint_bytes=run.checkpoint_bytes,
            checkpoint_hash=run.checkpoint_hash,
            rejects_through=run.rejects_through,
            rejects_offset=run.rejects_offset,
            dead_letter_offset=run.dead_letter_offset,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")
        #: The writer thread's connection: start, checkpoints, finish.
        self._conn: sqlite3.Connection | None = None
        #: The event loop's connection: journal rows.
        self._append: sqlite3.Connection | None = None
        self._appended = 0
        self._checkpoint: Future[None] | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self.store.connect()
        return self._conn

    def start(self, rejects_offset: int | None, dead_letter_offset: int | None) -> None:
        """Record where the output files end as the run (re)starts; blocks until written."""
        self.progress.rejects_offset = rejects_offset
        self.progress.dead_letter_offset = dead_letter_offset
        progress = _Progress(**vars(self.progress))
        now = time.time()

        def write() -> None:
            conn = self._connection()
            with _transaction(conn):
                self._update_run(conn, progress, now)

        self._executor.submit(write).result()

    def note_input(self, checkpoint: tuple[int, str]) -> None:
        """The producer hashed the input up to here (event-loop thread)."""
        self.progress.checkpoint_bytes, self.progress.checkpoint_hash = checkpoint

    def note_rejects(self, through: int, offset: int | None) -> None:
        """Rejects of records up to ``through`` are written; the rejects file ends at ``offset``."""
        self.progress.rejects_through = through
        self.progress.rejects_offset = offset

    def record(
        self, batch: Batch, outcomes: Sequence[Outcome], dead_letter_offset: int | None
    ) -> None:
        """Commit the outcomes of ``batch``: done and failed records, confirmed payload hashes.

        ``outcomes`` belong to ``batch``'s customers (after a stop, possibly to
        only some). Call it from the event loop's thread, after the API answered.
        """
        if dead_letter_offset is not None:
            self.progress.dead_letter_offset = dead_letter_offset
        row = self._journal_row(batch, outcomes)
        if self._append is None:
            self._append = self.store.connect()
            self._append.execute("PRAGMA wal_autocheckpoint = 0")
        self._append.execute(_APPEND_JOURNAL, row)  # one statement: it commits here
        self._appended += 1
        if self._appended % CHECKPOINT_EVERY == 0 and (
            self._checkpoint is None or self._checkpoint.done()
        ):
            self._checkpoint = self._executor.submit(self._checkpoint_wal)

    def _journal_row(self, batch: Batch, outcomes: Sequence[Outcome]) -> tuple[Any, ...]:
        """One batch's ``journal`` row, in the order of ``_JOURNAL_COLUMNS``."""
        delivered = [o.customer for o in outcomes if o.delivered]
        failed = None
        if len(delivered) < len(outcomes):
            failed = orjson.dumps(
                [
                    r
                    for o in outcomes
                    if not o.delivered
                    for r in (o.customer.record, *o.customer.merged_records)
                ]
            ).decode()
        records = [c.record for c in delivered]
        for c in delivered:
            if c.merged_records:
                records.extend(c.merged_records)
        idents, hashes = _confirmed_hashes(delivered)
        p = self.progress
        return (
            self.run.run_id,
            self.target,
            time.time(),
            orjson.dumps(record_ranges(records)).decode(),
            failed,
            orjson.dumps(idents).decode(),
            hashes,
            len(delivered),
            len(outcomes) - len(delivered),
            p.checkpoint_bytes,
            p.checkpoint_hash,
            p.rejects_through,
            p.rejects_offset,
            p.dead_letter_offset,
        )

    def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database file, off the event loop (writer thread)."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            # The commits are safe in the WAL; the next checkpoint tries again.
            log.warning("could not checkpoint the state: %s", exc)

    def _update_run(self, conn: sqlite3.Connection, p: _Progress, now: float) -> None:
        conn.execute(
            "UPDATE runs SET checkpoint_bytes = ?, checkpoint_hash = ?, rejects_through = ?, "
            "rejects_offset = ?, dead_letter_offset = ?, updated_at = ? WHERE id = ?",
            (
                p.checkpoint_bytes,
                p.checkpoint_hash,
                p.rejects_through,
                p.rejects_offset,
                p.dead_letter_offset,
                now,
                self.run.run_id,
            ),
        )

    async def finish(self, status: str, content_hash: str | None = None) -> None:
        """Mark the run ``completed`` (forgetting its per-record bookkeeping) or stopped.

        The run's journal is applied here (payload hashes merged into the store).
        """
        progress = _Progress(**vars(self.progress))
        self._close_append()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._finish, status, content_hash, progress)

    def _finish(self, status: str, content_hash: str | None, progress: _Progress) -> None:
        conn = self._connection()
        with _transaction(conn):
            _apply_journal(conn, records=status != "completed")
            self._update_run(conn, progress, time.time())
            conn.execute(
                "UPDATE runs SET status = ?, pid = NULL, content_hash = ? WHERE id = ?",
                (status, content_hash, self.run.run_id),
            )
            if status == "completed":
                # Only an unfinished run is ever resumed: its record numbers are no longer needed.
                conn.execute("DELETE FROM done WHERE run_id = ?", (self.run.run_id,))
                conn.execute("DELETE FROM failed WHERE run_id = ?", (self.run.run_id,))
        # Applying the journal may have grown the WAL far past its usual size: give it back.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _close_append(self) -> None:
        if self._append is not None:
            self._append.close()
            self._append = None

    def close(self) -> None:
        """Close the connections (call it from the thread that called :meth:`record`)."""

        def close_conn() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._close_append()
        self._executor.submit(close_conn).result()
        self._executor.shutdown(wait=True)


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
