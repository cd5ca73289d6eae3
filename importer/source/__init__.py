"""Source stage: open the input and yield it as chunks of rows (pandas frames).

Owns reading the input (``location`` opens a path or a URL; ``reading``
hands the decoded text to ``csv_rows`` or ``jsonl_rows``, a Parquet file to
``parquet_rows``), record and line numbers, the structural
limits, the :class:`Chunk` (``chunk``), unwrapping a dead-letter file's
payloads, and the input's hash for resuming (``input_hash``). Unparseable rows
leave as :class:`~importer.records.Reject` values with their numbers.

Must not: clean values, map columns or know about the API. It never holds more
than one chunk of the file in memory.
"""

from .chunk import Chunk
from .input_hash import InputHasher
from .jsonl_rows import unwrap_dead_letter
from .reading import Source, SourceInfo, detect_encoding, read_chunks, sniff_delimiter

__all__ = [
    "Chunk",
    "InputHasher",
    "Source",
    "SourceInfo",
    "detect_encoding",
    "read_chunks",
    "sniff_delimiter",
    "unwrap_dead_letter",
]
