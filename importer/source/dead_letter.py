"""Reading a dead-letter file back: its lines hold the payloads to import again.

Owns: recognising a JSONL chunk as dead-letter lines (``outcomes`` writes them)
and unwrapping their payloads. Must not: write dead-letter lines or change a value.
"""

from __future__ import annotations

import pandas as pd

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
    return pd.DataFrame(
        {
            str(k): pd.Series([p.get(k) for p in payloads], index=frame.index, dtype=object)
            for k in fields
        },
        index=frame.index,
    )
