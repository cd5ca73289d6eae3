"""One run's bookkeeping: its inputs, report, output files and state.

:class:`Run` is shared by the producer thread and the workers of
:mod:`importer.pipeline`: it opens the state and the output files, begins and
ends each input's run in the state, settles sent batches (counting them,
dead-lettering failures, recording them), and turns any local fault into a
clean stop (:class:`~importer.errors.LocalFault`). It decides nothing about
rows or requests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import (
    ImporterError,
    LocalFault,
    RunStopped,
    UsageError,
)
from .mapping import load_mapping_file
from .options import ImportOptions, fingerprint
from .outcomes import (
    DeadLetterWriter,
    ImportReport,
    RejectsWriter,
    check_writable,
    default_rejects_path,
    point_latest,
    refuse_existing,
    stamped_dir,
)
from .pacing import redacted
from .records import Batch, Outcome
from .source import Source, SourceInfo
from .source.inputs import InputFile
from .source.location import describe_error, display_name, local_path
from .source.records_rows import RecordsSource
from .state import Account, ConfirmationWriter, Fingerprint, StateReader, StateStore, trim_output

log = logging.getLogger(__name__)

AnySource = Source | RecordsSource
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


class Run:
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
        status = self._status(done)
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
                self.fail(LocalFault(f"cannot write the dead-letter file: {describe_fault(exc)}"))
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
            self.fail(LocalFault(f"cannot record progress in the state: {describe_fault(exc)}"))

    def _status(self, done: bool) -> str:
        """How the current file's run ended: completed, stopped (a fault or the API), or
        interrupted (a signal, ``stop``, ``limit``)."""
        return "completed" if done else ("stopped" if self.failure else "interrupted")

    def limit_reached(self) -> bool:
        """Whether ``limit`` rows of the whole run have been read."""
        limit = self.options.limit
        return limit is not None and self.report.rows_read >= limit

    def finish_state(self, done: bool) -> None:
        """Mark the run completed, stopped or interrupted in the state (if it still works)."""
        if self.writer is None or self.state_fault:
            return
        try:
            self.writer.finish(self._status(done), self.content_hash if done else None)
        except (OSError, sqlite3.Error) as exc:
            self.fail(
                LocalFault(f"cannot record the end of the run in the state: {describe_fault(exc)}")
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
                    self.fail(LocalFault(f"cannot close a file: {describe_fault(exc)}"))


def describe_fault(exc: BaseException) -> str:
    """What went wrong, in one line: the OS's words for an OSError, else type and message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return describe_error(exc)


def write_report(run: Run, stop: threading.Event) -> None:
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
        run.fail(LocalFault(f"cannot write the report: {describe_fault(exc)}"))
        failure[0].report_unwritten = f"{path}: {describe_fault(exc)}"
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
