"""The ``blueshift-import`` command: parses options, calls the library, prints, exits.

No parsing, retry or HTTP logic lives here: each command is one call into
the library. Exit codes: 0 everything delivered; 1 finished but rows were
rejected or dead-lettered beyond ``--max-error-rate``; 2 usage or input error;
3 stopped early (key rejected, API down); 4 stopped by a local fault (a disk
full, a file that cannot be written, an input damaged mid-file); 130 / 143
interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
from click.core import ParameterSource

from .config import ConfigFile, default_map, load_config
from .errors import (
    AccountingMismatch,
    ApiUnreachable,
    ImporterError,
    RunStopped,
    StateError,
    UsageError,
)
from .logs import LOG_FORMATS, secret_filter, setup_logging
from .options import SECTIONS, ImportOptions, cli_default, cli_fields, flag_name, spec_of
from .outcomes import ImportReport

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_STOPPED, EXIT_FAULT = 0, 1, 2, 3, 4
#: Left out of the command that resumes a stopped run: the key is never printed, and
#: a resumed run must append to its files, not replace them or start over.
_NOT_IN_RESUME = ("--api-key", "--overwrite", "--force", "--resume")
EXIT_SIGINT, EXIT_SIGTERM = 130, 143
_EXIT_ON_SIGNAL: dict[int, int] = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}

Decorator = Callable[[Any], Any]


def _options(*decorators: Decorator) -> Decorator:
    """Click options applied as if stacked in this order above the command."""

    def decorate(command: Any) -> Any:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return decorate


class _Group(click.Group):
    """Turns our errors into one line on stderr and exit 2, never a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept to print the command that resumes a stopped run.
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ImporterError as exc:
            click.echo(f"error: {cli_message(exc)}", err=True)
            sys.exit(exc.exit_code)


def cli_message(exc: ImporterError) -> str:
    """``exc``'s message with the option names it speaks of shown as flags (``--batch-size``)."""
    text = str(exc)
    flags = {f.name: flag_name(f) for f in dataclasses.fields(ImportOptions)}
    for name in exc.options:
        if name in flags:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flags[name], text)
    return text


def _show_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        # Looked up only when asked: importlib.metadata costs every command a few dozen ms.
        from . import __version__

        click.echo(f"blueshift-import, version {__version__}")
        ctx.exit()


_VERBOSE = click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_show_version,
    help="Show the version and exit.",
)  # fmt: skip
@_VERBOSE
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Bulk-import customer files (CSV, JSONL, Parquet) into Blueshift's customers API.

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


_CONFIG = click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    is_eager=True,
    callback=_load_config_option,
    help="TOML file with options and the column mapping (flags and environment win).",
)

#: The fake API's settings (flag, type, metavar, help), shared by ``fake-api`` and, prefixed
#: ``mock-``, by ``run --mock``; unset ones keep FakeApiConfig's defaults.
_FAKE_API_SETTINGS = (
    ("rate", float, "N", "Requests per second before answering 429 (default: unlimited)."),
    ("burst", int, "N", "Requests allowed at once above the rate (default: 1)."),
    (
        "fault",
        str,
        "STATUS=P",
        "Answer STATUS with probability P, e.g. 503=0.1 (repeatable; 404, 409, 429, 500, 502, "
        "503, 504).",
    ),
    ("latency", float, "SECONDS", "Mean answer time, each within ±1/3 of it (default: 0)."),
    ("slow", float, "P", "Probability of answering after --{p}slow-seconds (records applied)."),
    ("slow-seconds", float, "SECONDS", "How late a slow answer comes (default: 5)."),
    ("drop", float, "P", "Probability of closing the connection with no answer."),
    ("applied-then-fail", float, "P", "Probability of applying the records, then failing."),
    ("outage", str, "START:END", "Answer 503 from START to END seconds after the first request."),
    ("revoke-key-after", int, "N", "Answer 401 to every request after the first N."),
    ("record-errors", float, "P", "Probability per record of an error in a 200 (half transient)."),
    ("seed", int, "N", "Seed for the faults."),
    ("record", Path, "FILE", "Append every applied customer to this JSONL file."),
)


def _fake_api_options(prefix: str) -> Decorator:
    """The fake API's settings as flags named ``--{prefix}rate`` etc. (parameters ``fake_*``)."""
    return _options(
        *(
            click.option(
                f"--{prefix}{flag}",
                "fake_" + flag.replace("-", "_"),
                type=kind,
                metavar=metavar,
                multiple=flag == "fault",
                help=text.format(p=prefix),
            )
            for flag, kind, metavar, text in _FAKE_API_SETTINGS
        )
    )


def _fake_config(kw: dict[str, Any], api_key: str) -> Any:
    """A :class:`FakeApiConfig` accepting ``api_key``, from the settings (``fake_*``) in ``kw``.

    Raises :class:`UsageError` for a malformed or impossible fault.
    """
    from .fake_api import FakeApiConfig, parse_fault_spec, parse_outage_spec

    settings = {
        name.removeprefix("fake_"): value
        for name, value in kw.items()
        if name.startswith("fake_") and value is not None
    }
    settings["record_path"] = settings.pop("record", None)
    try:
        settings["faults"] = dict(parse_fault_spec(spec) for spec in settings.pop("fault"))
        if "outage" in settings:
            settings["outage"] = parse_outage_spec(settings["outage"])
        return FakeApiConfig(api_key=api_key, **settings)
    except ValueError as exc:
        raise UsageError(f"fake API faults: {exc}") from None


def _table_options(*sections: str, only: tuple[str, ...] = (), exists: bool = False) -> Decorator:
    """Click options for the :class:`ImportOptions` fields of ``sections`` (and ``only``);
    ``exists``: their paths must name existing files."""
    options = []
    for f in cli_fields():
        m = spec_of(f)
        if m.section not in sections and f.name not in only:
            continue
        default = cli_default(f)
        kind: Any = None
        if m.choices:
            kind = click.Choice(m.choices)
        elif m.path:
            kind = click.Path(
                exists=exists, dir_okay=m.directory, file_okay=not m.directory, path_type=Path
            )
        elif m.kind is not None:
            kind = m.kind
        elif not isinstance(default, bool | tuple) and default is not None:
            kind = type(default)
        options.append(
            click.option(
                flag_name(f),
                f.name,
                type=kind,
                is_flag=isinstance(default, bool),
                multiple=m.multiple,
                default=None if m.multiple else default,
                envvar=m.env,
                show_envvar=bool(m.env),
                show_default=not (default is None or default is False or default == ()),
                metavar=m.metavar,
                help=m.help,
            )
        )
        if m.alias:
            alias, value = m.alias
            help = f"Short for {flag_name(f)} {value}."
            options.append(click.option(alias, f.name, flag_value=value, help=help))
    return _options(*options)


def _options_from(kw: dict[str, Any], config: ConfigFile | None, **fixed: Any) -> ImportOptions:
    """The :class:`ImportOptions` named in ``kw`` (taken out of it), with ``fixed`` on top.

    A ``config`` file with ``[columns]`` tables is also the mapping file,
    unless ``--mapping`` names another.
    """
    if config is not None and config.has_columns and not kw.get("mapping_file"):
        fixed.setdefault("mapping_file", config.path)
    names = {f.name for f in dataclasses.fields(ImportOptions)}
    values = {name: kw.pop(name) for name in list(kw) if name in names}
    return ImportOptions(**{**values, **fixed})


@dataclass(frozen=True)
class _Display:
    """How the command shows a run; the settings no library call needs."""

    quiet: bool
    status_every: float
    log_format: str
    key_on_command_line: bool
    rerun_args: tuple[str, ...]
    #: What importing the fixed rejects file repeats: the API's address and the cleaning options.
    fix_args: tuple[str, ...] = ()
    #: The command that resumes this run if it stops (None: it cannot be resumed).
    resume_command: str | None = None


_DISPLAY_OPTIONS = _options(
    _CONFIG,
    click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="Print only errors and the final accounting line.",
    ),
    click.option(
        "--status-every",
        type=click.FloatRange(min=0),
        default=10.0,
        show_default=True,
        help="Seconds between status lines when not on a terminal (0: none).",
    ),
    click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        help="Log lines (and status lines) as text or one JSON object per line.",
    ),
    _VERBOSE,
)


#: FILE... of run and validate: paths, URLs, globs or directories (see importer.source.inputs).
_INPUTS = click.argument("input_paths", metavar="FILE...", nargs=-1, required=True)


@main.command()
@_INPUTS
@_DISPLAY_OPTIONS
@_table_options(*SECTIONS)
@click.option("--no-state", is_flag=True, help="Record nothing (no --resume after a crash).")
@click.option("--mock", is_flag=True, help="Import into the embedded fake API (see --mock-*).")
@_fake_api_options("mock-")
def run(
    input_paths: tuple[str, ...],
    config: ConfigFile | None,
    quiet: bool,
    status_every: float,
    log_format: str,
    verbose: int,
    no_state: bool,
    mock: bool,
    **kw: Any,
) -> None:
    """Import FILE (CSV or JSONL, optionally .gz, or Parquet; a path, a URL, - for stdin).

    Several files, a glob or a directory are read one after the other in one run.

    \b
    Examples:
      export BLUESHIFT_API_KEY=...
      blueshift-import run customers.csv
      blueshift-import run s3://exports/customers-2026-12-04.csv.gz
      blueshift-import run 's3://exports/2026-12-04/part-*.csv.gz' --resume
      blueshift-import run customers.jsonl.gz --rate 5 \\
          --report report.json --dead-letter failed.jsonl
      blueshift-import run customers.csv --mock     # no credentials needed
      blueshift-import run customers.csv --config import.toml --quiet
      blueshift-import run customers.csv --resume   # after a crash or Ctrl-C
      blueshift-import run nightly.csv --changed-only --output-dir runs
    """
    ctx = click.get_current_context()
    verbosity = verbose + ctx.ensure_object(dict).get("verbose", 0)
    setup_logging(-1 if quiet else verbosity, log_format)
    for warning in config.warnings() if config is not None and not quiet else ():
        click.echo(f"warning: {warning}", err=True)
    fixed: dict[str, Any] = {"state_path": None} if no_state else {}
    default_state = not no_state and kw.get("state_path") is None
    if default_state:
        fixed["state_path"] = Path("state.sqlite")  # replaced below, once the account is known
    if mock:
        from .fake_api import DEFAULT_KEY

        fixed["api_key"] = DEFAULT_KEY
    options = _options_from(kw, config, **fixed)
    if default_state:
        from .state import default_state_path

        # One state per account, wherever the command runs from (--mock: one for all).
        account_url = "mock" if mock else options.resolved_base_url
        options = options.replace(state_path=default_state_path(account_url, options.api_key))
    display = _Display(
        quiet,
        status_every,
        log_format,
        # Said after the summary of a run that used the key (not before a usage
        # error), where it is not scrolled away by the progress display.
        key_on_command_line=ctx.get_parameter_source("api_key") is ParameterSource.COMMANDLINE,
        rerun_args=_rerun_args(options, config, mock),
        fix_args=_rerun_args(options, config, mock) + _cleaning_args(options, ctx),
        resume_command=_resume_command(ctx.meta.get("argv"), options, input_paths),
    )
    if not mock:
        sys.exit(_run_import(input_paths, options, display))
    # Only --mock needs the fake API, and with it aiohttp's server side.
    from .fake_api import FakeApiServer

    with FakeApiServer(_fake_config(kw, str(options.api_key))) as server:
        if not quiet:
            click.echo(f"fake API listening on {server.url}", err=True)
        code = _run_import(input_paths, options.replace(base_url=server.url), display)
        if not quiet:
            click.echo(f"fake API received {len(server.state.applied)} customers", err=True)
    sys.exit(code)


def _run_import(input_paths: tuple[str, ...], options: ImportOptions, display: _Display) -> int:
    from .pipeline import import_file
    from .progress import RunProgress

    secret_filter.add(options.api_key)  # never in a log line from now on
    if options.shared_limit:
        secret_filter.add(urlsplit(options.shared_limit).password)
    if not options.api_key and not options.dry_run:
        raise UsageError("no API key: set BLUESHIFT_API_KEY (or use --mock to try it out)")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            os._exit(_EXIT_ON_SIGNAL[signum])
        received.append(signum)
        click.echo("stopping: finishing requests in flight (again to quit at once)", err=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in _EXIT_ON_SIGNAL}
    try:
        as_json = display.log_format == "json"
        with RunProgress(
            sys.stderr, quiet=display.quiet, every=display.status_every, as_json=as_json
        ) as progress:
            report = import_file(input_paths, options, observer=progress.observe, stop=stop)
    except (RunStopped, AccountingMismatch) as exc:
        if exc.report is not None:
            if isinstance(exc, RunStopped):
                exc.report.stopped = cli_message(exc)  # the summary names flags too
            # An unreachable API needs its address fixed first: resuming as is cannot help.
            _print_summary(exc.report, display, resumable=not isinstance(exc, ApiUnreachable))
        if isinstance(exc, RunStopped) and exc.report_unwritten and exc.report is not None:
            click.echo(
                f"error: cannot write the report {exc.report_unwritten}; here it is:", err=True
            )
            click.echo(json.dumps(exc.report.to_dict(), ensure_ascii=False, default=str), err=True)
        click.echo(f"error: {cli_message(exc)}", err=True)
        return exc.exit_code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    _print_summary(report, display)
    if received:
        return _EXIT_ON_SIGNAL[received[0]]
    return _exit_code(report, options.max_error_rate)


def _exit_code(report: ImportReport, max_error_rate: float) -> int:
    failed = report.rejected + report.dead_lettered
    tolerated = report.rows_read and report.error_rate <= max_error_rate
    return EXIT_OK if failed == 0 or tolerated else EXIT_ERRORS


def _rerun_args(options: ImportOptions, config: ConfigFile | None, mock: bool) -> tuple[str, ...]:
    """Options the re-run command must repeat to reach the same API (never the key)."""
    args = ["--config", str(config.path)] if config is not None else []
    if mock:
        args.append("--mock")
    elif options.base_url:
        args += ["--base-url", options.base_url]
        if options.insecure_http:
            args.append("--insecure-http")
    elif options.region != "us":
        args += ["--region", options.region]
    return tuple(args)


def _cleaning_args(options: ImportOptions, ctx: click.Context) -> tuple[str, ...]:
    """The mapping and cleaning flags given on the command line, to repeat them."""
    args: list[str] = []
    for f in cli_fields("cleaning"):
        if ctx.get_parameter_source(f.name) is not ParameterSource.COMMANDLINE:
            continue
        value, flag = getattr(options, f.name), flag_name(f)
        if isinstance(value, bool):
            args += [flag] if value else []
        elif isinstance(value, tuple):
            for item in value:
                args += [flag, "=".join(item) if isinstance(item, tuple) else str(item)]
        elif value is not None:
            args += [flag, str(value)]
    return tuple(args)


def _resume_command(
    argv: list[str] | None, options: ImportOptions, input_paths: tuple[str, ...]
) -> str | None:
    """The command line of this run with ``--resume``, or None if it cannot be resumed.

    The API key, ``--overwrite`` and ``--force`` are left out (see ``_NOT_IN_RESUME``).
    """
    if argv is None or options.state_path is None or options.dry_run or "-" in input_paths:
        return None
    words: list[str] = []
    skip = False
    for word in argv:
        name = word.split("=", 1)[0]
        if skip or name in _NOT_IN_RESUME:
            # The key's value follows its flag unless given as --api-key=KEY.
            skip = not skip and word == "--api-key"
            continue
        words.append(word)
    return shlex.join(["blueshift-import", *words, "--resume"])


def _print_summary(report: ImportReport, display: _Display, resumable: bool = True) -> None:
    from .progress import fix_command, rerun_command, summary_lines

    resume = display.resume_command if report.stopped and resumable else None
    if display.quiet:
        click.echo(f"accounting: {report.accounting_line()}")
        return
    rerun = rerun_command(report, display.rerun_args)
    fix = fix_command(report, display.fix_args)
    for line in summary_lines(report, rerun, fix):
        click.echo(line)
    unread = (report.bytes_total or 0) - report.bytes_read
    if report.stopped and unread > 0:
        # Rows never read cannot be counted; not sent counts only rows read.
        click.echo(f"  not read         {unread} of {report.bytes_total} input bytes")
    if resume:
        click.echo(f"  resume with: {resume}")
    if display.log_format == "json":
        # One machine-readable line for log collectors, next to the human summary.
        summary = {"event": "summary", **report.to_dict()}
        if rerun:
            summary["rerun_command"] = rerun
        if fix:
            summary["fix_command"] = fix
        if resume:
            summary["resume_command"] = resume
        click.echo(json.dumps(summary, ensure_ascii=False, default=str), err=True)
    if display.key_on_command_line:
        click.echo(
            "warning: --api-key is visible to other users in the process list and stays in "
            "your shell history; prefer the BLUESHIFT_API_KEY environment variable",
            err=True,
        )


@main.command("init-config")
@click.argument("input_path", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@_table_options(only=("format", "encoding", "delimiter", "storage_options"))
def init_config(input_path: str, **kw: Any) -> None:
    """Print a starter config file for FILE, with the column mapping detected from its header.

    Only column names are read into the file, never values. Edit it, then pass
    it to `run` with --config.

    \b
    Example:
      blueshift-import init-config customers.csv > import.toml
      blueshift-import run customers.csv --config import.toml
    """
    from .config import detect_starter_config

    options = _options_from(kw, None, chunk_rows=1_000)
    click.echo(detect_starter_config(input_path, options), nl=False)


@main.command()
@_INPUTS
@_CONFIG
@_table_options(
    "input", "cleaning", only=("rejects_path", "report_path", "overwrite", "preview_size")
)
def validate(input_paths: tuple[str, ...], config: ConfigFile | None, **kw: Any) -> None:
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
    from .progress import validation_lines

    report = import_file(input_paths, _options_from(kw, config, dry_run=True))
    for line in validation_lines(report):
        click.echo(line)
    sys.exit(EXIT_OK if report.rejected == 0 else EXIT_ERRORS)


@main.command("fake-api")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free port).")
@click.option(
    "--api-key", envvar="FAKE_API_KEY", default="fake-api-key", show_default=True,
    help="The key the fake API accepts.",
)  # fmt: skip
@_fake_api_options("")
def fake_api(host: str, port: int, api_key: str, **settings: Any) -> None:
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

    config = _fake_config(settings, api_key)
    click.echo(f"fake Blueshift API on http://{host}:{port} (Ctrl-C to stop)", err=True)
    serve_forever(config, host, port)


# -- presets ------------------------------------------------------------------


@main.group("presets")
def presets_group() -> None:
    """The mapping files for platform exports (Shopify, HubSpot, Braze, ...).

    `run` and `validate` pick the preset whose headers the file has, unless
    --preset names one (or none). A preset is a mapping file: copy one, edit
    it, and pass it with --mapping.

    \b
    Examples:
      blueshift-import presets list
      blueshift-import presets show hubspot > mapping.toml
    """


@presets_group.command("list")
def presets_list() -> None:
    """List the presets: name, export, and the headers that identify it.

    \b
    Example:
      blueshift-import presets list
    """
    from .presets import load_preset, preset_names

    for name in preset_names():
        preset = load_preset(name)
        click.echo(f"{name:<24} {preset.description}; detected by: {', '.join(preset.detect)}")


@presets_group.command("show")
@click.argument("name")
def presets_show(name: str) -> None:
    """Print the preset NAME as a mapping file, to copy and adapt.

    \b
    Example:
      blueshift-import presets show shopify > mapping.toml
      blueshift-import run customers_export.csv --preset none --mapping mapping.toml
    """
    from .presets import load_preset

    click.echo(load_preset(name).text, nl=False)


# -- state: resume and incremental imports ------------------------------------
_STATE_OPTION = _table_options(only=("state_path",), exists=True)


def _state_paths(state_path: Path | None) -> list[Path]:
    """The state named by --state, else every state in the user's state directory."""
    from .state import state_dir

    if state_path is not None:
        return [state_path]
    paths = sorted(state_dir().glob("*.sqlite"))
    if not paths:
        raise StateError(f"no state in {state_dir()} (nothing was imported yet); see --state")
    return paths


@main.group("state")
def state_group() -> None:
    """Inspect and manage the states kept for --resume and --changed-only.

    Without --state, each command acts on every state in the user's state
    directory (one per destination account).

    \b
    Examples:
      blueshift-import state info
      blueshift-import state prune --older-than 30d
      blueshift-import state reset --yes --state /var/lib/imports/state.sqlite
    """


@state_group.command("info")
@_STATE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def state_info(state_path: Path | None, as_json: bool) -> None:
    """Show each state's size, runs and last success per input (safe while a run uses it).

    \b
    Example:
      blueshift-import state info --state /var/lib/imports/state.sqlite
    """
    from .state import open_summary

    summaries = [open_summary(path) for path in _state_paths(state_path)]
    if as_json:
        click.echo(json.dumps(summaries, indent=2))
        return
    for summary in summaries:
        click.echo(f"state {summary['path']} ({summary['size_bytes']} bytes)")
        if summary["locked_by"]:
            click.echo(f"  in use by the run with PID {summary['locked_by']}")
        click.echo(f"  customers with a payload hash: {summary['payload_hashes']}")
        for source, at in summary["last_success"].items():
            click.echo(f"  last success {_when(at)}  {source}")
        click.echo(f"  runs: {summary['run_count']} (latest first)")
        for r in summary["runs"]:
            click.echo(
                f"  #{r['id']:<4} {r['status']:<11} {_when(r['updated_at'])}  "
                f"confirmed {r['confirmed']}, rejected {_known(r['rejected'])}, "
                f"dead-lettered {r['dead_lettered']}, "
                f"attempts {r['attempts']}  {r['source']}"
            )


def _known(count: int | None) -> str:
    """A count a state of schema 4 or older did not keep is unknown."""
    return "?" if count is None else str(count)


def _when(timestamp: float) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")


@state_group.command("reset")
@_STATE_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def state_reset(state_path: Path | None, yes: bool) -> None:
    """Forget every run and payload hash (the next --changed-only run sends everything).

    \b
    Example:
      blueshift-import state reset --yes
    """
    from .state import StateStore

    for path in _state_paths(state_path):
        if not yes:
            click.confirm(f"forget everything recorded in {path}?", abort=True)
        with StateStore(path) as store:
            store.reset()
        click.echo(f"state {path} reset")


@state_group.command("prune")
@_STATE_OPTION
@click.option(
    "--older-than",
    required=True,
    metavar="AGE",
    help="Forget runs and payload hashes untouched for this long: 30d, 12h, 2w.",
)
def state_prune(state_path: Path | None, older_than: str) -> None:
    """Forget runs and payload hashes older than AGE, and shrink the file.

    \b
    Example:
      blueshift-import state prune --older-than 30d
    """
    from .state import StateStore, parse_age

    seconds = parse_age(older_than)
    for path in _state_paths(state_path):
        with StateStore(path) as store:
            removed = store.prune(seconds)
        click.echo(
            f"pruned {removed['runs']} run(s) and {removed['payloads']} payload hash(es) "
            f"older than {older_than} from {path}"
        )
