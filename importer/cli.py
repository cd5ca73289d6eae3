"""The ``blueshift-import`` command: parses options, calls the library, prints, exits.

No parsing, retry or HTTP logic lives here: each command is one call into
the library. Exit codes: 0 everything delivered; 1 finished but rows were
rejected or dead-lettered beyond ``--max-error-rate``; 2 usage or input error;
3 stopped early (key rejected, API down); 130 / 143 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from .config import ConfigFile, default_map, load_config
from .errors import AccountingMismatch, ImporterError, RunStopped, UsageError
from .logs import LOG_FORMATS, protect_secret, setup_logging
from .options import SECTIONS, ImportOptions, cli_fields, flag_name
from .outcomes import ImportReport
from .progress import open_progress, rerun_command, summary_lines
from .records import encode_payload

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


def _table_options(*sections: str, only: tuple[str, ...] = ()) -> Any:
    """Click options for the :class:`ImportOptions` fields of ``sections`` (and ``only``)."""
    chosen = [f for f in cli_fields() if f.metadata["section"] in sections or f.name in only]

    def decorate(command: Any) -> Any:
        for f in reversed(chosen):
            m = f.metadata
            default = m["cli_default"] if m["cli_default"] is not None else f.default
            kind: Any = None
            if m["choices"]:
                kind = click.Choice(m["choices"])
            elif m["path"]:
                kind = click.Path(dir_okay=False, path_type=Path)
            elif not isinstance(default, bool | tuple) and default is not None:
                kind = type(default)
            command = click.option(
                flag_name(f),
                f.name,
                type=kind,
                is_flag=isinstance(default, bool),
                multiple=m["multiple"],
                default=None if m["multiple"] else default,
                envvar=m["env"],
                show_envvar=bool(m["env"]),
                show_default=not (default is None or default is False or default == ()),
                metavar=m["metavar"],
                help=m["help"],
            )(command)
        return command

    return decorate


def _options_from(kw: dict[str, Any], **fixed: Any) -> ImportOptions:
    """The :class:`ImportOptions` named in ``kw`` (taken out of it), with ``fixed`` on top."""
    names = {f.name for f in dataclasses.fields(ImportOptions)}
    values = {name: kw.pop(name) for name in list(kw) if name in names}
    return ImportOptions(**{**values, **fixed})


@dataclass(frozen=True)
class _Display:
    """How the command shows a run; the settings no library call needs."""

    config: ConfigFile | None
    quiet: bool
    status_every: float
    log_format: str
    key_on_command_line: bool = False
    rerun_args: tuple[str, ...] = ()


def _display_options(f: Any) -> Any:
    for option in reversed(
        [
            config_option,
            click.option(
                "-q",
                "--quiet",
                is_flag=True,
                help="No live display: plain status lines (see --status-every).",
            ),
            click.option(
                "--status-every",
                type=click.FloatRange(min=0),
                default=10.0,
                show_default=True,
                help="Seconds between status lines when not on a terminal or --quiet (0: none).",
            ),
            click.option(
                "--log-format",
                type=click.Choice(LOG_FORMATS),
                default="text",
                show_default=True,
                help="Log lines (and status lines) as text or one JSON object per line.",
            ),
            click.option(
                "-v", "--verbose", count=True, help="More log output (-v info, -vv debug)."
            ),
        ]
    ):
        f = option(f)
    return f


def _display_from(kw: dict[str, Any], options: ImportOptions, mock: bool) -> _Display:
    """Take the display settings out of ``kw``, set up logging, note how the key was given."""
    ctx = click.get_current_context()
    verbose = kw.pop("verbose") + (ctx.find_object(dict) or {}).get("verbose", 0)
    log_format = kw.pop("log_format")
    setup_logging(verbose, log_format)
    config = kw.pop("config", None)
    if config is not None:
        for warning in config.warnings():
            click.echo(f"warning: {warning}", err=True)
    return _Display(
        config=config,
        quiet=kw.pop("quiet"),
        status_every=kw.pop("status_every"),
        log_format=log_format,
        # Said after the summary of a run that used the key (not before a usage
        # error), where it is not scrolled away by the progress display.
        key_on_command_line=(
            ctx.get_parameter_source("api_key") is click.core.ParameterSource.COMMANDLINE
        ),
        rerun_args=_rerun_args(options, config, mock),
    )


@main.command()
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=True, allow_dash=True))
@_display_options
@_table_options(*SECTIONS)
@click.option("--no-state", is_flag=True, help="Record nothing (no --resume after a crash).")
@click.option(
    "--mock",
    is_flag=True,
    help="Start the embedded fake API on a free loopback port and import into it.",
)
@click.option(
    "--mock-rate", type=float, help="With --mock: the fake API's own rate limit (429 above it)."
)
@_fault_options("mock-")
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
    mock, mock_rate = kw.pop("mock"), kw.pop("mock_rate")
    config: ConfigFile | None = kw.get("config")
    fixed: dict[str, Any] = {}
    if kw.pop("no_state"):
        fixed["state_path"] = None
    if config is not None and config.has_columns and not kw.get("mapping_file"):
        # A config file with [columns] tables is also the mapping file.
        fixed["mapping_file"] = config.path
    if mock:
        from .fake_api import DEFAULT_KEY

        fixed["api_key"] = DEFAULT_KEY
    options = _options_from(kw, **fixed)
    display = _display_from(kw, options, mock)
    if not mock:
        sys.exit(_run_import(input_path, options, display))
    # Only --mock needs the fake API, and with it aiohttp's server side.
    from .fake_api import DEFAULT_KEY, FakeApiServer

    with FakeApiServer(_fake_config(kw, api_key=DEFAULT_KEY, rate=mock_rate)) as server:
        click.echo(f"fake API listening on {server.url}", err=True)
        code = _run_import(input_path, options.replace(base_url=server.url), display)
        click.echo(f"fake API received {len(server.state.applied)} customers", err=True)
    sys.exit(code)


def _run_import(input_path: str, options: ImportOptions, display: _Display) -> int:
    from .pipeline import import_file

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
        with open_progress(
            quiet=display.quiet,
            status_every=display.status_every,
            as_json=display.log_format == "json",
            stream=sys.stderr,
        ) as progress:
            report = import_file(input_path, options, observer=progress.observe, stop=stop)
    except (RunStopped, AccountingMismatch) as exc:
        if exc.report is not None:
            _print_summary(exc.report, display)
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _print_summary(report, display)
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


def _rerun_args(options: ImportOptions, config: ConfigFile | None, mock: bool) -> tuple[str, ...]:
    """Options the re-run command must repeat to reach the same API (never the key)."""
    args: list[str] = []
    if config is not None:
        args += ["--config", str(config.path)]
    if mock:
        return (*args, "--mock")
    if options.base_url:
        args += ["--base-url", options.base_url]
        if options.insecure_http:
            args.append("--insecure-http")
    elif options.region != "us":
        args += ["--region", options.region]
    return tuple(args)


def _print_summary(report: ImportReport, display: _Display) -> None:
    rerun = rerun_command(report, display.rerun_args)
    for line in summary_lines(report, rerun):
        click.echo(line)
    if display.log_format == "json":
        # One machine-readable line for log collectors, next to the human summary.
        summary = {"event": "summary", **report.to_dict()}
        if rerun:
            summary["rerun_command"] = rerun
        click.echo(json.dumps(summary, ensure_ascii=False, default=str), err=True)
    _print_preview(report)
    if display.key_on_command_line:
        click.echo(
            "warning: --api-key is visible to other users in the process list and stays in "
            "your shell history; prefer the BLUESHIFT_API_KEY environment variable",
            err=True,
        )


def _print_preview(report: ImportReport) -> None:
    if report.preview:
        click.echo(f"first {len(report.preview)} payloads as they would be sent:")
        for payload in report.preview:
            click.echo("  " + encode_payload(payload).decode())


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


@main.command()
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=True, allow_dash=True))
@config_option
@_table_options(
    "input", "cleaning", only=("rejects_path", "report_path", "overwrite", "preview_size")
)
def validate(input_path: str, **kw: Any) -> None:
    """Check FILE without sending anything: no network, no API key needed.

    Prints the resolved column mapping, how many rows are valid, rejected
    (by reason) or merged, and the first payloads exactly as ``run`` would
    send them. Takes every input, mapping and cleaning option of ``run``, so
    its verdict is the one ``run --dry-run`` gives. Exit 0 when every row is
    valid, 1 when rows were rejected, 2 for an unusable file.

    \b
    Examples:
      blueshift-import validate customers.csv
      blueshift-import validate export.csv --mapping mapping.toml --show 20 \\
          --rejects rejects.csv
    """
    from .pipeline import import_file

    config: ConfigFile | None = kw.pop("config", None)
    fixed: dict[str, Any] = {"dry_run": True}
    if config is not None and config.has_columns and not kw.get("mapping_file"):
        fixed["mapping_file"] = config.path
    report = import_file(input_path, _options_from(kw, **fixed))
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
    _print_preview(report)


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
_STATE_OPTION = _table_options(only=("state_path",))


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
