"""Platform presets: the mapping files for the exports of the platforms people migrate from.

Owns: the preset files shipped in this package (one TOML mapping file per
platform export, with a ``[preset]`` header naming it, describing it and
listing the headers that identify it), reading them, and choosing the one
that fits a file's header. A preset is read exactly as a ``--mapping`` file
(:func:`importer.mapping.parse_column_specs`), so ``presets show`` prints a
file a user can copy and adapt.

Must not: decide anything per value (that is the mapping file's tables,
applied by :mod:`importer.cleaning`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources

from ..errors import MappingError
from ..mapping import ColumnSpec, parse_column_specs

#: ``--preset`` values besides a preset's name.
AUTO, NONE = "auto", "none"


@dataclass(frozen=True)
class Preset:
    """One platform export: its mapping and the headers that tell it apart."""

    name: str
    description: str
    #: Headers that must all be present for the preset to apply.
    detect: tuple[str, ...]
    columns: dict[str, ColumnSpec]
    #: The column holding the platform's own record id, kept as an attribute;
    #: a reject of a row without identifier names the ``--map`` that would use it.
    record_id: str | None
    #: The file as shipped.
    text: str

    def fit(self, columns: Iterable[str]) -> Preset:
        """This preset with its column names spelt as in ``columns`` where they differ
        only in case: Salesforce's Data Loader, for one, long wrote every header in
        capitals (``ID``, ``HASOPTEDOUTOFEMAIL``)."""
        spelt = {c.strip().casefold(): c.strip() for c in columns}
        record_id = self.record_id and spelt.get(self.record_id.casefold(), self.record_id)
        specs = {spelt.get(name.casefold(), name): spec for name, spec in self.columns.items()}
        return replace(self, columns=specs, record_id=record_id)


def preset_names() -> tuple[str, ...]:
    """The names of the shipped presets, sorted."""
    files = resources.files(__package__).iterdir()
    return tuple(sorted(f.name[:-5] for f in files if f.name.endswith(".toml")))


@cache
def load_preset(name: str) -> Preset:
    """The shipped preset ``name``. Raises :class:`MappingError` for an unknown name."""
    if name not in preset_names():
        raise MappingError(f"no preset {name!r}; presets: {', '.join(preset_names())}")
    text = resources.files(__package__).joinpath(f"{name}.toml").read_text("utf-8")
    data = tomllib.loads(text)
    header = data.get("preset", {})
    return Preset(
        name=name,
        description=header.get("description", ""),
        detect=tuple(header.get("detect", ())),
        columns=parse_column_specs(data.get("columns", {}), f"preset {name}"),
        record_id=header.get("record_id"),
        text=text,
    )


def detect_preset(columns: Iterable[str]) -> Preset | None:
    """The preset whose ``detect`` headers are all among ``columns`` (compared
    after trimming, in any case); of several, the one with the most headers; None
    if none fits."""
    present = {c.strip().casefold() for c in columns}
    fitting = [
        p for p in map(load_preset, preset_names()) if {d.casefold() for d in p.detect} <= present
    ]
    return max(fitting, key=lambda p: len(p.detect), default=None)


def choose_preset(choice: str, columns: Iterable[str]) -> Preset | None:
    """The preset ``--preset`` asks for: ``auto`` detects it from ``columns``,
    ``none`` uses none. Raises :class:`MappingError` for an unknown name."""
    if choice == NONE:
        return None
    if choice == AUTO:
        return detect_preset(columns)
    return load_preset(choice)
