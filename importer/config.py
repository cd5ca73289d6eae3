"""The TOML configuration file (``--config import.toml``) and the starter one (``init-config``).

A configuration file holds a command's options under their long names
(``rate = 5``, ``dead-letter = "failed.jsonl"``; dashes or underscores) and,
optionally, the column mapping as ``[columns."Source column"]`` tables.
Precedence, highest first: flags, environment variables, the file, defaults;
click gives that order to the :func:`default_map` it is handed. Relative paths
are relative to the file's directory, so a cron job finds the same files
whatever its working directory.

Owns: reading and checking the file, translating its keys to a command's
parameters, writing a starter file. Must not: parse the column tables (that is
:mod:`importer.mapping`) or validate option values (click and
:class:`~importer.options.ImportOptions` do that).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_IRWXG, S_IRWXO
from typing import Any

import click

from .errors import UsageError
from .mapping import ColumnMapping
from .options import ImportOptions

#: Parameters a configuration file cannot set.
NOT_CONFIGURABLE = frozenset({"config", "help", "input_path", "version"})


@dataclass(frozen=True)
class ConfigFile:
    """A parsed configuration file: its options (keys folded to snake_case) and
    whether it holds a column mapping."""

    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    has_columns: bool = False

    def warnings(self) -> list[str]:
        """Things worth telling the user about the file itself (never its values)."""
        with contextlib.suppress(OSError):
            if "api_key" in self.options and self.path.stat().st_mode & (S_IRWXG | S_IRWXO):
                return [
                    f"{self.path} holds the API key and other users can read it "
                    f"(chmod 600 {self.path}, or use BLUESHIFT_API_KEY instead)"
                ]
        return []


def fold_key(key: str) -> str:
    """``dead-letter`` and ``Dead_Letter`` → ``dead_letter``."""
    return key.strip().lower().replace("-", "_")


def load_config(path: str | Path) -> ConfigFile:
    """Read and check a TOML configuration file.

    Raises :class:`UsageError` for a missing or unreadable file, invalid TOML,
    a section other than ``[columns]``, or a key given twice (once with
    dashes, once with underscores).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from exc
    columns = data.pop("columns", None)  # the mapping, read by importer.mapping
    if columns is not None and not isinstance(columns, dict):
        raise UsageError(f'--config {path}: "columns" must be a table of [columns."Name"] tables')
    options: dict[str, Any] = {}
    for key, value in data.items():
        name = fold_key(key)
        if isinstance(value, dict):
            raise UsageError(
                f"--config {path}: unknown section [{key}] "
                f'(options go at the top of the file, the mapping under [columns."Name"])'
            )
        if name in options:
            raise UsageError(f"--config {path}: {key!r} is given twice")
        options[name] = value
    return ConfigFile(path, options, has_columns=bool(columns))


def default_map(config: ConfigFile, params: Iterable[click.Parameter]) -> dict[str, Any]:
    """The configuration's values keyed by ``params``' names, for click's ``default_map``.

    A key may be an option's long name (``dead-letter``, ``format``) or its
    parameter name (``dead_letter_path``). Relative paths are resolved
    against the configuration file's directory. Raises :class:`UsageError`
    for keys that name no option of the command.
    """
    index: dict[str, click.Parameter] = {}
    for param in params:
        if not isinstance(param, click.Option) or param.name in NOT_CONFIGURABLE:
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                index.setdefault(fold_key(opt[2:]), param)
        if param.name:
            index.setdefault(fold_key(param.name), param)
    unknown = [key for key in config.options if key not in index]
    if unknown:
        known = {opt[2:] for param in index.values() for opt in param.opts if opt.startswith("--")}
        raise UsageError(
            f"--config {config.path}: unknown option(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(known))})"
        )
    result: dict[str, Any] = {}
    for key, value in config.options.items():
        param = index[key]
        if param.multiple and not isinstance(value, list):
            value = [value]
        relative = isinstance(value, str) and not Path(value).expanduser().is_absolute()
        if isinstance(param.type, click.Path) and relative and value != "-":
            value = str(config.path.parent / value)
        if isinstance(param, click.Option) and param.is_flag and not param.is_bool_flag:
            if value is not True:
                continue  # `strict = false`: the option keeps its own default
            value = param.flag_value  # `strict = true` is short for `on-invalid = "skip-row"`
        result[str(param.name)] = value
    return result


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string.

    A JSON string is one, but for DEL (0x7F), which TOML accepts only escaped.
    """
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def detect_starter_config(path: str | Path, options: ImportOptions | None = None) -> str:
    """Read the header (CSV) or the first chunk (JSONL) of ``path``, as ``options``'
    input section says, and return a starter configuration with the mapping detected.

    Raises :class:`~importer.errors.InputUnreadable` or
    :class:`~importer.errors.MappingError` as an import would.
    """
    from .mapping import resolve_mapping
    from .source import Source

    with Source(path, options) as source:
        # JSONL's columns are its records' keys; a CSV file with only a header has no chunk.
        found = (chunk.column_names for chunk in source.chunks())
        columns = next((names for names in found if names), None) or source.columns
        fmt = source.info.format
    return starter_config(str(path), resolve_mapping(columns), fmt)


def starter_config(source_name: str, mapping: ColumnMapping, fmt: str) -> str:
    """A commented starter configuration for a file whose columns gave ``mapping``.

    Holds column names only, never a cell value: configuration files end up
    in version control and cron mail.
    """
    # A file name may hold anything; keep it from ending the comment line.
    name = "".join(ch if ch.isprintable() else "?" for ch in shlex.quote(source_name))
    lines = [
        f"# blueshift-import configuration, written by `blueshift-import init-config {name}`",
        f"# Use it with:  blueshift-import run {name} --config import.toml",
        "#",
        "# Precedence: command-line flags > environment (BLUESHIFT_API_KEY, BLUESHIFT_REGION,",
        "# BLUESHIFT_BASE_URL) > this file > defaults. Relative paths are relative to this file.",
        "# Keep the API key out of this file: export BLUESHIFT_API_KEY instead.",
        "",
        "# -- connection --",
        'region = "us"                     # "us" or "eu"',
        '# base-url = "https://api.getblueshift.com"',
        "",
        "# -- pace and retries --",
        "rate = 5                          # requests per second (Blueshift recommends 5)",
        "# concurrency = 8                 # fixed requests in flight (default: follows the",
        "#                                 # API's answer times, up to max-concurrency = 32)",
        '# shared-limit = "redis://localhost:6379/0"   # one rate for every job on this account',
        "# batch-size = 50                 # customers per call (at most 50)",
        "# max-retries = 8",
        "# give-up-after = 300             # seconds without a success before stopping (exit 3)",
        "",
        "# -- input --",
        f'format = "{fmt}"',
        "",
        "# -- outputs --",
        '# report = "report.json"',
        '# dead-letter = "dead-letter.jsonl"   # customers the API refused: re-import with run',
        '# rejects = "rejects.csv"            # rows that failed validation, with the reason',
        "max-error-rate = 0.0              # fraction of rows that may fail with exit code 0",
        "",
        "# -- column mapping --",
        "# One table per input column: target is the Blueshift field (standard fields:",
        "# email, customer_id, phone_number, firstname, lastname, gender, joined_at, ...;",
        "# any other name becomes a custom attribute). `drop = true` leaves a column out;",
        '# `type = "date"` (or int, float, bool, string, phone) declares how to read the values.',
    ]
    for source, target in mapping.targets.items():
        lines += ["", f"[columns.{toml_string(source)}]", f"target = {toml_string(target)}"]
        if target in mapping.types:
            lines.append(f"type = {toml_string(mapping.types[target])}")
    for source in mapping.dropped:
        lines += ["", f"[columns.{toml_string(source)}]", "drop = true"]
    return "\n".join(lines) + "\n"
