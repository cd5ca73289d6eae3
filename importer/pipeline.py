"""The pipeline: wires the stages in order and runs them. Holds no stage logic.

    source → mapping → cleaning → batching → sending → outcomes

Reading and cleaning run in a worker thread so the event loop keeps sending
while the next chunk is parsed; a bounded queue between them keeps reading
from running far ahead of sending, so memory stays flat for any file size.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .batching import BatchPacker
from .cleaning import DateOrder, clean_chunk, decide_date_orders, infer_column_types
from .dedupe import merge_repeats
from .errors import AccountingMismatch, RunStopped, UsageError
from .mapping import ColumnMapping, load_mapping_file, resolve_mapping
from .options import ImportOptions, fingerprint
from .outcomes import DeadLetterWriter, ImportReport, RejectsWriter, refuse_existing
from .pacing import redacted
from .records import Batch, Outcome
from .sending import Sender
from .source import Chunk, InputHasher, Source, SourceInfo, unwrap_dead_letter
from .source.inputs import InputFile, expand_inputs
from .source.location import display_name, local_path
from .state import (
    ConfirmationWriter,
    Fingerprint,
    StateReader,
    StateStore,
    target_tag,
    trim_output,
)

log = logging.getLogger(__name__)

Observer = Callable[[ImportReport], None]
#: Rows of the first chunk cleaned and sent before the rest of it.
FIRST_PIECE_ROWS = 1_000
#: The report's counts that each file's section of it (``inputs``) gives too.
FILE_COUNTS = (
    "rows_read",
    "bytes_read",
    "succeeded",
    "rejected",
    "dead_lettered",
    "merged_duplicates",
    "unchanged_skipped",
    "already_done",
    "not_sent",
)


def import_file(
    path: str | Path | Sequence[str | Path],
    options: ImportOptions | None = None,
    *,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """Import a customer file, or a set of them, into Blueshift and return the report.

    ``path`` is a CSV, JSONL (either optionally gzipped) or Parquet file: a
    local path, a URL (``s3://``, ``gs://``, ``az://``, ``https://``,
    ``http://``, ``file://``) or ``-`` for stdin; or a glob, a directory or a
    list of those (see :func:`~importer.source.inputs.expand_inputs`), read one
    file after the other in one run with one report (a section per file in
    ``report.inputs``). A batch never holds rows of two files.
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
    """The mutable state of one run, shared by the producer thread and the workers.

    The report, the output files, the state store and the sender serve the
    whole run; the input, its state reader and writer, one file at a time.
    """

    def __init__(self, inputs: list[InputFile], options: ImportOptions, label: str):
        self.inputs = inputs
        self.path = str(local_path(inputs[0].path))
        #: How the input is named in the report and output files (a URL without its query).
        self.name = display_name(self.path)
        self.options = options
        self.report = ImportReport(source=label, dry_run=options.dry_run)
        self.report.rate_limit = options.rate
        if options.shared_limit:
            self.report.shared_limit = redacted(options.shared_limit)
        self.stopping = threading.Event()
        self.rejects: RejectsWriter | None = None
        self.dead_letter: DeadLetterWriter | None = None
        self.store: StateStore | None = None
        self.reader: StateReader | None = None
        self.writer: ConfirmationWriter | None = None
        self.hasher_checkpoint: tuple[int, str | None] | None = None
        self.content_hash: str | None = None
        self.completed = False
        #: Bytes read from the files before this one (the report counts the whole run's).
        self.bytes_before = 0
        #: Whether a file has been read yet: only the first one read may resume a run.
        self.read_any = False
        self._counts_before: dict[str, int] = {}
        self.column_specs = load_mapping_file(options.mapping_file) if options.mapping_file else {}

    def begin_file(self, index: int, source: Source) -> bool:
        """Make ``source`` (the ``index``-th input) the one being read, and begin its run
        in the state; False when ``--resume`` finds it finished (it is skipped)."""
        self.path = str(local_path(self.inputs[index].path))
        self.name = display_name(self.path)
        self.hasher_checkpoint = self.content_hash = None
        self.completed = False
        for output in (self.rejects, self.dead_letter):
            if output is not None:
                output.source = self.name
        sizes = [source.info.size, *(i.size for i in self.inputs[index + 1 :])]
        if all(size is not None for size in sizes):
            self.report.bytes_total = self.bytes_before + sum(s or 0 for s in sizes)
        else:
            self.report.bytes_total = None
        self._counts_before = {k: getattr(self.report, k) for k in FILE_COUNTS}
        finished = self.open_state(source.info)
        if finished is not None:
            self.report.inputs.append(
                {"source": self.name, "status": f"skipped: finished by run {finished}"}
            )
            return False
        self.read_any = True
        if self.writer is not None:
            # Where the output files end now: a resumed run trims them back to this.
            self.writer.start(
                rejects_offset=None if self.rejects is None else self.rejects.size,
                dead_letter_offset=None if self.dead_letter is None else self.dead_letter.size,
            )
        return True

    def end_file(self, status: str) -> None:
        """Finish the current file's run in the state and add its section to the report."""
        if self.writer is not None:
            self.writer.finish(status, self.content_hash if status == "completed" else None)
            self.writer.close()
            self.writer = self.reader = None
        section: dict[str, Any] = {"source": self.name, "status": status}
        section |= {k: getattr(self.report, k) - self._counts_before[k] for k in FILE_COUNTS}
        self.report.inputs.append(section)
        self.bytes_before = self.report.bytes_read

    def open_state(self, input: SourceInfo) -> int | None:
        """Begin (or resume) the run of ``input`` in the state, if there is one.

        Returns the id of the run that finished ``input`` when ``--resume``
        skips it (see :meth:`StateStore.finished_run`), else None.
        """
        o = self.options
        if self.store is None:
            return None
        fp = Fingerprint(input.name, input.size, input.mtime_ns)
        # Files are read in order, so the files an interrupted set finished all come before
        # the one it stopped in: the first one this run reads. An unfinished run of a later
        # file, or one it finished, is an older attempt's, whose lines in the output files
        # may since have been replaced; those files are read afresh.
        resume = o.resume and not self.read_any
        if resume and not o.force and (finished := self.store.finished_run(fp)) is not None:
            log.info("%s was finished by run %d; skipping it", input.name, finished)
            return finished
        info = self.store.begin_run(
            fp,
            fingerprint(o),
            resume=resume,
            force=o.force,
            rejects_path=o.rejects_path,
            dead_letter_path=o.dead_letter_path,
        )
        target = target_tag(o.resolved_base_url, o.api_key)
        self.reader = StateReader(self.store, info, target)
        self.writer = ConfirmationWriter(self.store, info, target)
        if info.resumed:
            self.hasher_checkpoint = (info.checkpoint_bytes, info.checkpoint_hash)
            trim_output(o.rejects_path, info.rejects_path, info.rejects_offset)
            trim_output(o.dead_letter_path, info.dead_letter_path, info.dead_letter_offset)
            log.info("resuming run %d of %s", info.run_id, info.source)
        self.report.files["state"] = str(o.state_path)
        return None

    def lock_state(self) -> None:
        """Open and lock the state store for the whole run (before any output file is made)."""
        if self.options.state_path is not None and not self.options.dry_run:
            self.store = StateStore(self.options.state_path)

    def open_outputs(self) -> None:
        o = self.options
        # A resumed run adds to the interrupted run's files (trimmed to what it recorded).
        append = o.resume and not o.overwrite
        if o.report_path:
            refuse_existing(o.report_path, overwrite=o.overwrite or o.resume)
        if o.rejects_path:
            self.rejects = RejectsWriter(
                o.rejects_path, self.name, overwrite=o.overwrite, append=append
            )
            self.report.files["rejects"] = str(o.rejects_path)
        if o.dead_letter_path and not o.dry_run:
            inputs = (Path(local_path(i.path)).resolve() for i in self.inputs)
            if Path(o.dead_letter_path).resolve() in inputs:
                raise UsageError(
                    f"{o.dead_letter_path} is an input; give the new dead-letter file another name"
                )
            self.dead_letter = DeadLetterWriter(
                o.dead_letter_path, self.name, overwrite=o.overwrite, append=append
            )
            self.report.files["dead_letter"] = str(o.dead_letter_path)

    def settle(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Count a sent batch's outcomes, dead-letter its failures and commit it to the state."""
        # After a stop, customers whose delivery did not finish are not in ``outcomes``.
        self.report.not_sent += len(batch) - len(outcomes)
        self.report.count_outcomes(outcomes)
        offset = None
        if self.dead_letter is not None:
            self.dead_letter.write(outcomes)
            if not all(o.delivered for o in outcomes):
                offset = self.dead_letter.size
        if self.writer is not None:
            # Committed before the next batch: a crash re-sends those in flight.
            self.writer.record(outcomes, offset)

    def close(self) -> None:
        """Close the output files, then the state (whatever of them was opened)."""
        for closable in (self.rejects, self.dead_letter, self.writer, self.store):
            if closable is not None:
                closable.close()


def _produce(
    run: _Run, source: Source, put: Callable[[Batch], bool], notify: Callable[..., object]
) -> None:
    """Read, clean and pack the input (in a worker thread), handing batches to ``put``.

    ``put`` returns False once the run is stopping. ``notify(fn, *args)`` runs
    ``fn`` in the event loop's thread, before any batch put afterwards (it
    tells the state writer how far the input was read).
    """
    o = run.options
    report = run.report
    reader, writer = run.reader, run.writer
    packer = BatchPacker(o.batch_size, o.max_batch_bytes)
    mappings: dict[tuple[str, ...], ColumnMapping] = {}
    # One type per CSV column and one order per date column for the whole file,
    # decided from its first chunk.
    column_types: dict[tuple[str, ...], dict[str, str]] = {}
    date_orders: dict[tuple[str, ...], dict[str, DateOrder]] = {}
    hasher: InputHasher | None = None
    if writer is not None and source.info.name != "-":
        hasher = InputHasher(run.path, run.hasher_checkpoint, dict(o.storage_options))
    # On resume, batches wait here until the re-read input is verified against the checkpoint.
    held: list[Batch] = []

    def emit(batches: list[Batch]) -> None:
        if hasher is not None and not hasher.verified:
            held.extend(batches)
            return
        pending = [*held, *batches]
        held.clear()
        for i, batch in enumerate(pending):
            if not put(batch):
                report.not_sent += sum(len(b) for b in pending[i:])
                return

    def handle(chunk: Chunk, key: tuple[str, ...]) -> bool:
        """Clean, filter and pack one piece of the input; False once the run is stopping."""
        result = clean_chunk(chunk, mappings[key], o, column_types[key], date_orders[key])
        customers, merged, conflicts = merge_repeats(result.customers)
        report.merged_duplicates += merged
        rejects = [*result.rejects, *conflicts]
        report.count_rejects(rejects)
        if run.rejects is not None:
            run.rejects.write(rejects if reader is None else reader.new_rejects(rejects))
            if writer is not None:
                notify(writer.note_rejects, _last_record(chunk), run.rejects.size)
        if reader is not None:
            customers, done = reader.skip_done(customers)
            report.already_done += done
            if o.changed_only:
                customers, unchanged = reader.skip_unchanged(customers)
                report.unchanged_skipped += unchanged
        if o.dry_run:
            room = o.preview_size - len(report.preview)
            report.preview.extend(c.payload for c in customers[:room])
            report.not_sent += len(customers)
            report.requests += len(packer.add(customers))
            return True
        emit(packer.add(customers))
        if run.stopping.is_set():
            report.not_sent += sum(len(b) for b in (*held, *packer.flush()))
            return False
        return True

    try:
        for number, chunk in enumerate(source.chunks()):
            report.rows_read += chunk.rows_read
            report.bytes_read = run.bytes_before + source.bytes_read
            if hasher is not None and writer is not None:
                notify(writer.note_input, hasher.advance(source.bytes_read))
            # A dead-letter file (JSONL: CSV cells are never payload objects) is re-imported
            # as the payloads it holds.
            payloads = unwrap_dead_letter(chunk.frame) if source.info.format == "jsonl" else None
            if payloads is not None:
                chunk = Chunk(payloads, chunk.records, chunk.lines, chunk.rejects)
            key = tuple(chunk.column_names)
            if key not in mappings:
                mappings[key] = resolve_mapping(
                    key, o.column_map, o.drop_columns, o.drop_unmapped, run.column_specs
                )
                if not report.mapping:
                    report.mapping = mappings[key].describe()
            if key not in column_types and chunk.num_rows:
                types = (
                    infer_column_types(chunk, mappings[key], o.date_order)
                    if source.info.format == "csv"
                    else {}
                )
                column_types[key] = types
                date_orders[key] = decide_date_orders(chunk, mappings[key], types, o.date_order)
                if not report.date_orders:
                    report.date_orders = {c: d._asdict() for c, d in date_orders[key].items()}
            pieces = [chunk]
            if number == 0 and chunk.num_rows > FIRST_PIECE_ROWS:
                # Types come from the whole first chunk, but only a small piece of it is
                # cleaned before the first request goes out: the first call does not wait
                # for a full chunk to be cleaned.
                pieces = list(chunk.split(FIRST_PIECE_ROWS))
            for i, piece in enumerate(pieces):
                if not handle(piece, key):
                    # Rows read but never cleaned (the rest of a split chunk) were not sent either.
                    report.not_sent += sum(p.rows_read for p in pieces[i + 1 :])
                    return
        report.bytes_read = run.bytes_before + source.bytes_read
        if hasher is not None and writer is not None:
            checkpoint = hasher.finish()
            notify(writer.note_input, checkpoint)
            run.content_hash = checkpoint[1]
        if o.dry_run:
            report.requests += len(packer.flush())
        else:
            emit(packer.flush())
        run.completed = not run.stopping.is_set()
    finally:
        if hasher is not None:
            hasher.close()
        if reader is not None:
            reader.close()


def _last_record(chunk: Chunk) -> int:
    """The highest record number in ``chunk``, rows and unparseable rows alike."""
    last = int(chunk.records.max()) if len(chunk.records) else 0
    return max([last, *(r.record for r in chunk.rejects)])


async def _run(
    path: str | Path | Sequence[str | Path],
    options: ImportOptions,
    observer: Observer | None,
    stop: threading.Event,
) -> ImportReport:
    inputs = expand_inputs(path, dict(options.storage_options))
    args = [path] if isinstance(path, str | Path) else path
    names = [display_name(str(a)) for a in args]
    label = display_name(inputs[0].path) if len(inputs) == 1 else " ".join(names)
    run = _Run(inputs, options, label)
    report = run.report
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    # The queue is bounded by these slots, taken by the producer and given back by the
    # workers: a thread semaphore, so a producer waiting for room still sees a stop.
    slots = threading.Semaphore(options.in_flight_ceiling * 2)
    failure: list[RunStopped] = []

    def put(batch: Batch) -> bool:
        """Queue ``batch`` (producer thread) once there is room; False once stopping."""
        while not run.stopping.is_set():
            if slots.acquire(timeout=0.2):
                loop.call_soon_threadsafe(queue.put_nowait, batch)
                return True
        return False

    # The first input is opened first, then the shared limit's Redis is reached: either
    # failing, the run stops before it touches the state or the output files.
    source: Source | None = Source(inputs[0].path, options)
    try:
        async with Sender(options) as sender:
            try:
                run.lock_state()
                run.open_outputs()

                async def worker() -> None:
                    try:
                        while (batch := await queue.get()) is not None:
                            slots.release()
                            if run.stopping.is_set():
                                report.not_sent += len(batch)
                                continue
                            try:
                                outcomes = await sender.send(batch)
                            except RunStopped as exc:
                                # The part of the batch settled before the stop still counts.
                                outcomes = exc.outcomes
                                if not failure:
                                    failure.append(exc)
                                run.stopping.set()
                            run.settle(batch, outcomes)
                            if observer is not None:
                                _sync_stats(report, sender)
                                observer(report)
                    except BaseException:
                        # A dead worker frees no more slots: the producer must not wait for it.
                        run.stopping.set()
                        raise

                async def watch_stop() -> None:
                    while not stop.is_set():
                        await asyncio.sleep(0.05)
                    # Stop reading and start no new attempt; requests in flight finish.
                    run.stopping.set()
                    sender.interrupt()

                async def read_file(source: Source) -> None:
                    """Send one input. Its batches are all answered before the next file
                    starts, so each file's run in the state is settled by its own writer."""
                    # One worker per call that may be in flight; the pacer decides how many are.
                    workers = [
                        asyncio.create_task(worker()) for _ in range(options.in_flight_ceiling)
                    ]
                    try:
                        await asyncio.to_thread(
                            _produce, run, source, put, loop.call_soon_threadsafe
                        )
                    finally:
                        # Workers drain what is queued (counting it as not sent when stopping).
                        for _ in workers:
                            queue.put_nowait(None)
                        await asyncio.gather(*workers)
                        if not options.dry_run:
                            _sync_stats(report, sender)
                        done = run.completed and not failure and not run.stopping.is_set()
                        status = "completed" if done else ("stopped" if failure else "interrupted")
                        run.end_file(status)

                watcher = asyncio.create_task(watch_stop())
                try:
                    for index, item in enumerate(inputs):
                        if run.stopping.is_set():
                            name = display_name(item.path)
                            report.inputs.append({"source": name, "status": "not read"})
                            continue
                        source = source or Source(item.path, options)
                        with source:
                            if run.begin_file(index, source):
                                await read_file(source)
                        source = None
                finally:
                    watcher.cancel()
            finally:
                run.close()
    finally:
        if source is not None:
            source.close()
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
        exc.report = report
        raise exc
    if not report.accounting_ok:
        raise AccountingMismatch(
            f"accounting does not balance (a bug, please report it): {report.accounting_line()}",
            report,
        )
    return report


def _sync_stats(report: ImportReport, sender: Sender) -> None:
    stats = sender.stats
    report.requests = stats.requests
    report.retries = stats.retries
    report.splits = stats.splits
    report.status_counts = dict(sorted(stats.status_counts.items()))
    pacer = sender.pacer
    report.final_rate = round(pacer.governor.rate, 3)
    report.lowest_rate = round(pacer.governor.lowest_rate, 3)
    report.concurrency = pacer.in_flight.limit
    report.concurrency_ceiling = pacer.in_flight.ceiling
    report.peak_in_flight = pacer.in_flight.peak_in_flight
    report.answer_time_s = pacer.in_flight.answer_times()
    report.concurrency_limited = pacer.in_flight.limited_the_pace
    if pacer.shared is not None:
        report.shared_processes = pacer.shared.processes
    report.shared_limit_fallback = pacer.fallback
    if stats.first_request_at is not None and report.first_request_s is None:
        report.first_request_s = round(stats.first_request_at - report.started_monotonic(), 3)
