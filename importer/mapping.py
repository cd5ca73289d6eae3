"""Mapping stage: decide which input column feeds which Blueshift field.

Owns: header matching (case, spaces, punctuation, synonyms), explicit
``--map`` / ``--drop`` choices, the TOML mapping file (per-column target,
type or drop), which of several phone columns is ``phone_number``, the
country column phones are read in, and the names of pass-through custom
attributes. Pure functions over column names: no cell data; the only I/O is
reading the mapping file.

Must not: look at cell values or clean them (that is :mod:`importer.cleaning`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MappingError
from .fields import COLUMN_TYPES, PHONE_COUNTRY_HEADERS, STANDARD_FIELDS

_SYNONYMS = {syn: target for target, syns in STANDARD_FIELDS.items() for syn in syns}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def header_key(name: str) -> str:
    """Fold a header to snake_case: ``"E-Mail"`` → ``e_mail``, ``customerID`` → ``customer_id``."""
    spaced = _CAMEL.sub("_", name.strip())
    return _NON_ALNUM.sub("_", spaced.lower()).strip("_")


def match_standard_field(name: str) -> str | None:
    """The standard field a header means, or None."""
    key = header_key(name)
    return _SYNONYMS.get(key) or _SYNONYMS.get(key.replace("_", ""))


@dataclass(frozen=True)
class ColumnMapping:
    """Where each input column goes: ``targets[source] = field``; ``dropped`` are left out."""

    targets: dict[str, str]
    dropped: tuple[str, ...] = ()
    #: Declared types by target field (see :data:`COLUMN_TYPES`), from a mapping file
    #: or ``phone`` for a phone column that is not ``phone_number``; cleaning infers
    #: the others.
    types: dict[str, str] = field(default_factory=dict)
    #: The column holding each row's country, in which national phone numbers are
    #: read (sent or not, it is read all the same); None: ``--phone-region`` only.
    phone_country: str | None = None

    def describe(self) -> list[tuple[str, str]]:
        """``(source, target)`` pairs, then ``(source, "(dropped)")`` ones and the phone
        country column, for previews."""
        country = [(self.phone_country, "(country of phones)")] if self.phone_country else []
        return [*self.targets.items(), *((s, "(dropped)") for s in self.dropped), *country]


@dataclass(frozen=True)
class ColumnSpec:
    """One ``[columns."Name"]`` table of a mapping file.

    ``target`` None means "the field automatic matching picks"; ``type`` None
    means "let cleaning infer it".
    """

    target: str | None = None
    type: str | None = None
    drop: bool = False


def load_mapping_file(path: str | Path) -> dict[str, ColumnSpec]:
    """Read the ``[columns."Source Column"]`` tables of a TOML mapping file.

    Each table may set ``target`` (a Blueshift field or custom attribute
    name), ``type`` (one of :data:`COLUMN_TYPES`) or ``drop = true``; other
    keys, and other top-level keys, are ignored, so a configuration file can
    hold the mapping too. Raises :class:`MappingError` (one line) for a
    missing or invalid file.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise MappingError(f"mapping file {path}: no such file") from None
    except IsADirectoryError:
        raise MappingError(f"mapping file {path}: is a directory") from None
    except OSError as exc:
        raise MappingError(f"mapping file {path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"mapping file {path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise MappingError(f"mapping file {path}: not UTF-8 text") from None
    return parse_column_specs(data.get("columns", {}), str(path))


def parse_column_specs(columns: Any, origin: str = "the mapping") -> dict[str, ColumnSpec]:
    """Validate the ``columns`` table of a mapping file (already parsed TOML)."""
    if not isinstance(columns, dict):
        raise MappingError(f"{origin}: 'columns' must be a table of column tables")
    specs: dict[str, ColumnSpec] = {}
    for name, table in columns.items():
        where = f"{origin}: [columns.{_toml_key(name)}]"
        if not isinstance(table, dict):
            raise MappingError(f'{where} must be a table (e.g. target = "email")')
        target, kind, drop = table.get("target"), table.get("type"), table.get("drop", False)
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise MappingError(f"{where}: target must be a non-empty string")
        if kind is not None and kind not in COLUMN_TYPES:
            raise MappingError(
                f"{where}: type must be one of {', '.join(COLUMN_TYPES)}, got {kind!r}"
            )
        if not isinstance(drop, bool):
            raise MappingError(f"{where}: drop must be true or false")
        if drop and (target is not None or kind is not None):
            raise MappingError(f"{where}: a dropped column cannot also have a target or type")
        specs[name.strip()] = ColumnSpec(target.strip() if target else None, kind, drop)
    return specs


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def resolve_mapping(
    columns: Iterable[str],
    explicit: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    drop: Iterable[str] = (),
    drop_unmapped: bool = False,
    specs: Mapping[str, ColumnSpec] | None = None,
) -> ColumnMapping:
    """Map input ``columns`` to Blueshift fields.

    ``explicit`` (source → target, from ``--map``) wins over ``specs`` (from a
    mapping file, see :func:`load_mapping_file`), which win over automatic
    matching; ``drop`` columns are left out; unmapped columns become custom
    attributes named in snake_case unless ``drop_unmapped``. Of several
    columns whose headers mean a phone, the first in the order of
    :data:`STANDARD_FIELDS` (mobile first) becomes ``phone_number`` unless
    another column is mapped to it; the others stay custom attributes of type
    ``phone`` (``other_phone_number`` for one headed ``Phone Number``). A
    column that ``specs`` names but the input lacks is ignored, so one mapping
    file can serve files with optional columns. Raises :class:`MappingError` when two
    columns would feed one field, or when a ``--map``/``--drop`` column is not
    in the input.
    """
    cols = list(columns)
    specs = specs or {}
    explicit_map = dict(explicit.items() if isinstance(explicit, Mapping) else explicit)
    drop_set = set(drop)
    missing = [c for c in [*explicit_map, *drop_set] if c not in cols]
    if missing:
        raise MappingError(
            f"column(s) named in --map/--drop are not in the input: {', '.join(map(repr, missing))}"
            f" (columns are: {', '.join(map(repr, cols))})"
        )
    targets: dict[str, str] = {}
    dropped: list[str] = []
    claimed: dict[str, str] = {}
    types: dict[str, str] = {}
    phone = _preferred_phone(cols, explicit_map, drop_set, specs)
    for col in cols:
        spec = specs.get(col.strip())
        if col in drop_set or (spec is not None and spec.drop and col not in explicit_map):
            dropped.append(col)
            continue
        if col in explicit_map:
            target = explicit_map[col].strip()
            if not target:
                raise MappingError(f"--map {col!r}= needs a target field name")
        elif spec is not None and spec.target:
            target = spec.target
        else:
            target = match_standard_field(col) or ""
            if target == "phone_number" and col != phone:
                target = header_key(col)
                if target in STANDARD_FIELDS:  # `Phone Number` beside `Mobile`
                    target = "other_" + target
                types[target] = "phone"
            if not target:
                if drop_unmapped and spec is None:
                    dropped.append(col)
                    continue
                target = header_key(col) or col
        if target in claimed:
            raise MappingError(
                f"columns {claimed[target]!r} and {col!r} both map to {target!r}; "
                f"choose one with --map or --drop"
            )
        claimed[target] = col
        targets[col] = target
        if spec is not None and spec.type:
            types[target] = spec.type
    keys = {header_key(col): col for col in reversed(cols)}
    country = next((keys[k] for k in PHONE_COUNTRY_HEADERS if k in keys), None)
    return ColumnMapping(targets, tuple(dropped), types, country)


def _preferred_phone(
    cols: list[str], explicit: dict[str, str], drop: set[str], specs: Mapping[str, ColumnSpec]
) -> str | None:
    """The column that header matching makes ``phone_number``, of those whose header means
    a phone; None when ``--map`` or the mapping file names its own."""
    chosen = [target.strip() for target in explicit.values()]
    candidates = []
    for col in cols:
        spec = specs.get(col.strip()) or ColumnSpec()
        if spec.drop or col in drop or col in explicit:
            continue
        if spec.target:
            chosen.append(spec.target)
        elif match_standard_field(col) == "phone_number":
            candidates.append(col)
    if "phone_number" in chosen:
        return None
    order = STANDARD_FIELDS["phone_number"]
    return min(candidates, key=lambda col: _rank(header_key(col), order), default=None)


def _rank(key: str, order: tuple[str, ...]) -> int:
    """Where a folded header stands in ``order`` (with or without its underscores)."""
    for candidate in (key, key.replace("_", "")):
        if candidate in order:
            return order.index(candidate)
    return len(order)


def parse_map_option(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``--map "Source Column=target"`` values."""
    pairs = []
    for value in values:
        source, sep, target = value.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise MappingError(f"--map expects 'Source Column=target', got {value!r}")
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)
