"""Pace benchmark: at the cap whatever the API's latency, and one cap shared by several jobs.

Three scenarios, each against the embedded fake API (in a thread of this
process, so every request's arrival time is known) capped at ``--rate``
calls/s with a bucket of ``--burst``, and importers started as separate
processes (``python -m importer run``) with the default pace flags:

    python -m benchmarks.bench_pace latency      # one import per latency, 300 calls each
    python -m benchmarks.bench_pace shared       # three imports with --shared-limit at once
    python -m benchmarks.bench_pace redis-stop   # the same, Redis stopped mid-run

The achieved pace is the fake API's: 2xx calls after the first, over the time
from the first 2xx call's arrival to the last's. Calls, 429s and the
concurrency figures come from the fake API and the importers' JSON reports;
"every customer delivered" compares each file's (customer_id, email) pairs
with what the fake API applied. Each scenario ends with PASS/FAIL lines.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.datagen import write_file  # noqa: E402
from benchmarks.redis_server import RedisServer  # noqa: E402
from benchmarks.run import API_KEY, BATCH  # noqa: E402
from importer.fake_api import FakeApiConfig, FakeApiServer  # noqa: E402

#: Targets from the issue: the pace reached at every latency, and by jobs sharing a cap.
LATENCY_FLOOR = 0.98
SHARED_FLOOR = 0.97
MAX_SHARED_429_SHARE = 0.01


@contextmanager
def fake_api(rate: float, burst: int, latency: float, seed: int) -> Iterator[FakeApiServer]:
    config = FakeApiConfig(api_key=API_KEY, rate=rate, burst=burst, latency=latency, seed=seed)
    with FakeApiServer(config) as server:
        yield server


def customers_file(workdir: Path, rows: int, seed: int) -> Path:
    """A file of ``rows`` valid customers (one call per 50)."""
    return write_file(workdir / f"customers-{rows}-s{seed}.csv", rows, seed, invalid_every=0)


def expected_pairs(path: Path) -> Counter[tuple[str, str]]:
    """The (customer_id, email) of every row, as cleaning sends them."""
    with open(path, newline="", encoding="utf-8") as f:
        return Counter((row[0], row[1].strip().lower()) for row in list(csv.reader(f))[1:])


def start_import(path: Path, url: str, workdir: Path, name: str, *extra: str) -> subprocess.Popen:
    """``python -m importer run`` on ``path`` with the default pace flags and a fresh state."""
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY}
    command = [sys.executable, "-m", "importer", "run", str(path), "--base-url", url]
    command += ["--report", str(workdir / f"{name}.json"), "--overwrite", "--quiet"]
    command += ["--status-every", "0", "--state", str(workdir / f"{name}-state.sqlite"), *extra]
    with open(workdir / f"{name}.log", "wb") as log:  # the child keeps its own copy
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, workdir: Path, name: str) -> dict[str, Any]:
    """Wait for an import; its report, with ``exit_code`` added."""
    code = process.wait()
    path = workdir / f"{name}.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    if code != 0 or not report:
        sys.stderr.write((workdir / f"{name}.log").read_text(errors="replace")[-3000:])
    return {**report, "exit_code": code}


def pace(server: FakeApiServer) -> tuple[float, int, int]:
    """The achieved rate of 2xx calls, the calls and the 429s the fake API answered."""
    requests = list(server.state.requests)
    arrivals = sorted(r.arrived for r in requests if 200 <= r.status < 300)
    throttled = sum(1 for r in requests if r.status == 429)
    achieved = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
    return achieved, len(requests), throttled


def delivered(server: FakeApiServer, files: list[Path]) -> tuple[bool, int, int]:
    """Whether every customer of ``files`` was applied; expected and applied counts."""
    applied = Counter(
        (str(c.get("customer_id")), str(c.get("email"))) for c in server.state.applied
    )
    expected = sum((expected_pairs(path) for path in files), Counter())
    return expected <= applied, expected.total(), applied.total()


def verdict(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def run_latency(args: argparse.Namespace, workdir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Default flags at each latency: the pace reached and no 429."""
    path = customers_file(workdir, args.calls * BATCH, args.seed)
    rows, lines = [], []
    for latency in args.latencies:
        print(f"latency {latency:g} s ...", file=sys.stderr, flush=True)
        with fake_api(args.rate, args.burst, latency, args.seed) as server:
            process = start_import(path, server.url, workdir, "latency", *args.importer_arg)
            report = finish(process, workdir, "latency")
            achieved, calls, throttled = pace(server)
            all_there, expected, _ = delivered(server, [path])
            peak = server.state.peak_in_flight
        times = report.get("answer_time_s", {})
        rows.append(
            {
                "latency_s": latency,
                "calls": calls,
                "achieved": round(achieved, 3),
                "ratio": round(achieved / args.rate, 3),
                "429": throttled,
                "peak_in_flight": peak,
                "concurrency_end": report.get("concurrency"),
                "p50_s": times.get("p50"),
                "p90_s": times.get("p90"),
                "limited": report.get("concurrency_limited"),
                "delivered": all_there and report.get("succeeded") == expected,
                "wall_s": report.get("duration_s"),
            }
        )
        ok = achieved >= LATENCY_FLOOR * args.rate and throttled == 0 and rows[-1]["delivered"]
        lines.append(
            verdict(
                ok,
                f"latency {latency:g} s: {achieved:.3f}/s of {args.rate:g}/s "
                f"({achieved / args.rate:.1%}, target ≥ {LATENCY_FLOOR:.0%}), {throttled} × 429, "
                f"at most {peak} in flight, every customer delivered: {rows[-1]['delivered']}",
            )
        )
    return rows, lines


def run_shared(
    args: argparse.Namespace, workdir: Path, stop_redis_after: float | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """``--processes`` imports sharing one limit; with ``stop_redis_after``, Redis stops then."""
    files = [customers_file(workdir, args.rows, args.seed + i) for i in range(args.processes)]
    redis = RedisServer(workdir)
    try:
        with fake_api(args.rate, args.burst, args.latency, args.seed) as server:
            started = time.monotonic()
            processes = [
                start_import(path, server.url, workdir, f"job{i}", "--shared-limit", redis.url)
                for i, path in enumerate(files)
            ]
            stopped_at = None
            if stop_redis_after is not None:
                while time.monotonic() - started < stop_redis_after:
                    time.sleep(0.1)
                redis.stop()
                stopped_at = len(server.state.requests)
                print(f"Redis stopped after {stopped_at} calls", file=sys.stderr, flush=True)
            reports = [finish(p, workdir, f"job{i}") for i, p in enumerate(processes)]
            achieved, calls, throttled = pace(server)
            all_there, expected, applied = delivered(server, files)
            throttled_after = 0
            if stopped_at is not None:
                throttled_after = sum(
                    1 for r in server.state.requests[stopped_at:] if r.status == 429
                )
    finally:
        redis.stop()
    rows = [
        {
            "job": i,
            "exit_code": r["exit_code"],
            "succeeded": r.get("succeeded"),
            "dead_lettered": r.get("dead_lettered"),
            "requests": r.get("requests"),
            "429": r.get("status_counts", {}).get("429", 0),
            "shared_processes": r.get("shared_processes"),
            "fallback": r.get("shared_limit_fallback"),
            "wall_s": r.get("duration_s"),
        }
        for i, r in enumerate(reports)
    ]
    finished = all(r["exit_code"] == 0 for r in rows)
    lines = [
        verdict(
            all_there and finished and sum(r["succeeded"] or 0 for r in rows) == expected,
            f"delivered: {expected} customers in {len(files)} files, {applied} applied, "
            f"every import exited 0: {finished}",
        )
    ]
    if stop_redis_after is None:
        lines.append(
            verdict(
                achieved >= SHARED_FLOOR * args.rate,
                f"together: {achieved:.3f}/s of {args.rate:g}/s ({achieved / args.rate:.1%}, "
                f"target ≥ {SHARED_FLOOR:.0%})",
            )
        )
        lines.append(
            verdict(
                throttled <= MAX_SHARED_429_SHARE * calls,
                f"429s: {throttled} of {calls} calls ({throttled / calls:.2%}, target ≤ 1 %)",
            )
        )
    else:
        reported = all(r["fallback"] for r in rows)
        lines.append(
            verdict(
                reported,
                f"fallback reported by every import: {reported}; {throttled_after} × 429 after "
                f"Redis stopped, {throttled} in all, {achieved:.3f}/s overall",
            )
        )
    return rows, lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=["latency", "shared", "redis-stop"])
    parser.add_argument("--rate", type=float, default=5.0, help="The fake API's cap, calls/s.")
    parser.add_argument("--burst", type=int, default=2, help="The fake API's bucket size.")
    parser.add_argument(
        "--latencies",
        type=float,
        nargs="+",
        default=[0.05, 0.5, 1.0, 2.0, 3.0],
        help="latency: the fake API's mean answer times (±1/3), one import each.",
    )
    parser.add_argument("--calls", type=int, default=300, help="latency: calls per import.")
    parser.add_argument("--processes", type=int, default=3, help="shared: imports at once.")
    parser.add_argument("--rows", type=int, default=5_000, help="shared: rows per import.")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="shared: the fake API's answer time."
    )
    parser.add_argument(
        "--stop-after", type=float, default=12.0, help="redis-stop: seconds before Redis stops."
    )
    parser.add_argument(
        "--importer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="latency: extra argument for 'importer run' (repeatable), e.g. --importer-arg=-v.",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="Also write the figures here as JSON.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run one scenario; print a JSON line per measurement and the verdicts; return them."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="blueshift-pace-") as tmp:
        workdir = Path(tmp)
        if args.scenario == "latency":
            rows, lines = run_latency(args, workdir)
        else:
            stop = args.stop_after if args.scenario == "redis-stop" else None
            rows, lines = run_shared(args, workdir, stop)
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    print()
    for line in lines:
        print(line)
    results = {"scenario": args.scenario, "rows": rows, "verdicts": lines}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


if __name__ == "__main__":
    main()
