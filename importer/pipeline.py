"""The pipeline: wires the stages in order and runs them. Holds no stage logic.

    source → mapping → cleaning → batching → sending → outcomes

Reading and cleaning run in a worker thread so the event loop keeps sending
while the next chunk is parsed; a bounded queue between them keeps reading
from running far ahead of sending, so memory stays flat for any file size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from .batching import BatchPacker
from .cleaning import DateOrder, clean_chunk, decide_date_orders, infer_column_types
from .dedupe import merge_repeats
from .errors import (
    AccountingMismatch,
    ImporterError,
    InputUnreadable,
    LocalFault,
    RunStopped,
    UsageError,
)
from .mapping import ColumnMapping, resolve_mapping
from .options import ImportOptions
from .outcomes import (
    ImportReport,
    rejects_format,
    unwrap_rejects,
)
from .presets import Preset, choose_preset
from .records import Batch, Customer
from .run import AnySource, Run, check_outputs, describe_fault, write_report
from .sending import Sender
from .source import Chunk, InputHasher, Source, unwrap_dead_letter
from .source.chunk import first_rows
from .source.inputs import InputFile, expand_inputs
from .source.location import display_name, local_path
from .source.reading import detect_format
from .source.records_rows import RECORDS_NAME, Records, RecordsSource

log = logging.getLogger(__name__)

Observer = Callable[[ImportReport], None]
#: Rows of the first chunk cleaned and sent before the rest of it.
FIRST_PIECE_ROWS = 1_000


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
    Called inside a running event loop (a notebook), it runs in a worker
    thread with a loop of its own. ``observer`` is called with the live
    report as batches complete (for progress displays); setting ``stop``
    makes the run stop reading, finish the requests in flight and return
    (``report.stopped`` says so).

    Raises :class:`~importer.errors.UsageError` or
    :class:`~importer.errors.InputUnreadable` before anything is sent, and
    :class:`~importer.errors.RunStopped` (with ``.report``) when the API
    rejects the key or stays down. A report whose counts do not add up raises
    :class:`~importer.errors.AccountingMismatch`.
    """
    options = options or ImportOptions()
    return _in_own_loop(lambda: aimport_file(path, options, observer=observer, stop=stop))


def import_records(
    records: Records,
    options: ImportOptions | None = None,
    *,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """Import customers held in memory and return the report, as :func:`import_file` does.

    ``records`` is an iterable of dicts (read a chunk at a time: a generator
    is never held whole) or a pandas DataFrame; they go through the same
    mapping, cleaning and accounting as the lines of a JSONL file. ``resume``
    is refused (records cannot be read again); raises as :func:`import_file`.
    """
    options = options or ImportOptions()
    return _in_own_loop(lambda: aimport_records(records, options, observer=observer, stop=stop))


async def aimport_file(
    path: str | Path | Sequence[str | Path],
    options: ImportOptions | None = None,
    *,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """:func:`import_file` for code already inside an event loop (an async service)."""
    options = options or ImportOptions()
    inputs = expand_inputs(path, dict(options.storage_options))
    if len(inputs) > 1:
        _refuse_mixed_formats(inputs, options)
    args = [path] if isinstance(path, str | Path) else path
    # The report names a set by what was asked for (the globs, the directories).
    label = display_name(inputs[0].path) if len(inputs) == 1 else " ".join(map(display_name, args))
    return await _run(inputs, label, Source, options, observer, stop)


async def aimport_records(
    records: Records,
    options: ImportOptions | None = None,
    *,
    observer: Observer | None = None,
    stop: threading.Event | None = None,
) -> ImportReport:
    """:func:`import_records` for code already inside an event loop (an async service)."""
    options = options or ImportOptions()
    if options.resume:
        raise UsageError("resume needs a file: records in memory cannot be read again", "resume")
    inputs = [InputFile(RECORDS_NAME)]
    return await _run(
        inputs, RECORDS_NAME, lambda _, o: RecordsSource(records, o), options, observer, stop
    )


def _refuse_mixed_formats(inputs: list[InputFile], options: ImportOptions) -> None:
    """Raise :class:`UsageError` for a set mixing CSV with JSONL or Parquet: the run's one
    rejects file holds rows in one format (told by each file's extension, as when read)."""
    formats = {i.path: rejects_format(detect_format(display_name(i.path), options.format))
               for i in inputs}  # fmt: skip
    if len(set(formats.values())) > 1:
        csv_file = next(p for p, f in formats.items() if f == "csv")
        other = next(p for p, f in formats.items() if f != "csv")
        raise UsageError(
            f"{display_name(csv_file)} is CSV but {display_name(other)} is not: "
            "one run reads CSV files only, or JSONL and Parquet files only"
        )


def _in_own_loop(make: Callable[[], Coroutine[Any, Any, ImportReport]]) -> ImportReport:
    """Run the coroutine ``make`` returns in an event loop of its own.

    Called inside a running loop (a notebook, an async service), that loop
    cannot be blocked into running another: the import runs in a worker
    thread with its own loop, and this call waits for it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="import") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _produce(
    run: Run, source: AnySource, put: Callable[[Batch], bool], notify: Callable[..., object]
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
    preset: Preset | None = None
    preset_decided = False
    # One type per CSV column and one order per date column for the whole file,
    # decided from its first chunk.
    column_types: dict[tuple[str, ...], dict[str, str]] = {}
    date_orders: dict[tuple[str, ...], dict[str, DateOrder]] = {}
    hasher: InputHasher | None = None
    if writer is not None and source.info.name not in ("-", RECORDS_NAME):
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
            run.batches_put += 1

    def abandon() -> None:
        """Count the customers cleaned but not handed to a worker as not sent."""
        report.not_sent += sum(len(b) for b in (*held, *packer.flush()))
        held.clear()

    def handle(chunk: Chunk, key: tuple[str, ...]) -> bool:
        """Clean, filter and pack one piece of the input; False once the run is stopping."""
        # A chunk of no parsed rows (unparseable, or a rejects file's notes) decides no types.
        types, orders = column_types.get(key, {}), date_orders.get(key, {})
        result = clean_chunk(chunk, mappings[key], o, types, orders)
        customers, merged, conflicts = merge_repeats(result.customers, mappings[key].record_id)
        merged_into = customers
        rejects = [*result.rejects, *conflicts]
        done = 0
        skipped: list[Customer] = []
        if reader is not None:
            customers, done = reader.skip_done(customers)
            if o.changed_only:
                customers, skipped = reader.skip_unchanged(customers)
        if run.rejects is not None:
            read_as = {
                "types": types,
                "date_orders": {c: d._asdict() for c, d in orders.items()},
            }
            new_rejects = rejects if reader is None else reader.new_rejects(rejects)
            try:
                run.rejects.write(new_rejects, chunk, read_as)
            except OSError as exc:
                # Nothing of this piece is counted yet: all its rows are not sent, and the
                # state does not record its rejects, so a resumed run reads them again.
                report.not_sent += chunk.rows_read
                run.fail(LocalFault(f"cannot write the rejects file: {describe_fault(exc)}"))
                abandon()
                return False
            if writer is not None and reader is not None:
                # Rows an earlier attempt counted are left out of the job's totals.
                counted = reader.new_counts(new_rejects, merged_into, skipped)
                notify(writer.note_rejects, _last_record(chunk), run.rejects.size, counted)
        # Counted only once nothing above can fail: a piece is counted whole or not at all.
        report.merged_duplicates += merged
        report.count_rejects(rejects)
        report.already_done += done
        report.unchanged_skipped += len(skipped)
        if o.dry_run:
            room = o.preview_size - len(report.preview)
            report.preview.extend(c.payload for c in customers[:room])
            report.not_sent += len(customers)
            report.requests += len(packer.add(customers))
            return True
        emit(packer.add(customers))
        if run.stopping.is_set():
            abandon()
            return False
        return True

    # ``limit`` counts the rows of the whole run, over all its files.
    left = None if o.limit is None else max(0, o.limit - report.rows_read)
    try:
        for number, chunk in enumerate(first_rows(source.chunks(), left)):
            report.rows_read += chunk.rows_read
            report.bytes_read = run.bytes_before + source.bytes_read
            if hasher is not None and writer is not None:
                notify(writer.note_input, hasher.advance(source.bytes_read))
            # A dead-letter file (JSONL: CSV cells are never payload objects) is re-imported
            # as the payloads it holds.
            payloads = unwrap_dead_letter(chunk.frame) if source.info.format == "jsonl" else None
            if payloads is not None:
                chunk = Chunk(payloads, chunk.records, chunk.lines, chunk.rejects)
            # A rejects file is re-imported as its rows; the rows it lists as sent already
            # (dropped fields, conflicts) are left out.
            read_as: dict[str, Any] = {}
            unwrapped = unwrap_rejects(chunk, guarded=source.info.format == "csv")
            if unwrapped is not None:
                chunk, sent, read_as = unwrapped
                report.already_done += sent
            key = tuple(chunk.column_names)
            if key not in mappings:
                if not preset_decided:
                    # One preset for the whole input, from its first header (or JSON keys).
                    preset, preset_decided = choose_preset(o.preset, key), True
                    report.preset = preset.name if preset else None
                fitted = preset.fit(key) if preset else None
                specs = {**(fitted.columns if fitted else {}), **run.column_specs}
                mappings[key] = resolve_mapping(
                    key,
                    o.column_map,
                    o.drop_columns,
                    o.drop_unmapped,
                    specs,
                    fitted.record_id if fitted else None,
                )
                if not report.mapping:
                    report.mapping = mappings[key].describe()
            if key not in column_types and chunk.num_rows:
                types = (
                    infer_column_types(chunk, mappings[key], o.date_order)
                    if source.info.format == "csv"
                    else {}
                )
                orders = decide_date_orders(chunk, mappings[key], types, o.date_order)
                # A rejects file's few rows are read as the whole file they came from was.
                types, orders = _as_read(read_as, types, orders, o.date_order)
                column_types[key], date_orders[key] = types, orders
                if not report.date_orders:
                    report.date_orders = {c: d._asdict() for c, d in date_orders[key].items()}
            pieces = [chunk]
            if number == 0 and chunk.num_rows > FIRST_PIECE_ROWS:
                # Types come from the whole first chunk, but only a small piece of it is
                # cleaned before the first request goes out: the first call does not wait
                # for a full chunk to be cleaned.
                pieces = list(chunk.split(FIRST_PIECE_ROWS))
            for i, piece in enumerate(pieces):
                try:
                    handled = handle(piece, key)
                except BaseException:
                    # The pieces not handled were read but never sent.
                    report.not_sent += sum(p.rows_read for p in pieces[i:])
                    raise
                if not handled:
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
        # A run cut short by ``limit`` did not import the whole input: not completed.
        run.completed = not run.stopping.is_set() and not run.limit_reached()
    except BaseException:
        abandon()
        raise
    finally:
        if hasher is not None:
            hasher.close()
        if reader is not None:
            reader.close()


def _as_read(
    read_as: dict[str, Any], types: dict[str, str], orders: dict[str, DateOrder], option: str
) -> tuple[dict[str, str], dict[str, DateOrder]]:
    """``types`` and ``orders`` with those a rejects file recorded (``_read_as``) instead.

    Only columns inferred here take a recorded type (a mapping file's types
    win), and recorded date orders only where ``--date-order`` is ``auto``.
    """
    recorded = read_as.get("types")
    if isinstance(recorded, dict):
        types = {**types, **{t: str(v) for t, v in recorded.items() if t in types}}
    dates = read_as.get("date_orders")
    if option == "auto" and isinstance(dates, dict):
        orders = dict(orders)
        for column, how in dates.items():
            if isinstance(how, dict) and how.get("order") in ("month-first", "day-first"):
                orders[column] = DateOrder(how["order"], str(how.get("decided_by", "file")))
    return types, orders


def _last_record(chunk: Chunk) -> int:
    """The highest record number in ``chunk``, rows and unparseable rows alike."""
    last = int(chunk.records.max()) if len(chunk.records) else 0
    return max([last, *(r.record for r in chunk.rejects)])


async def _run(
    inputs: list[InputFile],
    label: str,
    open_source: Callable[[str, ImportOptions], AnySource],
    options: ImportOptions,
    observer: Observer | None,
    stop: threading.Event | None,
) -> ImportReport:
    stop = stop or threading.Event()
    run = Run(inputs, options, label)
    report = run.report
    check_outputs([str(local_path(i.path)) for i in inputs], options)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue()
    # The queue is bounded by these slots, taken by the producer and given back by the
    # workers: a thread semaphore, so a producer waiting for room still sees a stop.
    slots = threading.Semaphore(options.in_flight_ceiling * 2)
    failure = run.failure

    def put(batch: Batch) -> bool:
        """Queue ``batch`` (producer thread) once there is room; False once stopping."""
        while not run.stopping.is_set():
            if slots.acquire(timeout=0.2):
                loop.call_soon_threadsafe(queue.put_nowait, batch)
                return True
        return False

    # With a limit, the source reads no more rows than it may import.
    chunk_rows = min(options.chunk_rows, options.limit or options.chunk_rows)
    source_options = options.replace(chunk_rows=chunk_rows)
    # The first input is opened first, then the shared limit's Redis is reached: either
    # failing, the run stops before it touches the state or the output files.
    source: AnySource | None = open_source(inputs[0].path, source_options)
    try:
        async with Sender(options) as sender:
            try:
                run.lock_state()

                async def worker() -> None:
                    # A worker never dies: whatever fails stops the run, and the worker
                    # goes on draining the queue (counting it as not sent) so the
                    # producer never waits for room that will not come.
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
                            run.fail(exc)
                        except Exception as exc:
                            log.debug("sending batch %d failed", batch.seq, exc_info=True)
                            outcomes = []
                            run.fail(LocalFault(f"sending failed: {describe_fault(exc)}"))
                        run.settle(batch, outcomes)
                        if observer is not None:
                            _sync_stats(report, sender)
                            try:
                                observer(report)
                            except Exception as exc:
                                run.fail(LocalFault(f"the progress display failed: {exc}"))

                async def watch_stop() -> None:
                    while not stop.is_set() and not any(isinstance(f, LocalFault) for f in failure):
                        await asyncio.sleep(0.05)
                    # Stop reading and start no new attempt; requests in flight finish.
                    run.stopping.set()
                    sender.interrupt()

                async def read_file(source: AnySource) -> None:
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
                    except InputUnreadable as exc:
                        if not run.batches_put:
                            raise  # nothing was sent: a usage error, as before the first request
                        run.fail(LocalFault(f"input damaged after row {report.rows_read}: {exc}"))
                    except (ImporterError, KeyboardInterrupt):
                        raise
                    except Exception as exc:
                        log.debug("reading the input failed", exc_info=True)
                        run.fail(LocalFault(f"reading the input failed: {describe_fault(exc)}"))
                    finally:
                        # Workers drain what is queued (counting it as not sent when stopping).
                        for _ in workers:
                            queue.put_nowait(None)
                        await asyncio.gather(*workers)
                        if not options.dry_run:
                            _sync_stats(report, sender)
                        run.end_file(run.completed and not failure and not run.stopping.is_set())

                watcher = asyncio.create_task(watch_stop())
                # True while an error escapes the run (no report is written then).
                aborted = True
                try:
                    for index, item in enumerate(inputs):
                        if run.stopping.is_set() or run.limit_reached():
                            name = display_name(item.path)
                            report.inputs.append({"source": name, "status": "not read"})
                            continue
                        source = source or open_source(item.path, source_options)
                        with source:
                            if run.begin_file(index, source):
                                await read_file(source)
                        source = None
                    aborted = False
                finally:
                    watcher.cancel()
                    if not aborted:
                        write_report(run, stop)
            finally:
                run.close()
    finally:
        if source is not None:
            source.close()
    if observer is not None:
        observer(report)
    if failure:
        failure[0].report = report
        raise failure[0]
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
    if stats.last_request_at is not None:
        report.last_request_s = round(stats.last_request_at - report.started_monotonic(), 3)
