"""Mapping stage: decide which input column feeds which Blueshift field.

Owns: header matching (case, spaces, punctuation, synonyms), explicit
``--map`` / ``--drop`` choices, and the names of pass-through custom
attributes. Pure functions over column names: no data, no I/O.

Must not: look at cell values or clean them (that is :mod:`importer.cleaning`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .errors import MappingError

#: Blueshift's standard customer fields and the header spellings that mean them,
#: compared after :func:`header_key` folding.
STANDARD_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("email", "e_mail", "email_address", "mail", "emailaddress"),
    "customer_id": ("customer_id", "customerid", "cust_id", "user_id", "userid", "external_id"),
    "phone_number": (
        "phone_number",
        "phone",
        "phonenumber",
        "mobile",
        "mobile_number",
        "mobile_phone",
        "cell",
        "cell_phone",
        "telephone",
        "phone_1",
        "phone1",
        "tel",
    ),
    "firstname": ("firstname", "first_name", "given_name", "givenname", "forename", "fname"),
    "lastname": ("lastname", "last_name", "surname", "family_name", "familyname", "lname"),
    "gender": ("gender", "sex"),
    "joined_at": ("joined_at", "joined", "signup_date", "signed_up_at", "created_at", "join_date"),
    "unsubscribed": ("unsubscribed", "is_unsubscribed", "opted_out", "unsubscribe"),
    "unsubscribed_at": ("unsubscribed_at", "unsubscribe_date"),
    "subscription_groups": ("subscription_groups", "subscriptions"),
    "subscription_group_id": ("subscription_group_id",),
    "subscription_group_subscribed": ("subscription_group_subscribed",),
}

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
    #: Declared types by target field (``int``, ``float``, ``bool``, ``date``, ``string``),
    #: from a mapping file; cleaning infers the others.
    types: dict[str, str] = field(default_factory=dict)

    def describe(self) -> list[tuple[str, str]]:
        """``(source, target-or-"(dropped)")`` pairs in input order, for previews."""
        out = [(s, t) for s, t in self.targets.items()]
        out.extend((s, "(dropped)") for s in self.dropped)
        return out


def resolve_mapping(
    columns: Iterable[str],
    explicit: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    drop: Iterable[str] = (),
    drop_unmapped: bool = False,
) -> ColumnMapping:
    """Map input ``columns`` to Blueshift fields.

    ``explicit`` (source → target, from ``--map``) wins over automatic
    matching; ``drop`` columns are left out; unmapped columns become custom
    attributes named in snake_case unless ``drop_unmapped``. Raises
    :class:`MappingError` when two columns would feed one field, or when an
    explicit or dropped column is not in the input.
    """
    cols = list(columns)
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
    for col in cols:
        if col in drop_set:
            dropped.append(col)
            continue
        if col in explicit_map:
            target = explicit_map[col].strip()
            if not target:
                raise MappingError(f"--map {col!r}= needs a target field name")
        else:
            target = match_standard_field(col) or ""
            if not target:
                if drop_unmapped:
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
    return ColumnMapping(targets, tuple(dropped))


def parse_map_option(values: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Parse repeated ``--map "Source Column=target"`` values."""
    pairs = []
    for value in values:
        source, sep, target = value.rpartition("=")
        if not sep or not source.strip() or not target.strip():
            raise MappingError(f"--map expects 'Source Column=target', got {value!r}")
        pairs.append((source.strip(), target.strip()))
    return tuple(pairs)
