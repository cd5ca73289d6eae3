"""Unattended nightly runs: the README's cron recipe, the default state, run directories."""

from __future__ import annotations

import gzip
import json
import re
import shlex
import sqlite3
from pathlib import Path

import pytest

from importer.state import StateReader, StateStore

from .conftest import API_KEY, write_csv

README = Path(__file__).resolve().parent.parent / "README.md"


def _rows(n: int, changed: frozenset[int] = frozenset(), start: int = 1) -> list[dict[str, str]]:
    return [
        {
            "email": f"user{i}@example.com",
            "customer_id": f"C{i:05d}",
            "city": "Lyon" if i in changed else "Oslo",
        }
        for i in range(start, start + n)
    ]


def _write_gz(path: Path, rows: list[dict[str, str]]) -> Path:
    plain = write_csv(path.with_suffix(""), rows)
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    return path


def _cron_command() -> tuple[str, list[str]]:
    """The README's nightly crontab line: its working directory and blueshift-import's args."""
    block = re.search(r"```cron\n(.*?)\n```", README.read_text(), re.S)
    assert block is not None, "the README has a cron recipe"
    line = block.group(1).strip()
    directory = re.search(r"cd (\S+) &&", line)
    assert directory is not None and 'BLUESHIFT_API_KEY="$(cat key)"' in line
    return directory.group(1), shlex.split(line.split("blueshift-import ", 1)[1])


def test_the_readmes_cron_recipe_runs_two_nights_in_a_row(cli, fake_api, tmp_path, monkeypatch):
    monkeypatch.delenv("BLUESHIFT_IMPORT_STATE")  # the default state, as cron has it
    _, args = _cron_command()
    home = tmp_path / "srv-imports"
    home.mkdir()
    monkeypatch.chdir(home)
    (home / "import.toml").write_text(f'base-url = "{fake_api.url}"\n')
    changed, new = frozenset({3, 7, 11}), 5
    nights = {
        "2026-12-03": _rows(50),
        "2026-12-04": _rows(50, changed) + _rows(new, start=51),  # a new file name each day
    }
    reports = []
    for day, rows in nights.items():
        _write_gz(home / f"customers-{day}.csv.gz", rows)
        night_args = [a.replace(r"$(date +\%F)", day) for a in args]
        seen = len(fake_api.state.applied)
        result = cli(*night_args, env={"BLUESHIFT_API_KEY": API_KEY})
        assert result.exit_code == 0, result.output
        reports.append((json.loads((home / "runs" / "latest" / "report.json").read_text()), seen))

    runs = sorted(p for p in (home / "runs").iterdir() if p.name != "latest")
    assert len(runs) == 2  # both nights' files kept
    assert (home / "runs" / "latest").resolve() == runs[-1].resolve()
    for run in runs:
        # Nothing rejected or dead-lettered: only the report, no empty files.
        assert sorted(p.name for p in run.iterdir()) == ["report.json"]
    (first, _), (second, seen) = reports
    assert first["succeeded"] == 50
    assert second["unchanged_skipped"] == 50 - len(changed)
    sent = {c["customer_id"] for c in fake_api.state.applied[seen:]}
    assert sent == {f"C{i:05d}" for i in (*changed, *range(51, 51 + new))}
    # Neither the working directory nor the run directories hold the state.
    assert not list(home.rglob("*.sqlite"))


def test_the_default_state_is_one_per_account_found_from_any_directory(
    cli, fake_api, tmp_path, monkeypatch
):
    monkeypatch.delenv("BLUESHIFT_IMPORT_STATE")
    src = write_csv(tmp_path / "c.csv", _rows(20))
    env = {"BLUESHIFT_API_KEY": API_KEY}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        result = cli("run", str(src), "--base-url", fake_api.url, "--changed-only", env=env)
        assert result.exit_code == 0, result.output
    assert len(fake_api.state.applied) == 20  # the second directory's run skipped them all
    assert "unchanged        20" in result.output
    states = list((tmp_path / "xdg-state" / "blueshift-import").glob("*.sqlite"))
    assert len(states) == 1
    data = states[0].read_bytes()
    assert b"example.com" not in data and b"C0000" not in data  # no identifier readable
    # Another key is another account, with a state of its own.
    result = cli("run", str(src), "--base-url", fake_api.url, env={"BLUESHIFT_API_KEY": "k2"})
    assert len(list(states[0].parent.glob("*.sqlite"))) == 2
    result = cli("state", "info")
    assert result.exit_code == 0 and result.output.count("last success") == 1


def test_output_files_are_created_only_for_a_first_line(cli, fake_api, tmp_path):
    src = write_csv(tmp_path / "c.csv", [*_rows(3), {"email": "", "customer_id": "", "city": "X"}])
    out = {name: tmp_path / name for name in ("rejects.csv", "dead.jsonl", "report.json")}
    result = cli(
        "run", str(src), "--base-url", fake_api.url, "--rejects", str(out["rejects.csv"]),
        "--dead-letter", str(out["dead.jsonl"]), "--report", str(out["report.json"]),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 1  # the row without an identifier is rejected
    assert not out["dead.jsonl"].exists()
    header = out["rejects.csv"].read_text().splitlines()[0]
    assert header.startswith("email,customer_id,city,_line,")
    files = json.loads(out["report.json"].read_text())["files"]
    assert "dead_letter" not in files and files["rejects"] == str(out["rejects.csv"])
    # --overwrite removes the previous run's file even when this run has nothing for it.
    src.write_text("email\nok@example.com\n")
    result = cli(
        "run", str(src), "--base-url", fake_api.url, "--rejects", str(out["rejects.csv"]),
        "--overwrite", env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not out["rejects.csv"].exists()


def test_output_dir_never_overwrites_and_resume_continues_in_the_interrupted_runs_dir(
    make_fake_api, tmp_path
):
    from importer.errors import RunStopped
    from importer.pipeline import import_file

    from .conftest import fast_options

    src = write_csv(tmp_path / "c.csv", _rows(200))
    runs = tmp_path / "runs"
    state = tmp_path / "s.sqlite"
    revoked = make_fake_api(revoke_key_after=1)
    with pytest.raises(RunStopped):
        import_file(src, fast_options(revoked, state_path=state, output_dir=runs))
    (interrupted,) = [p for p in runs.iterdir() if p.name != "latest"]
    assert json.loads((interrupted / "report.json").read_text())["succeeded"] == 50
    api = make_fake_api()
    report = import_file(src, fast_options(api, state_path=state, output_dir=runs, resume=True))
    assert report.already_done == 50 and report.succeeded == 150
    assert [p for p in runs.iterdir() if p.name != "latest"] == [interrupted]
    assert json.loads((interrupted / "report.json").read_text())["already_done"] == 50
    # A new run gets a directory of its own.
    import_file(src, fast_options(api, state_path=state, output_dir=runs))
    assert len([p for p in runs.iterdir() if p.name != "latest"]) == 2
    assert (runs / "latest").resolve() != interrupted.resolve()


_SCHEMA_3 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '3');
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, size INTEGER, mtime_ns INTEGER,
    settings TEXT NOT NULL, status TEXT NOT NULL, pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 1, started_at REAL NOT NULL, updated_at REAL NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 0, dead_lettered INTEGER NOT NULL DEFAULT 0,
    checkpoint_bytes INTEGER NOT NULL DEFAULT 0, checkpoint_hash TEXT, content_hash TEXT,
    rejects_path TEXT, rejects_through INTEGER NOT NULL DEFAULT 0, rejects_offset INTEGER,
    dead_letter_path TEXT, dead_letter_offset INTEGER
);
CREATE INDEX runs_by_source ON runs (source, id);
CREATE TABLE done (
    run_id INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (run_id, lo, hi)
) WITHOUT ROWID;
CREATE TABLE payloads (
    target TEXT NOT NULL, identifier TEXT NOT NULL, hash BLOB NOT NULL,
    confirmed_at REAL NOT NULL, PRIMARY KEY (target, identifier)
) WITHOUT ROWID;
INSERT INTO payloads VALUES ('t', 'someone@example.com', X'00', 1.0);
INSERT INTO done VALUES (1, 1, 40);
"""


def test_an_interrupted_run_of_schema_3_resumes_after_the_upgrade(tmp_path):
    from importer.state import Account, Fingerprint

    src = write_csv(tmp_path / "c.csv", _rows(3))
    st = src.stat()
    fingerprint = Fingerprint(str(src.resolve()), st.st_size, st.st_mtime_ns)
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_3)
    conn.execute(
        "INSERT INTO runs (id, source, size, mtime_ns, settings, status, started_at, "
        "updated_at, confirmed) VALUES (1, ?, ?, ?, '{}', 'interrupted', 0, 0, 40)",
        (fingerprint.source, st.st_size, st.st_mtime_ns),
    )
    conn.commit()
    conn.close()
    with StateStore(path, resume=True) as store:
        run = store.begin_run(fingerprint, {}, resume=True)
        assert run.resumed and run.run_id == 1
        reader = StateReader(store, run, Account("https://x", "k"))
        from importer.records import Customer

        probe = [Customer({"email": f"u{i}@example.com"}, i, i) for i in (39, 40, 41)]
        kept, done = reader.skip_done(probe)
        assert done == 2 and [c.record for c in kept] == [41]
        reader.close()
    assert b"someone@example.com" not in path.read_bytes()
