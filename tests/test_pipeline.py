"""The library entry point end to end, against the fake API over loopback HTTP."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from importer import ImportOptions, import_file
from importer.errors import ApiKeyRejected
from importer.source import read_chunks

from .conftest import fast_options, write_csv


def _valid_rows(n: int) -> list[dict[str, str]]:
    return [
        {"email": f"user{i}@example.com", "customer_id": f"{i:05d}", "city": "Oslo"}
        for i in range(n)
    ]


def test_import_10000_rows_full_batches_within_rate(make_fake_api, tmp_path):
    server = make_fake_api()
    path = write_csv(tmp_path / "c.csv", _valid_rows(10_000))
    rate = 100.0
    report = import_file(path, fast_options(server, rate=rate, concurrency=8, chunk_rows=777))
    requests = server.state.requests
    assert report.succeeded == 10_000
    assert len(requests) == math.ceil(10_000 / 50) == report.requests
    assert all(1 <= r.customers <= 50 for r in requests)
    assert sum(r.customers == 50 for r in requests) == len(
        requests
    )  # chunk edges did not split batches
    # Arrivals in any one-second window stay within the rate plus the limiter's burst of one.
    times = sorted(r.at for r in requests)
    j = 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        assert i - j + 1 <= rate + 2
    ids = Counter(c["customer_id"] for c in server.state.applied)
    assert len(ids) == 10_000 and max(ids.values()) == 1
    assert ids["00000"] == 1  # leading zeros kept


@pytest.mark.parametrize("status", [429, 503])
def test_import_retries_transient_statuses_until_delivered(make_fake_api, tmp_path, status):
    server = make_fake_api(faults={status: 0.4}, seed=3)
    path = write_csv(tmp_path / "c.csv", _valid_rows(500))
    report = import_file(path, fast_options(server, rate=1000.0))
    assert report.succeeded == 500
    assert report.retries > 0
    counts = server.state.status_counts()
    assert counts[status] == report.retries
    assert counts[200] == 10
    assert sorted(c["email"] for c in server.state.applied) == sorted(
        r["email"] for r in _valid_rows(500)
    )


def test_import_dry_run_sends_nothing(fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _valid_rows(120))
    report = import_file(path, ImportOptions(dry_run=True, base_url=fake_api.url))
    assert fake_api.state.requests == []
    assert report.not_sent == 120 and report.requests == 3
    assert report.preview[0] == {
        "email": "user0@example.com",
        "customer_id": "00000",
        "city": "Oslo",
    }
    assert report.accounting_ok


def test_import_csv_counts_a_bad_row_in_a_later_chunk(fake_api, tmp_path):
    rows = _valid_rows(2500)
    rows[1500]["email"] = " not an email "
    path = write_csv(tmp_path / "c.csv", rows)
    assert [chunk.num_rows for chunk in read_chunks(path, chunk_rows=1000)] == [1000, 1000, 500]
    report = import_file(path, ImportOptions(dry_run=True, base_url=fake_api.url))
    assert report.rows_read == 2500 and report.dropped_fields == 1 and report.accounting_ok
    assert report.rejected == 0  # its customer_id still identifies it
    strict = ImportOptions(dry_run=True, base_url=fake_api.url, on_invalid="skip-row")
    assert import_file(path, strict).rejected == 1


def test_import_wrong_key_stops_with_report(make_fake_api, tmp_path):
    server = make_fake_api()
    path = write_csv(tmp_path / "c.csv", _valid_rows(300))
    options = fast_options(server, api_key="wrong", report_path=tmp_path / "r.json")
    with pytest.raises(ApiKeyRejected, match=r"API key rejected \(HTTP 401\)") as info:
        import_file(path, options)
    report = info.value.report  # type: ignore[attr-defined]
    assert report.succeeded == 0 and report.dead_lettered == 0
    assert report.accounting_ok
    assert (tmp_path / "r.json").exists()
    assert len(server.state.requests) <= options.concurrency


def test_import_first_chunk_sent_in_a_small_piece_keeps_batches_full(make_fake_api, tmp_path):
    server = make_fake_api()
    path = write_csv(tmp_path / "c.csv", _valid_rows(2_525))
    report = import_file(path, fast_options(server, chunk_rows=2_000, concurrency=1))
    sizes = [r.customers for r in server.state.requests]
    assert report.succeeded == 2_525
    assert sizes == [50] * 50 + [25]
    assert [c["customer_id"] for c in server.state.applied] == [f"{i:05d}" for i in range(2_525)]
