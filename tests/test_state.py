"""The state store alone: schema, lock, file modes, resume decisions, look-ups, management."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from importer.errors import InputChanged, StateError, StateLocked, UsageError
from importer.records import Customer, Reject
from importer.state import (
    RANGE_SPAN,
    Fingerprint,
    StateReader,
    StateStore,
    parse_age,
    payload_hash,
    record_ranges,
)

SETTINGS = {"batch_size": 50, "column_map": []}


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


def test_payload_hash_ignores_key_order_but_not_values():
    assert payload_hash({"a": 1, "b": "x"}) == payload_hash({"b": "x", "a": 1})
    assert payload_hash({"a": 1}) != payload_hash({"a": 2})


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
        conn.close()
    # Released on close: a second run may use it now.
    StateStore(path).close()


def test_a_file_that_is_not_a_state_is_refused(tmp_path):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StateError, match="not a blueshift-import state"):
        StateStore(path)


def test_resume_continues_the_unfinished_run_and_refuses_changes(tmp_path):
    src = _input(tmp_path)
    with StateStore(tmp_path / "s.sqlite") as store:
        first = store.begin_run(Fingerprint.of(src), SETTINGS)
        assert not first.resumed
        again = store.begin_run(Fingerprint.of(src), SETTINGS, resume=True)
        assert again.resumed and again.run_id == first.run_id
        with pytest.raises(InputChanged, match="batch_size"):
            store.begin_run(Fingerprint.of(src), {**SETTINGS, "batch_size": 20}, resume=True)
        src.write_text("email\nb@example.com\nc@example.com\n")
        with pytest.raises(InputChanged, match="changed since the interrupted run"):
            store.begin_run(Fingerprint.of(src), SETTINGS, resume=True)
        forced = store.begin_run(Fingerprint.of(src), SETTINGS, resume=True, force=True)
        assert not forced.resumed and forced.run_id != first.run_id


def test_resume_of_stdin_is_refused(tmp_path):
    store = StateStore(tmp_path / "s.sqlite")
    with store, pytest.raises(UsageError, match="standard input"):
        store.begin_run(Fingerprint.of("-"), SETTINGS, resume=True)


async def _confirm(store: StateStore, run, customers: list[Customer], delivered: bool = True):
    from importer.records import Outcome
    from importer.state import ConfirmationWriter

    writer = ConfirmationWriter(store, run, "t")
    writer.record(_batch(customers), [Outcome(c, delivered) for c in customers], None)
    await writer.finish("interrupted")
    writer.close()


def test_reader_skips_done_rows_and_unchanged_payloads_in_batches(tmp_path):
    import asyncio

    src = _input(tmp_path)
    customers = [Customer({"email": f"u{i}@example.com", "n": i}, i, i + 1) for i in range(1, 1201)]
    with StateStore(tmp_path / "s.sqlite") as store:
        run = store.begin_run(Fingerprint.of(src), SETTINGS)
        asyncio.run(_confirm(store, run, customers[:700]))
        asyncio.run(_confirm(store, run, customers[700:710], delivered=False))
        resumed = store.begin_run(Fingerprint.of(src), SETTINGS, resume=True)
        reader = StateReader(store, resumed, "t")
        kept, done = reader.skip_done(customers)
        assert done == 710 and [c.record for c in kept] == list(range(711, 1201))
        changed = [Customer({**c.payload, "n": -1}, c.record, c.line) for c in customers[:5]]
        kept, unchanged = reader.skip_unchanged(changed + customers)
        assert unchanged == 700  # the dead-lettered ten were never confirmed
        assert len(kept) == 5 + 500
        assert reader.new_rejects([Reject(3, 4, "x")]) == [Reject(3, 4, "x")]
        reader.close()
        other = StateReader(store, resumed, "another-destination")
        assert other.skip_unchanged(customers)[1] == 0
        other.close()


def test_state_uses_wal_with_synchronous_normal(tmp_path):
    # NORMAL: a commit survives a killed process; after a power loss the last batches
    # may count as not done and are sent again on --resume (documented in the README).
    with StateStore(tmp_path / "s.sqlite") as store:
        conn = store.connect()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
        conn.close()


def _batch(customers: list[Customer]):
    from importer.batching import encode_payload
    from importer.records import Batch

    return Batch(tuple(customers), tuple(encode_payload(c.payload) for c in customers))


def _tables(path: Path) -> dict[str, list]:
    conn = sqlite3.connect(path)
    try:
        return {
            "done": conn.execute("SELECT run_id, lo, hi FROM done ORDER BY lo").fetchall(),
            "failed": conn.execute("SELECT run_id, record FROM failed ORDER BY record").fetchall(),
            "payloads": conn.execute(
                "SELECT target, identifier, hash FROM payloads ORDER BY identifier"
            ).fetchall(),
            "runs": conn.execute(
                "SELECT status, confirmed, dead_lettered, checkpoint_bytes, checkpoint_hash, "
                "rejects_through, rejects_offset, dead_letter_offset FROM runs"
            ).fetchall(),
            "journal": conn.execute("SELECT count(*) FROM journal").fetchall(),
        }
    finally:
        conn.close()


def _kill_after_confirming(path: Path, src: Path) -> list[Customer]:
    """Confirm a few batches as a run would, then stop without finishing (as if killed)."""
    import asyncio

    from importer.records import Outcome
    from importer.state import ConfirmationWriter

    customers = [Customer({"email": f"u{i}@example.com", "n": i}, i, i + 1) for i in range(1, 8)]
    customers.append(Customer({"customer_id": 8, "n": 8}, 8, 9, merged_records=(9,)))

    async def confirm(writer: ConfirmationWriter) -> None:
        writer.note_input((100, "abc"))
        writer.record(_batch(customers[:4]), [Outcome(c, True) for c in customers[:4]], None)
        writer.note_rejects(12, 34)
        second = customers[4:]
        # Settled out of order after a split; one of them refused and dead-lettered.
        outcomes = [Outcome(c, c.record != 6) for c in reversed(second)]
        writer.record(_batch(second), outcomes, 56)

    with StateStore(path) as store:
        run = store.begin_run(Fingerprint.of(src), SETTINGS)
        writer = ConfirmationWriter(store, run, "t")
        asyncio.run(confirm(writer))
        writer.close()
    return customers


def test_writer_commits_each_batch_at_once_and_checkpoints_in_its_thread(tmp_path, monkeypatch):
    import threading

    import importer.state
    from importer.records import Outcome
    from importer.state import ConfirmationWriter

    monkeypatch.setattr(importer.state, "CHECKPOINT_EVERY", 2)
    checkpointed_in: list[str] = []
    checkpoint = ConfirmationWriter._checkpoint_wal

    def spy(self: ConfirmationWriter) -> None:
        checkpointed_in.append(threading.current_thread().name)
        checkpoint(self)

    monkeypatch.setattr(ConfirmationWriter, "_checkpoint_wal", spy)
    path = tmp_path / "s.sqlite"
    customers = [Customer({"email": f"u{i}@example.com"}, i, i + 1) for i in range(1, 6)]
    with StateStore(path) as store:
        run = store.begin_run(Fingerprint.of(_input(tmp_path)), SETTINGS)
        writer = ConfirmationWriter(store, run, "t")
        for c in customers:
            writer.record(_batch([c]), [Outcome(c, True)], None)
            other = sqlite3.connect(path)  # committed as record() returns
            assert other.execute("SELECT count(*) FROM journal").fetchone() == (c.record,)
            other.close()
        writer.close()
    assert checkpointed_in and all(n.startswith("state-writer") for n in checkpointed_in)


def test_a_killed_runs_journal_is_applied_when_the_state_is_next_opened(tmp_path):
    from importer.state import open_summary

    path = tmp_path / "s.sqlite"
    src = _input(tmp_path)
    customers = _kill_after_confirming(path, src)
    assert _tables(path)["done"] == []  # still in the journal
    summary = open_summary(path)  # what `state show` says meanwhile
    assert summary["runs"][0]["confirmed"] == 7 and summary["runs"][0]["dead_lettered"] == 1
    assert summary["payload_hashes"] == {"t": 7}

    StateStore(path).close()
    tables = _tables(path)
    assert tables["journal"] == [(0,)]
    assert tables["done"] == [(1, 1, 4), (1, 5, 5), (1, 7, 9)]  # ranges per batch
    assert tables["failed"] == [(1, 6)]
    assert tables["runs"] == [("running", 7, 1, 100, "abc", 12, 34, 56)]
    hashes = {c.identifier: payload_hash(c.payload) for c in customers if c.record != 6}
    assert tables["payloads"] == [("t", ident, hashes[ident]) for ident in sorted(hashes)]

    with StateStore(path) as store:
        resumed = store.begin_run(Fingerprint.of(src), SETTINGS, resume=True)
        assert resumed.resumed and resumed.confirmed == 7 and resumed.checkpoint_bytes == 100
        reader = StateReader(store, resumed, "t")
        assert reader.done_records(1, 10) == set(range(1, 10))
        reader.close()


def test_the_journal_is_applied_alike_without_sqlite_json_functions(tmp_path, monkeypatch):
    import importer.state

    src = _input(tmp_path)
    with_json = tmp_path / "a.sqlite"
    _kill_after_confirming(with_json, src)
    StateStore(with_json).close()
    without = tmp_path / "b.sqlite"
    _kill_after_confirming(without, src)
    missing = tuple(
        s.replace("json_each", "json_each_missing") for s in importer.state._APPLY_JOURNAL
    )
    monkeypatch.setattr(importer.state, "_APPLY_JOURNAL", missing)
    StateStore(without).close()
    assert _tables(without) == _tables(with_json)


def test_a_schema_1_state_is_upgraded_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    StateStore(path).close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "UPDATE meta SET value = '1' WHERE key = 'schema_version';"
        "DROP TABLE journal;"
        "CREATE INDEX payloads_by_age ON payloads (confirmed_at);"
        "INSERT INTO payloads VALUES ('t', 'a@example.com', x'00', 1.0);"
    )
    conn.close()
    StateStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "journal" in names and "payloads_by_age" not in names
    assert conn.execute("SELECT count(*) FROM payloads").fetchone() == (1,)
    conn.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="schema 3"):
        StateStore(path)


def test_prune_and_reset_forget_old_entries(tmp_path):
    import asyncio

    src = _input(tmp_path)
    path = tmp_path / "s.sqlite"
    with StateStore(path) as store:
        run = store.begin_run(Fingerprint.of(src), SETTINGS)
        asyncio.run(_confirm(store, run, [Customer({"email": "a@example.com"}, 1, 2)]))
        assert store.prune(3600) == {"runs": 0, "payloads": 0}
        conn = sqlite3.connect(path)
        old = time.time() - 100 * 86400
        conn.execute("UPDATE payloads SET confirmed_at = ?", (old,))
        conn.execute("UPDATE runs SET updated_at = ?", (old,))
        conn.commit()
        conn.close()
        assert store.prune(parse_age("90d")) == {"runs": 1, "payloads": 1}
        store.begin_run(Fingerprint.of(src), SETTINGS)
        store.reset()
        assert store.summary()["run_count"] == 0


def test_cli_state_commands_show_prune_reset(cli, tmp_path, fake_api):
    from .conftest import API_KEY, write_csv

    state = tmp_path / "s.sqlite"
    src = write_csv(tmp_path / "c.csv", [{"email": "a@example.com", "city": "Oslo"}])
    result = cli(
        "run", str(src), "--base-url", fake_api.url, "--state", str(state),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli("state", "show", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert "confirmed payload hashes: 1" in result.output
    assert "completed" in result.output and "c.csv" in result.output
    result = cli("state", "prune", "--older-than", "90d", "--state", str(state))
    assert result.exit_code == 0 and "pruned 0 run(s)" in result.output
    result = cli("state", "reset", "--yes", "--state", str(state))
    assert result.exit_code == 0
    result = cli("state", "show", "--state", str(state), "--json")
    assert '"run_count": 0' in result.output
    assert cli("state", "show", "--state", str(tmp_path / "none.sqlite")).exit_code == 2


def test_cli_state_commands_have_examples_and_readme_mentions_them(cli):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for command in ("show", "reset", "prune"):
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
    with pytest.raises(UsageError, match="--force"):
        ImportOptions(force=True, state_path=Path("s"))
