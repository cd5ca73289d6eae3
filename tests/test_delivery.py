"""Delivery guarantees end to end: every status class, every fault, a chaos run, shutdown.

Each test imports a file into the fake API over loopback HTTP and checks
what the fake received and applied, what is in the dead-letter file, and
that the accounting balances.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from importer import import_file
from importer.errors import ApiKeyRejected, ApiUnavailable
from importer.source import unwrap_dead_letter

from .conftest import API_KEY, fast_options, write_csv

ROOT = Path(__file__).resolve().parent.parent


def _rows(n: int, start: int = 0, **extra: dict[int, dict[str, str]]) -> list[dict[str, str]]:
    return [
        {"email": f"user{i}@example.com", "customer_id": f"{i:06d}", "city": "Oslo", "poison": ""}
        for i in range(start, start + n)
    ]


def _ids(n: int) -> set[str]:
    return {f"user{i}@example.com" for i in range(n)}


def _dead(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _file(tmp_path: Path, n: int, name: str = "c.csv", poison: tuple[int, ...] = ()) -> Path:
    rows = _rows(n)
    for i in poison:
        rows[i]["poison"] = "yes"
    return write_csv(tmp_path / name, rows)


# -- one test per status class -------------------------------------------------


@pytest.mark.parametrize("status", [404, 409, 429, 502, 503, 504])
def test_delivery_in_an_outage_stops_with_batches_pending_not_dead_lettered(
    make_fake_api, tmp_path, status
):
    # Every call fails: an outage, not a bad batch. Batches wait past max_retries for the
    # API, and the stop leaves them pending (not sent), never in the dead-letter file.
    server = make_fake_api(faults={status: 1.0})
    dead = tmp_path / "dead.jsonl"
    options = fast_options(server, dead_letter_path=dead, max_retries=3, give_up_after=0.4)
    with pytest.raises(ApiUnavailable) as info:
        import_file(_file(tmp_path, 60), options)
    report = info.value.report  # type: ignore[attr-defined]
    assert max(server.state.attempts_by_id().values()) > 4  # retried past max_retries
    assert server.state.applied == [] and _dead(dead) == []
    assert report.dead_lettered == 0 and report.not_sent == 60 and report.accounting_ok


def test_delivery_dead_letters_after_max_retries_while_the_api_is_up(make_fake_api, tmp_path):
    # Most calls fail, but others succeed meanwhile: a batch whose retries run out is
    # dead-lettered with its last answer, after 1 + max_retries attempts (more when it
    # met a moment where no call succeeded, and waited).
    server = make_fake_api(faults={502: 0.7}, seed=4)
    dead = tmp_path / "dead.jsonl"
    options = fast_options(server, dead_letter_path=dead, max_retries=1, batch_size=5)
    report = import_file(_file(tmp_path, 200), options)
    lines = _dead(dead)
    assert lines and len(lines) == report.dead_lettered
    assert {(line["status"], line["kind"]) for line in lines} == {(502, "http")}
    assert min(line["attempts"] for line in lines) == 2
    assert {line["error"] for line in lines} == {"HTTP 502: non-JSON (HTML) body"}
    assert report.succeeded + report.dead_lettered == 200 and report.accounting_ok


def test_delivery_500_retried_a_few_times_then_dead_lettered(make_fake_api, tmp_path):
    server = make_fake_api(faults={500: 0.7}, seed=4)
    dead = tmp_path / "dead.jsonl"
    report = import_file(
        _file(tmp_path, 200), fast_options(server, dead_letter_path=dead, batch_size=5)
    )
    lines = _dead(dead)
    assert lines and len(lines) == report.dead_lettered
    assert {(line["status"], line["error"]) for line in lines} == {
        (500, "HTTP 500: injected fault 500")
    }
    assert min(line["attempts"] for line in lines) == 3  # not max_retries (8)


def test_delivery_413_splits_until_batches_fit(make_fake_api, tmp_path):
    server = make_fake_api(max_customers=7)
    dead = tmp_path / "dead.jsonl"
    report = import_file(_file(tmp_path, 500), fast_options(server, dead_letter_path=dead))
    assert report.succeeded == 500 and _dead(dead) == []
    assert set(server.state.applied_ids()) == _ids(500)
    assert len(server.state.applied) == 500  # nothing applied twice
    accepted = [r for r in server.state.requests if r.status == 200]
    assert all(r.customers <= 7 for r in accepted)
    assert report.splits > 0


def test_delivery_400_bisects_to_the_bad_records_within_the_call_bound(make_fake_api, tmp_path):
    server = make_fake_api(bad_field="poison")
    dead = tmp_path / "dead.jsonl"
    poison = (7, 260, 261, 499)  # batch 0, two in batch 5, batch 9
    report = import_file(
        _file(tmp_path, 500, poison=poison), fast_options(server, dead_letter_path=dead)
    )
    lines = _dead(dead)
    bad = {f"user{i}@example.com" for i in poison}
    assert {line["payload"]["email"] for line in lines} == bad
    assert {line["status"] for line in lines} == {400}
    assert all("malformed attribute 'poison'" in line["error"] for line in lines)
    assert set(server.state.applied_ids()) == _ids(500) - bad
    extra_calls = len(server.state.requests) - 10
    assert extra_calls <= len(poison) * 2 * math.ceil(math.log2(50))
    assert report.succeeded == 496 and report.dead_lettered == 4 and report.accounting_ok


# -- faults --------------------------------------------------------------------


def test_delivery_timeouts_are_retried(make_fake_api, tmp_path):
    server = make_fake_api(slow=0.2, slow_seconds=0.6, seed=4)
    dead = tmp_path / "dead.jsonl"
    report = import_file(
        _file(tmp_path, 500), fast_options(server, timeout=0.3, dead_letter_path=dead)
    )
    assert report.status_counts.get("timeout", 0) > 0
    assert report.succeeded == 500 and _dead(dead) == []
    assert set(server.state.applied_ids()) == _ids(500)


def test_delivery_timeouts_throughout_stop_the_run_with_the_batch_pending(make_fake_api, tmp_path):
    # No answer ever comes in time: the API is down for this run, so the batch is not
    # dead-lettered after its retries; the run gives up with it pending.
    server = make_fake_api(slow=1.0, slow_seconds=0.5)
    dead = tmp_path / "dead.jsonl"
    options = fast_options(
        server, timeout=0.1, max_retries=1, dead_letter_path=dead, give_up_after=0.5
    )
    with pytest.raises(ApiUnavailable) as info:
        import_file(_file(tmp_path, 2), options)
    report = info.value.report  # type: ignore[attr-defined]
    assert _dead(dead) == [] and report.not_sent == 2 and report.accounting_ok
    assert report.status_counts["timeout"] > 2  # tried past max_retries


def test_delivery_dropped_connections_are_retried(make_fake_api, tmp_path):
    server = make_fake_api(drop=0.3, seed=2)
    report = import_file(_file(tmp_path, 500), fast_options(server))
    assert server.state.fault_counts()["drop"] == report.status_counts["connection_error"] > 0
    assert report.succeeded == 500 and set(server.state.applied_ids()) == _ids(500)


def test_delivery_dropped_connections_throughout_leave_the_batch_pending(make_fake_api, tmp_path):
    server = make_fake_api(drop=1.0)
    dead = tmp_path / "dead.jsonl"
    options = fast_options(server, max_retries=2, dead_letter_path=dead, give_up_after=0.3)
    with pytest.raises(ApiUnavailable) as info:
        import_file(_file(tmp_path, 5), options)
    assert _dead(dead) == [] and server.state.applied == []
    assert info.value.report.not_sent == 5  # type: ignore[attr-defined]


def test_delivery_applied_then_failed_is_resent_and_counted_once(make_fake_api, tmp_path):
    server = make_fake_api(applied_then_fail=0.3, seed=8)
    report = import_file(_file(tmp_path, 500), fast_options(server))
    applied = server.state.applied_ids()
    assert len(applied) > 500  # some arrived twice, which upserts tolerate
    assert set(applied) == _ids(500)
    assert report.succeeded == 500 and report.dead_lettered == 0 and report.accounting_ok


def test_delivery_rides_out_a_short_outage(make_fake_api, tmp_path):
    server = make_fake_api(outage=(0.0, 0.4))
    options = fast_options(server, max_backoff=0.05, max_retries=200)
    report = import_file(_file(tmp_path, 300), options)
    assert server.state.fault_counts()["outage"] > 0
    assert report.succeeded == 300 and set(server.state.applied_ids()) == _ids(300)


def test_delivery_gives_up_when_api_stays_down(make_fake_api, tmp_path):
    server = make_fake_api(outage=(0.0, 3600.0))
    dead = tmp_path / "dead.jsonl"
    report_path = tmp_path / "report.json"
    options = fast_options(
        server,
        give_up_after=0.3,
        max_backoff=0.05,
        max_retries=10_000,
        dead_letter_path=dead,
        report_path=report_path,
    )
    with pytest.raises(ApiUnavailable) as info:
        import_file(_file(tmp_path, 2000), options)
    report = info.value.report  # type: ignore[attr-defined]
    assert report.dead_lettered == 0 and _dead(dead) == []  # not poured into the dead letter
    assert report.not_sent == 2000 and report.accounting_ok
    assert json.loads(report_path.read_text())["stopped"].startswith("API unavailable")


def test_delivery_record_errors_transient_retried_permanent_dead_lettered(make_fake_api, tmp_path):
    server = make_fake_api(record_errors=0.1, seed=6)
    dead = tmp_path / "dead.jsonl"
    report = import_file(_file(tmp_path, 1000), fast_options(server, dead_letter_path=dead))
    lines = _dead(dead)
    assert lines and {(line["kind"], line["status"]) for line in lines} == {("record", 200)}
    assert {line["error"] for line in lines} <= {"record_rejected", "internal_error"}
    dead_ids = {line["payload"]["email"] for line in lines}
    assert set(server.state.applied_ids()) | dead_ids == _ids(1000)
    assert report.succeeded == 1000 - len(lines)
    retried = [i for i, n in server.state.attempts_by_id().items() if n > 1]
    assert retried  # transient per-record errors were resent, record by record
    assert len(retried) < 1000


def test_delivery_adaptive_rate_lowers_on_429_and_is_reported(make_fake_api, tmp_path):
    server = make_fake_api(rate=40.0, burst=1)
    report_path = tmp_path / "report.json"
    report = import_file(
        _file(tmp_path, 1500),
        fast_options(server, rate=200.0, max_retries=50, report_path=report_path),
    )
    assert report.succeeded == 1500
    assert server.state.status_counts()[429] > 0
    data = json.loads(report_path.read_text())
    assert data["lowest_rate"] < 200 and data["rate_limit"] == 200


def test_delivery_every_attempt_passes_the_limiter(make_fake_api, tmp_path):
    server = make_fake_api(faults={503: 0.5}, seed=9)
    rate = 40.0
    import_file(_file(tmp_path, 1000), fast_options(server, rate=rate, concurrency=8))
    times = sorted(r.at for r in server.state.requests)
    assert len(times) > 25  # retries included
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        assert i - j + 1 <= rate + 2


# -- 401 mid-run ---------------------------------------------------------------


def test_delivery_401_mid_run_stops_at_once(make_fake_api, tmp_path):
    server = make_fake_api(revoke_key_after=5)
    dead = tmp_path / "dead.jsonl"
    report_path = tmp_path / "report.json"
    options = fast_options(server, concurrency=1, dead_letter_path=dead, report_path=report_path)
    with pytest.raises(ApiKeyRejected, match=r"^API key rejected \(HTTP 401\) by http:") as info:
        import_file(_file(tmp_path, 2000), options)
    statuses = [r.status for r in server.state.requests]
    assert statuses == [200] * 5 + [401]  # no call after the 401
    report = info.value.report  # type: ignore[attr-defined]
    assert report.succeeded == 250 and report.dead_lettered == 0 and _dead(dead) == []
    assert report.not_sent == 1750 and report.accounting_ok
    stopped = json.loads(report_path.read_text())["stopped"]
    assert stopped == f"API key rejected (HTTP 401) by {server.url}: check the key and base_url"


def test_delivery_401_with_requests_in_flight(make_fake_api, tmp_path, cli):
    server = make_fake_api(revoke_key_after=20)
    report_path = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    result = cli(
        "run",
        str(_file(tmp_path, 5000)),
        "--base-url",
        server.url,
        "--rate",
        "500",
        "--concurrency",
        "4",
        "--report",
        str(report_path),
        "--dead-letter",
        str(dead),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )
    assert result.exit_code == 3
    assert "API key rejected (HTTP 401)" in result.stderr
    statuses = [r.status for r in server.state.requests]
    # Every request after the 20th is refused; only those already in flight when the
    # first 401 came back (at most --concurrency) can follow it.
    assert statuses.count(200) == 20
    assert 1 <= statuses.count(401) <= 4 and len(statuses) <= 24
    report = json.loads(report_path.read_text())
    assert report["accounting"]["balanced"] and report["dead_lettered"] == 0
    assert _dead(dead) == []


# -- dead-letter file ------------------------------------------------------------


def test_dead_letter_file_shape_and_mode(make_fake_api, tmp_path):
    # A 405 is about the request, not an outage: dead-lettered at once.
    server = make_fake_api(faults={405: 1.0})
    dead = tmp_path / "dead.jsonl"
    source = _file(tmp_path, 3)
    import_file(source, fast_options(server, dead_letter_path=dead, max_retries=0))
    assert stat.S_IMODE(os.stat(dead).st_mode) == 0o600
    lines = _dead(dead)
    assert lines[0]["payload"] == {
        "email": "user0@example.com",
        "customer_id": "000000",
        "city": "Oslo",
    }
    # The payload is written as the very bytes the request carried (keys sorted).
    assert dead.read_bytes().startswith(
        b'{"payload":{"city":"Oslo","customer_id":"000000","email":"user0@example.com"},'
    )
    assert lines[0]["source"] == str(source)
    assert [line["record"] for line in lines] == [1, 2, 3]
    assert lines[0]["line"] == 2
    assert set(lines[0]) >= {"status", "kind", "error", "attempts", "at"}


def test_unwrap_dead_letter_keeps_exact_payloads():
    import pandas as pd

    frame = pd.DataFrame(
        {
            "payload": [{"email": "a@x.io", "points": 3}, {"customer_id": "7"}],
            "source": ["f.csv", "f.csv"],
            "record": [1, 2],
            "error": ["e", "e"],
            "attempts": [1, 1],
        },
        index=[10, 11],
    )
    unwrapped = unwrap_dead_letter(frame)
    assert unwrapped is not None
    assert list(unwrapped.index) == [10, 11]
    assert unwrapped.loc[10, "points"] == 3 and type(unwrapped.loc[10, "points"]) is int
    assert unwrapped.loc[11, "email"] is None
    assert unwrap_dead_letter(pd.DataFrame({"payload": ["x"], "email": ["a"]})) is None


def test_dead_letter_file_reimports_with_run(make_fake_api, tmp_path, cli):
    failing = make_fake_api(faults={405: 1.0})
    dead = tmp_path / "failed.jsonl"
    import_file(_file(tmp_path, 120), fast_options(failing, dead_letter_path=dead, max_retries=0))
    assert len(_dead(dead)) == 120
    healthy = make_fake_api()
    result = cli(
        "run",
        str(dead),
        "--base-url",
        healthy.url,
        "--rate",
        "500",
        env={"BLUESHIFT_API_KEY": API_KEY},
    )
    assert result.exit_code == 0, result.output
    assert sorted(healthy.state.applied, key=lambda c: c["customer_id"]) == [
        {"email": f"user{i}@example.com", "customer_id": f"{i:06d}", "city": "Oslo"}
        for i in range(120)
    ]


# -- the chaos run ---------------------------------------------------------------


def test_delivery_chaos_run_loses_nothing_and_dead_letter_rerun_delivers_all(
    make_fake_api, tmp_path
):
    n = 20_000
    # About 10% of requests misbehave: 8% error statuses, plus dropped connections,
    # records applied and then a failure answered, and answers slower than the timeout.
    # Each kind the test relies on is common enough to show up in every run.
    server = make_fake_api(
        faults={404: 0.01, 409: 0.01, 429: 0.015, 500: 0.015, 502: 0.01, 503: 0.01, 504: 0.01},
        drop=0.015,
        applied_then_fail=0.015,
        slow=0.004,
        slow_seconds=3.0,
        record_errors=0.01,
        seed=2024,
    )
    dead = tmp_path / "dead.jsonl"
    # The timeout sits well above a normal answer on a busy machine and below a slow one.
    options = fast_options(
        server, rate=5000.0, concurrency=8, timeout=1.5, dead_letter_path=dead, max_retries=8
    )
    report = import_file(_file(tmp_path, n), options)
    faults = server.state.fault_counts()
    # About 9.5% expected; 5% is far below what any seed gives over some 500 requests.
    assert sum(faults.values()) > 0.05 * len(server.state.requests)
    assert {"drop", "status 500"} <= set(faults)
    assert any(kind.startswith("applied then") for kind in faults)
    lines = _dead(dead)
    dead_ids = {line["payload"]["email"] for line in lines}
    assert len(dead_ids) == len(lines) == report.dead_lettered > 0
    applied = set(server.state.applied_ids())
    # Zero lost: every row was applied or is in the dead-letter file ...
    assert applied | dead_ids == _ids(n)
    # ... and every row counted as succeeded (all but the dead-lettered) really was applied.
    assert report.succeeded == n - len(lines)
    assert _ids(n) - dead_ids <= applied
    assert report.accounting_ok and report.rows_read == n

    healthy = make_fake_api()
    again = import_file(dead, fast_options(healthy))
    assert again.succeeded == len(lines) and again.dead_lettered == 0
    assert set(healthy.state.applied_ids()) == dead_ids


# -- CLI: accounting, --mock faults ------------------------------------------------


def test_cli_accounting_mismatch_exits_1_and_says_so(fake_api, tmp_path, cli, monkeypatch):
    from importer.outcomes import ImportReport

    original = ImportReport.count_outcomes

    def lose_one(self, outcomes):
        original(self, outcomes[1:])

    monkeypatch.setattr(ImportReport, "count_outcomes", lose_one)
    result = cli(
        "run",
        str(_file(tmp_path, 10)),
        "--base-url",
        fake_api.url,
        env={"BLUESHIFT_API_KEY": API_KEY},
    )
    assert result.exit_code == 1
    assert "accounting does not balance" in result.stderr
    assert "MISMATCH by 1" in result.stderr


def test_cli_mock_with_faults_delivers_everything(tmp_path, cli):
    result = cli(
        "run",
        str(_file(tmp_path, 300)),
        "--mock",
        "--rate",
        "500",
        "--max-backoff",
        "0.01",
        "--mock-fault",
        "503=0.2",
        "--mock-drop",
        "0.05",
        "--mock-seed",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "fake API received 300 customers" in result.stderr
    assert "503:" in result.stdout and "succeeded        300" in result.stdout


def test_cli_bad_fault_flag_is_usage_error(tmp_path, cli):
    result = cli("run", str(_file(tmp_path, 3)), "--mock", "--mock-fault", "503")
    assert result.exit_code == 2 and "STATUS=PROBABILITY" in result.stderr


# -- shutdown: real signals to a real process --------------------------------------


def _start_run(server, tmp_path: Path, n: int, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "importer",
        "run",
        str(_file(tmp_path, n)),
        "--base-url",
        server.url,
        "--report",
        str(tmp_path / "report.json"),
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        *extra,
    ]
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=os.getcwd()
    )


def _wait_for_requests(server, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 60
    while server.state.arrived < count:
        assert proc.poll() is None, "the run ended before it was interrupted"
        assert time.monotonic() < deadline, "the run never started sending"
        time.sleep(0.02)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly_with_report(make_fake_api, tmp_path, signum, code):
    server = make_fake_api()
    proc = _start_run(server, tmp_path, 5000, "--rate", "20")
    _wait_for_requests(server, proc, 3)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "stopping" in stderr
    calls = len(server.state.requests)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"] == "interrupted"
    assert report["accounting"]["balanced"] is True
    assert report["succeeded"] == len(server.state.applied) > 0
    assert report["not_sent"] > 0
    assert calls < 100  # it stopped reading instead of sending the whole file
    assert not (tmp_path / "dead.jsonl").exists()  # nothing dead-lettered: no empty file


def test_second_ctrl_c_exits_at_once(make_fake_api, tmp_path):
    server = make_fake_api(slow=1.0, slow_seconds=30.0)
    proc = _start_run(server, tmp_path, 500, "--rate", "20", "--timeout", "25")
    _wait_for_requests(server, proc, 1)
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    while "stopping" not in line:
        assert line, "the first Ctrl-C was not acknowledged"
        line = proc.stderr.readline()
    assert proc.poll() is None  # still waiting for the request in flight
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=15)  # far less than the 25 s the request in flight could take
    assert proc.returncode == 130
    assert not (tmp_path / "report.json").exists()  # it did not wait to write the report
