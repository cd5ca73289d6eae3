"""Source stage: open the input and yield it as chunks of rows (pandas frames).

Owns reading the input (``opening``, then ``csv_rows`` or ``jsonl_rows``, put
together in ``reading``), record and line numbers, the structural limits, the
:class:`Chunk` (``chunk``), reading a dead-letter file back (``dead_letter``) and
the input's hash for resuming (``input_hash``). Unparseable rows leave as
:class:`~importer.records.Reject` values with their numbers.

Must not: clean values, map columns or know about the API. It never holds more
than one chunk of the file in memory.
"""

from .chunk import Chunk
from .dead_letter import unwrap_dead_letter
from .input_hash import InputHasher
from .opening import SourceInfo, detect_encoding, detect_format, sniff_delimiter
from .reading import Source, read_chunks

__all__ = [
    "Chunk",
    "InputHasher",
    "Source",
    "SourceInfo",
    "detect_encoding",
    "detect_format",
    "read_chunks",
    "sniff_delimiter",
    "unwrap_dead_letter",
]
