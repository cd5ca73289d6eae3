"""The options of one import run: declared once, validated once, shared read-only.

Each option is one field of :class:`ImportOptions`, declared with
:func:`option`: its default, help text, flag, environment variable and
section live in that one place. The command line builds its options from
these fields (:func:`cli_fields`), a configuration file accepts the same
names, and the resume fingerprint (:func:`fingerprint`) is the set of
fields marked ``shapes=True``: the ones that decide what a row becomes.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import UsageError
from .mapping import parse_map_option
from .presets import AUTO, NONE, preset_names

#: Blueshift's hard limit of customers per bulk call; more is answered with 413.
MAX_BATCH_SIZE = 50

REGION_URLS = {
    "us": "https://api.getblueshift.com",
    "eu": "https://api.eu.getblueshift.com",
}

FORMATS = ("csv", "jsonl", "parquet")
#: The URL schemes the redis client takes for ``--shared-limit``.
REDIS_SCHEMES = ("redis", "rediss", "unix")
ON_INVALID = ("drop-field", "skip-row", "stop")
DATE_ORDERS = ("auto", "month-first", "day-first")
#: Sections of ``--help`` and of the README's options table, in order.
SECTIONS = ("connection", "pace", "input", "cleaning", "state", "outputs")


@dataclass(frozen=True)
class OptionSpec:
    """How one option appears outside the library: help, section, flag and the rest.

    ``flag`` defaults to the field name with dashes; ``kind`` is the value's
    type where a None default does not tell it; ``secret`` keeps the value out
    of the options' ``repr`` (a key, a password); ``shapes`` marks options
    that decide what a row becomes (a resumed run must use the same ones);
    ``directory`` marks a path that names a directory; ``cli=False`` keeps an option
    to the library; ``cli_default`` is the
    command line's default where it differs from the library's; ``alias`` is
    ``(flag, value)``, a flag that is short for the option set to that value.
    """

    help: str
    section: str
    flag: str | None = None
    kind: type | None = None
    secret: bool = False
    env: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    path: bool = False
    directory: bool = False
    multiple: bool = False
    shapes: bool = False
    cli: bool = True
    cli_default: Any = None
    alias: tuple[str, Any] | None = None


def option(default: Any, help: str, **spec: Any) -> Any:
    """Declare one option as a dataclass field; ``spec`` as for :class:`OptionSpec`."""
    found = OptionSpec(help, **spec)
    assert found.section in SECTIONS, found.section
    return field(default=default, metadata={"spec": found}, repr=not found.secret)


def spec_of(f: dataclasses.Field[Any]) -> OptionSpec:
    """The :class:`OptionSpec` of an option field."""
    return f.metadata["spec"]  # type: ignore[no-any-return]


_connection = partial(option, section="connection")
_pace = partial(option, section="pace")
_input = partial(option, section="input", shapes=True)
_cleaning = partial(option, section="cleaning", shapes=True)
_state = partial(option, section="state")
_outputs = partial(option, section="outputs")


@dataclass(frozen=True)
class ImportOptions:
    """Everything that decides how a file is imported.

    Defaults follow Blueshift's recommendations (5 calls per second, 50
    customers per call). ``column_map`` takes a mapping, pairs or
    ``"Column=field"`` strings; paths take strings. Invalid values raise
    :class:`UsageError` on creation.
    """

    # -- connection --
    api_key: str | None = _connection(
        None,
        "Blueshift user API key (prefer the environment variable).",
        env="BLUESHIFT_API_KEY",
        secret=True,
    )
    region: str = _connection(
        "us", "Blueshift data centre.", env="BLUESHIFT_REGION", choices=tuple(REGION_URLS)
    )
    base_url: str | None = _connection(
        None, "Override the API base URL (e.g. a fake API).", env="BLUESHIFT_BASE_URL"
    )
    insecure_http: bool = _connection(False, "Allow plain http:// to a non-loopback host.")

    # -- pace and retries --
    rate: float = _pace(5.0, "Requests per second (Blueshift recommends 5).")
    concurrency: int | None = _pace(
        None,
        "Fixed requests in flight (default: follows the API's answer times).",
        kind=int,
    )
    max_concurrency: int = _pace(32, "Most requests in flight when following answer times.")
    shared_limit: str | None = _pace(
        None,
        "Share --rate with every run naming this Redis and API key.",
        env="BLUESHIFT_SHARED_LIMIT",
        metavar="URL",
        secret=True,  # the URL may hold a password
    )
    batch_size: int = _pace(MAX_BATCH_SIZE, "Customers per call (at most 50).", shapes=True)
    max_batch_bytes: int = _pace(1_000_000, "Largest request body.", shapes=True, cli=False)
    timeout: float = _pace(30.0, "Seconds to wait for one answer.")
    max_retries: int = _pace(8, "Retries of a failing call.")
    max_backoff: float = _pace(60.0, "Longest wait between retries, seconds.")
    backoff_base: float = _pace(0.5, "First wait between retries, seconds.", cli=False)
    give_up_after: float = _pace(300.0, "Stop (exit 3) when nothing succeeded this many seconds.")

    # -- input --
    format: str | None = _input(
        None, "Input format (default: from the extension).", choices=FORMATS
    )
    encoding: str | None = _input(
        None, "Input encoding (default: detected; UTF-8, UTF-16 with BOM, else cp1252)."
    )
    delimiter: str | None = _input(None, "CSV delimiter (default: sniffed from , ; tab |).")
    storage_options: tuple[tuple[str, Any], ...] = _input(
        (), "Option for a URL's store, e.g. endpoint_url=URL (repeatable; no credentials).",
        flag="--storage-option", metavar="KEY=VALUE", multiple=True,
        shapes=False,
    )  # fmt: skip
    limit: int | None = _input(
        None,
        "Import only the first N rows (--resume sends the rest).",
        kind=int,
        metavar="N",
        shapes=False,
    )
    chunk_rows: int = _input(20_000, "Rows read and cleaned at a time.", shapes=False, cli=False)
    max_field_bytes: int = _input(1_000_000, "Reject a row with a CSV cell longer than this.")
    max_columns: int = _input(1_000, "Refuse a file with more columns (or JSONL keys) than this.")
    max_json_depth: int = _input(32, "Reject a JSONL record nested deeper than this.")
    max_line_bytes: int = _input(4_000_000, "Reject a row on a physical line longer than this.")

    # -- mapping and cleaning --
    mapping_file: Path | None = _cleaning(
        None, 'TOML mapping file of [columns."Name"] tables.',
        flag="--mapping", metavar="FILE", path=True,
    )  # fmt: skip
    preset: str = _cleaning(
        AUTO, "Platform preset: auto, none or a name.",
        metavar="NAME",
    )  # fmt: skip
    column_map: tuple[tuple[str, str], ...] = _cleaning(
        (), "Map an input column to a Blueshift field (repeatable).", flag="--map",
        metavar="'COLUMN=field'", multiple=True,
    )  # fmt: skip
    drop_columns: tuple[str, ...] = _cleaning(
        (), "Leave a column out (repeatable).", flag="--drop", metavar="COLUMN", multiple=True
    )
    drop_unmapped: bool = _cleaning(
        False,
        "Drop columns that match no Blueshift field (default: send as custom attributes).",
    )
    phone_region: str = _cleaning(
        "US", "Region for phone numbers written without a country code (e.g. US, GB).", metavar="CC"
    )
    on_invalid: str = _cleaning(
        "drop-field",
        "A bad value drops its field, rejects its row (--strict), or stops the run.",
        choices=ON_INVALID,
        alias=("--strict", "skip-row"),
    )
    date_order: str = _cleaning(
        "auto",
        "Order of dates like 3/4/2021 (auto: per column, from the file).",
        choices=DATE_ORDERS,
    )
    empty_as_null: bool = _cleaning(
        False, "Send empty cells as null (clearing the field) instead of leaving them out."
    )

    # -- state: resume and incremental imports --
    state_path: Path | None = _state(
        None,
        "State for --resume and --changed-only (default: one per account in the user's state dir).",
        flag="--state",
        env="BLUESHIFT_IMPORT_STATE",
        path=True,
    )
    resume: bool = _state(
        False,
        "Continue the interrupted run of FILE: skip rows already done, append to outputs.",
    )
    force: bool = _state(False, "With --resume: start over even if FILE or the options changed.")
    changed_only: bool = _state(
        False, "Skip customers whose payload equals the last one the API confirmed (nightly runs)."
    )

    # -- outputs --
    report_path: Path | None = _outputs(
        None, "Write the JSON report here.", flag="--report", path=True
    )
    dead_letter_path: Path | None = _outputs(
        None,
        "JSONL file for customers that could not be delivered (re-importable).",
        flag="--dead-letter",
        path=True,
    )
    rejects_path: Path | None = _outputs(
        None,
        "Rows that failed validation, in the input's format (default: a new file).",
        flag="--rejects",
        path=True,
    )
    output_dir: Path | None = _outputs(
        None,
        "Put each run's report, rejects and dead letters in DIR/<UTC time>/; "
        "DIR/latest points there.",
        metavar="DIR",
        path=True,
        directory=True,
    )
    overwrite: bool = _outputs(False, "Replace existing output files.")
    dry_run: bool = _outputs(False, "Read, clean and batch, but send nothing; show a preview.")
    preview_size: int = _outputs(
        5, "How many payloads a dry run prints, exactly as sent.", flag="--show"
    )
    max_error_rate: float = _outputs(
        0.0, "Fraction of rows that may be rejected or dead-lettered with exit code 0."
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if isinstance(self.api_key, str):
            # A key pasted with a trailing newline or space would be refused with a 401.
            set_(self, "api_key", self.api_key.strip() or None)
        set_(self, "column_map", _pairs(self.column_map))
        set_(self, "drop_columns", tuple(self.drop_columns))
        set_(self, "storage_options", _storage_options(self.storage_options))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if spec_of(f).path and isinstance(value, str):
                set_(self, f.name, Path(value))
        self._check()

    def _check(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise UsageError(
                f"batch_size must be between 1 and {MAX_BATCH_SIZE} "
                f"(Blueshift accepts at most {MAX_BATCH_SIZE} customers per call), "
                f"got {self.batch_size}",
                "batch_size",
            )
        if not self.rate > 0:
            raise UsageError(f"rate must be above 0 requests per second, got {self.rate}", "rate")
        for name in ("region", "format", "on_invalid", "date_order"):
            choices = spec_of(_field(name)).choices or ()
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}", name)
        if self.preset not in (AUTO, NONE, *preset_names()):
            raise UsageError(
                f"preset must be auto, none or one of {', '.join(preset_names())}, "
                f"got {self.preset!r}",
                "preset",
            )
        for name in ("timeout", "max_backoff", "give_up_after"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be above 0", name)
        for name in ("max_retries", "backoff_base", "preview_size"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be 0 or more", name)
        counts = ("max_concurrency", "chunk_rows", "max_batch_bytes", "max_field_bytes")
        for name in (*counts, "max_columns", "max_json_depth", "max_line_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1", name)
        for name in ("concurrency", "limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1", name)
        if (
            self.shared_limit is not None
            and urlsplit(self.shared_limit).scheme not in REDIS_SCHEMES
        ):
            raise UsageError(
                "shared_limit must be a Redis URL (redis://host:port/db, rediss:// or unix://)",
                "shared_limit",
            )
        if not 0 <= self.max_error_rate <= 1:
            raise UsageError(
                f"max_error_rate must be between 0 and 1, got {self.max_error_rate}",
                "max_error_rate",
            )
        if self.delimiter is not None and len(self.delimiter) != 1:
            message = f"delimiter must be one character, got {self.delimiter!r}"
            raise UsageError(message, "delimiter")
        if (self.resume or self.changed_only) and self.state_path is None and not self.dry_run:
            raise UsageError(
                "resume and changed_only need a state store (state_path)",
                "resume", "changed_only", "state_path",
            )  # fmt: skip
        if self.force and not self.resume:
            raise UsageError(
                "force only goes with resume (to start an interrupted run over)", "force", "resume"
            )
        if self.resume and self.overwrite and not self.force:
            raise UsageError(
                "resume appends to the output files; drop overwrite "
                "(or pass resume with force to start over)",
                "resume", "overwrite", "force",
            )  # fmt: skip
        check_base_url(self.resolved_base_url, self.insecure_http)

    @property
    def resolved_base_url(self) -> str:
        """The API's base URL: ``base_url`` if given, else the region's."""
        return (self.base_url or REGION_URLS[self.region]).rstrip("/")

    @property
    def in_flight_ceiling(self) -> int:
        """The most requests ever in flight: ``concurrency`` if fixed, else ``max_concurrency``."""
        return self.concurrency or self.max_concurrency

    def replace(self, **changes: object) -> ImportOptions:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _field(name: str) -> dataclasses.Field[Any]:
    return next(f for f in dataclasses.fields(ImportOptions) if f.name == name)


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """``column_map`` as pairs, from a mapping, pairs or ``"Column=field"`` strings."""
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value
    pairs = []
    for item in items:
        source, target = parse_map_option([item])[0] if isinstance(item, str) else item
        pairs.append((str(source).strip(), str(target).strip()))
    return tuple(pairs)


#: Storage options that would carry a credential, which must come from the store's usual sources.
_CREDENTIAL = re.compile(r"key|secret|token|password|credential|sas|connection_string", re.I)


def _storage_options(value: Any) -> tuple[tuple[str, Any], ...]:
    """``storage_options`` as pairs, from a mapping, pairs or ``"KEY=VALUE"`` strings.

    In a string, ``true``/``false`` become booleans and whole numbers integers.
    Raises :class:`UsageError` for a malformed item or a credential.
    """
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value
    pairs = []
    for item in items:
        if isinstance(item, str):
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(
                    f"storage_options expects KEY=VALUE, got {item!r}", "storage_options"
                )
            lowered = text.strip().lower()
            parsed: Any = {"true": True, "false": False}.get(lowered, text.strip())
            if re.fullmatch(r"-?[0-9]+", lowered):
                parsed = int(lowered)
            item = (key, parsed)
        key, parsed = str(item[0]).strip(), item[1]
        if _CREDENTIAL.search(key):
            raise UsageError(
                f"storage_options {key}: credentials are not taken from options; the store "
                "reads them from its usual sources (environment, profile files, instance role)",
                "storage_options",
            )
        pairs.append((key, parsed))
    return tuple(pairs)


def flag_name(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of an option field, e.g. ``--dead-letter``."""
    return spec_of(f).flag or "--" + f.name.replace("_", "-")


def cli_default(f: dataclasses.Field[Any]) -> Any:
    """The command line's default for an option field."""
    spec = spec_of(f)
    return f.default if spec.cli_default is None else spec.cli_default


def cli_fields(*sections: str) -> list[dataclasses.Field[Any]]:
    """The option fields the command line offers, in declaration order (all sections if none)."""
    return [
        f
        for f in dataclasses.fields(ImportOptions)
        if spec_of(f).cli and (not sections or spec_of(f).section in sections)
    ]


def fingerprint(options: ImportOptions) -> dict[str, Any]:
    """The options that decide what each row becomes, as plain JSON-able values.

    A resumed run must use the same ones, or rows "already done" would mean
    something else.
    """
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if not spec_of(f).shapes:
            continue
        value = getattr(options, f.name)
        if isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        elif isinstance(value, Path):
            value = str(value)
        settings[f.name] = value
    return settings


def check_base_url(url: str, insecure_http: bool) -> None:
    """Refuse URLs that would send the API key in clear text to another machine.

    Plain ``http://`` is allowed for loopback addresses (the fake API) and,
    with ``insecure_http``, anywhere.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"base_url must be an http(s) URL with a host, got {url!r}", "base_url")
    if parts.scheme == "http" and not insecure_http and not is_loopback(parts.hostname):
        raise UsageError(
            f"refusing plain http:// to {parts.hostname}: the API key would travel unencrypted "
            "(use https://, or insecure_http if you really mean it)",
            "insecure_http",
        )


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
