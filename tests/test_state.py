"""The state store alone: schema, lock, file modes, resume decisions, look-ups, management."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from importer.errors import InputChanged, StateError, StateLocked, UsageError
from importer.records import Customer, Outcome, Reject, encode_payload
from importer.state import (
    Account,
    ConfirmationWriter,
    Fingerprint,
    StateReader,
    StateStore,
    open_summary,
    parse_age,
)
from importer.state.store import RANGE_SPAN, record_ranges

SETTINGS = {"batch_size": 50, "column_map": []}
ACCOUNT = Account("https://api.getblueshift.com", "key")


def _fingerprint(path: Path | str) -> Fingerprint:
    """The fingerprint the source gives a local file (or stdin)."""
    if str(path) == "-":
        return Fingerprint("-", None, None)
    st = Path(path).stat()
    return Fingerprint(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _input(tmp_path: Path, text: str = "email\na@example.com\n") -> Path:
    path = tmp_path / "in.csv"
    path.write_text(text)
    return path


def test_record_ranges_compress_consecutive_numbers_and_cap_the_span():
    assert record_ranges([5, 1, 2, 3, 7, 8, 3]) == [(1, 3), (5, 5), (7, 8)]
    assert record_ranges([]) == []
    ranges = record_ranges(range(1, 201))
    assert all(hi - lo + 1 <= RANGE_SPAN for lo, hi in ranges)
    assert sum(hi - lo + 1 for lo, hi in ranges) == 200


def test_account_hashes_ignore_key_order_and_depend_on_the_key():
    def digest(payload: dict, account: Account = ACCOUNT) -> bytes:
        return account.payload(encode_payload(payload))

    assert digest({"a": 1, "b": "x"}) == digest({"b": "x", "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
    other_key = Account("https://api.getblueshift.com", "another key")
    other_url = Account("https://api.eu.getblueshift.com", "key")
    assert len({a.customer("a@example.com") for a in (ACCOUNT, other_key, other_url)}) == 3
    assert digest({"a": 1}) != digest({"a": 1}, other_key)
    assert len(ACCOUNT.customer("a@example.com")) == 16 and len(digest({"a": 1})) == 8
    assert len({a.file_name for a in (ACCOUNT, other_key, other_url)}) == 3


@pytest.mark.parametrize(
    ("text", "seconds"), [("90d", 90 * 86400), ("12h", 43200), ("2w", 1209600), ("30m", 1800)]
)
def test_parse_age_reads_units(text, seconds):
    assert parse_age(text) == seconds


def test_parse_age_refuses_nonsense():
    with pytest.raises(UsageError):
        parse_age("ninety days")


def test_state_files_are_private_and_lock_names_the_holder(tmp_path):
    path = tmp_path / "sub" / "state.sqlite"
    with StateStore(path) as store:
        conn = store.connect()  # keeps the -wal file in existence
        conn.execute("SELECT 1")
        for p in (path, path.with_name("state.sqlite.lock"), path.with_name("state.sqlite-wal")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        with pytest.raises(StateLocked, match=f"PID {os.getpid()}"):
            StateStore(path)
        assert open_summary(path)["locked_by"] == str(os.getpid())
        conn.close()
    # Released on close: a second run may use it now.
    StateStore(path).close()
    assert open_summary(path)["locked_by"] is None


_WITHOUT_FCNTL = """
import os, sys
sys.modules["fcntl"] = None  # as on a platform that has no fcntl
from importer.errors import StateLocked
from importer.state import StateStore, open_summary
path = sys.argv[1]
with StateStore(path):
    try:
        StateStore(path)
    except StateLocked as exc:
        print(f"PID {os.getpid()}" in str(exc))
    print(open_summary(path)["locked_by"] == str(os.getpid()))
StateStore(path).close()
print("fcntl" not in sys.modules or sys.modules["fcntl"] is None)
"""


def test_the_state_is_locked_where_fcntl_does_not_exist(tmp_path):
    # filelock falls back to a lock file naming its holder there, and warns at import;
    # the state silences that warning on purpose: -W error shows none escapes.
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _WITHOUT_FCNTL, str(tmp_path / "s.sqlite")],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]


def test_a_file_that_is_not_a_state_is_refused(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match="is damaged or not a database .file is not a database"):
        StateStore(path)


def test_another_programs_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")  # even a `meta`
    conn.execute("INSERT INTO meta VALUES ('owner', 'someone else')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="database of another program"):
        StateStore(path)
    assert path.read_bytes() == before
    assert not path.with_name("app.db-wal").exists()


def test_a_symlinked_state_shares_the_lock_of_its_target(tmp_path):
    real = tmp_path / "real" / "state.sqlite"
    link = tmp_path / "link.sqlite"
    with StateStore(real):
        link.symlink_to(real)
        with pytest.raises(StateLocked, match="in use by another run"):
            StateStore(link)
    with StateStore(link) as store:
        assert store.path == real
        with pytest.raises(StateLocked):
            StateStore(real)
    assert not (tmp_path / "link.sqlite.lock").exists()


def test_an_empty_or_damaged_state_is_refused_for_resume(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StateError, match="is empty, so there is nothing to resume"):
        StateStore(empty, resume=True)
    StateStore(empty).close()  # without --resume it is a new state

    damaged = tmp_path / "damaged.sqlite"
    with StateStore(damaged) as store:
        run = store.begin_run(_fingerprint(_input(tmp_path)), SETTINGS)
        customers = [Customer({"email": f"u{i}@example.com"}, i, i) for i in range(1, 3001)]
        _confirm(store, run, customers)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\xff" * 4096  # pages of the hash table
    damaged.write_bytes(bytes(data))
    with pytest.raises(StateError, match="damaged or not a database.*move this one away"):
        StateStore(damaged, resume=True)


def test_a_read_only_or_truncated_state_is_one_state_error(tmp_path, monkeypatch):
    src = _input(tmp_path)
    path = tmp_path / "s.sqlite"
    StateStore(path).close()

    def refused(*args: object) -> int:
        raise PermissionError(13, "Permission denied")  # as a read-only file (even for root)

    with monkeypatch.context() as patch:
        patch.setattr("importer.state.store.os.open", refused)
        with pytest.raises(StateError, match="cannot be used: Permission denied"):
            StateStore(path)

    # Truncated to half its size while its WAL is still there (as a crash or a bad copy leaves).
    with StateStore(path) as store:
        run = store.begin_run(_fingerprint(src), SETTINGS)
        customers = [Customer({"email": f"u{i}@example.com"}, i, i) for i in range(1, 3001)]
        writer = ConfirmationWriter(store, run, ACCOUNT)
        writer.record([Outcome(c, True) for c in customers[:2500]], None)  # flushed
        writer.record([Outcome(c, True) for c in customers[2500:]], None)  # in the WAL
        wal = path.with_name("s.sqlite-wal").read_bytes()
        writer.close()
    assert wal
    os.truncate(path, path.stat().st_size // 2)
    path.with_name("s.sqlite-wal").write_bytes(wal)
    with pytest.raises(StateError, match="damaged or not a database"):
        StateStore(path, resume=True)


def test_resume_continues_the_unfinished_run_and_refuses_changes(tmp_path):
    src = _input(tmp_path)
    with StateStore(tmp_path / "s.sqlite") as store:
        first = store.begin_run(_fingerprint(src), SETTINGS)
        assert not first.resumed
        again = store.begin_run(_fingerprint(src), SETTINGS, resume=True)
        assert again.resumed and again.run_id == first.run_id
        with pytest.raises(InputChanged, match="batch_size"):
            store.begin_run(_fingerprint(src), {**SETTINGS, "batch_size": 20}, resume=True)
        src.write_text("email\nb@example.com\nc@example.com\n")
        with pytest.raises(InputChanged, match="changed since the interrupted run"):
            store.begin_run(_fingerprint(src), SETTINGS, resume=True)
        forced = store.begin_run(_fingerprint(src), SETTINGS, resume=True, force=True)
        assert not forced.resumed and forced.run_id != first.run_id


def test_resume_of_stdin_is_refused(tmp_path):
    store = StateStore(tmp_path / "s.sqlite")
    with store, pytest.raises(UsageError, match="standard input"):
        store.begin_run(_fingerprint("-"), SETTINGS, resume=True)


def _confirm(store: StateStore, run, customers: list[Customer], delivered: bool = True):
    writer = ConfirmationWriter(store, run, ACCOUNT)
    writer.record([Outcome(c, delivered) for c in customers], None)
    writer.finish("interrupted")
    writer.close()


def test_reader_skips_done_rows_and_unchanged_payloads_in_batches(tmp_path):
    src = _input(tmp_path)
    customers = [Customer({"email": f"u{i}@example.com", "n": i}, i, i + 1) for i in range(1, 1201)]
    with StateStore(tmp_path / "s.sqlite") as store:
        run = store.begin_run(_fingerprint(src), SETTINGS)
        _confirm(store, run, customers[:700])
        _confirm(store, run, customers[700:710], delivered=False)
        resumed = store.begin_run(_fingerprint(src), SETTINGS, resume=True)
        reader = StateReader(store, resumed, ACCOUNT)
        kept, done = reader.skip_done(customers)
        assert done == 710 and [c.record for c in kept] == list(range(711, 1201))
        changed = [Customer({**c.payload, "n": -1}, c.record, c.line) for c in customers[:5]]
        kept, skipped = reader.skip_unchanged(changed + customers)
        unchanged = len(skipped)
        assert unchanged == 700  # the dead-lettered ten were never confirmed
        assert len(kept) == 5 + 500
        assert reader.new_rejects([Reject(3, 4, "x")]) == [Reject(3, 4, "x")]
        reader.close()
        other = StateReader(store, resumed, Account("https://api.getblueshift.com", "k2"))
        assert other.skip_unchanged(customers)[1] == []
        other.close()


def test_state_uses_wal_with_synchronous_normal(tmp_path):
    # NORMAL: a commit survives a killed process; after a power loss the last batches
    # may count as not done and are sent again on --resume (documented in the README).
    with StateStore(tmp_path / "s.sqlite") as store:
        conn = store.connect()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
        conn.close()


def _tables(path: Path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    try:
        return {
            "done": conn.execute("SELECT run_id, lo, hi FROM done ORDER BY lo").fetchall(),
            "payloads": conn.execute("SELECT id, hash FROM payloads ORDER BY id").fetchall(),
            "runs": conn.execute(
                "SELECT status, confirmed, dead_lettered, checkpoint_bytes, checkpoint_hash, "
                "rejects_through, rejects_offset, dead_letter_offset FROM runs"
            ).fetchall(),
            "tables": sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master")),
        }
    finally:
        conn.close()


def _customers() -> list[Customer]:
    customers = [Customer({"email": f"u{i}@example.com", "n": i}, i, i + 1) for i in range(1, 8)]
    customers.append(Customer({"customer_id": 8, "n": 8}, 8, 9, merged_records=(9,)))
    return customers


def _kill_after_confirming(path: Path, src: Path) -> list[Customer]:
    """Confirm two batches as a run would, then stop without finishing (as if killed)."""
    customers = _customers()
    with StateStore(path) as store:
        run = store.begin_run(_fingerprint(src), SETTINGS)
        writer = ConfirmationWriter(store, run, ACCOUNT)
        writer.note_input((100, "abc"))
        writer.record([Outcome(c, True) for c in customers[:4]], None)
        writer.note_rejects(12, 34)
        # Settled out of order after a split; one of them refused and dead-lettered.
        writer.record([Outcome(c, c.record != 6) for c in reversed(customers[4:])], 56)
        writer.close()
    return customers


def test_writer_commits_each_batch_before_record_returns(tmp_path):
    path = tmp_path / "s.sqlite"
    customers = [Customer({"email": f"u{i}@example.com"}, i, i + 1) for i in range(1, 6)]
    with StateStore(path) as store:
        run = store.begin_run(_fingerprint(_input(tmp_path)), SETTINGS)
        writer = ConfirmationWriter(store, run, ACCOUNT)
        for c in customers:
            writer.record([Outcome(c, True)], None)
            other = sqlite3.connect(path)  # another connection sees it at once
            assert other.execute("SELECT max(hi) FROM done").fetchone() == (c.record,)
            # Payload hashes wait to be written thousands at a time (or at the end).
            assert other.execute("SELECT count(*) FROM payloads").fetchone() == (0,)
            other.close()
        writer.finish("completed")
        writer.close()
    assert len(_tables(path)["payloads"]) == 5


def test_payload_hashes_are_written_in_large_flushes_and_the_wal_stays_small(tmp_path):
    from importer.state.store import FLUSH_MIN, PAGE_SIZE

    path = tmp_path / "s.sqlite"
    n = 6 * FLUSH_MIN + 25
    customers = [Customer({"email": f"u{i}@example.com"}, i, i) for i in range(1, n + 1)]
    wal, largest = path.with_name("s.sqlite-wal"), 0
    with StateStore(path) as store:
        run = store.begin_run(_fingerprint(_input(tmp_path)), SETTINGS)
        writer = ConfirmationWriter(store, run, ACCOUNT)
        for start in range(0, n, 50):
            writer.record([Outcome(c, True) for c in customers[start : start + 50]], None)
            largest = max(largest, wal.stat().st_size)
        assert 0 < len(_tables(path)["payloads"]) < n  # flushed in a few large writes
        writer.finish("completed")
        writer.close()
        # Without --changed-only no payload hash is kept at all.
        plain = ConfirmationWriter(store, run, None)
        plain.record([Outcome(Customer({"email": "new@example.com"}, n + 1, n + 1), True)], None)
        plain.finish("completed")
        plain.close()
    assert len(_tables(path)["payloads"]) == n
    # A flush touches at most the whole table once, and the WAL is then cut back.
    assert largest <= max(1.1 * path.stat().st_size, 256 * (PAGE_SIZE + 24)) + 4 * PAGE_SIZE


def test_a_killed_runs_confirmations_are_all_in_the_state(tmp_path):
    path = tmp_path / "s.sqlite"
    src = _input(tmp_path)
    customers = _kill_after_confirming(path, src)
    summary = open_summary(path)  # what `state info` says
    assert summary["runs"][0]["confirmed"] == 7 and summary["runs"][0]["dead_lettered"] == 1
    # Hashes not yet flushed are lost: the next --changed-only run sends those again.
    assert summary["payload_hashes"] == 0 and summary["locked_by"] is None

    tables = _tables(path)
    assert tables["done"] == [(1, 1, 4), (1, 5, 9)]  # ranges per batch, refused record 6 too
    assert tables["runs"] == [("running", 7, 1, 100, "abc", 12, 34, 56)]
    assert len(customers) == 8

    with StateStore(path) as store:
        resumed = store.begin_run(_fingerprint(src), SETTINGS, resume=True)
        assert resumed.resumed and resumed.checkpoint_bytes == 100
        reader = StateReader(store, resumed, ACCOUNT)
        probe = [Customer({"email": "x@example.com"}, r, r + 1) for r in range(1, 11)]
        kept, done = reader.skip_done(probe)
        assert done == 9 and [c.record for c in kept] == [10]
        reader.close()


def test_a_schema_2_state_keeps_its_runs_and_drops_identifiers_in_clear(tmp_path):
    path = tmp_path / "s.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript((Path(__file__).parent / "data" / "state_v2.sql").read_text())
    conn.close()
    StateStore(path).close()
    tables = _tables(path)
    assert "journal" not in tables["tables"] and "failed" not in tables["tables"]
    # The journal's ranges, its dead-lettered record 6, and the failed table's record 20.
    assert tables["done"] == [(1, 1, 4), (1, 5, 5), (1, 6, 6), (1, 7, 9), (1, 20, 20)]
    assert tables["runs"] == [("running", 7, 1, 100, "abc", 12, 34, 56)]
    # Identifiers were kept in clear: gone, to the last byte (the next --changed-only sends all).
    assert tables["payloads"] == [] and b"@example.com" not in path.read_bytes()
    StateStore(path).close()
    assert _tables(path) == tables


def test_a_schema_1_state_and_a_newer_one_are_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    StateStore(path).close()
    refusals = {"1": "older version.*start a new state with --state", "6": "schema 6"}
    for version, message in refusals.items():
        conn = sqlite3.connect(path)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
        conn.commit()
        conn.close()
        with pytest.raises(StateError, match=message):
            StateStore(path)


def test_prune_and_reset_forget_old_entries(tmp_path):
    src = _input(tmp_path)
    path = tmp_path / "s.sqlite"
    with StateStore(path) as store:
        run = store.begin_run(_fingerprint(src), SETTINGS)
        _confirm(store, run, [Customer({"email": "a@example.com"}, 1, 2)])
        assert store.prune(3600) == {"runs": 0, "payloads": 0}
        conn = sqlite3.connect(path)
        old = time.time() - 100 * 86400
        conn.execute("UPDATE payloads SET hour = ?", (int(old // 3600),))
        conn.execute("UPDATE runs SET updated_at = ?", (old,))
        conn.commit()
        conn.close()
        assert store.prune(parse_age("90d")) == {"runs": 1, "payloads": 1}
        store.begin_run(_fingerprint(src), SETTINGS)
        store.reset()
        assert open_summary(path)["run_count"] == 0


def test_cli_state_commands_info_prune_reset(cli, tmp_path, fake_api):
    from .conftest import API_KEY, write_csv

    state = tmp_path / "s.sqlite"
    src = write_csv(tmp_path / "c.csv", [{"email": "a@example.com", "city": "Oslo"}])
    result = cli(
        "run", str(src), "--base-url", fake_api.url, "--state", str(state),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli("state", "info", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert "customers with a payload hash: 0" in result.output  # no --changed-only yet
    assert "completed" in result.output and "last success" in result.output
    assert "c.csv" in result.output
    result = cli("state", "prune", "--older-than", "90d", "--state", str(state))
    assert result.exit_code == 0 and "pruned 0 run(s)" in result.output
    result = cli("state", "reset", "--yes", "--state", str(state))
    assert result.exit_code == 0
    result = cli("state", "info", "--state", str(state), "--json")
    assert '"run_count": 0' in result.output
    assert cli("state", "info", "--state", str(tmp_path / "none.sqlite")).exit_code == 2


def test_cli_state_commands_have_examples_and_readme_mentions_them(cli):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for command in ("info", "reset", "prune"):
        result = cli("state", command, "--help")
        assert result.exit_code == 0
        assert "Example" in result.output and f"blueshift-import state {command}" in result.output
        assert f"blueshift-import state {command}" in readme
    for option in ("--resume", "--changed-only", "--state", "--force"):
        assert option in readme


def test_resume_and_changed_only_need_a_state():
    from importer.options import ImportOptions

    with pytest.raises(UsageError, match="state"):
        ImportOptions(resume=True)
    with pytest.raises(UsageError, match="force only goes with resume"):
        ImportOptions(force=True, state_path=Path("s"))
