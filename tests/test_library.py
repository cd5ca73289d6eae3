"""The library's entry points: records in memory (dicts, DataFrames), the awaitable
twins inside a running event loop, ``limit``, and errors that speak in parameter names."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import importer
from importer import ImportOptions, UsageError
from importer.fake_api import FakeApiServer

from .conftest import API_KEY, fast_options, write_csv


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "email": ["a@example.com", "b@example.com", None],
            "customer_id": [None, None, "c-3"],
            "first_name": ["Ann", np.nan, "Cy"],
            "loyalty_points": np.array([10, 20, 30], dtype=np.int64),
            "joined_at": pd.to_datetime(["2024-01-02 03:04:05", None, "2024-03-04 00:00:00"]),
        }
    )


def _by_id(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {c.get("email") or c["customer_id"]: c for c in server.state.applied}


def test_import_records_sends_a_dataframe(fake_api: FakeApiServer) -> None:
    report = importer.import_records(_frame(), fast_options(fake_api))
    sent = _by_id(fake_api)
    assert sent["a@example.com"] == {
        "email": "a@example.com",
        "firstname": "Ann",
        "loyalty_points": 10,
        "joined_at": "2024-01-02T03:04:05",
    }
    # NaN, None and NaT are empty cells: their fields are left out.
    assert sent["b@example.com"] == {"email": "b@example.com", "loyalty_points": 20}
    assert sent["c-3"]["firstname"] == "Cy"
    assert (report.rows_read, report.succeeded, report.accounting_ok) == (3, 3, True)
    assert report.source == "<records>"


def test_import_records_sends_dicts_keeping_their_types(fake_api: FakeApiServer) -> None:
    records = [
        {"email": "a@example.com", "loyalty_points": 7, "vip": True, "score": np.float64(1.5)},
        {"email": "not an email"},
        "not a dict",
    ]
    report = importer.import_records(records, fast_options(fake_api))
    assert fake_api.state.applied == [
        {"email": "a@example.com", "loyalty_points": 7, "vip": True, "score": 1.5}
    ]
    assert (report.rows_read, report.succeeded, report.rejected) == (3, 1, 2)
    assert report.accounting_ok


def test_aimport_records_inside_a_running_loop(fake_api: FakeApiServer) -> None:
    async def service() -> tuple[importer.ImportReport, importer.ImportReport]:
        options = fast_options(fake_api)
        frame_report = await importer.aimport_records(_frame(), options)
        dicts = [{"email": f"d{i}@example.com", "n": i} for i in range(60)]
        return frame_report, await importer.aimport_records(dicts, options)

    frame_report, dicts_report = asyncio.run(service())
    assert (frame_report.succeeded, dicts_report.succeeded) == (3, 60)
    sent = _by_id(fake_api)
    assert sent["d59@example.com"] == {"email": "d59@example.com", "n": 59}
    assert sent["a@example.com"]["loyalty_points"] == 10


def test_sync_functions_work_inside_a_running_loop(tmp_path: Path, fake_api: FakeApiServer) -> None:
    path = write_csv(tmp_path / "c.csv", [{"email": "x@example.com", "first_name": "X"}])

    async def notebook_cell() -> tuple[importer.ImportReport, importer.ImportReport]:
        options = fast_options(fake_api)
        file_report = importer.import_file(path, options)
        return file_report, importer.import_records([{"email": "y@example.com"}], options)

    file_report, records_report = asyncio.run(notebook_cell())
    assert (file_report.succeeded, records_report.succeeded) == (1, 1)
    assert sorted(_by_id(fake_api)) == ["x@example.com", "y@example.com"]


def test_aimport_file_awaits_an_import(tmp_path: Path, fake_api: FakeApiServer) -> None:
    path = write_csv(tmp_path / "c.csv", [{"email": "z@example.com"}])
    report = asyncio.run(importer.aimport_file(path, fast_options(fake_api)))
    assert report.succeeded == 1 and _by_id(fake_api).keys() == {"z@example.com"}


def test_a_generator_is_read_a_chunk_at_a_time(fake_api: FakeApiServer) -> None:
    taken: list[int] = []

    def endless() -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            taken.append(i)
            yield {"email": f"g{i}@example.com"}

    # An endless generator ends only if it is never listed whole: limit stops the reading.
    report = importer.import_records(endless(), fast_options(fake_api, limit=120, chunk_rows=50))
    assert len(fake_api.state.applied) == 120 == report.rows_read == report.succeeded
    assert len(taken) == 120


def test_limit_imports_only_the_first_rows_of_a_file(
    tmp_path: Path, fake_api: FakeApiServer, cli: Any
) -> None:
    rows = [{"email": f"r{i}@example.com"} for i in range(100)]
    rows[3] = {"email": "bad"}
    path = write_csv(tmp_path / "c.csv", rows)
    report = importer.import_file(path, fast_options(fake_api, limit=10))
    assert (report.rows_read, report.succeeded, report.rejected) == (10, 9, 1)
    assert report.accounting_ok
    assert _by_id(fake_api).keys() == {f"r{i}@example.com" for i in range(10) if i != 3}
    result = cli(
        "run", str(path), "--limit", "5", "--base-url", fake_api.url, "--no-state",
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 1, result.output  # the rejected row
    assert "rows read        5" in result.output


def test_resume_is_refused_for_records(fake_api: FakeApiServer, tmp_path: Path) -> None:
    options = fast_options(fake_api, resume=True, state_path=tmp_path / "s.sqlite")
    with pytest.raises(UsageError, match="resume needs a file"):
        importer.import_records([{"email": "a@example.com"}], options)


def test_library_errors_name_parameters_and_the_cli_names_flags(cli: Any) -> None:
    with pytest.raises(UsageError) as caught:
        ImportOptions(batch_size=51)
    assert str(caught.value).startswith("batch_size must be between 1 and 50")
    assert "--" not in str(caught.value)
    with pytest.raises(UsageError, match="^resume and changed_only need a state store"):
        ImportOptions(changed_only=True)
    result = cli("run", "x.csv", "--changed-only", "--state", "", "--mock")
    assert result.exit_code == 2


def test_the_api_key_is_trimmed(fake_api: FakeApiServer, tmp_path: Path, cli: Any) -> None:
    assert ImportOptions(api_key="  key-1\n").api_key == "key-1"
    assert ImportOptions(api_key=" \n").api_key is None
    path = write_csv(tmp_path / "c.csv", [{"email": "k@example.com"}])
    result = cli(
        "run", str(path), "--base-url", fake_api.url, "--no-state",
        env={"BLUESHIFT_API_KEY": f" {API_KEY}\n"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _by_id(fake_api).keys() == {"k@example.com"}


# -- errors that say what to fix --------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("base_url", "cause"),
    [
        ("https://api.blueshift-typo.invalid", "the name does not resolve"),
        ("http://127.0.0.1:{port}", "connection refused (nothing listens on that port)"),
    ],
)
def test_an_unreachable_api_stops_at_once(
    tmp_path: Path, cli: Any, base_url: str, cause: str
) -> None:
    import time

    base_url = base_url.format(port=_closed_port())
    path = write_csv(tmp_path / "c.csv", [{"email": f"u{i}@example.com"} for i in range(120)])
    started = time.monotonic()
    result = cli(
        "run", str(path), "--base-url", base_url, "--no-state", "--give-up-after", "300",
        "--report", str(tmp_path / "report.json"), env={"BLUESHIFT_API_KEY": "k"},
    )  # fmt: skip
    assert time.monotonic() - started < 10
    assert result.exit_code == 2
    host = base_url.split("//")[1]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: cannot reach the API at {host}: {cause}")
    assert errors[0].endswith("; check --base-url")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["succeeded"] == 0 and report["not_sent"] + report["dead_lettered"] == 120
    # With a state the run could be resumed, but not as it is: the address needs fixing.
    again = cli("run", str(path), "--base-url", base_url, env={"BLUESHIFT_API_KEY": "k"})
    assert again.exit_code == 2 and "resume with:" not in again.stdout


def test_a_rejected_key_names_the_region(make_fake_api: Any, tmp_path: Path) -> None:
    from importer import ApiKeyRejected
    from importer.sending import Sender

    options = ImportOptions(api_key="k", region="us")
    message = str(Sender(options)._key_rejected(401))
    assert message == (
        "API key rejected (HTTP 401) by https://api.getblueshift.com (region us): "
        "check the key; an EU account's key needs region eu"
    )
    assert isinstance(Sender(options)._key_rejected(401), ApiKeyRejected)


def test_a_refusal_after_the_api_answered_is_retried() -> None:
    """Once the host has answered, a refused connection is a restart: retried, not fatal;
    as no call succeeds meanwhile, the batch waits (pending) until the run gives up."""
    from importer.errors import ApiUnavailable, ApiUnreachable
    from importer.records import Batch, Customer
    from importer.sending import Sender

    options = ImportOptions(
        api_key="k", base_url=f"http://127.0.0.1:{_closed_port()}", max_retries=2,
        backoff_base=0.001, max_backoff=0.01, give_up_after=0.5,
    )  # fmt: skip
    batch = Batch((Customer({"email": "a@example.com"}, 1, 2),), 0)

    async def send() -> Sender:
        async with Sender(options) as sender:
            sender.stats.answered = True
            with pytest.raises(ApiUnavailable) as info:
                await sender.send(batch)
            assert not isinstance(info.value, ApiUnreachable)
            return sender

    sender = asyncio.run(send())
    assert sender.stats.retries >= 2


def test_a_trial_with_limit_is_finished_by_resume(
    tmp_path: Path, fake_api: FakeApiServer, cli: Any
) -> None:
    path = write_csv(tmp_path / "c.csv", [{"email": f"t{i}@example.com"} for i in range(100)])
    args = ["run", str(path), "--base-url", fake_api.url, "--state", str(tmp_path / "s.sqlite")]
    env = {"BLUESHIFT_API_KEY": API_KEY}
    assert cli(*args, "--limit", "10", env=env).exit_code == 0
    assert len(fake_api.state.applied) == 10
    result = cli(*args, "--resume", "-q", env=env)
    assert result.exit_code == 0, result.output
    assert "succeeded 90" in result.stdout and "already done 10" in result.stdout
    assert sorted(_by_id(fake_api)) == sorted(f"t{i}@example.com" for i in range(100))
    assert len(fake_api.state.applied) == 100  # none sent twice
