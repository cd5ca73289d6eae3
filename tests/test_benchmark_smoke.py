"""A small run of ``benchmarks/run.py`` so the benchmark keeps working. No timing assertions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.run import run_benchmark

ROWS = 2000
INVALID_EVERY = 97


def test_benchmark_uncapped_runs_both_clients_against_the_fake_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    results = run_benchmark(
        ["--rows", str(ROWS), "--uncapped", "--data-dir", str(tmp_path), "--json", str(out)]
    )
    ours, base = results["importer"], results["baseline"]
    # datagen: every k-th row has no identifier (rejected before anything is sent);
    # every (k+3)-th a malformed email, dropped while its customer_id still delivers it.
    invalid = sum(1 for i in range(1, ROWS + 1) if i % INVALID_EVERY == 0)
    assert ours["rows"] == base["rows"] == ROWS
    assert ours["sent"] == ROWS - invalid
    assert ours["calls"] == math.ceil(ours["sent"] / 50)
    assert ours["status_counts"] == {"200": ours["calls"]}
    assert ours["first_request_s"] is not None and ours["cpu_s"] > 0
    assert ours["peak_rss_mb"] > 0
    # The hand-written script sends every row, identifiers or not, 50 at a time.
    assert base["calls"] == math.ceil(ROWS / 50)
    assert base["status_counts"] == {"200": base["calls"]}
    table = capsys.readouterr().out
    assert f"| calls | {ours['calls']} | {base['calls']} |" in table
    assert "PASS  packing" in table
    assert json.loads(out.read_text())["mode"] == "uncapped"


def test_benchmark_dry_run_measures_the_importer_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run_benchmark(
        [
            "--rows",
            str(ROWS),
            "--dry-run",
            "--no-baseline",
            "--compare-rows",
            "500",
            "--data-dir",
            str(tmp_path),
        ]
    )
    ours, small = results["importer"], results["small"]
    assert results["baseline"] is None
    assert ours["rows"] == ROWS and small["rows"] == 500
    assert ours["calls"] == math.ceil(ours["sent"] / 50)
    assert ours["first_request_s"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "customers-2000-s7-i97.csv",
        "customers-500-s7-i97.csv",
    ]
    table = capsys.readouterr().out
    assert "memory: peak RSS 2,000 / 500 rows" in table


def test_http_floor_benchmark_posts_every_call(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.bench_http_floor import main

    # main() checks the fake API's record file holds calls × 50 customers.
    per_call = main(["--calls", "20", "--repeat", "1"])
    assert per_call > 0
    assert "20 calls of 50 customers" in capsys.readouterr().out


@pytest.mark.parametrize("stream", [False, True])
def test_cleaning_benchmark_accounts_for_every_row(
    capsys: pytest.CaptureFixture[str], stream: bool
) -> None:
    from benchmarks.bench_cleaning import main

    args = ["--rows", str(ROWS), "--repeat", "1", "--chunk-rows", "500"]
    stats = main([*args, "--stream"] if stream else args)
    assert stats["rows"] == ROWS
    assert stats["customers"] + stats["rejects"] + stats["merged"] == ROWS
    assert stats["packed"] == stats["customers"] > 0
    # Every standard field the file can carry, and two custom attributes.
    assert set(stats["fields"]) >= {
        "email",
        "customer_id",
        "phone_number",
        "firstname",
        "lastname",
        "gender",
        "joined_at",
        "unsubscribed",
        "subscription_groups",
        "loyalty_points",
        "city",
    }
    out = capsys.readouterr().out
    assert "rows/s" in out and "cleaning + packing" in out
    assert ("reading (before cleaning)" in out) is not stream


def test_pace_benchmark_shares_one_limit_between_imports(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks.bench_pace import main

    # Two imports of 4 calls each at the default 5/s, sharing one limit: no timing targets
    # are asserted here, only that both ran, shared it and delivered everything.
    results = main(["shared", "--processes", "2", "--rows", "200", "--latency", "0.05"])
    rows = results["rows"]
    assert [(r["exit_code"], r["succeeded"], r["requests"]) for r in rows] == [(0, 200, 4)] * 2
    assert {r["shared_processes"] for r in rows} <= {1, 2} and rows[0]["fallback"] is None
    assert results["verdicts"][0].startswith("PASS  delivered: 400 customers in 2 files")
    assert "PASS  delivered" in capsys.readouterr().out


def test_state_size_benchmark_meets_its_goals_on_a_small_state(tmp_path: Path) -> None:
    from benchmarks.state_size import measure

    n = 20_000
    nights = measure(n, tmp_path)
    assert [r["sent"] for r in nights] == [n, n // 10]  # night 2: one in ten changed
    for r in nights:
        assert r["at_rest"] / n <= 64 and r["peak"] / n <= 96, r
    assert b"example.com" not in (tmp_path / "state.sqlite").read_bytes()
