"""Benchmark: the importer against a hand-written script, on the same data and fake API.

Generates a seeded customer file (cached under ``benchmarks/data/``), starts
the fake API in its own process (``python -m importer fake-api``), runs the
importer (``python -m importer run``) and the baseline
(``benchmarks/baseline.py``) as subprocesses, and prints one table.

CPU time and peak RSS are those of the client process alone, taken from
``os.wait4`` on its pid. The fake API appends every applied customer to a
``--record`` file that a thread here watches: the first byte gives the time
to first request (from the client's start), and the time the file stops
growing gives the steady-state request rate. Counts of calls and 429s come
from the importer's JSON report and the baseline's summary line, so the
benchmark relies on nothing but the command line and the report.

Modes::

    python benchmarks/run.py --rows 15000 --rate 5        # pacing against a fake capped at 5/s
    python benchmarks/run.py --rows 1000000 --uncapped    # CPU and throughput
    python benchmarks/run.py --rows 5000000 --dry-run     # memory (also runs rows/10 for the ratio)
    python benchmarks/run.py --rows 5000000 --first-request   # time to first request, then stop

``--repeat N`` takes the median of N runs; ``--no-baseline`` skips the script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.datagen import write_file  # noqa: E402

API_KEY = "bench-key"
BATCH = 50
#: Rate passed to the importer in ``--uncapped`` mode: far above what one process can reach.
UNCAPPED_RATE = 1_000_000.0
#: Targets: pace at the cap, flat memory, a quick first request, and a dry run
#: (what ``validate`` does) fast enough that checking a file is never the wait.
PACING_FLOOR = 0.98
MAX_RSS_MB = 300.0
MAX_RSS_RATIO = 1.2
#: Rows per wall-clock second of a dry run, start-up included.
MIN_DRY_RUN_ROWS_PER_S = 50_000.0
#: Seconds from start to the first request on a 5M-row file, as measured before the
#: readers and rules were simplified (see benchmarks/README.md).
MAX_FIRST_REQUEST_S = 1.5


@dataclass
class Measurement:
    """One client run, as the benchmark observed it."""

    client: str
    rows: int
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    calls: int = 0
    sent: int = 0
    ok_calls: int = 0
    throttled: int = 0
    retries: int = 0
    splits: int = 0
    first_request_s: float | None = None
    steady_rate: float | None = None
    status_counts: dict[str, int] = field(default_factory=dict)

    @property
    def cpu_per_million(self) -> float:
        return self.cpu_s / self.rows * 1e6 if self.rows else 0.0

    @property
    def expected_calls(self) -> int:
        return math.ceil(self.sent / BATCH)


# -- data and processes -----------------------------------------------------------------------


def ensure_data(rows: int, seed: int, invalid_every: int, data_dir: Path, suffix: str) -> Path:
    """The generated file for these parameters, written once and reused."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"customers-{rows}-s{seed}-i{invalid_every}{suffix}"
    if not path.exists():
        print(f"generating {path} ({rows} rows)...", file=sys.stderr, flush=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        write_file(tmp, rows, seed, invalid_every)
        tmp.replace(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fake_api(record: Path, rate: float | None, burst: int) -> Iterator[str]:
    """Run ``python -m importer fake-api`` in its own process; yield its base URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "importer", "fake-api", "--port", str(port)]
    cmd += ["--api-key", API_KEY, "--record", str(record)]
    if rate is not None:
        cmd += ["--rate", str(rate), "--burst", str(burst)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"the fake API exited ({proc.returncode}): {err}")
            if time.monotonic() > deadline:
                raise RuntimeError("the fake API did not start within 20 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


class RecordWatcher(threading.Thread):
    """Polls the fake API's record file: when the first customer landed, when the last did."""

    def __init__(self, path: Path, interval: float = 0.005):
        super().__init__(name="record-watcher", daemon=True)
        self.path = path
        self.interval = interval
        self.first: float | None = None
        self.last: float | None = None
        self.size = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            time.sleep(self.interval)

    def poll(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return
        if size > self.size:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            self.last = now
            self.size = size

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.poll()


def run_client(
    cmd: list[str],
    env: dict[str, str],
    workdir: Path,
    watcher: RecordWatcher | None = None,
    stop_at_first_request: bool = False,
) -> tuple[int, float, float, float, float | None, str]:
    """Run one client; return exit code, wall s, CPU s, peak RSS MB, first request s, stdout.

    CPU and RSS come from ``os.wait4`` on the client's own pid, so the fake
    API (another child of this process) is never counted.
    """
    out_path = workdir / "client.out"
    err_path = workdir / "client.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.monotonic()
        # In ``workdir``, so files a run writes beside itself (a default rejects file) land
        # there; PYTHONPATH keeps this tree's package importable from it.
        env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        }
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=err)
        if stop_at_first_request and watcher is not None:
            while watcher.first is None and proc.poll() is None:
                time.sleep(0.002)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    first = None
    if watcher is not None and watcher.first is not None:
        first = watcher.first - start
    cpu = usage.ru_utime + usage.ru_stime
    rss_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    code = proc.returncode
    if code not in (0, 1) and not stop_at_first_request:
        sys.stderr.write(err_path.read_text(errors="replace")[-3000:])
        raise RuntimeError(f"{cmd[1:4]} exited with {code}")
    return code, wall, cpu, rss_mb, first, out_path.read_text(errors="replace")


# -- one measurement per client ---------------------------------------------------------------


def measure(
    client: str, data: Path, args: argparse.Namespace, workdir: Path, dry_run: bool
) -> Measurement:
    """Run ``client`` (``importer`` or ``baseline``) once against a fresh fake API."""
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
    for key in ("BLUESHIFT_BASE_URL", "BLUESHIFT_REGION"):
        env.pop(key, None)
    record = workdir / "record.jsonl"
    record.unlink(missing_ok=True)
    report_path = workdir / "report.json"
    report_path.unlink(missing_ok=True)
    fake_rate = args.rate if args.mode in ("rate", "first-request") else None
    with contextlib.ExitStack() as stack:
        url = "http://127.0.0.1:9"  # never contacted in a dry run
        if not dry_run:
            url = stack.enter_context(fake_api(record, fake_rate, args.burst))
        if client == "importer":
            rate = UNCAPPED_RATE if args.mode == "uncapped" else args.rate
            cmd = [sys.executable, "-m", "importer", "run", str(data), "--base-url", url]
            cmd += ["--concurrency", str(args.concurrency)] if args.concurrency else []
            cmd += ["--rate", str(rate)] if rate is not None else []
            cmd += ["--report", str(report_path), "--overwrite", "--max-error-rate", "1"]
            cmd += ["--dry-run"] if dry_run else []
            if "--no-state" not in args.importer_arg:
                # A fresh state per run: every run imports the whole file, none skips rows.
                state = workdir / "state" / "state.sqlite"
                shutil.rmtree(state.parent, ignore_errors=True)
                cmd += ["--state", str(state)]
            cmd += args.importer_arg
        else:
            cmd = [sys.executable, str(HERE / "baseline.py"), str(data), "--base-url", url]
            cmd += ["--dry-run"] if dry_run else []
        watcher = None if dry_run else RecordWatcher(record)
        if watcher is not None:
            watcher.start()
        try:
            code, wall, cpu, rss, first, stdout = run_client(
                cmd, env, workdir, watcher, stop_at_first_request=args.mode == "first-request"
            )
        finally:
            if watcher is not None:
                watcher.stop()
    m = Measurement(client, 0, code, wall, cpu, rss, first_request_s=first)
    if client == "importer":
        if report_path.exists():
            report = json.loads(report_path.read_text())
            m.rows = report["rows_read"]
            m.calls = report["requests"]
            m.sent = report["succeeded"] + report["dead_lettered"]
            if dry_run:
                m.sent = report["not_sent"]  # every clean customer, none sent
            m.retries, m.splits = report["retries"], report["splits"]
            m.status_counts = report["status_counts"]
    else:
        summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
        m.rows = summary.get("rows", 0)
        m.calls = summary.get("calls", 0)
        m.sent = summary.get("sent", 0)
        m.status_counts = summary.get("status_counts", {})
    m.ok_calls = sum(v for k, v in m.status_counts.items() if k.startswith("2"))
    m.throttled = m.status_counts.get("429", 0)
    if watcher is not None and watcher.first is not None and watcher.last is not None:
        span = watcher.last - watcher.first
        if m.ok_calls > 1 and span > 0:
            m.steady_rate = (m.ok_calls - 1) / span
    if m.rows == 0:
        m.rows = args.rows
    return m


def median_of(runs: list[Measurement]) -> Measurement:
    """A measurement whose numeric fields are the medians of ``runs``."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    values: dict[str, Any] = {}
    for name in Measurement.__dataclass_fields__:
        items = [getattr(r, name) for r in runs]
        if isinstance(items[0], bool) or not isinstance(items[0], int | float):
            numeric = [x for x in items if isinstance(x, int | float)]
            values[name] = statistics.median(numeric) if numeric else getattr(first, name)
        else:
            values[name] = statistics.median(items)
            if isinstance(items[0], int):
                values[name] = int(values[name])
    return Measurement(**values)


# -- output -----------------------------------------------------------------------------------


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _ratio(base: float | int | None, ours: float | int | None) -> str:
    if base is None or ours is None or not ours:
        return "–"
    return f"{base / ours:,.2f}×"


def render_table(args: argparse.Namespace, ours: Measurement, base: Measurement | None) -> str:
    """The results as a Markdown table: importer, baseline and baseline ÷ importer."""
    target = "dry run"
    if args.mode in ("rate", "first-request"):
        target = f"{args.rate:g}/s"
    elif args.mode == "uncapped":
        target = "uncapped"
    rows: list[tuple[str, Any, Any, int]] = [
        ("rows read", ours.rows, base and base.rows, 0),
        ("wall s", ours.wall_s, base and base.wall_s, 2),
        ("CPU s (user+sys)", ours.cpu_s, base and base.cpu_s, 2),
        ("CPU s per 1M rows", ours.cpu_per_million, base and base.cpu_per_million, 2),
        ("peak RSS MB", ours.peak_rss_mb, base and base.peak_rss_mb, 1),
        ("calls", ours.calls, base and base.calls, 0),
        ("customers sent", ours.sent, base and base.sent, 0),
    ]
    if args.mode != "dry-run":
        rows += [
            (f"achieved rate / target ({target})", ours.steady_rate, base and base.steady_rate, 2),
            ("429 answers", ours.throttled, base and base.throttled, 0),
            ("time to first request s", ours.first_request_s, base and base.first_request_s, 3),
        ]
    lines = [
        "| metric | importer | baseline | baseline ÷ importer |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, a, b, digits in rows:
        ratio = _ratio(b, a) if name != "rows read" else ""
        lines.append(f"| {name} | {_fmt(a, digits)} | {_fmt(b, digits)} | {ratio} |")
    return "\n".join(lines)


def verdicts(args: argparse.Namespace, ours: Measurement, small: Measurement | None) -> list[str]:
    """One line per target of the performance issue that this mode measures."""
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"{'PASS' if ok else 'FAIL'}  {text}")

    if args.mode == "rate" and ours.steady_rate is not None:
        ok = ours.steady_rate >= PACING_FLOOR * args.rate and ours.throttled == 0
        line(
            ok,
            f"pacing: {ours.steady_rate:.3f}/s achieved of {args.rate:g}/s "
            f"({ours.steady_rate / args.rate:.1%}, target ≥ {PACING_FLOOR:.0%}), "
            f"{ours.throttled} × 429 (target 0)",
        )
    if args.mode != "first-request":
        extra = ours.calls - ours.expected_calls
        allowed = ours.retries + 2 * ours.splits
        line(
            0 <= extra <= allowed,
            f"packing: {ours.calls} calls for {ours.sent} customers = ceil(sent/50) "
            f"{ours.expected_calls} + {extra} (retries {ours.retries}, splits {ours.splits})",
        )
    if args.mode == "dry-run":
        speed = ours.rows / ours.wall_s if ours.wall_s else 0.0
        line(
            speed >= MIN_DRY_RUN_ROWS_PER_S,
            f"dry run: {speed:,.0f} rows/s over {ours.rows:,} rows, start-up included "
            f"(target ≥ {MIN_DRY_RUN_ROWS_PER_S:,.0f})",
        )
        line(
            ours.peak_rss_mb <= MAX_RSS_MB,
            f"memory: peak RSS {ours.peak_rss_mb:.1f} MB at {ours.rows:,} rows "
            f"(target ≤ {MAX_RSS_MB:g} MB)",
        )
        if small is not None:
            ratio = ours.peak_rss_mb / small.peak_rss_mb
            line(
                ratio <= MAX_RSS_RATIO,
                f"memory: peak RSS {ours.rows:,} / {small.rows:,} rows = "
                f"{ours.peak_rss_mb:.1f} / {small.peak_rss_mb:.1f} MB = {ratio:.2f} "
                f"(target ≤ {MAX_RSS_RATIO:g})",
            )
    if ours.first_request_s is not None:
        line(
            ours.first_request_s < MAX_FIRST_REQUEST_S,
            f"first request: {ours.first_request_s:.3f} s after start, {args.rows:,}-row file "
            f"(target < {MAX_FIRST_REQUEST_S:g} s)",
        )
    return out


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=20_000, help="Rows in the generated file.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, help="Pacing: cap the fake API and the importer at R.")
    mode.add_argument("--uncapped", action="store_true", help="CPU and throughput (the default).")
    mode.add_argument("--dry-run", action="store_true", help="Memory: read, clean, batch only.")
    mode.add_argument(
        "--first-request",
        action="store_true",
        help="Time to first request (at 5/s), then stop the client.",
    )
    parser.add_argument("--burst", type=int, default=1, help="The fake API's burst (--rate).")
    parser.add_argument(
        "--concurrency", type=int, help="Importer --concurrency (default: the importer's own)."
    )
    parser.add_argument("--repeat", type=int, default=1, help="Runs per client; medians shown.")
    parser.add_argument(
        "--compare-rows",
        type=int,
        help="Dry run: also run this many rows for the RSS ratio (default rows/10).",
    )
    parser.add_argument("--no-baseline", action="store_true", help="Run the importer only.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--invalid-every",
        type=int,
        default=97,
        help="Every k-th row lacks identifiers, every (k+3)-th has a bad email (0: none).",
    )
    parser.add_argument(
        "--suffix",
        default=".csv",
        choices=[".csv", ".csv.gz", ".jsonl", ".jsonl.gz"],
        help="Input file type.",
    )
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    parser.add_argument(
        "--importer-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="Extra argument for 'importer run' (repeatable), e.g. --importer-arg=-v.",
    )
    parser.add_argument("--json", type=Path, help="Also write the measurements here as JSON.")
    args = parser.parse_args(argv)
    if args.rate is not None:
        args.mode = "rate"
    elif args.dry_run:
        args.mode = "dry-run"
    elif args.first_request:
        args.mode = "first-request"
        args.rate = 5.0
    else:
        args.mode = "uncapped"
    if args.rows < 1 or args.repeat < 1:
        parser.error("--rows and --repeat must be at least 1")
    return args


def run_benchmark(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print and return the measurements (importer, baseline, small)."""
    args = parse_args(argv)
    dry = args.mode == "dry-run"
    data = ensure_data(args.rows, args.seed, args.invalid_every, args.data_dir, args.suffix)
    results: dict[str, Any] = {"mode": args.mode, "argv": argv if argv is not None else sys.argv}
    with tempfile.TemporaryDirectory(prefix="blueshift-bench-") as tmp:
        workdir = Path(tmp)
        clients = ["importer"] if args.no_baseline else ["importer", "baseline"]
        medians: dict[str, Measurement] = {}
        for client in clients:
            runs = []
            for i in range(args.repeat):
                print(f"{client} run {i + 1}/{args.repeat}...", file=sys.stderr, flush=True)
                runs.append(measure(client, data, args, workdir, dry))
            medians[client] = median_of(runs)
        small = None
        compare = args.compare_rows or (args.rows // 10 if args.rows >= 100_000 else None)
        if dry and compare:
            small_data = ensure_data(
                compare, args.seed, args.invalid_every, args.data_dir, args.suffix
            )
            runs = []
            for i in range(args.repeat):
                print(f"importer {compare} rows run {i + 1}...", file=sys.stderr, flush=True)
                runs.append(measure("importer", small_data, args, workdir, dry))
            small = median_of(runs)
    ours, base = medians["importer"], medians.get("baseline")
    print(render_table(args, ours, base))
    print()
    for verdict in verdicts(args, ours, small):
        print(verdict)
    results.update(
        importer=ours.__dict__,
        baseline=base.__dict__ if base else None,
        small=small.__dict__ if small else None,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    run_benchmark()


if __name__ == "__main__":
    main()
