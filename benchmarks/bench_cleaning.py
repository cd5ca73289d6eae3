"""Cleaning throughput: rows per CPU-second through clean_chunk and merge_repeats.

Generates a customer file with every standard column, subscription groups
included, and two custom attributes (benchmarks/datagen.py), reads it chunk
by chunk and times only the cleaning stage (type inference,
:func:`clean_chunk`, :func:`merge_repeats`) on one core; reading the file is
timed separately and not included in the figure. Times are CPU seconds, so a
busy machine slows the wall clock but not the figure much; the run is
repeated and the median reported.

The file is read whole before cleaning starts, and cleaning's figure is the
CPU time of the thread that runs it (``time.thread_time``; it runs nowhere
else). With ``--stream`` each chunk is cleaned as it is read, as a run does,
and reading is then not timed on its own. The line for reading, cleaning and
packing together is the whole process's CPU time either way.

Cleaning makes each ``Customer`` with its payload encoded as JSON; packing
them into batches is timed too and printed on a line of its own.

    .venv/bin/python -m benchmarks.bench_cleaning --rows 1000000
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.datagen import write_file
from importer.batching import BatchPacker
from importer.cleaning import clean_chunk, infer_column_types
from importer.dedupe import merge_repeats
from importer.mapping import resolve_mapping
from importer.options import ImportOptions
from importer.records import REJECTED
from importer.source import Chunk, read_chunks


def measure(path: Path, chunk_rows: int, stream: bool = False) -> dict[str, Any]:
    options = ImportOptions()
    rows = customers = rejects = merged = packed = 0
    clean_s = pack_s = 0.0
    packer = BatchPacker()
    types: dict[str, str] | None = None
    fields: list[str] = []
    t_total = time.process_time()
    chunks: Iterable[Chunk] = read_chunks(path, chunk_rows=chunk_rows)
    if not stream:
        # Read everything first, so reading is timed apart from cleaning.
        chunks = list(chunks)
    read_s = time.process_time() - t_total
    for chunk in chunks:
        t0 = time.thread_time()
        mapping = resolve_mapping(chunk.column_names)
        fields = sorted(mapping.targets.values())
        if types is None:
            types = infer_column_types(chunk, mapping)
        result = clean_chunk(chunk, mapping, options, types)
        kept, n_merged, _ = merge_repeats(result.customers)
        t1 = time.thread_time()
        clean_s += t1 - t0
        packed += sum(map(len, packer.add(kept)))
        pack_s += time.thread_time() - t1
        rows += chunk.rows_read
        customers += len(kept)
        rejects += sum(r.outcome == REJECTED for r in result.rejects)
        merged += n_merged
    packed += sum(map(len, packer.flush()))
    total_s = time.process_time() - t_total
    return {
        "rows": rows,
        "customers": customers,
        "rejects": rejects,
        "merged": merged,
        "packed": packed,
        "fields": fields,
        "read_s": read_s,
        "clean_s": clean_s,
        "pack_s": pack_s,
        "total_s": total_s,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=20_000)
    parser.add_argument("--invalid-every", type=int, default=97)
    parser.add_argument("--repeat", type=int, default=3, help="Runs; the median is reported.")
    parser.add_argument("--file", type=Path, help="Reuse (or create) this file.")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="Clean each chunk as it is read, as a run does (reading is not timed apart).",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or Path(tmp) / "bench.csv"
        if not path.exists():
            t0 = time.perf_counter()
            write_file(path, args.rows, 11, args.invalid_every, with_groups=True)
            print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f} s: {path}")
        runs = [measure(path, args.chunk_rows, args.stream) for _ in range(max(1, args.repeat))]
    stats = runs[0]
    clean_s = statistics.median(r["clean_s"] for r in runs)
    total_s = statistics.median(r["total_s"] for r in runs)
    pack_s = statistics.median(r["pack_s"] for r in runs)
    read_s = statistics.median(r["read_s"] for r in runs)
    rows = stats["rows"]
    print(f"fields: {', '.join(stats['fields'])}")
    print(
        f"rows {rows:.0f}: customers {stats['customers']:.0f}, "
        f"rejects {stats['rejects']:.0f}, merged {stats['merged']:.0f}"
    )
    each = ", ".join(f"{r['clean_s']:.2f}" for r in runs)
    print(
        f"cleaning: {clean_s:.2f} CPU s, {rows / clean_s:,.0f} rows/s "
        f"(median of {len(runs)} runs: {each} s)"
    )
    both = clean_s + pack_s
    print(
        f"packing into batches: {pack_s:.2f} CPU s; "
        f"cleaning + packing: {both:.2f} CPU s, {rows / both:,.0f} rows/s"
    )
    if not args.stream:
        print(f"reading (before cleaning): {read_s:.2f} CPU s")
    print(f"reading + cleaning + packing: {total_s:.2f} CPU s, {rows / total_s:,.0f} rows/s")
    return {**stats, "clean_s": clean_s, "pack_s": pack_s, "read_s": read_s, "total_s": total_s}


if __name__ == "__main__":
    main()
