"""Mapping stage: decide which input column feeds which Blueshift field.

Owns: header matching (case, spaces, punctuation, synonyms), explicit
``--map`` / ``--drop`` choices, the TOML mapping file (per-column target,
type, drop, value translation), refusing a target that looks like a
misspelt standard field, which of several phone columns is ``phone_number``, the
country column phones are read in, and the names of pass-through custom
attributes. Pure functions over column names: no cell data; the only I/O is
reading the mapping file.

Must not: look at cell values or clean them (that is :mod:`importer.cleaning`).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MappingError
from .fields import COLUMN_TYPES, PHONE_COUNTRY_HEADERS, STANDARD_FIELDS

_SYNONYMS = {syn: target for target, syns in STANDARD_FIELDS.items() for syn in syns}
#: The same without underscores: a header in capitals (``MOBILEPHONE``, as Salesforce's
#: Data Loader long wrote them) has no word breaks left to fold.
_SQUASHED = {syn.replace("_", ""): target for syn, target in _SYNONYMS.items()}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
#: Shorter targets are compared to the field spellings exactly, never by likeness.
_FUZZY_MIN = 5


def header_key(name: str) -> str:
    """Fold a header to snake_case: ``"E-Mail"`` → ``e_mail``, ``customerID`` → ``customer_id``."""
    spaced = _CAMEL.sub("_", name.strip())
    return _NON_ALNUM.sub("_", spaced.lower()).strip("_")


def match_standard_field(name: str) -> str | None:
    """The standard field a header means, or None."""
    key = header_key(name)
    return _SYNONYMS.get(key) or _SQUASHED.get(key.replace("_", ""))


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
    #: Columns whose values a mapping file translates (``values``, ``invert``,
    #: ``split``), by source column.
    translations: dict[str, ColumnSpec] = field(default_factory=dict)
    #: Said in the reject of a row without identifier: how to use a record id
    #: column as ``customer_id`` (e.g. ``--map "Record ID=customer_id"``).
    identifier_hint: str | None = None
    #: The payload field holding the platform's own record id (a preset's
    #: ``record_id`` column) while it is not ``customer_id``: rows that share an
    #: email but carry different values of it are merged as conflicts.
    record_id: str | None = None

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
    #: Cell value (trimmed, compared case-insensitively; ``"*"``: any other
    #: value) → the value the field's rule is given instead.
    values: dict[str, Any] | None = None
    #: Send the opposite of a true/false value.
    invert: bool = False
    #: Split text on this separator into a list (a custom attribute).
    split: str | None = None

    @property
    def translates(self) -> bool:
        """Whether this column's values are changed before they are sent."""
        return bool(self.values) or self.invert or self.split is not None


#: The keys a ``[columns."Name"]`` table may hold.
SPEC_KEYS = ("target", "type", "drop", "values", "invert", "split")


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
    """Validate the ``columns`` table of a mapping file (already parsed TOML).

    Raises :class:`MappingError` for a key not in :data:`SPEC_KEYS`, a value
    of the wrong kind, or a target that looks like a misspelt standard field
    (see :func:`check_target`).
    """
    if not isinstance(columns, dict):
        raise MappingError(f"{origin}: 'columns' must be a table of column tables")
    specs: dict[str, ColumnSpec] = {}
    for name, table in columns.items():
        where = f"{origin}: [columns.{_toml_key(name)}]"
        if not isinstance(table, dict):
            raise MappingError(f'{where} must be a table (e.g. target = "email")')
        for key in table:
            if key not in SPEC_KEYS:
                near = difflib.get_close_matches(key, SPEC_KEYS, n=1)
                hint = f"did you mean {near[0]}?" if near else f"use {', '.join(SPEC_KEYS)}"
                raise MappingError(f"{where}: unknown key {key!r}; {hint}")
        target, kind, drop = table.get("target"), table.get("type"), table.get("drop", False)
        values, invert, split = table.get("values"), table.get("invert", False), table.get("split")
        if target is not None and (not isinstance(target, str) or not target.strip()):
            raise MappingError(f"{where}: target must be a non-empty string")
        if kind is not None and kind not in COLUMN_TYPES:
            raise MappingError(
                f"{where}: type must be one of {', '.join(COLUMN_TYPES)}, got {kind!r}"
            )
        for key, flag in (("drop", drop), ("invert", invert)):
            if not isinstance(flag, bool):
                raise MappingError(f"{where}: {key} must be true or false")
        if drop and (target is not None or kind is not None):
            raise MappingError(f"{where}: a dropped column cannot also have a target or type")
        if values is not None and (
            not isinstance(values, dict) or any(isinstance(v, dict | list) for v in values.values())
        ):
            raise MappingError(f"{where}: values must be a table like {{ yes = false, no = true }}")
        if split is not None and (not isinstance(split, str) or not split):
            raise MappingError(f'{where}: split must be a separator such as ","')
        if target is not None and target.strip() != header_key(name):
            # The name automatic matching gives the column is never refused.
            check_target(target.strip(), where)
        folded = {str(k).strip().casefold(): v for k, v in values.items()} if values else None
        specs[name.strip()] = ColumnSpec(
            target.strip() if target else None, kind, drop, folded, invert, split
        )
    return specs


def check_target(target: str, where: str) -> None:
    """Refuse a target that is not a standard field but looks like one.

    ``joined_on``, ``firstName`` or ``e_mail`` would otherwise become custom
    attributes silently. A target means a field when its folded form is one of
    the field's header spellings, or, from five letters on, when it is at
    least 75 % alike (:mod:`difflib`) to one of them and at most four
    characters differ; any other name (``name``, ``customer_type``) is a
    custom attribute. Raises :class:`MappingError` naming the field.
    """
    if target in STANDARD_FIELDS:
        return
    field_name = match_standard_field(target)
    squashed = header_key(target).replace("_", "")
    if field_name is None and len(squashed) >= _FUZZY_MIN:
        best = 0.0
        for spelling, candidate in _SYNONYMS.items():
            other = spelling.replace("_", "")
            matcher = difflib.SequenceMatcher(None, squashed, other)
            same = sum(block.size for block in matcher.get_matching_blocks())
            ratio = matcher.ratio()
            if ratio >= 0.75 and len(squashed) + len(other) - 2 * same <= 4 and ratio > best:
                field_name, best = candidate, ratio
    if field_name is not None:
        raise MappingError(
            f"{where}: target {target!r} is not a Blueshift field; did you mean {field_name}? "
            "(a custom attribute needs a name unlike the standard fields)"
        )


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else '"' + name.replace('"', '\\"') + '"'


def resolve_mapping(
    columns: Iterable[str],
    explicit: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    drop: Iterable[str] = (),
    drop_unmapped: bool = False,
    specs: Mapping[str, ColumnSpec] | None = None,
    record_id: str | None = None,
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
    file can serve files with optional columns. A spec's ``values``,
    ``invert`` and ``split`` apply unless ``--map`` names the column.
    ``record_id`` is a column holding a platform's record id: while it is not
    ``customer_id``, the mapping carries the field it feeds and the ``--map``
    that would make it one.
    Raises :class:`MappingError` when two columns would feed one field, when a
    ``--map``/``--drop`` column is not in the input, or when a ``--map`` target
    looks like a misspelt field (:func:`check_target`).
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
    translations: dict[str, ColumnSpec] = {}
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
            check_target(target, f"--map {col!r}")
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
        if spec is not None and spec.translates and col not in explicit_map:
            translations[col] = spec
    keys = {header_key(col).replace("_", ""): col for col in reversed(cols)}
    country = next(
        (keys[k] for k in (h.replace("_", "") for h in PHONE_COUNTRY_HEADERS) if k in keys), None
    )
    hint = record_field = None
    if record_id in targets and targets[record_id] != "customer_id":
        record_field = targets[record_id]
        if "customer_id" not in claimed:
            hint = f'--map "{record_id}=customer_id"'
    return ColumnMapping(targets, tuple(dropped), types, country, translations, hint, record_field)


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
    """Where a folded header stands in ``order``, compared without underscores."""
    squashed = [spelling.replace("_", "") for spelling in order]
    key = key.replace("_", "")
    return squashed.index(key) if key in squashed else len(order)


def parse_map_option(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``--map "Source Column=target"`` values."""
    pairs = []
    for value in values:
        source, sep, target = value.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise MappingError(f"--map expects 'Source Column=target', got {value!r}")
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)
