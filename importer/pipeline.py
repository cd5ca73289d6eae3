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
from .errors import AccountingMismatch, RunStopped, UsageError
from .mapping import ColumnMapping, load_mapping_file, resolve_mapping
from .options import ImportOptions, fingerprint
from .outcomes import (
    DeadLetterWriter,
    ImportReport,
    RejectsWriter,
    default_rejects_path,
    point_latest,
    refuse_existing,
    rejects_format,
    stamped_dir,
    unwrap_rejects,
)
from .pacing import redacted
from .presets import Preset, choose_preset
from .records import Batch, Outcome
from .sending import Sender
from .source import Chunk, InputHasher, Source, SourceInfo, unwrap_dead_letter
from .source.chunk import first_rows
from .source.inputs import InputFile, expand_inputs
from .source.location import display_name, local_path
from .source.reading import detect_format
from .source.records_rows import RECORDS_NAME, Records, RecordsSource
from .state import Account, ConfirmationWriter, Fingerprint, StateReader, StateStore, trim_output

log = logging.getLogger(__name__)

Observer = Callable[[ImportReport], None]
AnySource = Source | RecordsSource
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


class _Run:
    """The mutable state of one run, shared by the producer thread and the workers.

    The report, the output files, the state store and the sender serve the
    whole run; the input, its state reader and writer, one file at a time.
    """

    def __init__(self, inputs: list[InputFile], options: ImportOptions, label: str):
        self.inputs = inputs
        self.path = str(local_path(inputs[0].path))
        #: The options as given; ``options`` adds the --output-dir file names to them.
        self.given = options
        self.run_dir: Path | None = None
        #: How the input is named in the report and output files (a URL without its query).
        self.name = display_name(self.path)
        self.options = options
        self.report = ImportReport(source=label, dry_run=options.dry_run)
        self.report.rate_limit = options.rate
        if options.shared_limit:
            self.report.shared_limit = redacted(options.shared_limit)
        self.stopping = threading.Event()
        self.rejects: RejectsWriter | None = None
        #: --rejects, else a new file beside the report (or the resumed run's file).
        self.rejects_path: Path | None = options.rejects_path
        self.dead_letter: DeadLetterWriter | None = None
        self.store: StateStore | None = None
        self.reader: StateReader | None = None
        self.writer: ConfirmationWriter | None = None
        self.hasher_checkpoint: tuple[int, str | None] | None = None
        self.content_hash: str | None = None
        self.completed = False
        #: Bytes read from the files before this one (the report counts the whole run's).
        self.bytes_before = 0
        #: Whether a file has been read yet: only the first one read may resume a run, and
        #: the output files are opened when it begins.
        self.read_any = False
        self._counts_before: dict[str, int] = {}
        self.column_specs = load_mapping_file(options.mapping_file) if options.mapping_file else {}

    def use_run_dir(self, run_dir: Path) -> None:
        """Name the files not given their own path after ``run_dir`` (--output-dir)."""
        o = self.given
        self.run_dir = run_dir
        self.options = o.replace(
            report_path=o.report_path or run_dir / "report.json",
            dead_letter_path=o.dead_letter_path or run_dir / "dead-letter.jsonl",
        )

    def lock_state(self) -> None:
        """Make the run directory (--output-dir), then open and lock the state store for
        the whole run, before any output file is made."""
        if self.given.output_dir is not None:
            self.use_run_dir(stamped_dir(self.given.output_dir))
        o = self.options
        if o.state_path is not None and not o.dry_run:
            self.store = StateStore(o.state_path, resume=o.resume)

    def begin_file(self, index: int, source: AnySource) -> bool:
        """Make ``source`` (the ``index``-th input) the one being read, and begin its run
        in the state; False when ``--resume`` finds it finished (it is skipped).

        The first file read opens the output files (after its run in the state
        is begun: a resumed run goes on in the interrupted run's files).
        """
        self.path = str(local_path(self.inputs[index].path))
        self.name = display_name(self.path)
        self.hasher_checkpoint = self.content_hash = None
        self.completed = False
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
        if not self.read_any:
            self.open_outputs(source.info)
        self.read_any = True
        for output in (self.rejects, self.dead_letter):
            if output is not None:
                output.source = self.name
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
        skips it (see :meth:`StateStore.finished_run`), else None. With
        --output-dir, a resumed run's files go on in the interrupted run's
        directory.
        """
        o = self.options
        if self.rejects_path is None:
            # One rejects file for the run, named after its first input.
            name = display_name(self.inputs[0].path)
            self.rejects_path = default_rejects_path(name, input.format, o.report_path)
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
            rejects_path=self.rejects_path,
            dead_letter_path=o.dead_letter_path,
        )
        account = Account(o.resolved_base_url, o.api_key)
        self.reader = StateReader(self.store, info, account)
        # Payload hashes are kept once --changed-only is used with this state: a run that
        # sent new payloads without recording them would leave hashes a later
        # --changed-only run trusts, skipping customers whose last payload was another.
        keep = o.changed_only or self.store.holds_payloads()
        self.writer = ConfirmationWriter(self.store, info, account if keep else None)
        if info.resumed and self.run_dir is not None and info.dead_letter_path:
            # The interrupted run's own run directory (not a --dead-letter path of its own).
            earlier = Path(info.dead_letter_path).parent
            ours = earlier.parent == self.run_dir.parent.resolve() and earlier.is_dir()
            if ours and earlier != self.run_dir.resolve():
                self.run_dir.rmdir()  # still empty
                self.use_run_dir(earlier)
                o = self.options
        if info.resumed:
            self.hasher_checkpoint = (info.checkpoint_bytes, info.checkpoint_hash)
            if o.rejects_path is None and info.rejects_path is not None:
                # The default name is new each run: the resumed run goes on in its own.
                self.rejects_path = Path(info.rejects_path)
            trim_output(self.rejects_path, info.rejects_path, info.rejects_offset)
            trim_output(o.dead_letter_path, info.dead_letter_path, info.dead_letter_offset)
            log.info("resuming run %d of %s", info.run_id, info.source)
        self.report.files["state"] = str(o.state_path)
        return None

    def open_outputs(self, input: SourceInfo) -> None:
        o = self.options
        if self.run_dir is not None:
            point_latest(self.run_dir)
        # A resumed run adds to the interrupted run's files (trimmed to what it recorded).
        append = o.resume and not o.overwrite
        if o.report_path:
            refuse_existing(o.report_path, overwrite=o.overwrite or o.resume)
        inputs = {Path(local_path(i.path)).resolve() for i in self.inputs}
        if self.rejects_path is not None:
            if self.rejects_path.resolve() in inputs:
                raise UsageError(
                    f"{self.rejects_path} is the input; give the new rejects file another name"
                )
            self.rejects = RejectsWriter(
                self.rejects_path, input.format, overwrite=o.overwrite, append=append
            )
        if o.dead_letter_path and not o.dry_run:
            if Path(o.dead_letter_path).resolve() in inputs:
                raise UsageError(
                    f"{o.dead_letter_path} is the input; give dead_letter_path another name",
                    "dead_letter_path",
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
        if self.rejects is not None and self.rejects.created:
            self.report.files["rejects"] = str(self.rejects.path)


def _produce(
    run: _Run, source: AnySource, put: Callable[[Batch], bool], notify: Callable[..., object]
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

    def handle(chunk: Chunk, key: tuple[str, ...]) -> bool:
        """Clean, filter and pack one piece of the input; False once the run is stopping."""
        # A chunk of no parsed rows (unparseable, or a rejects file's notes) decides no types.
        types, orders = column_types.get(key, {}), date_orders.get(key, {})
        result = clean_chunk(chunk, mappings[key], o, types, orders)
        customers, merged, conflicts = merge_repeats(result.customers)
        report.merged_duplicates += merged
        rejects = [*result.rejects, *conflicts]
        report.count_rejects(rejects)
        if run.rejects is not None:
            read_as = {
                "types": types,
                "date_orders": {c: d._asdict() for c, d in orders.items()},
            }
            new = rejects if reader is None else reader.new_rejects(rejects)
            run.rejects.write(new, chunk, read_as)
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
                specs = {**(preset.columns if preset else {}), **run.column_specs}
                mappings[key] = resolve_mapping(
                    key,
                    o.column_map,
                    o.drop_columns,
                    o.drop_unmapped,
                    specs,
                    preset.record_id if preset else None,
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
        # A run cut short by ``limit`` did not import the whole input: not completed.
        cut = o.limit is not None and report.rows_read >= o.limit
        run.completed = not run.stopping.is_set() and not cut
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

    def limit_reached() -> bool:
        return options.limit is not None and report.rows_read >= options.limit

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
                        if run.stopping.is_set() or limit_reached():
                            name = display_name(item.path)
                            report.inputs.append({"source": name, "status": "not read"})
                            continue
                        source = source or open_source(item.path, source_options)
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
    # Files a run had nothing to write are never created.
    report.files = {k: v for k, v in report.files.items() if k == "state" or Path(v).exists()}
    if run.options.report_path:
        report.files["report"] = str(run.options.report_path)
        report.write(run.options.report_path)
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
