"""Parquet inputs: types kept, row groups read in chunks, the same payloads as a CSV file of the
same data, from a path, S3 or HTTP, and resumable."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from importer import import_file
from importer.errors import InputUnreadable, MappingError
from importer.options import ImportOptions
from importer.source import Source, read_chunks

from .conftest import fast_options, stop_after

N = 1_200


def _table(n: int = N) -> pa.Table:
    """Customers with int64 ids, timestamps (naive and zoned), nulls, floats and booleans."""
    rows = range(1, n + 1)
    return pa.table(
        {
            "customer_id": pa.array(
                [None if i % 10 == 0 else 4_000_000_000_000 + i for i in rows], pa.int64()
            ),
            "email": [None if i % 15 == 0 else f"  User{i}@Example.com " for i in rows],
            "first_name": [f"Name{i}" for i in rows],
            "joined_at": pa.array(
                [
                    None if i % 7 == 0 else datetime(2023, 1, 1 + i % 28, i % 24, i % 60)
                    for i in rows
                ],
                pa.timestamp("us"),
            ),
            "last_login": pa.array(
                [datetime(2024, 3, 1, 12, 30, i % 60, i % 1000 * 1000, tzinfo=UTC) for i in rows],
                pa.timestamp("us", tz="UTC"),
            ),
            "loyalty_points": pa.array([None if i % 3 == 0 else i * 10 for i in rows], pa.int64()),
            "score": [i / 4 for i in rows],
            "vip": [i % 2 == 0 for i in rows],
        }
    )


def _applied(server) -> list[bytes]:
    return sorted(orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in server.state.applied)


def test_parquet_delivers_exactly_the_payloads_of_a_csv_of_the_same_data(make_fake_api, tmp_path):
    table = _table()
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=500)
    pa_csv.write_csv(table, tmp_path / "c.csv")
    from_csv, from_parquet = make_fake_api(), make_fake_api()
    csv_report = import_file(tmp_path / "c.csv", fast_options(from_csv))
    parquet_report = import_file(tmp_path / "c.parquet", fast_options(from_parquet))
    assert parquet_report.rows_read == csv_report.rows_read == N
    assert parquet_report.rejected == csv_report.rejected == N // 30  # neither identifier
    assert _applied(from_parquet) == _applied(from_csv)
    by_id = {c.get("customer_id"): c for c in from_parquet.state.applied}
    first = by_id["4000000000001"]
    assert first["email"] == "user1@example.com"
    assert first["joined_at"] == "2023-01-02T01:01:00"
    assert first["last_login"] == "2024-03-01T12:30:01.001000Z"
    assert first["loyalty_points"] == 10 and isinstance(first["loyalty_points"], int)
    assert first["vip"] is False and first["score"] == 0.25
    assert "loyalty_points" not in by_id["4000000000003"]  # a null is left out, not 0 or NaN


def test_parquet_values_keep_their_types(tmp_path):
    oslo = pa.timestamp("ns", "Europe/Oslo")
    table = pa.table(
        {
            "big": pa.array([2**62 + 1, None], pa.int64()),
            "day": pa.array([date(2024, 2, 29), None], pa.date32()),
            "oslo": pa.array([datetime(2024, 6, 1, 12, tzinfo=UTC), None], oslo),
            "price": pa.array([Decimal("19.90"), None], pa.decimal128(10, 2)),
            "account": pa.array([Decimal("12345678901234567890"), None], pa.decimal128(38, 0)),
            "raw": pa.array([b"caf\xc3\xa9", None], pa.binary()),
            "tags": pa.array([["a", "b"], None], pa.list_(pa.string())),
            "address": pa.array([{"city": "Oslo", "since": date(2020, 1, 1)}, None]),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (chunk,) = read_chunks(tmp_path / "t.parquet")
    first, second = chunk.frame.to_dict("records")
    assert first == {
        "big": 2**62 + 1,
        "day": "2024-02-29",
        "oslo": "2024-06-01T12:00:00Z",
        "price": 19.9,
        "account": 12345678901234567890,
        "raw": "café",
        "tags": ["a", "b"],
        "address": {"city": "Oslo", "since": "2020-01-01"},
    }
    assert all(value is None for value in second.values())


def test_parquet_chunks_span_row_groups_and_number_rows_from_one(tmp_path):
    pq.write_table(_table(1_000), tmp_path / "c.parquet", row_group_size=300)
    with Source(tmp_path / "c.parquet", ImportOptions(chunk_rows=400)) as source:
        assert source.info.format == "parquet" and source.info.encoding is None
        assert source.columns[:2] == ["customer_id", "email"]
        chunks = list(source.chunks())
    assert [c.num_rows for c in chunks] == [400, 400, 200]
    assert chunks[1].records.tolist() == list(range(401, 801))
    assert chunks[1].lines.tolist() == chunks[1].records.tolist()  # a row has no line of its own
    assert all(not c.rejects for c in chunks)


def test_parquet_from_s3_and_over_http_reads_as_the_local_file(s3_endpoint, http_root, tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(_table(), path, row_group_size=400)
    local = [c.frame.to_dict("records") for c in read_chunks(path)]
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, skip_instance_cache=True)
    if not fs.exists("parquet"):
        fs.mkdir("parquet")
    fs.put_file(str(path), f"parquet/{tmp_path.name}.parquet")
    s3_url = f"s3://parquet/{tmp_path.name}.parquet"
    s3_chunks = read_chunks(s3_url, storage_options={"endpoint_url": s3_endpoint})
    assert [c.frame.to_dict("records") for c in s3_chunks] == local
    root, base = http_root
    (root / "c.parquet").write_bytes(path.read_bytes())
    assert [c.frame.to_dict("records") for c in read_chunks(f"{base}/c.parquet")] == local


def test_parquet_inputs_that_cannot_be_read(tmp_path):
    with pytest.raises(InputUnreadable, match="stdin"):
        Source("-", ImportOptions(format="parquet"))
    (tmp_path / "fake.parquet").write_text("email\na@example.com\n")
    with pytest.raises(InputUnreadable, match="cannot read it as a Parquet file"):
        Source(tmp_path / "fake.parquet")
    pq.write_table(_table(5), tmp_path / "misnamed.csv")
    with pytest.raises(InputUnreadable, match="a Parquet file; name it .parquet"):
        Source(tmp_path / "misnamed.csv")
    assert sum(c.num_rows for c in read_chunks(tmp_path / "misnamed.csv", format="parquet")) == 5
    pq.write_table(_table(5), tmp_path / "wide.parquet")
    with pytest.raises(InputUnreadable, match="more than the limit of 3"):
        Source(tmp_path / "wide.parquet", ImportOptions(max_columns=3))
    twice = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["email", "email"])
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(MappingError, match="duplicate column"):
        Source(tmp_path / "twice.parquet")


def test_parquet_resume_sends_the_rest(make_fake_api, tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(_table(3_000), path, row_group_size=1_000)
    first, second = make_fake_api(), make_fake_api()
    stop, observer = stop_after(300)

    state = tmp_path / "state.sqlite"
    options = fast_options(first, state_path=state, chunk_rows=500, rate=50.0)
    assert import_file(path, options, observer=observer, stop=stop).stopped == "interrupted"
    report = import_file(path, fast_options(second, state_path=state, chunk_rows=500, resume=True))
    assert report.already_done > 0
    sent = [orjson.dumps(c) for c in first.state.applied + second.state.applied]
    assert len(set(sent)) == 3_000 - 3_000 // 30  # rows with neither identifier are rejected
    assert len(sent) - len(set(sent)) <= 4 * 50


def test_cli_validate_and_init_config_take_parquet(cli, tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(_table(100), path)
    result = cli("validate", str(path))
    assert result.exit_code == 1, result.output  # rows 30, 60 and 90 have no identifier
    assert "rows read 100: valid 97, rejected 3" in result.output
    result = cli("init-config", str(path))
    assert result.exit_code == 0, result.output
    assert 'format = "parquet"' in result.output
    assert '[columns."joined_at"]' in result.output


def test_stdin_with_parquet_format_is_one_line_exit_2(cli, tmp_path: Path):
    result = cli("validate", "-", "--format", "parquet", input=b"PAR1")
    assert result.exit_code == 2
    assert "Parquet cannot be read from stdin" in result.stderr
