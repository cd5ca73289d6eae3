"""The ``blueshift-import`` command: parses options, calls the library, prints, exits.

No parsing, retry or HTTP logic lives here: each command is one call into
the library. Exit codes: 0 everything delivered; 1 finished but rows were
rejected or dead-lettered beyond ``--max-error-rate``; 2 usage or input error;
3 stopped early (key rejected, API down); 130 / 143 interrupted.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from .batching import encode_payload
from .config import ConfigFile, default_map, load_config
from .errors import AccountingMismatch, ImporterError, RunStopped, UsageError
from .logs import LOG_FORMATS, protect_secret, setup_logging
from .mapping import parse_map_option
from .options import ImportOptions
from .outcomes import ImportReport
from .progress import open_progress, rerun_command, summary_lines
from .state import DEFAULT_STATE_PATH

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


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    # Looked up only when asked: importlib.metadata costs every other command a few dozen ms.
    from . import __version__

    click.echo(f"blueshift-import, version {__version__}")
    ctx.exit()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and exit.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Bulk-import customer files (CSV, JSONL) into Blueshift's customers API.

    \b
    Examples:
      blueshift-import run customers.csv --mock
      BLUESHIFT_API_KEY=... blueshift-import run customers.csv --region eu
      blueshift-import init-config customers.csv > import.toml
    """
    ctx.ensure_object(dict)["verbose"] = verbose
    setup_logging(verbose)


def _load_config_option(
    ctx: click.Context, param: click.Parameter, value: Path | None
) -> ConfigFile | None:
    """Eager ``--config`` callback: the file's options become the command's default map,
    so flags and environment variables still win over them."""
    if value is None:
        return None
    config = load_config(value)
    ctx.default_map = {**(ctx.default_map or {}), **default_map(config, ctx.command.params)}
    return config


def config_option(f: Any) -> Any:
    """The ``--config FILE`` option, for any command whose options a file may hold."""
    return click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=True,
        callback=_load_config_option,
        help="TOML file with options and the column mapping (flags and environment win).",
    )(f)


# -- fake API faults (shared by ``fake-api`` and ``run --mock``) ----------------
def _fault_options(prefix: str) -> Any:
    """The seeded fault flags of the fake API, named ``--{prefix}fault`` etc."""
    p = prefix
    options = [
        click.option(
            f"--{p}fault",
            "fault_statuses",
            multiple=True,
            metavar="STATUS=P",
            help="Answer STATUS with probability P, e.g. 503=0.1 (repeatable; "
            "404, 409, 429, 500, 502, 503, 504).",
        ),
        click.option(
            f"--{p}slow",
            "fault_slow",
            type=float,
            default=0.0,
            help=f"Probability of answering only after --{p}slow-seconds (records applied).",
        ),
        click.option(
            f"--{p}slow-seconds",
            "fault_slow_seconds",
            type=float,
            default=5.0,
            show_default=True,
            help="How late a slow answer comes.",
        ),
        click.option(
            f"--{p}drop",
            "fault_drop",
            type=float,
            default=0.0,
            help="Probability of closing the connection with no answer.",
        ),
        click.option(
            f"--{p}applied-then-fail",
            "fault_applied_then_fail",
            type=float,
            default=0.0,
            help="Probability of applying the records, then answering 503 or dropping.",
        ),
        click.option(
            f"--{p}outage",
            "fault_outage",
            metavar="START:END",
            help="Answer 503 to everything from START to END seconds after the first request.",
        ),
        click.option(
            f"--{p}revoke-key-after",
            "fault_revoke_key_after",
            type=int,
            help="Answer 401 to every request after the first N.",
        ),
        click.option(
            f"--{p}record-errors",
            "fault_record_errors",
            type=float,
            default=0.0,
            help="Probability per record of a per-record error in a 200 (half transient).",
        ),
        click.option(f"--{p}seed", "fault_seed", type=int, help="Seed for the faults."),
    ]

    def decorate(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _fake_config(kw: dict[str, Any], **config: Any) -> Any:
    """A :class:`FakeApiConfig` from the fault flags in ``kw`` (removed from it)."""
    from .fake_api import FakeApiConfig, parse_fault_spec, parse_outage_spec

    try:
        faults = dict(parse_fault_spec(spec) for spec in kw.pop("fault_statuses"))
        outage = kw.pop("fault_outage")
        return FakeApiConfig(
            faults=faults,
            slow=kw.pop("fault_slow"),
            slow_seconds=kw.pop("fault_slow_seconds"),
            drop=kw.pop("fault_drop"),
            applied_then_fail=kw.pop("fault_applied_then_fail"),
            outage=parse_outage_spec(outage) if outage else None,
            revoke_key_after=kw.pop("fault_revoke_key_after"),
            record_errors=kw.pop("fault_record_errors"),
            seed=kw.pop("fault_seed"),
            **config,
        )
    except ValueError as exc:
        raise UsageError(f"fake API faults: {exc}") from None


@main.command()
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=True, allow_dash=True))
# -- display, logging and configuration ---------------------------------------
@config_option
@click.option(
    "-q", "--quiet", is_flag=True, help="No live display: plain status lines (see --status-every)."
)
@click.option(
    "--status-every",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between status lines when not on a terminal or --quiet (0: none).",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="Log lines (and status lines) as text or one JSON object per line.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
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
@click.option(
    "--mock-rate", type=float, help="With --mock: the fake API's own rate limit (429 above it)."
)
@_fault_options("mock-")
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
@click.option(
    "--max-field-bytes",
    type=int,
    default=1_000_000,
    show_default=True,
    help="Reject a row with a CSV cell longer than this (characters).",
)
@click.option(
    "--max-columns",
    type=int,
    default=1_000,
    show_default=True,
    help="Refuse a file with more columns (or distinct JSONL keys) than this.",
)
@click.option(
    "--max-json-depth",
    type=int,
    default=32,
    show_default=True,
    help="Reject a JSONL record nested deeper than this.",
)
@click.option(
    "--max-line-bytes",
    type=int,
    default=4_000_000,
    show_default=True,
    help="Reject a row on a physical line longer than this.",
)
# -- mapping and cleaning -----------------------------------------------------
@click.option(
    "--mapping",
    "mapping_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help='TOML mapping file: [columns."Name"] tables with target, type, drop.',
)
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
# -- state: resume and incremental imports ------------------------------------
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STATE_PATH,
    envvar="BLUESHIFT_IMPORT_STATE",
    show_default=True,
    show_envvar=True,
    help="SQLite file recording confirmed rows and payload hashes (for --resume, --changed-only).",
)
@click.option("--no-state", is_flag=True, help="Record nothing (no --resume after a crash).")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the interrupted run of FILE: skip rows already confirmed, append to outputs.",
)
@click.option(
    "--force", is_flag=True, help="With --resume: start over even if FILE or the options changed."
)
@click.option(
    "--changed-only",
    is_flag=True,
    help="Skip customers whose payload equals the last one the API confirmed (nightly imports).",
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
      blueshift-import run customers.csv --config import.toml --quiet
      blueshift-import run customers.csv --resume   # after a crash or Ctrl-C
      blueshift-import run nightly.csv --changed-only
    """
    mock = kw.pop("mock")
    ui = _display_settings(kw, mock)
    mock_rate = kw.pop("mock_rate")
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
        "max_field_bytes": kw["max_field_bytes"],
        "max_columns": kw["max_columns"],
        "max_json_depth": kw["max_json_depth"],
        "max_line_bytes": kw["max_line_bytes"],
        "mapping_file": kw["mapping_file"],
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
        "state_path": None if kw["no_state"] else kw["state_path"],
        "resume": kw["resume"],
        "force": kw["force"],
        "changed_only": kw["changed_only"],
    }
    _apply_config(fields, ui)
    if mock:
        # Only --mock needs the fake API, and with it aiohttp's server side.
        from .fake_api import DEFAULT_KEY, FakeApiServer

        config = _fake_config(kw, api_key=DEFAULT_KEY, rate=mock_rate)
        with FakeApiServer(config) as server:
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
    protect_secret(options.api_key)
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
        with _open_display() as progress:
            report = import_file(input_path, options, observer=progress.observe, stop=stop)
    except (RunStopped, AccountingMismatch) as exc:
        stopped_report: ImportReport | None = getattr(exc, "report", None)
        if stopped_report is not None:
            _print_summary(stopped_report)
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
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
    if report.rows_read and report.error_rate <= max_error_rate:
        return EXIT_OK
    return EXIT_ERRORS


# -- display, logging and configuration ----------------------------------------
# The settings live on the click context so `_run_import` keeps its signature.
_UI_KEY = "importer.display"


def _display_settings(kw: dict[str, Any], mock: bool) -> dict[str, Any]:
    """Take the display options out of ``kw``, set up logging, warn about ``--api-key``."""
    ctx = click.get_current_context()
    ui = {
        "config": kw.pop("config"),
        "quiet": kw.pop("quiet"),
        "status_every": kw.pop("status_every"),
        "log_format": kw.pop("log_format"),
        "mock": mock,
    }
    verbose = kw.pop("verbose") + (ctx.find_object(dict) or {}).get("verbose", 0)
    setup_logging(verbose, ui["log_format"])
    # Said after the summary of a run that used the key (not before a usage
    # error), where it is not scrolled away by the progress display.
    ui["key_on_command_line"] = (
        ctx.get_parameter_source("api_key") is click.core.ParameterSource.COMMANDLINE
    )
    if ui["config"] is not None:
        for warning in ui["config"].warnings():
            click.echo(f"warning: {warning}", err=True)
    ui["rerun_args"] = _rerun_args(kw, ui)
    ctx.meta[_UI_KEY] = ui
    return ui


def _rerun_args(kw: dict[str, Any], ui: dict[str, Any]) -> list[str]:
    """Options the re-run command must repeat to reach the same API (never the key)."""
    args: list[str] = []
    if ui["config"] is not None:
        args += ["--config", str(ui["config"].path)]
    if ui["mock"]:
        return [*args, "--mock"]
    if kw.get("base_url"):
        args += ["--base-url", kw["base_url"]]
        if kw.get("insecure_http"):
            args.append("--insecure-http")
    elif kw.get("region") and kw["region"] != "us":
        args += ["--region", kw["region"]]
    return args


def _apply_config(fields: dict[str, Any], ui: dict[str, Any]) -> None:
    """A config file with ``[columns]`` tables is also the mapping file (unless one is given)."""
    config: ConfigFile | None = ui["config"]
    if config is not None and config.has_columns and not fields.get("mapping_file"):
        fields["mapping_file"] = config.path


def _ui() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return (ctx.meta.get(_UI_KEY) if ctx is not None else None) or {}


def _open_display() -> Any:
    ui = _ui()
    return open_progress(
        quiet=ui.get("quiet", False),
        status_every=ui.get("status_every", 10.0),
        as_json=ui.get("log_format") == "json",
        stream=sys.stderr,
    )


def _print_summary(report: ImportReport) -> None:
    ui = _ui()
    rerun = rerun_command(report, ui.get("rerun_args", ()))
    for line in summary_lines(report, rerun):
        click.echo(line)
    if ui.get("log_format") == "json":
        # One machine-readable line for log collectors, next to the human summary.
        summary = {"event": "summary", **report.to_dict()}
        if rerun:
            summary["rerun_command"] = rerun
        click.echo(json.dumps(summary, ensure_ascii=False, default=str), err=True)
    if report.preview:
        click.echo("first payloads as they would be sent:")
        for payload in report.preview:
            click.echo("  " + encode_payload(payload).decode())
    if ui.get("key_on_command_line"):
        click.echo(
            "warning: --api-key is visible to other users in the process list and stays in "
            "your shell history; prefer the BLUESHIFT_API_KEY environment variable",
            err=True,
        )


@main.command("init-config")
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="Input format (default: from the extension).",
)
@click.option("--encoding", help="Input encoding (default: detected).")
@click.option("--delimiter", help="CSV delimiter (default: sniffed).")
def init_config(
    input_path: str, fmt: str | None, encoding: str | None, delimiter: str | None
) -> None:
    """Print a starter config file for FILE, with the column mapping detected from its header.

    Only column names are read into the file, never values. Edit it, then pass
    it to `run` with --config.

    \b
    Example:
      blueshift-import init-config customers.csv > import.toml
      blueshift-import run customers.csv --config import.toml
    """
    from .config import detect_starter_config

    text = detect_starter_config(input_path, format=fmt, encoding=encoding, delimiter=delimiter)
    click.echo(text, nl=False)


#: The options ``validate`` shares with ``run`` (same definitions, same meaning).
_VALIDATE_OPTIONS = (
    "fmt",
    "encoding",
    "delimiter",
    "max_field_bytes",
    "max_columns",
    "max_json_depth",
    "max_line_bytes",
    "mapping_file",
    "maps",
    "drops",
    "drop_unmapped",
    "rejects_path",
    "report_path",
    "overwrite",
)


@main.command()
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=True, allow_dash=True))
@click.option(
    "--show",
    type=int,
    default=5,
    show_default=True,
    help="How many payloads to print, exactly as they would be sent.",
)
def validate(input_path: str, show: int, **kw: Any) -> None:
    """Check FILE without sending anything: no network, no API key needed.

    Prints the resolved column mapping, how many rows are valid, rejected
    (by reason) or merged, and the first payloads exactly as ``run`` would
    send them. Takes the input and mapping options of ``run``. Exit 0 when
    every row is valid, 1 when rows were rejected, 2 for an unusable file.

    \b
    Examples:
      blueshift-import validate customers.csv
      blueshift-import validate export.csv --mapping mapping.toml --show 20 \\
          --rejects rejects.csv
    """
    from .pipeline import import_file

    options = ImportOptions(
        dry_run=True,
        preview_size=show,
        format=kw["fmt"],
        encoding=kw["encoding"],
        delimiter=kw["delimiter"],
        max_field_bytes=kw["max_field_bytes"],
        max_columns=kw["max_columns"],
        max_json_depth=kw["max_json_depth"],
        max_line_bytes=kw["max_line_bytes"],
        mapping_file=kw["mapping_file"],
        column_map=parse_map_option(kw["maps"]),
        drop_columns=tuple(kw["drops"]),
        drop_unmapped=kw["drop_unmapped"],
        rejects_path=kw["rejects_path"],
        report_path=kw["report_path"],
        overwrite=kw["overwrite"],
    )
    report = import_file(input_path, options)
    _print_validation(report)
    sys.exit(EXIT_OK if report.rejected == 0 else EXIT_ERRORS)


def _print_validation(report: ImportReport) -> None:
    out = click.echo
    out(f"validated {report.source} (nothing sent) in {report.duration_s:.1f} s")
    out("mapping:")
    width = max((len(s) for s, _ in report.mapping), default=0)
    for source, target in report.mapping:
        arrow = target if target == "(dropped)" else f"-> {target}"
        out(f"  {source:<{width}}  {arrow}")
    out(
        f"rows read {report.rows_read}: valid {report.not_sent}, rejected {report.rejected}, "
        f"merged {report.merged_duplicates}"
    )
    if report.dropped_fields:
        out(f"  fields dropped   {report.dropped_fields}")
    for reason, n in sorted(report.reject_reasons.items(), key=lambda kv: -kv[1]):
        out(f"  rejected: {n} × {reason}")
    out(f"would send {report.not_sent} customers in {report.requests} requests")
    out(f"accounting: {report.accounting_line()}")
    for kind, path in report.files.items():
        out(f"{kind.replace('_', '-')}: {path}")
    if report.preview:
        out(f"first {len(report.preview)} payloads as they would be sent:")
        for payload in report.preview:
            out("  " + encode_payload(payload).decode())


validate.params[1:1] = [p for p in run.params if p.name in _VALIDATE_OPTIONS]


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
@_fault_options("")
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
    record_path: Path | None,
    **faults: Any,
) -> None:
    """Run the fake Blueshift API in the foreground, for dry runs and tests.

    \b
    Example:
      blueshift-import fake-api --port 8080 --rate 5 --fault 503=0.05
      blueshift-import fake-api --fault 429=0.05 --fault 502=0.02 --drop 0.01 \\
          --applied-then-fail 0.01 --record-errors 0.01 --seed 42
      BLUESHIFT_API_KEY=fake-api-key blueshift-import run customers.csv \\
          --base-url http://127.0.0.1:8080
    """
    from .fake_api import serve_forever

    config = _fake_config(faults, api_key=api_key, rate=rate, burst=burst, record_path=record_path)
    click.echo(f"fake Blueshift API on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve_forever(config, host, port)


# -- state: resume and incremental imports ------------------------------------
_STATE_OPTION = click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_STATE_PATH,
    envvar="BLUESHIFT_IMPORT_STATE",
    show_default=True,
    show_envvar=True,
    help="The state file.",
)


@main.group("state")
def state_group() -> None:
    """Inspect and manage the state kept for --resume and --changed-only.

    \b
    Examples:
      blueshift-import state show
      blueshift-import state prune --older-than 90d
      blueshift-import state reset --yes --state /var/lib/imports/state.sqlite
    """


@state_group.command("show")
@_STATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def state_show(state_path: Path, as_json: bool) -> None:
    """Show the runs and payload hashes a state holds (safe while a run uses it).

    \b
    Example:
      blueshift-import state show --state .blueshift-import/state.sqlite
    """
    from .state import open_summary

    summary = open_summary(state_path)
    if as_json:
        import json

        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"state {summary['path']} ({summary['size_bytes']} bytes)")
    if summary["locked_by"]:
        click.echo(f"  in use by the run with PID {summary['locked_by']}")
    hashes = summary["payload_hashes"]
    click.echo(
        f"  confirmed payload hashes: {sum(hashes.values())}"
        + (f" across {len(hashes)} destinations" if len(hashes) > 1 else "")
    )
    click.echo(f"  runs: {summary['run_count']} (latest first)")
    for r in summary["runs"]:
        click.echo(
            f"  #{r['id']:<4} {r['status']:<11} {_when(r['updated_at'])}  "
            f"confirmed {r['confirmed']}, dead-lettered {r['dead_lettered']}, "
            f"attempts {r['attempts']}  {r['source']}"
        )


def _when(timestamp: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


@state_group.command("reset")
@_STATE_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def state_reset(state_path: Path, yes: bool) -> None:
    """Forget every run and payload hash (the next --changed-only run sends everything).

    \b
    Example:
      blueshift-import state reset --yes
    """
    from .state import StateStore

    if not state_path.is_file():
        raise UsageError(f"no state at {state_path}")
    if not yes:
        click.confirm(f"forget everything recorded in {state_path}?", abort=True)
    with StateStore(state_path) as store:
        store.reset()
    click.echo(f"state {state_path} reset")


@state_group.command("prune")
@_STATE_OPTION
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Forget runs and payload hashes untouched for this long: 90d, 12h, 2w.",
)
def state_prune(state_path: Path, older_than: str) -> None:
    """Forget runs and payload hashes older than AGE, keeping the state small.

    \b
    Example:
      blueshift-import state prune --older-than 90d
    """
    from .state import StateStore, parse_age

    seconds = parse_age(older_than)
    if not state_path.is_file():
        raise UsageError(f"no state at {state_path}")
    with StateStore(state_path) as store:
        removed = store.prune(seconds)
    click.echo(
        f"pruned {removed['runs']} run(s) and {removed['payloads']} payload hash(es) "
        f"older than {older_than} from {state_path}"
    )
