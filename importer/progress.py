"""What the command shows while a run goes and when it ends.

Owns: the live display on a terminal (rich), the periodic one-line status
for logs and cron mail (plain text or JSON, no control characters), the
estimates behind both (current request rate, ETA from bytes read), and the
end-of-run summary's lines.

This is the command line's helper: the library never imports it and never
prints. Everything here reads an :class:`~importer.outcomes.ImportReport`
that the pipeline hands to its ``observer``; it changes nothing in it.

Must not: decide exit codes or touch the pipeline's state.
"""

from __future__ import annotations

import shlex
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import orjson

from .outcomes import ImportReport

#: Seconds of history behind the "current rate" figure.
RATE_WINDOW_S = 10.0
#: How many rejection / dead-letter reasons the summary lists.
TOP_REASONS = 5


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def customers_sent(report: ImportReport) -> int:
    """Customers that went through the API, delivered or not."""
    return report.succeeded + report.dead_lettered


@dataclass(frozen=True)
class Estimate:
    """A snapshot of how far a run is: figures for the display and the status line."""

    elapsed: float
    request_rate: float
    fraction: float | None
    eta: float | None


class RunMeter:
    """Turns successive looks at the live report into a current rate and an ETA.

    The ETA comes from the file's size: ``rows_read`` grows with
    ``bytes_read``, so the total row count is projected as
    ``rows_read × bytes_total / bytes_read`` (no need to count rows first),
    and the remaining rows are divided by the rows finished per second so far.
    Without a size (stdin) there is no ETA.
    """

    def __init__(self, started: float | None = None, window: float = RATE_WINDOW_S):
        self.started = time.monotonic() if started is None else started
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def estimate(self, report: ImportReport | None, now: float | None = None) -> Estimate:
        now = time.monotonic() if now is None else now
        elapsed = max(0.0, now - self.started)
        if report is None:
            return Estimate(elapsed, 0.0, None, None)
        self._samples.append((now, report.requests))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        rate = (r1 - r0) / (t1 - t0) if t1 > t0 else 0.0
        fraction = eta = None
        done = report.accounted
        if report.bytes_total and report.bytes_read and report.rows_read:
            total_rows = report.rows_read * report.bytes_total / report.bytes_read
            fraction = min(1.0, done / total_rows) if total_rows else 1.0
            if done and elapsed > 0:
                eta = max(0.0, total_rows - done) / (done / elapsed)
        return Estimate(elapsed, rate, fraction, eta)


def status_fields(report: ImportReport | None, est: Estimate) -> dict[str, Any]:
    """The figures of one status line, as a dict (the JSON status line's content)."""
    data: dict[str, Any] = {
        "event": "status",
        "elapsed_s": round(est.elapsed, 1),
    }
    if report is None:
        data["state"] = "starting"
        return data
    data.update(
        rows_read=report.rows_read,
        sent=customers_sent(report),
        succeeded=report.succeeded,
        rejected=report.rejected,
        dead_lettered=report.dead_lettered,
        retries=report.retries,
        requests=report.requests,
        rate=round(est.request_rate, 2),
        rate_limit=report.rate_limit,
    )
    if est.fraction is not None:
        data["percent"] = round(100 * est.fraction, 1)
    if est.eta is not None:
        data["eta_s"] = round(est.eta)
    return data


def format_status(report: ImportReport | None, est: Estimate) -> str:
    """One plain line for logs: counts, rate against the cap, elapsed and ETA."""
    if report is None:
        return f"status: starting, elapsed {format_duration(est.elapsed)}"
    parts = [
        f"read {report.rows_read}",
        f"sent {customers_sent(report)}",
        f"ok {report.succeeded}",
        f"rejected {report.rejected}",
        f"dead {report.dead_lettered}",
        f"retries {report.retries}",
        f"rate {est.request_rate:.1f}/{report.rate_limit:g} req/s",
        f"elapsed {format_duration(est.elapsed)}",
    ]
    if est.fraction is not None:
        parts.append(f"{100 * est.fraction:.0f}%")
    if est.eta is not None:
        parts.append(f"eta {format_duration(est.eta)}")
    return "status: " + ", ".join(parts)


class Progress:
    """Shows a run's progress; used as a context manager, fed through :meth:`observe`.

    The base class shows nothing (``--status-every 0`` with ``--quiet``).
    """

    def __init__(self) -> None:
        self.report: ImportReport | None = None
        self.meter = RunMeter()

    def observe(self, report: ImportReport) -> None:
        """The pipeline's observer: remember the live report (called after each batch)."""
        self.report = report

    def start(self) -> None:
        """Begin showing progress."""

    def close(self) -> None:
        """Stop showing progress; the terminal is left clean for the summary."""

    def __enter__(self) -> Progress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StatusLines(Progress):
    """A status line every ``every`` seconds on ``stream``: plain text or JSON.

    A timer thread writes the lines, so they keep coming while the API makes
    the run wait (retries, backoff) and no batch completes.
    """

    def __init__(self, every: float, stream: IO[str] | None = None, as_json: bool = False):
        super().__init__()
        self.every = every
        self.stream = stream
        self.as_json = as_json
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines_written = 0

    def line(self, now: float | None = None) -> str:
        est = self.meter.estimate(self.report, now)
        if self.as_json:
            return orjson.dumps(status_fields(self.report, est)).decode()
        return format_status(self.report, est)

    def tick(self, now: float | None = None) -> None:
        """Write one status line now."""
        stream = self.stream or sys.stderr
        stream.write(self.line(now) + "\n")
        stream.flush()
        self.lines_written += 1

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.tick()
            except (OSError, ValueError):  # the stream went away (closed pipe): stop quietly
                return

    def start(self) -> None:
        if self.every > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="status-lines", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class LiveDisplay(Progress):
    """The terminal display: a bar, the counts, rate against the cap, elapsed and ETA."""

    def __init__(self, stream: IO[str] | None = None):
        super().__init__()
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr, highlight=False)
        self._live: Any = None

    def render(self, now: float | None = None) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        report = self.report
        est = self.meter.estimate(report, now)
        if report is None:
            return Text(f"starting… {format_duration(est.elapsed)}", style="dim")
        head = Table.grid(padding=(0, 2))
        head.add_row(
            ProgressBar(total=100, completed=100 * (est.fraction or 0.0), width=30)
            if est.fraction is not None
            else Text("reading (size unknown)", style="dim"),
            Text(f"{100 * est.fraction:.0f}%" if est.fraction is not None else ""),
            Text(f"elapsed {format_duration(est.elapsed)}"),
            Text(f"ETA {format_duration(est.eta)}"),
        )
        counts = Text.from_markup(
            f"rows read [bold]{report.rows_read:,}[/]  sent [bold]{customers_sent(report):,}[/]"
            f"  succeeded [bold green]{report.succeeded:,}[/]"
            f"  rejected [bold yellow]{report.rejected:,}[/]"
            f"  dead-lettered [bold red]{report.dead_lettered:,}[/]"
        )
        answers = ", ".join(f"{k}: {v}" for k, v in report.status_counts.items())
        pace = Text.from_markup(
            f"retries [bold]{report.retries:,}[/]"
            f"  rate [bold]{est.request_rate:.1f}[/] of {report.rate_limit:g} req/s"
            + (f"  API {answers}" if answers else "")
        )
        return Group(head, counts, pace)

    def start(self) -> None:
        from rich.live import Live

        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=4,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


def open_progress(
    *,
    quiet: bool = False,
    status_every: float = 10.0,
    as_json: bool = False,
    stream: IO[str] | None = None,
) -> Progress:
    """The right display for where stderr goes.

    A terminal gets the live display unless ``quiet``; anything else (a pipe,
    a log file, cron) or ``quiet`` gets a status line every ``status_every``
    seconds (none when it is 0). JSON logs get JSON status lines.
    """
    stream = stream or sys.stderr
    if not quiet and not as_json and _is_terminal(stream):
        return LiveDisplay(stream)
    if status_every > 0:
        return StatusLines(status_every, stream, as_json=as_json)
    return Progress()


def _is_terminal(stream: IO[str]) -> bool:
    import os

    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _top(counts: dict[str, int], n: int = TOP_REASONS) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def rerun_command(report: ImportReport, args: Sequence[str] = ()) -> str | None:
    """The command that re-imports this run's dead-lettered customers, or None.

    ``args`` are extra options to repeat (region, base URL, config file);
    never the API key. The new run writes its own dead-letter file next to
    the old one, since the old one is the input.
    """
    path = report.files.get("dead_letter")
    if not report.dead_lettered or not path:
        return None
    retry = path[:-6] if path.endswith(".jsonl") else path
    words = ["blueshift-import", "run", path, *args, "--dead-letter", f"{retry}.retry.jsonl"]
    return shlex.join(words)


def summary_lines(report: ImportReport, rerun: str | None = None) -> list[str]:
    """The end-of-run summary as plain lines (no colour, no control characters)."""
    title = "dry run (nothing sent)" if report.dry_run else "import finished"
    if report.stopped:
        title = f"import stopped: {report.stopped}"
    lines = [f"{title} in {format_duration(report.duration_s)} ({report.duration_s:.1f} s)"]
    if report.mapping:
        lines.append("mapping: " + ", ".join(f"{s} -> {t}" for s, t in report.mapping))
    lines.append(f"  {'rows read':<16} {report.rows_read}")
    for label, n in report.accounting_terms():
        lines.append(f"  {'merged repeats' if label == 'merged' else label:<16} {n}")
    if report.dropped_fields:
        lines.append(f"  fields dropped   {report.dropped_fields} (invalid values left out)")
    lines.append(
        f"  requests         {report.requests} (retries {report.retries}, "
        f"splits {report.splits}, achieved {report.achieved_rate:g}/s of {report.rate_limit:g}/s)"
    )
    if report.lowest_rate and report.lowest_rate < report.rate_limit:
        lines.append(
            f"  adaptive rate    lowered to {report.lowest_rate:g}/s after 429s, "
            f"{report.final_rate:g}/s at the end"
        )
    if report.status_counts:
        lines.append(
            "  API answers      " + ", ".join(f"{k}: {v}" for k, v in report.status_counts.items())
        )
    for reason, n in _top(report.reject_reasons):
        lines.append(f"  rejected: {n} × {reason}")
    for reason, n in _top(report.dead_letter_reasons):
        lines.append(f"  dead-lettered: {n} × {reason}")
    lines.append(f"  accounting: {report.accounting_line()}")
    for kind, path in report.files.items():
        lines.append(f"  {kind.replace('_', '-')}: {path}")
    if rerun:
        lines.append(f"  re-run the failures: {rerun}")
    if report.rejected and "rejects" in report.files:
        lines.append(
            f"  fix the rows listed in {report.files['rejects']} and import them again "
            "(rejected rows were never sent)"
        )
    return lines
