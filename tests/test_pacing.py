"""The pacer: the rate governor, the in-flight limit that follows answer times, and the
pace shared through a real Redis server started by the tests (never a mock of it)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading

import pytest

from benchmarks.redis_server import free_port
from importer import SharedLimitUnavailable, import_file
from importer.pacing import InFlightLimit, RateGovernor, SharedPace, redacted

from .conftest import API_KEY, fast_options, write_csv

# -- the rate governor ---------------------------------------------------------------


def test_rate_governor_halves_once_per_second_and_climbs_back_over_time():
    now = [100.0]
    governor = RateGovernor(10.0, climb_seconds=20.0, clock=lambda: now[0])
    governor.on_throttled()
    governor.on_throttled()  # the same burst of 429s counts once
    assert governor.rate == 5.0
    now[0] += 1.5
    governor.on_throttled()
    assert governor.rate == 2.5 and governor.lowest_rate == 2.5
    now[0] += 2.0
    governor.on_success()  # +10/20 per second for 2 s
    assert governor.rate == pytest.approx(3.5)
    now[0] += 100
    governor.on_success()
    assert governor.rate == 10.0  # never above the cap
    assert governor.lowest_rate == 2.5


async def test_rate_governor_paces_evenly_and_never_bursts_on_a_change():
    governor = RateGovernor(40.0)
    loop = asyncio.get_running_loop()
    starts: list[tuple[float, float]] = []  # (start time, rate in force)

    async def caller() -> None:
        for _ in range(6):
            await governor.acquire()
            starts.append((loop.time(), governor.rate))
            if len(starts) == 8:
                governor.on_throttled()  # halve the pace while others are queued

    await asyncio.gather(*(caller() for _ in range(4)))
    assert len(starts) == 24
    times = [t for t, _ in starts]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # One start per period at most, before and after the change (small timer slack).
    for gap, (_, rate) in zip(gaps, starts[1:], strict=True):
        assert gap >= 0.8 / 40.0
        if rate == 20.0:
            assert gap >= 0.8 / 20.0 or gap >= 0.8 / 40.0
    after = [b - a for (a, ra), (b, rb) in zip(starts[8:], starts[9:], strict=False)]
    assert min(after) >= 0.8 / 20.0


def test_rate_governor_lower_cap_slows_at_once_and_climbs_no_higher():
    now = [0.0]
    governor = RateGovernor(6.0, clock=lambda: now[0])
    governor.lower_cap(2.0)
    assert governor.rate == 2.0 and governor.max_rate == 2.0
    now[0] += 100
    governor.on_success()
    assert governor.rate == 2.0


# -- the in-flight limit ---------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _answer(limit: InFlightLimit, clock: _Clock, seconds: float) -> None:
    call = limit.started()
    clock.now += seconds
    limit.ended(call, answered=True)


def test_in_flight_limit_follows_answer_times_within_the_ceiling():
    clock = _Clock()
    limit = InFlightLimit(5.0, None, 32, clock=clock)
    assert limit.limit == 1 and limit.answer_times() == {}
    # A call not yet answered counts with its age: 5/s × 1 s × 1.25, plus one.
    call = limit.started()
    clock.now += 1.0
    assert limit.limit == 8
    limit.ended(call, answered=True)
    for _ in range(20):
        _answer(limit, clock, 2.0)
    assert limit.limit == 14  # 5/s × p90 2 s × 1.25, plus one
    assert not limit.limited_the_pace
    for _ in range(200):
        _answer(limit, clock, 10.0)
    assert limit.needed() == 64 and limit.limit == 32  # the ceiling
    assert limit.limited_the_pace  # 5/s × ~9.6 s mean answer > 32 in flight
    times = limit.answer_times()
    assert set(times) == {"mean", "p50", "p90", "p99"} and times["p50"] == 10.0
    assert limit.peak_in_flight == 1


def test_in_flight_limit_fixed_by_concurrency_ignores_answer_times():
    clock = _Clock()
    limit = InFlightLimit(5.0, 4, 32, clock=clock)
    for _ in range(10):
        _answer(limit, clock, 3.0)
    assert limit.limit == 4 and limit.ceiling == 4
    assert limit.limited_the_pace  # 5/s × 3 s needs 15 in flight
    call = limit.started()
    limit.ended(call, answered=False)  # a timeout is no answer time
    assert limit.answers == 10


async def test_in_flight_slot_waits_for_room():
    limit = InFlightLimit(5.0, 2, 32)
    held = 0
    most = 0
    release = asyncio.Event()

    async def call() -> None:
        nonlocal held, most
        async with limit.slot():
            held += 1
            most = max(most, held)
            await release.wait()
            held -= 1

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert held == 2  # the other three wait
    release.set()
    await asyncio.gather(*tasks)
    assert most == 2


# -- against the fake API: concurrency follows latency ------------------------------------


def _customers(tmp_path, n: int, name: str = "c.csv", prefix: str = "u"):
    rows = [{"email": f"{prefix}{i}@example.com", "customer_id": f"{prefix}{i}"} for i in range(n)]
    return write_csv(tmp_path / name, rows)


def test_concurrency_follows_the_api_latency_by_default(make_fake_api, tmp_path):
    server = make_fake_api(latency=0.3, seed=1)
    options = fast_options(server, rate=20.0, concurrency=None)
    report = import_file(_customers(tmp_path, 1_500), options)
    assert report.succeeded == 1_500 and report.requests == 30
    # 20/s answered in 0.2-0.4 s needs 6-8 calls in flight: more than the old fixed 4.
    assert server.state.peak_in_flight >= 6
    assert report.peak_in_flight >= server.state.peak_in_flight
    assert report.concurrency_ceiling == 32 and 6 <= report.concurrency <= 32
    assert 0.2 <= report.answer_time_s["p50"] <= 0.6
    assert not report.concurrency_limited


def test_fixed_concurrency_caps_calls_in_flight_and_says_it_limited_the_pace(
    make_fake_api, tmp_path, cli
):
    server = make_fake_api(latency=0.2, seed=1)
    report_path = tmp_path / "report.json"
    result = cli(
        "run", str(_customers(tmp_path, 500)), "--base-url", server.url, "--rate", "20",
        "--concurrency", "2", "--report", str(report_path), env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert server.state.peak_in_flight <= 2
    report = json.loads(report_path.read_text())
    assert report["concurrency"] == report["concurrency_ceiling"] == 2
    assert report["concurrency_limited"] is True
    assert "pace limited by the concurrency ceiling (2 in flight)" in result.stdout
    assert "raise --max-concurrency (or --concurrency)" in result.stdout


def test_max_concurrency_is_the_ceiling(make_fake_api, tmp_path):
    server = make_fake_api(latency=0.3, seed=1)
    options = fast_options(server, rate=50.0, concurrency=None, max_concurrency=3)
    report = import_file(_customers(tmp_path, 600), options)
    assert report.succeeded == 600
    assert server.state.peak_in_flight <= 3 and report.concurrency_ceiling == 3
    assert report.concurrency_limited  # 50/s × 0.3 s needs 15


# -- the shared pace, against a real Redis ---------------------------------------------------


def _shared(redis_server, rate: float, key: str = API_KEY, base: str = "http://127.0.0.1:1"):
    return SharedPace(redis_server.url, base, key, rate)


async def _starts(pace: SharedPace, n: int, clock, into: list[float]) -> None:
    for _ in range(n):
        await pace.wait_turn()
        into.append(clock())


async def test_shared_pace_spaces_the_starts_of_two_processes_evenly(redis_server):
    first, second = _shared(redis_server, 20.0, "key-even"), _shared(redis_server, 20.0, "key-even")
    await first.connect()
    await second.connect()
    clock = asyncio.get_running_loop().time
    starts: list[float] = []
    try:
        await asyncio.gather(_starts(first, 10, clock, starts), _starts(second, 10, clock, starts))
    finally:
        await first.close()
        await second.close()
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    # One start every 1/20 s for both together, not 20/s each.
    assert starts[-1] - starts[0] >= 19 / 20 * 0.9
    assert min(gaps) >= 0.5 / 20
    assert first.processes == second.processes == 2


async def test_shared_pace_429_in_one_process_slows_the_other(redis_server):
    first, second = _shared(redis_server, 40.0, "key-429"), _shared(redis_server, 40.0, "key-429")
    await first.connect()
    await second.connect()
    clock = asyncio.get_running_loop().time
    before: list[float] = []
    after: list[float] = []
    try:
        await _starts(second, 6, clock, before)
        await first.throttle()
        await first.throttle()  # within a second: counts once
        await _starts(second, 6, clock, after)
    finally:
        await first.close()
        await second.close()
    assert before[-1] - before[0] < 5 / 40 * 1.5
    # Halved to 20/s (climbing back slowly): five gaps take at least 5/20 s, less a little.
    assert after[-1] - after[0] >= 5 / 20 * 0.85
    assert after[-1] - after[0] < 5 / 10


async def test_shared_pace_names_the_account_by_a_hash_never_the_key(redis_server):
    secret = "sk-live-0123456789abcdef"
    pace = _shared(redis_server, 10.0, secret, "https://api.getblueshift.com")
    await pace.connect()
    try:
        await pace.wait_turn()
    finally:
        await pace.close()
    keys = [k.decode() for k in redis_server.client.keys("blueshift-import:*")]
    digest = hashlib.sha256(f"https://api.getblueshift.com\n{secret}".encode()).hexdigest()[:32]
    assert f"blueshift-import:{digest}:pace" in keys
    dump = json.dumps(
        {k: {f.decode(): v.decode() for f, v in redis_server.client.hgetall(k).items()}
         for k in keys if k.endswith(":pace")}
    )  # fmt: skip
    assert secret not in " ".join(keys) and secret not in dump


async def test_shared_pace_unreachable_redis_raises():
    pace = SharedPace(f"redis://127.0.0.1:{free_port()}/0", "http://x", "k", 5.0)
    with pytest.raises(SharedLimitUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        await pace.connect()


def test_redacted_hides_a_redis_password():
    assert redacted("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


# -- the shared limit in whole runs ------------------------------------------------------


def _arrivals_per_second(server) -> int:
    """The most requests that arrived at the fake API within any one second."""
    times = sorted(r.arrived for r in server.state.requests)
    most, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    return most


def test_three_runs_sharing_a_limit_keep_the_accounts_rate_together(
    make_fake_api, redis_server, tmp_path
):
    server = make_fake_api(rate=20.0, burst=2)
    reports = []

    def one(name: str) -> None:
        options = fast_options(
            server, rate=20.0, concurrency=None, shared_limit=redis_server.url, max_retries=20
        )
        reports.append(import_file(_customers(tmp_path, 1_000, f"{name}.csv", name), options))

    threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.succeeded for r in reports] == [1_000] * 3
    assert len(set(server.state.applied_ids())) == 3_000
    # Each alone would send 20/s: together 60/s, answered with 429s.
    assert server.state.status_counts()[429] <= 1
    assert _arrivals_per_second(server) <= 20 + 2
    assert 3 in {r.shared_processes for r in reports}
    assert all(
        r.shared_limit == redis_server.url and r.shared_limit_fallback is None for r in reports
    )


def test_redis_lost_mid_run_falls_back_to_a_share_and_loses_nothing(
    make_fake_api, make_redis, tmp_path, caplog
):
    redis = make_redis()
    server = make_fake_api(rate=20.0, burst=2, latency=0.05)
    reports = {}

    def observe(report) -> None:
        if report.succeeded >= 250 and redis.process.poll() is None:
            redis.stop()  # Redis goes away with the runs a quarter done

    def one(name: str) -> None:
        options = fast_options(
            server,
            rate=20.0,
            concurrency=None,
            shared_limit=redis.url,
            report_path=tmp_path / f"{name}.json",
        )
        path = _customers(tmp_path, 1_000, f"{name}.csv", name)
        reports[name] = import_file(path, options, observer=observe)

    with caplog.at_level(logging.WARNING, logger="importer"):
        threads = [threading.Thread(target=one, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [reports[n].succeeded for n in "ab"] == [1_000, 1_000]
    assert all(r.accounting_ok for r in reports.values())
    assert len(set(server.state.applied_ids())) == 2_000
    # Each goes on at half the rate: together still the account's 20/s, without 429s.
    assert server.state.status_counts()[429] <= 1
    for name, report in reports.items():
        fallback = report.shared_limit_fallback
        assert fallback is not None and "cannot reach Redis" in fallback
        assert "went on alone at 10 requests/s (1/2 of the rate" in fallback
        saved = json.loads((tmp_path / f"{name}.json").read_text())
        assert saved["shared_limit_fallback"] == fallback
    assert any("shared limit lost" in r.getMessage() for r in caplog.records)


def test_cli_redis_unreachable_at_start_exits_2_before_anything(cli, fake_api, tmp_path):
    report_path = tmp_path / "report.json"
    dead = tmp_path / "dead.jsonl"
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = cli(
        "run", str(_customers(tmp_path, 100)), "--base-url", fake_api.url,
        "--shared-limit", url, "--report", str(report_path), "--dead-letter", str(dead),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot reach Redis at {url} " + result.stderr.split(f"{url} ", 1)[1].strip()
    ]
    assert fake_api.state.requests == []
    assert not report_path.exists() and not dead.exists()
    assert not (tmp_path / "state").exists()


def test_cli_shared_limit_from_the_environment_and_the_summary(
    cli, fake_api, redis_server, tmp_path
):
    report_path = tmp_path / "report.json"
    result = cli(
        "run", str(_customers(tmp_path, 200)), "--base-url", fake_api.url, "--rate", "50",
        "--report", str(report_path),
        env={"BLUESHIFT_API_KEY": API_KEY, "BLUESHIFT_SHARED_LIMIT": redis_server.url},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["shared_limit"] == redis_server.url and report["shared_processes"] == 1
    assert f"shared limit     {redis_server.url}, 1 process(es) sharing it" in result.stdout


def test_cli_shared_limit_must_be_a_redis_url(cli, tmp_path):
    result = cli(
        "run", str(_customers(tmp_path, 10)), "--shared-limit", "http://127.0.0.1:6379",
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--shared-limit must be a Redis URL" in result.stderr


def test_cli_mock_latency_and_shared_limit_from_the_config_file(cli, redis_server, tmp_path):
    config = tmp_path / "import.toml"
    config.write_text(f'shared-limit = "{redis_server.url}"\nrate = 50\n')
    report_path = tmp_path / "report.json"
    result = cli(
        "run", str(_customers(tmp_path, 150)), "--mock", "--mock-latency", "0.1",
        "--config", str(config), "--report", str(report_path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["shared_limit"] == redis_server.url and report["succeeded"] == 150
    assert report["answer_time_s"]["p50"] >= 0.06  # 0.1 s less a third
