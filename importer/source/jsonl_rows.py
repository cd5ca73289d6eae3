"""JSONL records: one JSON object per line, parsed with orjson, in chunks of rows.

Owns: lines and their numbers (a record's number is its line's), the JSONL
limits (bytes per line, nesting depth, keys per record and in the file), and
unwrapping the payloads of a dead-letter file (``outcomes`` writes it). A bad
line becomes a :class:`~importer.records.Reject`; the rest is still read.

Must not: open files or decode bytes (it is given text), or look at what a value means.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import numpy as np
import orjson
import pandas as pd

from ..options import ImportOptions
from ..records import Reject
from .chunk import Chunk, read_line, shorten


def jsonl_chunks(text: IO[str], options: ImportOptions) -> Iterator[Chunk]:
    """Chunks of up to ``chunk_rows`` objects, one per non-blank line of ``text``."""
    objects: list[dict[str, Any]] = []
    numbers: list[int] = []
    rejects: list[Reject] = []
    keys: set[str] = set()
    lineno = 0
    while (line := read_line(text, options.max_line_bytes)) != "":
        lineno += 1
        if line is None or len(line.encode()) > options.max_line_bytes:
            reason = f"line longer than {options.max_line_bytes} bytes"
            rejects.append(Reject(lineno, lineno, reason))
            continue
        line = line.removeprefix("\ufeff") if lineno == 1 else line
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            excerpt = shorten(line.rstrip("\r\n"))
            rejects.append(Reject(lineno, lineno, f"not valid JSON: {exc.args[0]}", value=excerpt))
            continue
        reject = check_object(obj, lineno, keys, options)
        if reject is not None:
            rejects.append(reject)
            continue
        objects.append(obj)
        numbers.append(lineno)
        if len(objects) >= options.chunk_rows:
            yield objects_chunk(objects, numbers, rejects)
            objects, numbers, rejects = [], [], []
    if objects or rejects:
        yield objects_chunk(objects, numbers, rejects)


def check_object(obj: Any, lineno: int, keys: set[str], options: ImportOptions) -> Reject | None:
    """A reject when a parsed line is not an object or breaks a limit, else None.

    ``keys`` holds the distinct keys met so far and gains this object's.
    """
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
        found = kind.get(type(obj), "a number")
        value = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
        reason = f"expected a JSON object, found {found}"
        return Reject(lineno, lineno, reason, value=shorten(value))
    if len(obj) > options.max_columns:
        return Reject(lineno, lineno, f"more than {options.max_columns} keys in one record")
    if _depth(obj, options.max_json_depth + 1) > options.max_json_depth:
        reason = f"JSON nested deeper than {options.max_json_depth} levels"
        return Reject(lineno, lineno, reason)
    new = obj.keys() - keys
    if len(keys) + len(new) > options.max_columns:
        reason = f"brings the file over {options.max_columns} distinct keys (columns)"
        return Reject(lineno, lineno, reason)
    keys.update(new)
    return None


def _depth(value: Any, cap: int) -> int:
    """Nesting depth of ``value`` (objects and arrays), counting no further than ``cap``."""
    if cap <= 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, cap - 1) for v in children), default=0)


def objects_chunk(objects: list[Any], numbers: list[int], rejects: list[Reject]) -> Chunk:
    """A chunk of records as dicts (``numbers`` are their record and line numbers)."""
    # Typed explicitly: values keep their JSON types (an integer is not widened to a float).
    frame = pd.DataFrame(objects, dtype=object).rename(columns=str)
    records = np.array(numbers, dtype=np.int64)
    return Chunk(frame, records, records.copy(), rejects)


#: Keys every dead-letter line has; a JSONL input whose rows all have them is a dead-letter file.
DEAD_LETTER_KEYS = ("payload", "source", "record", "error", "attempts")


def unwrap_dead_letter(frame: pd.DataFrame) -> pd.DataFrame | None:
    """The payloads of a dead-letter chunk as a frame with one column per field, or None.

    ``frame`` is a chunk of a JSONL input. When its columns are those of a
    dead-letter line and every row's ``payload`` is an object, the result has
    the same rows in the same order (same index), with the exact payload
    values (no float conversion of integers; a field a payload lacks is None).
    Otherwise the chunk is an ordinary input and None is returned.
    """
    if frame.empty or not all(k in frame.columns for k in DEAD_LETTER_KEYS):
        return None
    payloads = frame["payload"].tolist()
    if not all(isinstance(p, dict) for p in payloads):
        return None
    fields: dict[str, None] = {}
    for p in payloads:
        fields.update(dict.fromkeys(p))
    columns = {str(k): [p.get(k) for p in payloads] for k in fields}
    return pd.DataFrame(columns, index=frame.index, dtype=object)
