"""The pipeline: wires the stages in order and runs them. Holds no stage logic.

    source → mapping → cleaning → batching → sending → outcomes

Reading and cleaning run in a worker thread so the event loop keeps sending
while the next chunk is parsed; a bounded queue between them keeps reading
from running far ahead of sending, so memory stays flat for any file size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from .batching import BatchPacker
from .cleaning import clean_chunk, infer_column_types
from .dedupe import merge_repeats
from .errors import AccountingMismatch, RunStopped
from .mapping import ColumnMapping, resolve_mapping
from .options import ImportOptions
from .outcomes import DeadLetterWriter, ImportReport, RejectsWriter
from .records import Batch
from .sending import Sender
from .source import Source

log = logging.getLogger(__name__)

Observer = Callable[[ImportReport], None]
#: How many customers a dry run keeps to show as a preview.
PREVIEW_SIZE = 5


def import_file(
    path: str | Path,
    options: ImportOptions | None = None,
    *,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """Import one customer file into Blueshift and return the report.

    ``path`` is a CSV or JSONL file (optionally gzipped) or ``-`` for stdin.
    ``observer`` is called with the live report as batches complete (for
    progress displays); setting ``stop`` makes the run stop reading, finish
    the requests in flight and return (``report.stopped`` says so).

    Raises :class:`~importer.errors.UsageError` or
    :class:`~importer.errors.InputUnreadable` before anything is sent, and
    :class:`~importer.errors.RunStopped` (with ``.report``) when the API
    rejects the key or stays down. A report whose counts do not add up raises
    :class:`~importer.errors.AccountingMismatch`.
    """
    options = options or ImportOptions()
    return asyncio.run(_run(path, options, observer, stop or threading.Event()))


class _Run:
    """The mutable state of one run, shared by the producer thread and the workers."""

    def __init__(self, path: str | Path, options: ImportOptions):
        self.path = str(path)
        self.options = options
        self.report = ImportReport(source=self.path, dry_run=options.dry_run)
        self.report.rate_limit = options.rate
        self.stopping = threading.Event()
        self.rejects: RejectsWriter | None = None
        self.dead_letter: DeadLetterWriter | None = None

    def open_outputs(self) -> None:
        o = self.options
        if o.rejects_path:
            self.rejects = RejectsWriter(o.rejects_path, self.path, overwrite=o.overwrite)
            self.report.files["rejects"] = str(o.rejects_path)
        if o.dead_letter_path and not o.dry_run:
            self.dead_letter = DeadLetterWriter(
                o.dead_letter_path, self.path, overwrite=o.overwrite
            )
            self.report.files["dead_letter"] = str(o.dead_letter_path)

    def close_outputs(self) -> None:
        for writer in (self.rejects, self.dead_letter):
            if writer is not None:
                writer.close()


def _produce(
    run: _Run,
    source: Source,
    put: Callable[[Batch], bool],
) -> None:
    """Read, clean and pack the input (in a worker thread), handing batches to ``put``."""
    o = run.options
    report = run.report
    packer = BatchPacker(o.batch_size, o.max_batch_bytes)
    mappings: dict[tuple[str, ...], ColumnMapping] = {}
    # One type per CSV column for the whole file, inferred from its first chunk.
    column_types: dict[tuple[str, ...], dict[str, str]] = {}
    for chunk in source.chunks():
        report.rows_read += chunk.rows_read
        key = tuple(chunk.frame.columns)
        if key not in mappings:
            mappings[key] = resolve_mapping(key, o.column_map, o.drop_columns, o.drop_unmapped)
            if not report.mapping:
                report.mapping = mappings[key].describe()
        if key not in column_types and len(chunk.frame):
            column_types[key] = (
                infer_column_types(chunk, mappings[key]) if source.info.format == "csv" else {}
            )
        result = clean_chunk(chunk, mappings[key], o, column_types.get(key))
        report.count_rejects(result.rejects)
        if run.rejects is not None:
            run.rejects.write(result.rejects)
        result.customers, merged = merge_repeats(result.customers)
        report.merged_duplicates += merged
        if o.dry_run:
            room = PREVIEW_SIZE - len(report.preview)
            report.preview.extend(c.payload for c in result.customers[:room])
            report.not_sent += len(result.customers)
            report.requests += len(packer.add(result.customers))
            continue
        for batch in packer.add(result.customers):
            if not put(batch):
                report.not_sent += len(batch)
        if run.stopping.is_set():
            report.not_sent += sum(len(b) for b in packer.flush())
            return
    for batch in packer.flush():
        if o.dry_run:
            report.requests += 1
        elif not put(batch):
            report.not_sent += len(batch)


async def _run(
    path: str | Path, options: ImportOptions, observer: Observer | None, stop: threading.Event
) -> ImportReport:
    run = _Run(path, options)
    report = run.report
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=options.concurrency * 2)
    failure: list[BaseException] = []

    def put(batch: Batch) -> bool:
        """Queue a batch from the producer thread; False once the run is stopping."""
        future = asyncio.run_coroutine_threadsafe(queue.put(batch), loop)
        while True:
            try:
                future.result(timeout=0.2)
                return True
            except TimeoutError:
                if run.stopping.is_set() or stop.is_set():
                    run.stopping.set()
                    future.cancel()
                    with contextlib.suppress(Exception):
                        future.result(timeout=1)
                    return False

    with Source(
        path,
        format=options.format,
        encoding=options.encoding,
        delimiter=options.delimiter,
        chunk_rows=options.chunk_rows,
        max_field_bytes=options.max_field_bytes,
        max_columns=options.max_columns,
        max_json_depth=options.max_json_depth,
    ) as source:
        run.open_outputs()
        try:
            async with Sender(options) as sender:

                async def worker() -> None:
                    while True:
                        batch = await queue.get()
                        if batch is None:
                            return
                        if run.stopping.is_set():
                            report.not_sent += len(batch)
                            continue
                        try:
                            outcomes = await sender.send(batch)
                        except RunStopped as exc:
                            report.not_sent += len(batch)
                            if not failure:
                                failure.append(exc)
                            run.stopping.set()
                            continue
                        report.count_outcomes(outcomes)
                        if run.dead_letter is not None:
                            run.dead_letter.write(outcomes)
                        if observer is not None:
                            _sync_stats(report, sender)
                            observer(report)

                async def watch_stop() -> None:
                    while not run.stopping.is_set():
                        if stop.is_set():
                            run.stopping.set()
                        await asyncio.sleep(0.1)

                workers = [asyncio.create_task(worker()) for _ in range(options.concurrency)]
                watcher = asyncio.create_task(watch_stop())
                try:
                    await asyncio.to_thread(_produce, run, source, put)
                finally:
                    # Workers drain what is queued (counting it as not sent when stopping).
                    for _ in workers:
                        await queue.put(None)
                    await asyncio.gather(*workers)
                    watcher.cancel()
                    if not options.dry_run:
                        _sync_stats(report, sender)
        finally:
            run.close_outputs()
    if failure:
        report.stopped = str(failure[0])
    elif stop.is_set():
        report.stopped = "interrupted"
    report.finish()
    if options.report_path:
        report.files["report"] = str(options.report_path)
        report.write(options.report_path)
    if observer is not None:
        observer(report)
    if failure:
        exc = failure[0]
        exc.report = report  # type: ignore[attr-defined]
        raise exc
    if not report.accounting_ok:
        raise AccountingMismatch(report.accounting_line())
    return report


def _sync_stats(report: ImportReport, sender: Sender) -> None:
    stats = sender.stats
    report.requests = stats.requests
    report.retries = stats.retries
    report.splits = stats.splits
    report.status_counts = dict(sorted(stats.status_counts.items()))
    report.final_rate = round(sender.governor.rate, 3)
