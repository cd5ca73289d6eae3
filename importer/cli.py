"""The ``blueshift-import`` command: parses options, calls the library, prints, exits.

No parsing, retry or HTTP logic lives here: each command is one call into
the library. Exit codes: 0 everything delivered; 1 finished but rows were
rejected or dead-lettered beyond ``--max-error-rate``; 2 usage or input error;
3 stopped early (key rejected, API down); 130 / 143 interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import ImporterError, RunStopped, UsageError
from .mapping import parse_map_option
from .options import ImportOptions
from .outcomes import ImportReport

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

log = logging.getLogger("importer")


class _Group(click.Group):
    """Turns our errors into one line on stderr and exit 2, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImporterError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="blueshift-import")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Bulk-import customer files (CSV, JSONL) into Blueshift's customers API.

    \b
    Examples:
      blueshift-import run customers.csv --mock
      BLUESHIFT_API_KEY=... blueshift-import run customers.csv --region eu
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=True, allow_dash=True))
# -- connection ---------------------------------------------------------------
@click.option(
    "--api-key",
    envvar="BLUESHIFT_API_KEY",
    show_envvar=True,
    help="Blueshift user API key (prefer the environment variable).",
)
@click.option(
    "--region",
    type=click.Choice(["us", "eu"]),
    default="us",
    envvar="BLUESHIFT_REGION",
    show_default=True,
    help="Blueshift data centre.",
)
@click.option(
    "--base-url", envvar="BLUESHIFT_BASE_URL", help="Override the API base URL (e.g. a fake API)."
)
@click.option("--insecure-http", is_flag=True, help="Allow plain http:// to a non-loopback host.")
@click.option(
    "--mock",
    is_flag=True,
    help="Start the embedded fake API on a free loopback port and import into it.",
)
# -- pace and retries ---------------------------------------------------------
@click.option(
    "--rate",
    type=float,
    default=5.0,
    show_default=True,
    help="Requests per second (Blueshift recommends 5).",
)
@click.option(
    "--concurrency", type=int, default=4, show_default=True, help="Requests in flight at once."
)
@click.option(
    "--batch-size", type=int, default=50, show_default=True, help="Customers per call (at most 50)."
)
@click.option(
    "--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for one answer."
)
@click.option(
    "--max-retries", type=int, default=8, show_default=True, help="Retries of a failing call."
)
@click.option(
    "--max-backoff",
    type=float,
    default=60.0,
    show_default=True,
    help="Longest wait between retries, seconds.",
)
@click.option(
    "--give-up-after",
    type=float,
    default=300.0,
    show_default=True,
    help="Stop (exit 3) when nothing succeeded for this many seconds.",
)
# -- input --------------------------------------------------------------------
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="Input format (default: from the extension).",
)
@click.option(
    "--encoding", help="Input encoding (default: detected; UTF-8, UTF-16 with BOM, else cp1252)."
)
@click.option("--delimiter", help="CSV delimiter (default: sniffed from , ; tab |).")
# -- mapping and cleaning -----------------------------------------------------
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="'COLUMN=field'",
    help="Map an input column to a Blueshift field (repeatable).",
)
@click.option(
    "--drop", "drops", multiple=True, metavar="COLUMN", help="Leave a column out (repeatable)."
)
@click.option(
    "--drop-unmapped",
    is_flag=True,
    help="Drop columns that match no standard field instead of sending them as custom attributes.",
)
@click.option(
    "--phone-region",
    default="US",
    show_default=True,
    metavar="CC",
    help="Region for phone numbers written without a country code (e.g. US, GB, DE).",
)
@click.option(
    "--on-invalid",
    type=click.Choice(["skip-row", "drop-field", "stop"]),
    default="skip-row",
    show_default=True,
    help="A bad value rejects its row, drops only that field, or stops the run.",
)
@click.option(
    "--empty-as-null",
    is_flag=True,
    help="Send empty cells as null (clearing the profile field) instead of leaving them out.",
)
# -- outputs ------------------------------------------------------------------
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--dead-letter",
    "dead_letter_path",
    type=click.Path(path_type=Path),
    help="JSONL file for customers that could not be delivered (re-importable).",
)
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(path_type=Path),
    help="CSV or JSONL file for rows that failed validation.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option(
    "--dry-run", is_flag=True, help="Read, clean and batch, but send nothing; show a preview."
)
@click.option(
    "--max-error-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of rows that may be rejected or dead-lettered with exit code 0.",
)
def run(input_path: str, **kw: Any) -> None:
    """Import FILE (CSV or JSONL, optionally .gz; - for stdin) into Blueshift.

    \b
    Examples:
      export BLUESHIFT_API_KEY=...
      blueshift-import run customers.csv
      blueshift-import run customers.jsonl.gz --rate 5 --concurrency 4 \\
          --report report.json --dead-letter failed.jsonl
      blueshift-import run customers.csv --mock     # no credentials needed
    """
    mock = kw.pop("mock")
    fields: dict[str, Any] = {
        "api_key": kw["api_key"],
        "region": kw["region"],
        "base_url": kw["base_url"],
        "insecure_http": kw["insecure_http"],
        "rate": kw["rate"],
        "concurrency": kw["concurrency"],
        "batch_size": kw["batch_size"],
        "timeout": kw["timeout"],
        "max_retries": kw["max_retries"],
        "max_backoff": kw["max_backoff"],
        "give_up_after": kw["give_up_after"],
        "format": kw["fmt"],
        "encoding": kw["encoding"],
        "delimiter": kw["delimiter"],
        "column_map": parse_map_option(kw["maps"]),
        "drop_columns": tuple(kw["drops"]),
        "drop_unmapped": kw["drop_unmapped"],
        "phone_region": kw["phone_region"],
        "on_invalid": kw["on_invalid"],
        "empty_as_null": kw["empty_as_null"],
        "report_path": kw["report_path"],
        "dead_letter_path": kw["dead_letter_path"],
        "rejects_path": kw["rejects_path"],
        "overwrite": kw["overwrite"],
        "dry_run": kw["dry_run"],
        "max_error_rate": kw["max_error_rate"],
    }
    if mock:
        from .fake_api import DEFAULT_KEY, FakeApiConfig, FakeApiServer

        with FakeApiServer(FakeApiConfig(api_key=DEFAULT_KEY)) as server:
            click.echo(f"fake API listening on {server.url}", err=True)
            fields.update(api_key=DEFAULT_KEY, base_url=server.url)
            code = _run_import(input_path, fields)
            click.echo(f"fake API received {len(server.state.applied)} customers", err=True)
    else:
        code = _run_import(input_path, fields)
    sys.exit(code)


def _run_import(input_path: str, fields: dict[str, Any]) -> int:
    from .pipeline import import_file

    options = ImportOptions(**fields)
    if not options.api_key and not options.dry_run:
        raise UsageError("no API key: set BLUESHIFT_API_KEY (or use --mock to try it out)")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            os._exit(EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM)
        received.append(signum)
        click.echo("stopping: finishing requests in flight (again to quit at once)", err=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = import_file(input_path, options, stop=stop)
    except RunStopped as exc:
        stopped_report: ImportReport | None = getattr(exc, "report", None)
        if stopped_report is not None:
            _print_summary(stopped_report)
        click.echo(f"error: {exc}", err=True)
        return EXIT_STOPPED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _print_summary(report)
    if received:
        return EXIT_SIGINT if received[0] == signal.SIGINT else EXIT_SIGTERM
    return _exit_code(report, options.max_error_rate)


def _exit_code(report: ImportReport, max_error_rate: float) -> int:
    failed = report.rejected + report.dead_lettered
    if failed == 0:
        return EXIT_OK
    if report.rows_read and failed / report.rows_read <= max_error_rate:
        return EXIT_OK
    return EXIT_ERRORS


def _print_summary(report: ImportReport) -> None:
    out = click.echo
    title = "dry run (nothing sent)" if report.dry_run else "import finished"
    if report.stopped:
        title = f"import stopped: {report.stopped}"
    out(f"{title} in {report.duration_s:.1f} s")
    if report.mapping:
        out("mapping: " + ", ".join(f"{s} -> {t}" for s, t in report.mapping))
    out(f"  rows read        {report.rows_read}")
    out(f"  succeeded        {report.succeeded}")
    out(f"  rejected         {report.rejected}")
    out(f"  dead-lettered    {report.dead_lettered}")
    out(f"  merged repeats   {report.merged_duplicates}")
    if report.not_sent:
        out(f"  not sent         {report.not_sent}")
    out(
        f"  requests         {report.requests} (retries {report.retries}, "
        f"rate {report.achieved_rate:g}/s of {report.rate_limit:g}/s)"
    )
    if report.status_counts:
        out("  API answers      " + ", ".join(f"{k}: {v}" for k, v in report.status_counts.items()))
    for reason, n in sorted(report.reject_reasons.items(), key=lambda kv: -kv[1])[:5]:
        out(f"  rejected: {n} × {reason}")
    for reason, n in sorted(report.dead_letter_reasons.items(), key=lambda kv: -kv[1])[:5]:
        out(f"  dead-lettered: {n} × {reason}")
    out(f"  accounting: {report.accounting_line()}")
    for kind, path in report.files.items():
        out(f"  {kind.replace('_', '-')}: {path}")
    if report.dead_lettered and "dead_letter" in report.files:
        out(f"  re-run the failures: blueshift-import run {report.files['dead_letter']}")
    if report.preview:
        import json

        out("first payloads as they would be sent:")
        for payload in report.preview:
            out("  " + json.dumps(payload, ensure_ascii=False))


@main.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free port).")
@click.option(
    "--api-key",
    envvar="FAKE_API_KEY",
    default="fake-api-key",
    show_default=True,
    help="The key the fake API accepts.",
)
@click.option(
    "--rate", type=float, help="Requests per second before answering 429 (default: unlimited)."
)
@click.option(
    "--burst",
    type=int,
    default=1,
    show_default=True,
    help="Requests allowed at once above the rate.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="STATUS=P",
    help="Answer STATUS with probability P, e.g. 503=0.1 (repeatable).",
)
@click.option("--seed", type=int, help="Seed for the faults.")
@click.option(
    "--record",
    "record_path",
    type=click.Path(path_type=Path),
    help="Append every applied customer to this JSONL file.",
)
def fake_api(
    host: str,
    port: int,
    api_key: str,
    rate: float | None,
    burst: int,
    faults: tuple[str, ...],
    seed: int | None,
    record_path: Path | None,
) -> None:
    """Run the fake Blueshift API in the foreground, for dry runs and tests.

    \b
    Example:
      blueshift-import fake-api --port 8080 --rate 5 --fault 503=0.05
      BLUESHIFT_API_KEY=fake-api-key blueshift-import run customers.csv \\
          --base-url http://127.0.0.1:8080
    """
    from .fake_api import FakeApiConfig, serve_forever

    parsed: dict[int, float] = {}
    for spec in faults:
        status, sep, prob = spec.partition("=")
        try:
            parsed[int(status)] = float(prob)
        except ValueError:
            raise UsageError(f"--fault expects STATUS=PROBABILITY, got {spec!r}") from None
        if not sep:
            raise UsageError(f"--fault expects STATUS=PROBABILITY, got {spec!r}")
    config = FakeApiConfig(
        api_key=api_key, rate=rate, burst=burst, faults=parsed, seed=seed, record_path=record_path
    )
    click.echo(f"fake Blueshift API on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve_forever(config, host, port)
