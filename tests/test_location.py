"""Inputs given as URLs: an S3-compatible server (moto) and an HTTP file server, both real and
on loopback ports, read through fsspec; ``file://`` URLs; the storage options."""

from __future__ import annotations

import functools
import gzip
import logging
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from importer import import_file
from importer.errors import InputChanged, InputUnreadable, UsageError
from importer.options import ImportOptions
from importer.source import Source, read_chunks
from importer.source.location import (
    HTTP_STALL_S,
    display_name,
    filesystem,
    local_path,
    url_scheme,
)

from .conftest import API_KEY, fast_options, generated_rows, stop_after, write_csv

BUCKET = "imports"


@pytest.fixture
def s3(s3_endpoint: str, tmp_path: Path):
    """Put objects in the S3 server: ``s3(name, data)`` returns the object's ``s3://`` URL."""
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)

    def put(name: str, data: bytes) -> str:
        url = f"s3://{BUCKET}/{tmp_path.name}/{name}"
        fs.pipe(url, data)
        return url

    return put


def _csv_bytes(tmp_path: Path, n: int, invalid_every: int = 0) -> bytes:
    return write_csv(
        tmp_path / "c.csv", generated_rows(n, invalid_every=invalid_every)
    ).read_bytes()


def _applied(server) -> list[bytes]:
    return sorted(orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in server.state.applied)


# -- names --------------------------------------------------------------------------------------


def test_url_scheme_tells_urls_from_paths():
    assert url_scheme("S3://b/k.csv") == "s3"
    assert url_scheme("https://h/x.csv") == "https"
    assert url_scheme("/tmp/x.csv") is None
    assert url_scheme("dir/s3:/x.csv") is None
    assert url_scheme("-") is None


def test_display_name_drops_credentials_and_query_of_http_urls_only():
    signed = "https://user:pw@files.example.com/exports/c.csv?X-Amz-Signature=abc#frag"
    assert display_name(signed) == "https://files.example.com/exports/c.csv"
    # In an object store's URL these characters are part of the object's name.
    assert display_name("s3://bucket/odd?name.csv") == "s3://bucket/odd?name.csv"
    assert display_name("abfs://container@account.dfs.core.windows.net/c.csv").count("@") == 1
    assert display_name("exports/c.csv") == "exports/c.csv"


def test_file_urls_are_local_paths(tmp_path):
    path = write_csv(tmp_path / "my file.csv", generated_rows(3))
    url = path.as_uri()
    assert local_path(url) == str(path)
    assert sum(chunk.num_rows for chunk in read_chunks(url)) == 3
    with pytest.raises(InputUnreadable, match="this machine"):
        local_path("file://otherhost/c.csv")


# -- S3 -----------------------------------------------------------------------------------------


def test_s3_gzip_object_reads_as_the_local_file_does(s3, s3_endpoint, tmp_path):
    compressed = gzip.compress(_csv_bytes(tmp_path, 30_000))
    url = s3("customers.csv.gz", compressed)
    options = ImportOptions(storage_options={"endpoint_url": s3_endpoint}, chunk_rows=5_000)
    local = [c.frame.to_dict("records") for c in read_chunks(tmp_path / "c.csv", chunk_rows=5_000)]
    with Source(url, options) as source:
        assert source.info.format == "csv"
        assert source.info.name == url
        assert source.info.size == len(compressed)
        assert source.info.mtime_ns is not None
        chunks = source.chunks()
        first = next(chunks)
        # Read as it is consumed: after the first chunk most of the object is still unread.
        assert source.bytes_read < source.info.size / 2
        remote = [first.frame.to_dict("records"), *(c.frame.to_dict("records") for c in chunks)]
    assert remote == local


def test_import_from_s3_delivers_what_the_local_file_delivers(
    s3, s3_endpoint, make_fake_api, tmp_path
):
    data = _csv_bytes(tmp_path, 2_000, invalid_every=50)
    url = s3("nightly.csv.gz", gzip.compress(data))
    local_api, remote_api = make_fake_api(), make_fake_api()
    expected = import_file(tmp_path / "c.csv", fast_options(local_api))
    report = import_file(
        url,
        fast_options(
            remote_api,
            storage_options={"endpoint_url": s3_endpoint},
            rejects_path=tmp_path / "rejects.csv",
        ),
    )
    assert report.source == url
    assert report.bytes_total == report.bytes_read
    assert (report.succeeded, report.rejected) == (expected.succeeded, expected.rejected)
    assert _applied(remote_api) == _applied(local_api)
    header = (tmp_path / "rejects.csv").read_text().splitlines()[0]
    assert header.endswith(",_line,_outcome,_column,_value,_reason,_read_as,_source")


def test_cli_reaches_s3_through_aws_endpoint_url_or_storage_option(
    s3, s3_endpoint, fake_api, cli, tmp_path
):
    url = s3("c.csv", _csv_bytes(tmp_path, 120))
    common = ("--base-url", fake_api.url, "--rate", "1000", "--no-state")
    env = {"BLUESHIFT_API_KEY": API_KEY}
    result = cli("run", url, *common, env={**env, "AWS_ENDPOINT_URL": s3_endpoint})
    assert result.exit_code == 0, result.output
    assert "rows read        120" in result.stdout
    result = cli("run", url, *common, "--storage-option", f"endpoint_url={s3_endpoint}", env=env)
    assert result.exit_code == 0, result.output
    assert len(fake_api.state.applied) == 240
    result = cli("validate", url, "--storage-option", f"endpoint_url={s3_endpoint}")
    assert result.exit_code == 0, result.output


def test_cli_missing_object_bucket_extra_or_scheme_is_one_line_exit_2(
    s3, s3_endpoint, cli, tmp_path
):
    s3("present.csv", b"email\na@example.com\n")
    # The test extra installs s3fs only: gs:// and az:// show the message for a missing extra.
    option = ("--storage-option", f"endpoint_url={s3_endpoint}")
    cases = {
        f"s3://{BUCKET}/{tmp_path.name}/absent.csv": "no such file",
        "s3://no-such-bucket/c.csv": "no such file",
        "gs://bucket/c.csv": "needs the gcs extra: pip install 'blueshift-import[gcs]'",
        "az://container/c.csv": "needs the azure extra: pip install 'blueshift-import[azure]'",
        "ftp://host/c.csv": "unsupported URL scheme ftp://",
    }
    for url, message in cases.items():
        result = cli("validate", url, *option)
        assert result.exit_code == 2, (url, result.output)
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert message in result.stderr, (url, result.stderr)
        assert "Traceback" not in result.output


def test_storage_options_are_parsed_and_never_carry_credentials():
    options = ImportOptions(
        storage_options=["endpoint_url=http://127.0.0.1:9000", "anon=false", "max_attempts=3"]
    )
    assert dict(options.storage_options) == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "max_attempts": 3,
    }
    for item in ("key=AKIA", "secret=s", "token=t", "account_key=k", "sas_token=t", "password=p"):
        with pytest.raises(UsageError, match="credentials are not taken from options"):
            ImportOptions(storage_options=[item])
    with pytest.raises(UsageError, match="KEY=VALUE"):
        ImportOptions(storage_options=["endpoint_url"])


def test_resume_on_s3_sends_the_rest_and_refuses_a_changed_object(
    s3, s3_endpoint, make_fake_api, tmp_path
):
    data = _csv_bytes(tmp_path, 3_000)
    url = s3("big.csv", data)
    state = tmp_path / "state.sqlite"
    first = make_fake_api()
    stop, observer = stop_after(300)

    options = fast_options(
        first, state_path=state, storage_options={"endpoint_url": s3_endpoint}, chunk_rows=500
    )
    report = import_file(url, options.replace(rate=50.0), observer=observer, stop=stop)
    assert report.stopped == "interrupted"

    second = make_fake_api()
    report = import_file(url, fast_options(second, **_same(options), resume=True))
    assert report.already_done > 0
    sent = [c["customer_id"] for c in first.state.applied + second.state.applied]
    assert set(sent) == {f"C{i:08d}" for i in range(1, 3_001)}
    assert len(sent) - len(set(sent)) <= 4 * 50  # at most the batches in flight, resent

    # Interrupted again, then the object is replaced by one of the same size.
    stop.clear()
    third = make_fake_api()
    import_file(url, fast_options(third, **_same(options), rate=50.0), observer=observer, stop=stop)
    s3("big.csv", data.replace(b"C00000002", b"C00000003", 1))
    with pytest.raises(InputChanged, match="changed"):
        import_file(url, fast_options(make_fake_api(), **_same(options), resume=True))


def _same(options: ImportOptions) -> dict:
    return {
        "state_path": options.state_path,
        "storage_options": options.storage_options,
        "chunk_rows": options.chunk_rows,
    }


# -- HTTP -----------------------------------------------------------------------------------------


def test_http_url_streams_and_keeps_its_query_out_of_reports_logs_and_outputs(
    http_root, make_fake_api, tmp_path, caplog
):
    root, base = http_root
    (root / "c.csv.gz").write_bytes(gzip.compress(_csv_bytes(tmp_path, 500, invalid_every=25)))
    url = f"{base}/c.csv.gz?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=SIGSECRET"
    server = make_fake_api()
    caplog.set_level(logging.DEBUG, logger="importer")
    report = import_file(
        url,
        fast_options(
            server,
            state_path=tmp_path / "state.sqlite",
            rejects_path=tmp_path / "rejects.csv",
            report_path=tmp_path / "report.json",
        ),
    )
    assert report.succeeded + report.rejected == 500
    assert report.source == f"{base}/c.csv.gz"
    written = [tmp_path / "rejects.csv", tmp_path / "report.json", tmp_path / "state.sqlite"]
    for text in [*(p.read_bytes().decode("utf-8", "replace") for p in written), caplog.text]:
        assert "SECRET" not in text


def test_http_missing_file_names_the_url_without_its_query(http_root):
    _, base = http_root
    with pytest.raises(InputUnreadable) as info:
        Source(f"{base}/absent.csv?sig=SECRET")
    assert str(info.value).startswith(f"{base}/absent.csv: ")
    assert "SECRET" not in str(info.value)


def test_http_streams_have_no_total_time_limit():
    # An HTTP input is streamed at the API's pace, for as long as the import lasts: aiohttp's
    # default 5-minute limit on a whole answer would cut it; only a stalled server times out.
    timeout = filesystem("https", {}).client_kwargs["timeout"]
    assert timeout.total is None and timeout.sock_read == HTTP_STALL_S


def test_http_server_without_ranged_requests_streams_text_and_refuses_parquet(tmp_path, caplog):
    (tmp_path / "c.csv.gz").write_bytes(gzip.compress(_csv_bytes(tmp_path, 3_000)))
    # Larger than one ranged block, so reading its footer needs a range the server ignores.
    table = pa.table({"email": [f"user{i}@example.com" for i in range(400_000)]})
    pq.write_table(table, tmp_path / "c.parquet", compression="none")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # answers whole files only
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert sum(c.num_rows for c in read_chunks(f"{base}/c.csv.gz")) == 3_000
        assert "StreamReader" not in caplog.text  # a stream at its end is not read again
        with pytest.raises(InputUnreadable, match="range requests"):
            list(read_chunks(f"{base}/c.parquet"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
