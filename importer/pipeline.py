"""The pipeline: wires the stages in order and runs them. Holds no stage logic.

    source → mapping → cleaning → batching → sending → outcomes

Reading and cleaning run in a worker thread so the event loop keeps sending
while the next chunk is parsed; a bounded queue between them keeps reading
from running far ahead of sending, so memory stays flat for any file size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import stat
import threading
import uuid
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
from .mapping import ColumnMapping, load_mapping_file, resolve_mapping
from .options import ImportOptions, fingerprint
from .outcomes import (
    DeadLetterWriter,
    ImportReport,
    RejectsWriter,
    check_writable,
    default_rejects_path,
    point_latest,
    refuse_existing,
    rejects_format,
    stamped_dir,
    unwrap_rejects,
)
from .pacing import redacted
from .presets import Preset, choose_preset
from .records import Batch, Customer, Outcome
from .sending import Sender
from .source import Chunk, InputHasher, Source, SourceInfo, unwrap_dead_letter
from .source.chunk import first_rows
from .source.inputs import InputFile, expand_inputs
from .source.location import describe_error, display_name, local_path
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
        #: Why the run stopped early; the first one is reported.
        self.failure: list[RunStopped] = []
        self.dead_letter_fault: OSError | None = None
        self.state_fault = False
        #: Batches handed to the workers: a damaged input found after the first one
        #: stops the run like any fault instead of being a usage error.
        self.batches_put = 0
        #: Bytes read from the files before this one (the report counts the whole run's).
        self.bytes_before = 0
        #: Whether a file has been read yet: only the first one read may resume a run, and
        #: the output files are opened when it begins.
        self.read_any = False
        self._counts_before: dict[str, int] = {}
        #: This invocation, in the state's record of which ones worked on a run.
        self.invocation = uuid.uuid4().hex
        #: Per input, the run in the state it went on or was finished by, and whether this
        #: run continued an earlier one (then its report gets the job's totals).
        self.job_runs: list[int] = []
        self.continued = False
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

    def end_file(self, done: bool) -> None:
        """Finish the current file's run in the state (``done``: read and settled whole)
        and add its section to the report."""
        status = "completed" if done else ("stopped" if self.failure else "interrupted")
        self.finish_state(done)
        if self.writer is not None:
            with contextlib.suppress(OSError, sqlite3.Error):  # a fault is reported already
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
            self.job_runs.append(finished)
            self.continued = True
            return finished
        info = self.store.begin_run(
            fp,
            fingerprint(o),
            resume=resume,
            force=o.force,
            rejects_path=self.rejects_path,
            dead_letter_path=o.dead_letter_path,
            invocation=self.invocation,
        )
        self.job_runs.append(info.run_id)
        self.continued = self.continued or info.resumed
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

    def fail(self, exc: RunStopped) -> None:
        """Stop the run for ``exc`` (the first reason given is the one reported)."""
        if not self.failure:
            self.failure.append(exc)
        self.stopping.set()

    def settle(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Count a sent batch's outcomes, dead-letter its failures and commit it to the state.

        A failed write stops the run (:class:`LocalFault`) and is never fatal here:
        what could not be written is counted as not sent and left out of the state,
        so ``--resume`` sends it again.
        """
        # After a stop, customers whose delivery did not finish are not in ``outcomes``.
        self.report.not_sent += len(batch) - len(outcomes)
        offset = None
        if not all(o.delivered for o in outcomes):
            try:
                if self.dead_letter_fault is not None:
                    raise self.dead_letter_fault
                if self.dead_letter is not None:
                    self.dead_letter.write(outcomes)
                    offset = self.dead_letter.size
            except OSError as exc:
                # After one failed write the file may end in a partial line: write no more
                # to it (a resumed run trims it back to what the state recorded).
                self.dead_letter_fault = exc
                undelivered = [o for o in outcomes if not o.delivered]
                self.report.not_sent += len(undelivered)
                outcomes = [o for o in outcomes if o.delivered]
                self.fail(LocalFault(f"cannot write the dead-letter file: {_describe(exc)}"))
        self.report.count_outcomes(outcomes)
        if self.writer is None or self.state_fault:
            return
        try:
            # Committed before the next batch: a crash re-sends those in flight.
            self.writer.record(outcomes, offset)
        except (OSError, sqlite3.Error) as exc:
            # Recording nothing more keeps the state consistent with the output files:
            # a resumed run re-sends what was not recorded.
            self.state_fault = True
            self.fail(LocalFault(f"cannot record progress in the state: {_describe(exc)}"))

    def finish_state(self, done: bool) -> None:
        """Mark the run completed, stopped or interrupted in the state (if it still works)."""
        if self.writer is None or self.state_fault:
            return
        status = "completed" if done else ("stopped" if self.failure else "interrupted")
        try:
            self.writer.finish(status, self.content_hash if done else None)
        except (OSError, sqlite3.Error) as exc:
            self.fail(
                LocalFault(f"cannot record the end of the run in the state: {_describe(exc)}")
            )

    def job_totals(self) -> dict[str, Any] | None:
        """The whole job's counts, over this run and those it continued (None when it
        continued none); ``complete`` is False when some run's counts are unknown."""
        if not self.continued or self.store is None:
            return None
        try:
            totals = self.store.job_totals(self.job_runs)
        except ImporterError as exc:
            log.warning("the job's totals are unknown: %s", exc)
            return None
        # After a failed write the state holds less than this run did.
        totals["complete"] = totals["complete"] and not self.state_fault
        return totals

    def close(self) -> None:
        """Close the output files, then the state (whatever of them was opened)."""
        for closable in (self.rejects, self.dead_letter, self.writer, self.store):
            if closable is not None:
                try:
                    closable.close()
                except (OSError, sqlite3.Error) as exc:
                    self.fail(LocalFault(f"cannot close a file: {_describe(exc)}"))


def _describe(exc: BaseException) -> str:
    """What went wrong, in one line: the OS's words for an OSError, else type and message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return describe_error(exc)


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
                run.fail(LocalFault(f"cannot write the rejects file: {_describe(exc)}"))
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
        cut = o.limit is not None and report.rows_read >= o.limit
        run.completed = not run.stopping.is_set() and not cut
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
    run = _Run(inputs, options, label)
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
                            run.fail(LocalFault(f"sending failed: {_describe(exc)}"))
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
                        run.fail(LocalFault(f"reading the input failed: {_describe(exc)}"))
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
                        if run.stopping.is_set() or limit_reached():
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
                        _write_report(run, stop)
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


def _write_report(run: _Run, stop: threading.Event) -> None:
    """Finish the report and write it; a failed write stops the run (a :class:`LocalFault`)."""
    report, failure, path = run.report, run.failure, run.options.report_path
    if failure:
        report.stopped = str(failure[0])
    elif stop.is_set():
        report.stopped = "interrupted"
    report.finish()
    report.job = run.job_totals()
    if run.rejects is not None and run.rejects.created:
        report.files["rejects"] = str(run.rejects.path)
    # Files a run had nothing to write are never created.
    report.files = {k: v for k, v in report.files.items() if k == "state" or Path(v).exists()}
    if path is None:
        return
    report.files["report"] = str(path)
    try:
        report.write(path)
    except (OSError, UsageError) as exc:
        del report.files["report"]
        run.fail(LocalFault(f"cannot write the report: {_describe(exc)}"))
        failure[0].report_unwritten = f"{path}: {_describe(exc)}"
        report.stopped = report.stopped or str(failure[0])


def check_outputs(paths: Sequence[str], options: ImportOptions) -> None:
    """Refuse, before anything is read or sent, a run whose files could not be written.

    Raises :class:`UsageError` for a report, rejects, dead-letter or state path in a
    directory that cannot be written, and for ``--resume`` of an input read only once
    (stdin, a named pipe): a stopped run of it could never be finished.
    """
    o = options
    outputs = [("report", o.report_path), ("rejects file", o.rejects_path)]
    if o.output_dir is not None:
        outputs.append(("output directory", Path(o.output_dir) / "latest"))
    if not o.dry_run:
        outputs += [("dead-letter file", o.dead_letter_path), ("state", o.state_path)]
    for what, output in outputs:
        if output is not None:
            check_writable(Path(output), what)
    if not o.resume or o.dry_run or o.state_path is None:
        return
    for path in paths:
        if path == "-" or (Path(path).exists() and stat.S_ISFIFO(os.stat(path).st_mode)):
            raise UsageError(
                f"{display_name(path)} is read only once (stdin or a pipe): it cannot be "
                "resumed; import it from a file"
            )


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
