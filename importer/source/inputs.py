"""Which files a run reads: the command line's inputs expanded into a sorted list.

Owns: telling a list, a glob and a directory apart, expanding a glob (a
local one with :mod:`glob`, a URL's with its store's fsspec ``glob``) and
listing a directory, in name order, with the size of each file where the
store says. A directory gives its files, not its subdirectories (a glob such
as ``dir/**/*.csv`` reaches into those), and skips names starting with ``.``
or ``_``: the marker and checksum files (``_SUCCESS``, ``.part-0.crc``) that
Spark, Hive and many exporters leave beside their part files.

Must not: open, read or parse the files (``reading`` does, one at a time).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputUnreadable, UsageError
from .location import (
    URL_EXTRAS,
    describe_error,
    display_name,
    filesystem,
    local_path,
    not_found,
    url_scheme,
)

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    """One file of a run: its path or URL as it is opened, and its size (None: unknown)."""

    path: str
    size: int | None = None


def expand_inputs(
    inputs: str | Path | Sequence[str | Path], storage_options: dict[str, Any] | None = None
) -> list[InputFile]:
    """The files a run reads, in order: each argument's files, sorted by name.

    An argument is a path or URL of one file, a glob (``exports/*.csv.gz``,
    ``s3://bucket/day/part-*.csv.gz``), a directory (local or in an object
    store) or ``-`` for stdin, which must then be the only input. A file named
    twice is read once. ``storage_options`` go to a URL's fsspec filesystem.
    HTTP(S) URLs name one file each (``?`` starts their query).

    Raises :class:`UsageError` for no input or ``-`` among others, and
    :class:`InputUnreadable` for a glob or directory without files, a missing
    file, or a store that cannot be listed.
    """
    args = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not args:
        raise UsageError("no input file given")
    if "-" in (str(a) for a in args) and len(args) > 1:
        raise UsageError("- (standard input) must be the only input")
    found: list[InputFile] = []
    seen: set[str] = set()
    for arg in args:
        for item in _expand_one(str(arg), storage_options or {}):
            if item.path not in seen:
                seen.add(item.path)
                found.append(item)
    return found


def _expand_one(arg: str, storage_options: dict[str, Any]) -> list[InputFile]:
    if arg == "-":
        return [InputFile(arg)]
    scheme = url_scheme(arg)
    if scheme in ("http", "https") or scheme not in (None, "file", *URL_EXTRAS):
        # One file each; an unsupported scheme is refused when it is opened.
        return [InputFile(arg)]
    if scheme is None or scheme == "file":
        return _expand_local(str(local_path(arg)), arg)
    return _expand_url(arg, scheme, storage_options)


def _expand_local(path: str, arg: str) -> list[InputFile]:
    if Path(path).is_dir():
        names = sorted(e.path for e in os.scandir(path) if e.is_file() and not _hidden(e.name))
        files = [InputFile(p, os.stat(p).st_size) for p in names]
        if not files:
            raise InputUnreadable(f"{arg}: the directory holds no file")
        return files
    if _GLOB_CHARS.isdisjoint(path) or Path(path).exists():
        # A single file, opened (and refused if missing) as always.
        return [InputFile(arg, os.stat(path).st_size if Path(path).is_file() else None)]
    names = sorted(p for p in glob.glob(path, recursive=True) if Path(p).is_file())
    if not names:
        raise InputUnreadable(f"{arg}: matches no file")
    return [InputFile(p, os.stat(p).st_size) for p in names]


def _expand_url(url: str, scheme: str, storage_options: dict[str, Any]) -> list[InputFile]:
    fs = filesystem(scheme, storage_options)
    name = display_name(url)
    try:
        if not _GLOB_CHARS.isdisjoint(url):
            entries = fs.glob(url, detail=True)
        else:
            info = fs.info(url)
            if info.get("type") != "directory":
                return [InputFile(url, info.get("size"))]
            entries = {
                e["name"]: e for e in fs.ls(url, detail=True) if not _hidden(_basename(e["name"]))
            }
    except FileNotFoundError as exc:
        raise InputUnreadable(f"{name}: {not_found(exc, 'file or directory')}") from exc
    except Exception as exc:  # each store raises its own types: this is the boundary
        raise InputUnreadable(f"{name}: cannot list ({describe_error(exc)})") from exc
    files = [
        InputFile(fs.unstrip_protocol(path), info.get("size"))
        for path, info in sorted(entries.items())
        if info.get("type") == "file"
    ]
    if not files:
        raise InputUnreadable(f"{name}: matches no file")
    return files


def _basename(path: str) -> str:
    return PurePosixPath(path.rstrip("/")).name


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))
