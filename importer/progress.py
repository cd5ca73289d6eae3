"""What the command shows while a run goes and when it ends.

Owns: the live display on a terminal, the periodic status line for logs and
cron mail (plain text or JSON, no control characters), the figures behind
both, and the end-of-run summary's lines. Only the command line uses it; it
reads the live :class:`~importer.outcomes.ImportReport` and changes nothing.
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import IO, Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.text import Text

from .outcomes import ImportReport
from .records import encode_payload

#: Seconds of history behind the current request rate and the ETA.
RATE_WINDOW_S = 10.0
#: How many rejection / dead-letter reasons the summary lists.
TOP_REASONS = 5


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunProgress:
    """Shows a run's progress on ``stream``: nothing when ``quiet``; a live display
    on a terminal, unless ``as_json``; else (a pipe, a log file, cron) a status
    line every ``every`` seconds (none when it is 0), plain text or JSON.

    Use as a context manager; :meth:`observe` is the pipeline's observer. The
    figures come from three ``rich.progress`` tasks fed from the live report:
    the rows done (delivered, rejected, dead-lettered, merged, skipped) of the
    rows the file holds (projected from the bytes read: the percentage); the
    customers sent of those the file will need sent, whose speed gives the
    ETA (rejected rows cost no call, so they do not speed it up); and the
    requests, whose speed over the last :data:`RATE_WINDOW_S` seconds is the
    current request rate (None until known). Without a file size (stdin,
    records) there is no percentage or ETA. Both displays refresh on a timer,
    so they keep moving while the API makes the run wait.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        quiet: bool = False,
        every: float = 10.0,
        as_json: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.live = not quiet and not as_json and _is_terminal(stream)
        self.every, self.stream, self.as_json = 0 if quiet else every, stream, as_json
        self.report: ImportReport | None = None
        self.console = Console(file=stream, highlight=False)
        self.bar = Progress(
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            get_time=clock,
            speed_estimate_period=RATE_WINDOW_S,
        )
        self._file = self.bar.add_task("", total=None)
        self._requests = self.bar.add_task("", total=None, visible=False)
        self._sent = self.bar.add_task("", total=None, visible=False)
        self._done = threading.Event()
        self._worker: Live | threading.Thread | None = None

    def observe(self, report: ImportReport) -> None:
        """Remember the live report (the pipeline calls this after each batch)."""
        self.report = report

    def figures(self) -> dict[str, Any]:
        """The run's figures now, as the JSON status line holds them."""
        report = self.report
        file_task, request_task, sent_task = self.bar.tasks
        elapsed = file_task.elapsed or 0.0
        figures: dict[str, Any] = {"event": "status", "elapsed_s": round(elapsed, 1)}
        if report is None:
            return {**figures, "state": "starting"}
        sent = report.succeeded + report.dead_lettered
        done = report.accounted - report.not_sent
        left_to_send = None
        if report.bytes_total and report.bytes_read and report.rows_read:
            rows_total = report.rows_read * report.bytes_total / report.bytes_read
            # The share of rows read that needed a call (not rejected, merged or skipped).
            to_send = (report.rows_read - (done - sent)) / report.rows_read
            left_to_send = max(0.0, rows_total * to_send - sent)
            self.bar.update(self._file, total=rows_total, completed=done)
        # No total for the speeds: rich forgets a task's samples when its total changes.
        self.bar.update(self._sent, completed=sent)
        self.bar.update(self._requests, completed=report.requests)
        rate = request_task.speed
        figures.update(
            rows_read=report.rows_read,
            done=done,
            sent=sent,
            succeeded=report.succeeded,
            rejected=report.rejected,
            dead_lettered=report.dead_lettered,
            retries=report.retries,
            requests=report.requests,
            rate=None if rate is None else round(rate, 2),
            rate_limit=report.rate_limit,
        )
        if report.concurrency_ceiling:
            figures.update(
                concurrency=report.concurrency, concurrency_ceiling=report.concurrency_ceiling
            )
        if report.answer_time_s:
            figures.update(
                answer_p50_s=report.answer_time_s["p50"], answer_p90_s=report.answer_time_s["p90"]
            )
        if file_task.total:
            figures["percent"] = round(file_task.percentage, 1)
            if sent_task.speed and left_to_send is not None:
                figures["eta_s"] = round(left_to_send / sent_task.speed)
        return figures

    def status_line(self) -> str:
        """One status line for logs: JSON, or plain text from :func:`format_status`."""
        if self.as_json:
            return orjson.dumps(self.figures()).decode()
        return format_status(self.figures())

    def render(self) -> Any:
        """The live display: bar, percentage, elapsed and ETA, counts, rate against the cap."""
        figures = self.figures()
        elapsed = format_duration(figures["elapsed_s"])
        report = self.report
        if report is None:
            return Text(f"starting… {elapsed}", style="dim")
        eta = format_duration(figures.get("eta_s"))
        self.bar.update(self._file, description=f"elapsed {elapsed}  ETA {eta}")
        counts = Text.from_markup(
            f"rows read [bold]{report.rows_read:,}[/]  done [bold]{figures['done']:,}[/]"
            f"  sent [bold]{figures['sent']:,}[/]"
            f"  succeeded [bold green]{report.succeeded:,}[/]"
            f"  rejected [bold yellow]{report.rejected:,}[/]"
            f"  dead-lettered [bold red]{report.dead_lettered:,}[/]"
        )
        answers = ", ".join(f"{k}: {v}" for k, v in report.status_counts.items())
        pace = Text.from_markup(
            f"retries [bold]{report.retries:,}[/]"
            f"  rate [bold]{_rate(figures)}[/] of {report.rate_limit:g} req/s"
            + "".join(f"  {part}" for part in _pace_parts(figures))
            + (f"  API {answers}" if answers else "")
        )
        return Group(self.bar, counts, pace)

    def _write_status_lines(self) -> None:
        while not self._done.wait(self.every):
            try:
                self.stream.write(self.status_line() + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # the stream went away (closed pipe): stop quietly
                return

    def __enter__(self) -> RunProgress:
        if self.live:
            self._worker = Live(
                console=self.console,
                get_renderable=self.render,
                refresh_per_second=4,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
        elif self.every > 0:
            self._worker = threading.Thread(
                target=self._write_status_lines, name="status-lines", daemon=True
            )
        if self._worker is not None:
            self._worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop showing progress; the terminal is left clean for the summary."""
        self._done.set()
        if isinstance(self._worker, Live):
            self._worker.stop()
        elif self._worker is not None:
            self._worker.join()
        self._worker = None


def format_status(figures: dict[str, Any]) -> str:
    """One plain status line from :meth:`RunProgress.figures`: counts, rate
    against the cap, elapsed and, when the file's size is known, percentage and ETA."""
    elapsed = format_duration(figures["elapsed_s"])
    if "rows_read" not in figures:
        return f"status: starting, elapsed {elapsed}"
    parts = [
        f"read {figures['rows_read']}",
        f"done {figures['done']}",
        f"sent {figures['sent']}",
        f"ok {figures['succeeded']}",
        f"rejected {figures['rejected']}",
        f"dead {figures['dead_lettered']}",
        f"retries {figures['retries']}",
        f"rate {_rate(figures)}/{figures['rate_limit']:g} req/s",
        *_pace_parts(figures),
        f"elapsed {elapsed}",
    ]
    if "percent" in figures:
        parts.append(f"{figures['percent']:.0f}%")
    if "eta_s" in figures:
        parts.append(f"eta {format_duration(figures['eta_s'])}")
    return "status: " + ", ".join(parts)


def _rate(figures: dict[str, Any]) -> str:
    """The current request rate, ``-`` until two requests have told it."""
    return "-" if figures["rate"] is None else f"{figures['rate']:.1f}"


def _pace_parts(figures: dict[str, Any]) -> list[str]:
    """The concurrency in use and the answer times, as far as they are known yet."""
    parts = []
    if "concurrency" in figures:
        parts.append(f"concurrency {figures['concurrency']} of {figures['concurrency_ceiling']}")
    if "answer_p50_s" in figures:
        parts.append(
            f"answers p50 {figures['answer_p50_s']:.2f} s p90 {figures['answer_p90_s']:.2f} s"
        )
    return parts


def _is_terminal(stream: IO[str]) -> bool:
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and os.environ.get("TERM", "") != "dumb"


def _top(counts: dict[str, int], n: int | None = TOP_REASONS) -> list[tuple[str, int]]:
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


def _files_line(inputs: list[dict[str, Any]]) -> str:
    """How many of a run's files ended how: ``10 (3 skipped, 7 completed)``."""
    statuses = Counter(str(s["status"]).split(":", 1)[0] for s in inputs)
    return f"{len(inputs)} (" + ", ".join(f"{n} {status}" for status, n in statuses.items()) + ")"


def fix_command(report: ImportReport, args: Sequence[str] = ()) -> str | None:
    """The command that imports this run's rejected rows once the rejects file is fixed, or
    None. ``args`` repeat the API's address and the mapping and cleaning options."""
    path = report.files.get("rejects")
    if not report.rejected or not path:
        return None
    return shlex.join(["blueshift-import", "run", path, *args])


def summary_lines(
    report: ImportReport, rerun: str | None = None, fix: str | None = None
) -> list[str]:
    """The end-of-run summary as plain lines (no colour, no control characters)."""
    title = "dry run (nothing sent)" if report.dry_run else "import finished"
    took = f"{format_duration(report.duration_s)} ({report.duration_s:.1f} s)"
    if report.stopped:
        lines = [f"import stopped after {took}: {report.stopped}"]
    else:
        lines = [f"{title} in {took}"]
    if report.preset:
        lines.append(f"preset: {report.preset} (blueshift-import presets show {report.preset})")
    if report.mapping:
        lines.append("mapping: " + ", ".join(f"{s} -> {t}" for s, t in report.mapping))
    if len(report.inputs) > 1 or any("skipped" in str(s["status"]) for s in report.inputs):
        lines.append(f"  {'files':<16} {_files_line(report.inputs)}")
    lines.append(f"  {'rows read':<16} {report.rows_read}")
    for label, n in report.accounting_terms():
        lines.append(f"  {'merged repeats' if label == 'merged' else label:<16} {n}")
    if report.dropped_fields:
        # Fields, not rows: their rows were sent (and are counted once, above).
        lines.append(
            f"  fields dropped   {report.dropped_fields} (invalid values left out of rows sent)"
        )
    if report.identifier_conflicts:
        lines.append(
            f"  id conflicts     {report.identifier_conflicts} "
            "(rows sharing an email with another customer_id or record id)"
        )
    achieved = (
        "" if report.achieved_rate is None
        else f", achieved {report.achieved_rate:g}/s of {report.rate_limit:g}/s"
    )  # fmt: skip
    lines.append(
        f"  requests         {report.requests} (retries {report.retries}, "
        f"splits {report.splits}{achieved})"
    )
    if (
        report.lowest_rate
        and report.lowest_rate < report.rate_limit
        and report.status_counts.get("429")
    ):
        lines.append(
            f"  adaptive rate    lowered to {report.lowest_rate:g}/s after 429s, "
            f"{report.final_rate:g}/s at the end"
        )
    lines += _concurrency_lines(report)
    if report.status_counts:
        lines.append(
            "  API answers      " + ", ".join(f"{k}: {v}" for k, v in report.status_counts.items())
        )
    for reason, n in _top(report.reject_reasons):
        lines.append(f"  rejected: {n} × {reason}")
    lines += _dropped_lines(report, TOP_REASONS)
    for reason, n in _top(report.dead_letter_reasons):
        lines.append(f"  dead-lettered: {n} × {reason}")
    lines.append(f"  accounting: {report.accounting_line()}")
    if job := report.job:
        unknown = "" if job["complete"] else " (some runs' counts unknown)"
        lines.append(
            f"  whole job ({job['runs']} runs): succeeded {job['succeeded']}, rejected "
            f"{job['rejected']}, dead-lettered {job['dead_lettered']}{unknown}"
        )
    for kind, path in report.files.items():
        lines.append(f"  {kind.replace('_', '-')}: {path}")
    if rerun:
        lines.append(f"  re-run the failures: {rerun}")
    if report.rejected and "rejects" in report.files:
        lines.append(
            f"  {report.rejected} rows rejected (never sent) → rejects written to "
            f"{report.files['rejects']}; fix them and run: "
            + (fix or shlex.join(["blueshift-import", "run", report.files["rejects"]]))
        )
    return lines + _preview_lines(report)


def _concurrency_lines(report: ImportReport) -> list[str]:
    """Calls in flight and answer times; what limited the pace; the shared limit."""
    lines = []
    times = report.answer_time_s
    if report.peak_in_flight:
        line = (
            f"  in flight        at most {report.peak_in_flight} "
            f"(limit {report.concurrency} at the end, ceiling {report.concurrency_ceiling})"
        )
        if times:
            line += (
                f"; answers p50 {times['p50']:g} s, p90 {times['p90']:g} s, "
                f"p99 {times['p99']:g} s, mean {times['mean']:g} s"
            )
        lines.append(line)
    if report.concurrency_limited and times:
        needed = report.rate_limit * times["mean"]
        lines.append(
            f"  pace limited by the concurrency ceiling ({report.concurrency_ceiling} in flight), "
            f"not the API's cap: {report.rate_limit:g}/s × {times['mean']:g} s per answer "
            f"needs about {needed:.0f} in flight; raise --max-concurrency (or --concurrency)"
        )
    if report.shared_limit:
        sharing = f", {report.shared_processes} process(es) sharing it"
        lines.append(
            f"  shared limit     {report.shared_limit}"
            + (sharing if report.shared_processes else "")
        )
    if report.shared_limit_fallback:
        lines.append(f"  shared limit lost: {report.shared_limit_fallback}")
    return lines


def validation_lines(report: ImportReport) -> list[str]:
    """What ``validate`` prints: the mapping as a table, the verdict, the first payloads."""
    lines = [f"validated {report.source} (nothing sent) in {report.duration_s:.1f} s"]
    if report.preset:
        lines.append(f"preset: {report.preset} (blueshift-import presets show {report.preset})")
    lines.append("mapping:")
    width = max((len(source) for source, _ in report.mapping), default=0)
    for source, target in report.mapping:
        lines.append(f"  {source:<{width}}  {target if target[0] == '(' else '-> ' + target}")
    lines.append(
        f"rows read {report.rows_read}: valid {report.not_sent}, rejected {report.rejected}, "
        f"merged {report.merged_duplicates}"
    )
    if report.dropped_fields:
        lines.append(f"  fields dropped   {report.dropped_fields}")
    if report.identifier_conflicts:
        lines.append(f"  id conflicts     {report.identifier_conflicts} (shared email)")
    for reason, n in _top(report.reject_reasons, n=None):
        lines.append(f"  rejected: {n} × {reason}")
    lines += _dropped_lines(report, None)
    lines.append(f"would send {report.not_sent} customers in {report.requests} requests")
    lines.append(f"accounting: {report.accounting_line()}")
    lines += [f"{kind.replace('_', '-')}: {path}" for kind, path in report.files.items()]
    return lines + _preview_lines(report)


def _dropped_lines(report: ImportReport, n: int | None) -> list[str]:
    """The fields dropped, per column and reason, and how each date column was read."""
    counts = {
        f"{column}: {reason}": count
        for column, reasons in report.dropped_field_reasons.items()
        for reason, count in reasons.items()
    }
    lines = [f"  dropped: {count} × {what}" for what, count in _top(counts, n)]
    for column, how in report.date_orders.items():
        why = _DECIDED_BY[how["decided_by"]]
        lines.append(f"  dates in {column!r} read {how['order']} ({why})")
    return lines


_DECIDED_BY = {
    "file": "shown by the file's own dates",
    "default": "the default: no date in the first chunk shows the order",
    "option": "--date-order",
}


def _preview_lines(report: ImportReport) -> list[str]:
    if not report.preview:
        return []
    payloads = ["  " + encode_payload(payload).decode() for payload in report.preview]
    return [f"first {len(report.preview)} payloads as they would be sent:", *payloads]
