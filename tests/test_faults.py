"""Every resource failure stops the run cleanly, and ``--resume`` then finishes the job.

Each fault is injected into one stage of an in-process CLI run against the fake
API over loopback: a full disk (ENOSPC) under the dead-letter file, the rejects
file, the report and the state; the state held locked by another process; an
unexpected error while cleaning and while sending; a damaged input. Each run must
end at once with exit 4, no traceback, a balanced summary and the command that
resumes it; the resumed run (fault gone) must deliver every remaining customer,
resending at most the batches that were in flight.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from importer import import_file, pipeline
from importer.errors import LocalFault
from importer.outcomes import DeadLetterWriter, RejectsWriter
from importer.sending import Sender
from importer.state import ConfirmationWriter

from .conftest import API_KEY, fast_options, write_csv
from .test_resume import POISON, _expected_ids, _rows

ROWS = 3_000
CONCURRENCY = 4
#: At most this many customers sent twice: the batches in flight at the fault, and the
#: one in hand when the state stopped recording.
IN_FLIGHT = (CONCURRENCY + 1) * 50


def _enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _after(calls: int, original: Callable[..., Any], fault: Callable[..., Any]) -> Any:
    """``original`` for the first ``calls`` calls, then ``fault``."""
    count = [0]

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] > calls:
            return fault(*args, **kwargs)
        return original(*args, **kwargs)

    return wrapped


def _half_then_enospc(self: Any, data: bytes) -> None:
    """A write that fills the disk halfway through a line, as a real full disk does."""
    self._file.write(data[: len(data) // 2])
    self._file.flush()
    _enospc()


def _locked(*_: Any) -> None:
    raise sqlite3.OperationalError("database is locked")


def _state_full(*_: Any) -> None:
    raise sqlite3.OperationalError("database or disk is full")


def _boom(*_: Any, **__: Any) -> None:
    raise RuntimeError("injected failure")


async def _send_boom(*_: Any) -> None:
    raise RuntimeError("injected failure")


#: name → (object, attribute, calls before the fault, the fault).
FAULTS: dict[str, tuple[Any, str, int, Callable[..., Any]]] = {
    "dead-letter disk full": (DeadLetterWriter, "_write", 2, _half_then_enospc),
    "rejects disk full": (RejectsWriter, "_write", 1, _half_then_enospc),
    "state disk full": (ConfirmationWriter, "record", 8, _state_full),
    "state locked by another process": (ConfirmationWriter, "record", 8, _locked),
    "cleaning fails": (pipeline, "clean_chunk", 1, _boom),
    "sending fails": (Sender, "send", 8, _send_boom),
}


def _args(tmp_path: Path, url: str) -> list[str]:
    return [
        "run",
        str(tmp_path / "customers.csv"),
        "--base-url",
        url,
        "--rate",
        "1000",
        "--concurrency",
        str(CONCURRENCY),
        "--max-backoff",
        "0.01",
        "--dead-letter",
        str(tmp_path / "failed.jsonl"),
        "--rejects",
        str(tmp_path / "rejects.csv"),
        "--report",
        str(tmp_path / "report.json"),
        "--max-error-rate",
        "0.1",
    ]


def _ids(server: Any) -> list[str]:
    with server.state.lock:
        return [str(c["customer_id"]) for c in server.state.applied]


def _assert_resumed_job_is_complete(tmp_path: Path, first: Any, second: Any) -> None:
    """Every deliverable customer arrived, at most the in-flight ones twice, and the
    dead-letter file holds each refused customer once, in whole lines."""
    sent = Counter(_ids(first)) + Counter(_ids(second))
    assert set(sent) == _expected_ids(ROWS)
    assert sum(n - 1 for n in sent.values()) <= IN_FLIGHT
    lines = [orjson.loads(line) for line in (tmp_path / "failed.jsonl").read_bytes().splitlines()]
    dead = [line["payload"]["customer_id"] for line in lines]
    assert len(dead) == len(set(dead))
    assert all(line["payload"].get(POISON) for line in lines)


def _assert_clean_stop(result: Any, seconds: float) -> None:
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output
    assert seconds < 10
    assert "import stopped after " in result.stdout and "(balanced)" in result.stdout
    resume = next(line for line in result.stdout.splitlines() if "resume with:" in line)
    assert resume.endswith("--resume") and API_KEY not in resume


@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_stops_cleanly_and_resume_finishes_the_job(make_fake_api, cli, tmp_path, fault):
    write_csv(tmp_path / "customers.csv", _rows(ROWS))
    env = {"BLUESHIFT_API_KEY": API_KEY}
    first = make_fake_api(bad_field=POISON)
    target, name, calls, replacement = FAULTS[fault]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(target, name, _after(calls, getattr(target, name), replacement))
        started = time.monotonic()
        result = cli(*_args(tmp_path, first.url), env=env)
        _assert_clean_stop(result, time.monotonic() - started)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["stopped"] and report["accounting"]["balanced"]
    assert report["not_sent"] > 0
    second = make_fake_api(bad_field=POISON)
    result = cli(*_args(tmp_path, second.url), "--resume", env=env)
    assert result.exit_code == 0, result.output
    _assert_resumed_job_is_complete(tmp_path, first, second)


def test_report_disk_full_prints_the_report_and_resume_sends_nothing_again(
    make_fake_api, cli, tmp_path
):
    write_csv(tmp_path / "customers.csv", _rows(ROWS))
    env = {"BLUESHIFT_API_KEY": API_KEY}
    first = make_fake_api(bad_field=POISON)
    original = pipeline.ImportReport.write

    def full_disk(self: Any, path: Path) -> None:
        # The temporary file is created, then the disk is full: it must not stay behind.
        with pytest.MonkeyPatch.context() as inner:
            inner.setattr(orjson, "dumps", _enospc)
            original(self, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.ImportReport, "write", full_disk)
        started = time.monotonic()
        result = cli(*_args(tmp_path, first.url), env=env)
        _assert_clean_stop(result, time.monotonic() - started)
    assert "cannot write the report" in result.stderr
    printed = json.loads(next(ln for ln in result.stderr.splitlines() if ln.startswith("{")))
    assert printed["succeeded"] == len(_expected_ids(ROWS)) and printed["accounting"]["balanced"]
    assert not (tmp_path / "report.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    second = make_fake_api(bad_field=POISON)
    result = cli(*_args(tmp_path, second.url), "--resume", env=env)
    assert result.exit_code == 0, result.output
    assert _ids(second) == []  # every customer was recorded: nothing is sent twice
    assert json.loads((tmp_path / "report.json").read_text())["accounting"]["balanced"]


@pytest.mark.parametrize("where", ["report", "dead-letter", "rejects", "state"])
def test_unwritable_output_is_refused_before_anything_is_sent(make_fake_api, cli, tmp_path, where):
    # /proc refuses new files to root too, so this holds however the tests run.
    flag = {"report": "--report", "dead-letter": "--dead-letter", "rejects": "--rejects"}
    write_csv(tmp_path / "customers.csv", _rows(10))
    server = make_fake_api()
    args = _args(tmp_path, server.url)
    if where == "state":
        args += ["--state", "/proc/self/state/state.sqlite"]
    else:
        args[args.index(flag[where]) + 1] = f"/proc/self/{where}.out"
    result = cli(*args, env={"BLUESHIFT_API_KEY": API_KEY})
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"cannot write the {where}" in result.stderr
    assert server.state.requests == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_directory_is_refused_as_not_a_directory(make_fake_api, cli, tmp_path):
    write_csv(tmp_path / "customers.csv", _rows(10))
    (tmp_path / "plain-file").write_text("")
    server = make_fake_api()
    args = _args(tmp_path, server.url)
    args[args.index("--report") + 1] = str(tmp_path / "plain-file" / "report.json")
    result = cli(*args, env={"BLUESHIFT_API_KEY": API_KEY})
    assert result.exit_code == 2 and "not a directory" in result.stderr
    assert server.state.requests == []


def test_damaged_gzip_mid_file_stops_with_a_report_and_resume_finishes_it(make_fake_api, tmp_path):
    rows = _rows(ROWS, bad_emails=False)
    plain = write_csv(tmp_path / "plain.csv", rows)
    whole = gzip.compress(plain.read_bytes())
    path = tmp_path / "customers.csv.gz"
    path.write_bytes(whole[: len(whole) * 2 // 3])  # cut off mid-stream
    first = make_fake_api()
    state, report_path = tmp_path / "state.sqlite", tmp_path / "report.json"
    options = fast_options(first, chunk_rows=500, state_path=state, report_path=report_path)
    with pytest.raises(LocalFault, match="input damaged after row") as info:
        import_file(path, options)
    assert info.value.exit_code == 4
    report = json.loads(report_path.read_text())
    assert report["stopped"].startswith("input damaged") and report["accounting"]["balanced"]
    # Customers were delivered before the damage was found (how many depends on how far
    # reading had run ahead of sending: the rest of what was read counts as not sent).
    assert report["succeeded"] > 0 and report["not_sent"] >= 0
    # Repaired (the whole file arrives), the run resumes where it stopped.
    path.write_bytes(whole)
    second = make_fake_api()
    resumed = import_file(path, options.replace(resume=True))
    assert resumed.already_done >= report["succeeded"]
    sent = Counter(_ids(first)) + Counter(_ids(second))
    assert set(sent) == {str(r["customer_id"]) for r in rows if r["customer_id"]}
    assert sum(n - 1 for n in sent.values()) <= IN_FLIGHT


def test_resume_of_a_named_pipe_is_refused_at_once(cli, tmp_path):
    fifo = tmp_path / "customers.csv"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = cli("run", str(fifo), "--resume", "--mock")
    assert result.exit_code == 2 and "cannot be resumed" in result.stderr
    assert time.monotonic() - started < 5


def test_outage_leaves_batches_pending_and_resume_sends_them(make_fake_api, cli, tmp_path):
    # The API goes down shortly after the first call and stays down: batches wait for it
    # instead of going to the dead-letter file, the run stops (exit 3) with them pending,
    # and --resume sends every one of them.
    write_csv(tmp_path / "customers.csv", _rows(ROWS, bad_emails=False))
    env = {"BLUESHIFT_API_KEY": API_KEY}
    first = make_fake_api(outage=(0.3, 3600.0), latency=0.01)
    args = _args(tmp_path, first.url)
    args[args.index("--rate") + 1] = "50"
    result = cli(*args, "--give-up-after", "1", "--max-retries", "2", env=env)
    assert result.exit_code == 3, result.output
    assert "resume with:" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["dead_lettered"] == 0 and report["not_sent"] > 0
    assert report["accounting"]["balanced"]
    assert not (tmp_path / "failed.jsonl").exists()  # nothing dead-lettered: no file
    second = make_fake_api()
    result = cli(*_args(tmp_path, second.url), "--resume", env=env)
    assert result.exit_code == 0, result.output
    assert set(_ids(first)) | set(_ids(second)) == {
        f"C{i:08d}" for i in range(1, ROWS + 1) if i % 97
    }


def test_a_stop_prints_the_command_that_resumes_it_in_the_json_summary(cli, tmp_path):
    write_csv(tmp_path / "customers.csv", _rows(200, bad_emails=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Sender, "send", _after(1, Sender.send, _send_boom))
        result = cli(
            "run", str(tmp_path / "customers.csv"), "--mock", "--log-format", "json",
            "--api-key", "secret-key", "--overwrite",
        )  # fmt: skip
    assert result.exit_code == 4
    summary = next(
        json.loads(line) for line in result.stderr.splitlines() if '"event": "summary"' in line
    )
    assert summary["resume_command"] == (
        f"blueshift-import run {tmp_path / 'customers.csv'} --mock --log-format json --resume"
    )
    assert "secret-key" not in summary["resume_command"]


def test_a_stop_before_the_end_says_how_much_of_the_input_was_not_read(cli, tmp_path):
    write_csv(tmp_path / "customers.csv", _rows(60_000, bad_emails=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Sender, "send", _after(1, Sender.send, _send_boom))
        result = cli("run", str(tmp_path / "customers.csv"), "--mock", "--rate", "1000")
    assert result.exit_code == 4, result.output
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("  not read"))
    unread, total = (int(w) for w in line.split() if w.isdigit())
    assert 0 < unread < total == (tmp_path / "customers.csv").stat().st_size
    assert "(balanced)" in result.stdout
