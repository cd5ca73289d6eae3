"""Crash-safe resume and incremental imports, end to end against the fake API over loopback.

The crash tests run the importer in a subprocess (``python -m importer run``),
kill it with SIGKILL or SIGINT once the fake API in this process has seen a
seeded number of requests, then re-run with ``--resume`` against a second fake
API, so what each attempt sent is known exactly.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from importer import import_file
from importer.fake_api import FakeApiServer

from .conftest import API_KEY, fast_options, stop_after, write_csv

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = 4
#: Every BAD_EMAIL-th row carries an attribute the fake API refuses (a 400, bisected down to
#: that row, which is dead-lettered);
#: every NO_ID-th row has no identifier at all (rejected before sending).
BAD_EMAIL, NO_ID = 89, 97
POISON = "refused_by_api"


def _rows(
    n: int, *, changed: frozenset[int] = frozenset(), start: int = 1, bad_emails: bool = True
) -> list[dict[str, str]]:
    rows = []
    for i in range(start, start + n):
        email = f"user{i}@example.com"
        cid = f"C{i:08d}"
        if i % NO_ID == 0:
            email = cid = ""
        poison = "yes" if bad_emails and i % NO_ID and i % BAD_EMAIL == 0 else ""
        points = str(i % 1000 + (5000 if i in changed else 0))
        rows.append(
            {
                "email": email,
                "customer_id": cid,
                "city": "Oslo",
                "loyalty_points": points,
                POISON: poison,
            }
        )
    return rows


def _expected_ids(n: int) -> set[str]:
    """Customer ids the API accepts from ``_rows(n)``."""
    return {f"C{i:08d}" for i in range(1, n + 1) if i % NO_ID and i % BAD_EMAIL}


def _ids(server: FakeApiServer) -> list[str]:
    with server.state.lock:
        return [str(c["customer_id"]) for c in server.state.applied]


def _start_run(path: Path, server: FakeApiServer, state: Path, tmp: Path, *extra: str):
    cmd = [
        sys.executable,
        "-m",
        "importer",
        "run",
        str(path),
        "--base-url",
        server.url,
        "--rate",
        "100",
        "--concurrency",
        str(CONCURRENCY),
        "--state",
        str(state),
        "--dead-letter",
        str(tmp / "dead.jsonl"),
        "--rejects",
        str(tmp / "rejects.csv"),
        *extra,
    ]
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY}
    return subprocess.Popen(
        cmd, cwd=os.getcwd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_requests(server: FakeApiServer, proc: subprocess.Popen, n: int) -> None:
    deadline = time.monotonic() + 60
    while len(server.state.requests) < n:
        assert proc.poll() is None, f"the run ended before {n} requests: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)


def _confirmed_records(state: Path) -> set[int]:
    """Record numbers the state says were confirmed (delivered or dead-lettered)."""
    conn = sqlite3.connect(state)
    try:
        (run_id,) = conn.execute("SELECT max(id) FROM runs").fetchone()
        done: set[int] = set()
        for lo, hi in conn.execute("SELECT lo, hi FROM done WHERE run_id = ?", (run_id,)):
            done.update(range(lo, hi + 1))
        return done
    finally:
        conn.close()


def _resume_args(path: Path, server: FakeApiServer, state: Path, tmp: Path) -> list[str]:
    return [
        "run",
        str(path),
        "--base-url",
        server.url,
        "--rate",
        "1000",
        "--concurrency",
        str(CONCURRENCY),
        "--state",
        str(state),
        "--dead-letter",
        str(tmp / "dead.jsonl"),
        "--rejects",
        str(tmp / "rejects.csv"),
        "--resume",
    ]


def _with_key(cli):
    def invoke(*args: str):
        return cli(*args, env={"BLUESHIFT_API_KEY": API_KEY})

    return invoke


def _check_output_files(tmp: Path, n: int) -> None:
    """Each refused row is in the dead-letter file once, each rejected row in the rejects once."""
    dead = [orjson.loads(line)["record"] for line in (tmp / "dead.jsonl").read_bytes().splitlines()]
    assert sorted(dead) == [i for i in range(1, n + 1) if i % BAD_EMAIL == 0 and i % NO_ID]
    with (tmp / "rejects.csv").open(newline="") as f:
        rejected = [int(row["_line"]) - 1 for row in csv.DictReader(f)]
    assert sorted(rejected) == [i for i in range(1, n + 1) if i % NO_ID == 0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resume_after_kill_sends_every_row_and_no_confirmed_row_again(
    seed, make_fake_api, cli, tmp_path
):
    cli = _with_key(cli)
    n = 20_000
    path = write_csv(tmp_path / "customers.csv", _rows(n))
    state = tmp_path / "state.sqlite"
    first = make_fake_api(bad_field=POISON)
    proc = _start_run(path, first, state, tmp_path)
    kill_at = random.Random(seed).randint(10, 150)
    _wait_for_requests(first, proc, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    confirmed = _confirmed_records(state)
    assert confirmed, "no batch was recorded before the kill"

    second = make_fake_api(bad_field=POISON)
    result = cli(*_resume_args(path, second, state, tmp_path))
    assert result.exit_code == 1, result.output  # the malformed emails are dead-lettered
    assert "already done" in result.output

    sent_before, sent_after = _ids(first), _ids(second)
    assert not confirmed & {int(c[1:]) for c in sent_after}, "a confirmed row was sent again"
    assert set(sent_before) | set(sent_after) == _expected_ids(n)
    assert max(Counter(sent_after).values()) == 1
    duplicates = set(sent_before) & set(sent_after)
    assert len(duplicates) <= CONCURRENCY * 50
    _check_output_files(tmp_path, n)


def test_ctrl_c_then_resume_gives_the_same_set_as_an_uninterrupted_run(
    make_fake_api, cli, tmp_path
):
    cli = _with_key(cli)
    n = 5_000
    path = write_csv(tmp_path / "customers.csv", _rows(n))
    state = tmp_path / "state.sqlite"
    baseline = make_fake_api(bad_field=POISON)
    import_file(path, fast_options(baseline))

    first = make_fake_api(bad_field=POISON)
    proc = _start_run(path, first, state, tmp_path)
    _wait_for_requests(first, proc, 20)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "stopping" in err

    second = make_fake_api(bad_field=POISON)
    result = cli(*_resume_args(path, second, state, tmp_path))
    assert result.exit_code == 1, result.output

    def payloads(server: FakeApiServer) -> list[bytes]:
        return [orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in server.state.applied]

    combined = payloads(first) + payloads(second)
    assert sorted(combined) == sorted(payloads(baseline))  # same set, nothing sent twice
    _check_output_files(tmp_path, n)


def _interrupted_run(path: Path, server: FakeApiServer, state: Path) -> int:
    """Import ``path`` until a few batches are confirmed, then stop as Ctrl-C would.

    The pace leaves the stop flag time to be seen long before the file ends, even on a
    busy machine.
    """
    stop, observer = stop_after(300)

    report = import_file(
        path,
        fast_options(server, state_path=state, rate=50.0, chunk_rows=500),
        observer=observer,
        stop=stop,
    )
    assert report.stopped == "interrupted"
    return report.succeeded


def test_resume_refuses_an_input_whose_size_changed(make_fake_api, cli, tmp_path):
    cli = _with_key(cli)
    path = write_csv(tmp_path / "c.csv", _rows(3_000))
    state = tmp_path / "state.sqlite"
    _interrupted_run(path, make_fake_api(bad_field=POISON), state)
    with path.open("a") as f:
        f.write("new@example.com,C99999999,Oslo,1\n")
    second = make_fake_api(bad_field=POISON)
    result = cli(*_resume_args(path, second, state, tmp_path))
    assert result.exit_code == 2
    assert "changed since the interrupted run" in result.output
    assert second.state.requests == []


def test_resume_refuses_same_size_same_mtime_content_change_before_sending(
    make_fake_api, cli, tmp_path
):
    cli = _with_key(cli)
    path = write_csv(tmp_path / "c.csv", _rows(3_000))
    state = tmp_path / "state.sqlite"
    _interrupted_run(path, make_fake_api(bad_field=POISON), state)
    st = path.stat()
    data = path.read_bytes().replace(b"user10@example.com", b"user10@example.org", 1)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size

    second = make_fake_api(bad_field=POISON)
    result = cli(*_resume_args(path, second, state, tmp_path))
    assert result.exit_code == 2
    assert "content changed" in result.output
    assert second.state.requests == []

    # --resume --force starts over: every valid row is sent.
    third = make_fake_api(bad_field=POISON)
    result = cli(*_resume_args(path, third, state, tmp_path), "--force")
    assert result.exit_code == 1, result.output
    assert len(_ids(third)) == len(_expected_ids(3_000))


def test_resume_refuses_changed_batching_options(make_fake_api, cli, tmp_path):
    cli = _with_key(cli)
    path = write_csv(tmp_path / "c.csv", _rows(3_000))
    state = tmp_path / "state.sqlite"
    _interrupted_run(path, make_fake_api(bad_field=POISON), state)
    result = cli(
        *_resume_args(path, make_fake_api(bad_field=POISON), state, tmp_path), "--batch-size", "20"
    )
    assert result.exit_code == 2
    assert "batch_size" in result.output


def test_nightly_changed_only_sends_only_changed_and_new_customers(make_fake_api, cli, tmp_path):
    cli = _with_key(cli)
    n = 2_000
    state = tmp_path / "state.sqlite"
    rng = random.Random(5)
    valid = [i for i in range(1, n + 1) if i % NO_ID]
    changed = frozenset(rng.sample(valid, n * 3 // 100))
    a = write_csv(tmp_path / "a.csv", _rows(n, bad_emails=False))
    new_rows = _rows(n // 100, start=n + 1, bad_emails=False)
    a2 = write_csv(tmp_path / "a2.csv", _rows(n, changed=changed, bad_emails=False) + new_rows)

    def night(path: Path, *extra: str):
        return cli(
            "run", str(path), "--base-url", api.url, "--rate", "1000", "--state", str(state), *extra
        )

    # One API throughout: payload hashes belong to the destination they were confirmed by.
    api = make_fake_api(bad_field=POISON)
    assert night(a, "--changed-only").exit_code == 1  # rows without an identifier are rejected
    seen = len(api.state.applied), len(api.state.requests)
    result = night(a2, "--changed-only")
    assert result.exit_code == 1, result.output
    sent = [str(c["customer_id"]) for c in api.state.applied[seen[0] :]]
    new = {f"C{i:08d}" for i in range(n + 1, n + n // 100 + 1) if i % NO_ID}
    assert sorted(sent) == sorted({f"C{i:08d}" for i in changed} | new)
    assert len(api.state.requests) - seen[1] == 2  # 80 customers in batches of 50
    assert f"unchanged        {len(valid) - len(changed)}" in result.output

    seen = len(api.state.applied), len(api.state.requests)
    result = night(a2, "--changed-only")
    assert result.exit_code == 1, result.output
    assert len(api.state.requests) == seen[1]  # nothing sent
    assert "succeeded        0" in result.output


def test_second_concurrent_run_on_one_state_exits_2_naming_the_first(make_fake_api, cli, tmp_path):
    cli = _with_key(cli)
    n = 2_000
    path = write_csv(tmp_path / "c.csv", _rows(n))
    state = tmp_path / "state.sqlite"
    first = make_fake_api(bad_field=POISON)
    proc = _start_run(path, first, state, tmp_path, "--rate", "20", "--max-error-rate", "0.1")
    _wait_for_requests(first, proc, 2)
    second = make_fake_api(bad_field=POISON)
    # The same state under another name: the lock is taken on the file the link points to.
    link = tmp_path / "elsewhere" / "state-link.sqlite"
    link.parent.mkdir()
    link.symlink_to(state)
    result = cli("run", str(path), "--base-url", second.url, "--state", str(link))
    assert result.exit_code == 2
    assert f"PID {proc.pid}" in result.output
    assert second.state.requests == []
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)

    conn = sqlite3.connect(state)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT status, confirmed FROM runs").fetchall() == [
            ("completed", len(_expected_ids(n)))
        ]
        # Without --changed-only no payload hash is kept.
        assert conn.execute("SELECT count(*) FROM payloads").fetchone() == (0,)
    finally:
        conn.close()
