"""The state database: opening, schema, lock, runs, resume checks, prune and summary.

Owns the file (created with mode 0600), its schema and the upgrade from the
last released one, the lock beside it, and the ``runs`` table's life cycle:
:meth:`StateStore.begin_run` starts or resumes a run and decides whether a
resume is allowed. It also defines what the tables hold (:func:`payload_hash`,
:func:`record_ranges`, :func:`target_tag`) so the writer and the reader agree.

Must not: record confirmations (that is :mod:`.confirmations`), or look up
records and payloads for a run (that is :mod:`.reader`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import InputChanged, StateError, StateLocked, UsageError

with warnings.catch_warnings():
    # Where fcntl is missing, filelock falls back to a lock file that records its holder's
    # PID (and is reclaimed when that process is gone), and warns once at import. That is
    # the lock we want there, and a warning on every command would only be noise.
    warnings.filterwarnings("ignore", "only soft file lock is available")
    from filelock import BaseFileLock, FileLock, Timeout

log = logging.getLogger(__name__)

#: 3 dropped the ``journal`` and ``failed`` tables of 2 (0.1.0), which is upgraded; 1 is refused.
SCHEMA_VERSION = 3
#: A recorded range of record numbers never spans more than this many numbers,
#: so the rows overlapping [a, b] are found with an index scan of lo in [a - span, b].
RANGE_SPAN = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
    settings TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1, started_at REAL NOT NULL, updated_at REAL NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    checkpoint_bytes INTEGER NOT NULL DEFAULT 0, checkpoint_hash TEXT, content_hash TEXT,
    rejects_path TEXT, rejects_through INTEGER NOT NULL DEFAULT 0, rejects_offset INTEGER,
    dead_letter_path TEXT, dead_letter_offset INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_source ON runs (source, id);
-- The records an unfinished run settled (confirmed or dead-lettered), as ranges.
CREATE TABLE IF NOT EXISTS done (
    run_id INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (run_id, lo, hi)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS payloads (
    target TEXT NOT NULL, identifier TEXT NOT NULL, hash BLOB NOT NULL,
    confirmed_at REAL NOT NULL, PRIMARY KEY (target, identifier)
) WITHOUT ROWID;
"""

#: Schema 2 appended each confirmed batch to ``journal`` and applied it later, and kept
#: dead-lettered records in ``failed``: a state a killed run left still holds some.
#: Applied here once, in journal order; the failed records join the done ranges.
_UPGRADE_FROM_2 = (
    "INSERT OR IGNORE INTO done SELECT j.run_id, json_extract(r.value, '$[0]'), "
    "json_extract(r.value, '$[1]') FROM journal AS j, json_each(j.done) AS r",
    "INSERT OR IGNORE INTO done SELECT j.run_id, r.value, r.value "
    "FROM journal AS j, json_each(j.failed) AS r",
    "INSERT OR REPLACE INTO payloads SELECT j.target, i.value, "
    "substr(j.hashes, 16 * i.key + 1, 16), j.confirmed_at "
    "FROM journal AS j, json_each(j.identifiers) AS i ORDER BY j.seq",
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


def payload_hash(encoded: bytes) -> bytes:
    """A 16-byte digest of a payload's JSON as sent (:attr:`Customer.encoded`).

    Its keys are sorted, so the digest does not depend on the input's column order.
    """
    return hashlib.blake2b(encoded, digest_size=16).digest()


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
        conn.execute("PRAGMA synchronous = NORMAL")  # see "Durability" in the package docstring
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StateError(f"{path} is not a blueshift-import state ({exc})") from exc
    return conn


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

    Opening creates the file with mode 0600 (SQLite gives its ``-wal`` and
    ``-shm`` files the same mode), upgrades a state of schema 2, and takes an
    exclusive lock on ``<path>.lock``; the lock is released on close and
    when the process dies, so a killed run never leaves a stale lock. Raises
    :class:`StateLocked` (naming the holder's PID) when another run holds it,
    and :class:`StateError` when the file is not a state database or has a
    schema this version cannot open.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise StateError(f"--state {self.path} is a directory; give a file name")
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
                f"the state {self.path} is in use by another run (PID {holder}); "
                "wait for it to finish, or give this run another --state"
            ) from None
        try:
            self._open_schema()
        except BaseException:
            self.close()
            raise

    def _open_schema(self) -> None:
        try:
            with contextlib.closing(self.connect()) as conn:
                conn.executescript(_SCHEMA)  # idempotent: IF [NOT] EXISTS throughout
                with transaction(conn):
                    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
                    version = int(next(row, [SCHEMA_VERSION])[0])
                    if version > SCHEMA_VERSION:
                        raise StateError(f"{self.path} has state schema {version}, a newer one")
                    if version < 2:
                        raise StateError(
                            f"{self.path} was made by an older version (state schema {version}); "
                            "start a new state with --state"
                        )
                    if version == 2:
                        for statement in _UPGRADE_FROM_2:
                            conn.execute(statement)
                    conn.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?), "
                        "('locked_by', ?)",
                        (str(SCHEMA_VERSION), str(os.getpid())),
                    )
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{self.path} is not a blueshift-import state this version can open ({exc})"
            ) from exc

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
    ) -> RunInfo:
        """Start a run of ``fingerprint``'s input, or continue its interrupted one.

        With ``resume``, the latest unfinished run of the same input is
        continued; its size, modification time and ``settings`` (the options
        that shape payloads and batches) must match, else
        :class:`InputChanged`. ``force`` starts over instead. Without
        ``resume`` (or when nothing was interrupted) a new run starts, and an
        unfinished run of the same input is superseded. ``resume`` of
        standard input raises :class:`UsageError`.
        """
        if resume and fingerprint.source == "-":
            raise UsageError("--resume needs a file: standard input cannot be read again")
        now, source = time.time(), fingerprint.source
        with contextlib.closing(self.connect()) as conn, transaction(conn):
            prev = conn.execute(
                "SELECT id, status, size, mtime_ns, settings, checkpoint_bytes, checkpoint_hash, "
                "rejects_path, rejects_through, rejects_offset, dead_letter_path, "
                "dead_letter_offset FROM runs WHERE source = ? ORDER BY id DESC LIMIT 1",
                (source,),
            ).fetchone()
            unfinished = prev is not None and prev[1] != "completed"
            if resume and unfinished and not force:
                _check_same_input(fingerprint, settings, *prev[2:5])
                conn.execute(
                    "UPDATE runs SET status = 'running', pid = ?, attempts = attempts + 1, "
                    "updated_at = ? WHERE id = ?",
                    (os.getpid(), now, prev[0]),
                )
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
                "updated_at, rejects_path, dead_letter_path) "
                "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (source, fingerprint.size, fingerprint.mtime_ns,
                 orjson.dumps(settings, option=orjson.OPT_SORT_KEYS).decode(),
                 os.getpid(), now, now, rejects, dead_letter),
            )  # fmt: skip
            assert cur.lastrowid is not None
            return RunInfo(
                cur.lastrowid, False, source, rejects_path=rejects, dead_letter_path=dead_letter
            )

    def finished_run(self, fingerprint: Fingerprint) -> int | None:
        """The id of the latest run of ``fingerprint``'s input if it completed on an
        input of the same size and modification time, else None.

        ``--resume`` of a set of files skips such a file: the interrupted set finished it.
        """
        with contextlib.closing(self.connect()) as conn:
            row = conn.execute(
                "SELECT id, status, size, mtime_ns FROM runs WHERE source = ? "
                "ORDER BY id DESC LIMIT 1",
                (fingerprint.source,),
            ).fetchone()
        if row is None or row[1] != "completed" or fingerprint.source == "-":
            return None
        return int(row[0]) if (row[2], row[3]) == (fingerprint.size, fingerprint.mtime_ns) else None

    def prune(self, older_than: float) -> dict[str, int]:
        """Forget runs and payload hashes not touched for ``older_than`` seconds.

        Returns how many runs and payload hashes were removed.
        """
        cutoff = time.time() - older_than
        with contextlib.closing(self.connect()) as conn, transaction(conn):
            conn.execute(
                "DELETE FROM done WHERE run_id IN (SELECT id FROM runs WHERE updated_at < ?)",
                (cutoff,),
            )
            runs = conn.execute("DELETE FROM runs WHERE updated_at < ?", (cutoff,))
            payloads = conn.execute("DELETE FROM payloads WHERE confirmed_at < ?", (cutoff,))
            return {"runs": runs.rowcount, "payloads": payloads.rowcount}

    def reset(self) -> None:
        """Forget everything: every run and every payload hash."""
        with contextlib.closing(self.connect()) as conn:
            with transaction(conn):
                for table in ("done", "payloads", "runs"):
                    conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            conn.execute("VACUUM")


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
    """What a state holds: its runs (newest first) and payload hashes per destination.

    Safe while a run writes (WAL); it only tries the lock, to say which PID
    holds it (``locked_by``). Raises :class:`StateError` when there is no
    state at ``path`` or it is not one.
    """
    path = Path(path)
    if not path.is_file():
        raise StateError(f"no state at {path}")
    conn = connect(path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        runs = conn.execute(
            "SELECT id, source, status, pid, attempts, started_at, updated_at, confirmed, "
            "dead_lettered FROM runs ORDER BY id DESC LIMIT 20"
        )
        summary = {
            "path": str(path),
            "schema_version": SCHEMA_VERSION,
            "size_bytes": sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()),
            "runs": [dict(r) for r in runs],
            "run_count": conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0],
            "payload_hashes": {
                r[0]: r[1] for r in conn.execute("SELECT target, COUNT(*) FROM payloads GROUP BY 1")
            },
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
