"""Several files in one run: a list, a glob (local or in an S3 server) and a directory, read
in name order into one report; resume of a set after kill -9; --changed-only across files;
and an HTTPS file server on loopback with a certificate of its own."""

from __future__ import annotations

import csv
import datetime
import gzip
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import orjson
import pandas as pd
import pytest

from importer import import_file, import_records
from importer.errors import InputChanged, InputUnreadable, UsageError
from importer.fake_api import FakeApiServer
from importer.outcomes import ImportReport
from importer.source.inputs import InputFile, expand_inputs

from .conftest import API_KEY, fast_options, serve_directory, write_csv

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "imports"
#: Every NO_ID-th customer has no identifier (rejected); every POISON_EVERY-th carries a
#: field the fake API refuses (dead-lettered).
NO_ID, POISON_EVERY = 53, 71
POISON = "refused_by_api"


def _part(path: Path, first: int, n: int, *, changed: int | None = None) -> Path:
    """A part file of customers ``first`` to ``first + n - 1`` (gzip when named .gz)."""
    rows = []
    for i in range(first, first + n):
        rows.append(
            {
                "email": "" if i % NO_ID == 0 else f"user{i}@example.com",
                "customer_id": "" if i % NO_ID == 0 else f"C{i:07d}",
                "loyalty_points": str(i % 1000 + (1 if i == changed else 0)),
                POISON: "yes" if i % POISON_EVERY == 0 and i % NO_ID else "",
            }
        )
    text = write_csv(path.with_suffix(".tmp"), rows).read_bytes()
    path.with_suffix(".tmp").unlink()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)
    return path


def _parts(folder: Path, count: int, per: int, suffix: str = ".csv.gz") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [_part(folder / f"part-{k:05d}{suffix}", k * per + 1, per) for k in range(count)]


def _expected(count: int, per: int) -> set[str]:
    return {f"C{i:07d}" for i in range(1, count * per + 1) if i % NO_ID and i % POISON_EVERY}


def _ids(server: FakeApiServer) -> list[str]:
    with server.state.lock:
        return [str(c["customer_id"]) for c in server.state.applied]


# -- expanding the arguments ---------------------------------------------------------


def test_expand_inputs_directory_glob_and_list(tmp_path):
    parts = _parts(tmp_path / "out", 3, 5)
    (tmp_path / "out" / "_SUCCESS").write_text("")
    (tmp_path / "out" / ".part-00000.csv.gz.crc").write_text("")
    (tmp_path / "out" / "nested").mkdir()
    _part(tmp_path / "out" / "nested" / "part-00009.csv.gz", 100, 2)
    names = [str(p) for p in parts]

    # A directory: its files (not its subdirectories), in name order, marker files left out.
    assert [i.path for i in expand_inputs(tmp_path / "out")] == names
    assert [i.path for i in expand_inputs(str(tmp_path / "out" / "part-*.csv.gz"))] == names
    # ** reaches into subdirectories (sorted by path); a file named twice is read once.
    deep = expand_inputs(str(tmp_path / "out" / "**" / "part-*.csv.gz"))
    assert [Path(i.path).name for i in deep] == ["part-00009.csv.gz", *(p.name for p in parts)]
    listed = expand_inputs([names[2], str(tmp_path / "out" / "part-*"), names[0]])
    assert [i.path for i in listed] == [names[2], names[0], names[1]]
    assert expand_inputs(names[0]) == [InputFile(names[0], parts[0].stat().st_size)]
    assert [i.size for i in expand_inputs(tmp_path / "out")] == [p.stat().st_size for p in parts]
    with pytest.raises(InputUnreadable, match="matches no file"):
        expand_inputs(str(tmp_path / "out" / "*.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputUnreadable, match="holds no file"):
        expand_inputs(tmp_path / "empty")
    with pytest.raises(UsageError, match="must be the only input"):
        expand_inputs(["-", names[0]])
    with pytest.raises(UsageError, match="no input"):
        expand_inputs([])


# -- one run over a set ----------------------------------------------------------------


def test_set_of_files_is_one_run_with_a_section_per_file(make_fake_api, tmp_path):
    server = make_fake_api(bad_field=POISON)
    _parts(tmp_path / "in", 3, 120)
    out = tmp_path / "out"
    options = fast_options(
        server,
        state_path=tmp_path / "state.sqlite",
        rejects_path=out / "rejects.csv",
        dead_letter_path=out / "dead.jsonl",
        report_path=out / "report.json",
        batch_size=50,
    )
    report = import_file(str(tmp_path / "in" / "*.csv.gz"), options)

    ids = _ids(server)
    assert set(ids) == _expected(3, 120) and len(ids) == len(set(ids))
    assert report.accounting_ok and report.rows_read == 360
    assert report.source == str(tmp_path / "in" / "*.csv.gz")
    sections = report.inputs
    assert [Path(s["source"]).name for s in sections] == [
        "part-00000.csv.gz",
        "part-00001.csv.gz",
        "part-00002.csv.gz",
    ]
    assert {s["status"] for s in sections} == {"completed"}
    for key in ("rows_read", "succeeded", "rejected", "dead_lettered", "bytes_read"):
        assert sum(s[key] for s in sections) == getattr(report, key), key
    assert [s["rows_read"] for s in sections] == [120, 120, 120]
    assert (
        report.bytes_read
        == report.bytes_total
        == sum(p.stat().st_size for p in (tmp_path / "in").iterdir())
    )
    # A batch never holds rows of two files.
    part_of = {f"user{i}@example.com": (i - 1) // 120 for i in range(1, 361)}
    for request in server.state.requests:
        assert len({part_of[i] for i in request.ids if i in part_of}) == 1
    # Rejects and dead-letter lines name their file and its record.
    with (out / "rejects.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    rejected = sorted((Path(r["_source"]).name, int(r["_line"])) for r in rows)
    # Records 53, 106 ... (a header line before them).
    assert rejected == [
        ("part-00000.csv.gz", 54),
        ("part-00000.csv.gz", 107),
        ("part-00001.csv.gz", 40),
        ("part-00001.csv.gz", 93),
        ("part-00002.csv.gz", 26),
        ("part-00002.csv.gz", 79),
    ]
    dead = [orjson.loads(line) for line in (out / "dead.jsonl").read_bytes().splitlines()]
    assert sorted((Path(d["source"]).name, d["record"]) for d in dead) == [
        ("part-00000.csv.gz", 71),
        ("part-00001.csv.gz", 22),
        ("part-00001.csv.gz", 93),
        ("part-00002.csv.gz", 44),
        ("part-00002.csv.gz", 115),
    ]
    written = orjson.loads((out / "report.json").read_bytes())
    assert written["inputs"] == sections and written["accounting"]["balanced"]


def test_changed_only_works_across_files(make_fake_api, tmp_path):
    parts = _parts(tmp_path / "in", 3, 60, suffix=".csv")
    state = tmp_path / "state.sqlite"
    # One API (payload hashes are kept per destination), asked twice.
    server = make_fake_api()
    options = fast_options(server, state_path=state, changed_only=True)
    import_file(tmp_path / "in", options)
    sent = len(server.state.applied)
    # The same customers in new files (names and dates differ), one of them changed.
    for k, path in enumerate(parts):
        path.unlink()
        _part(tmp_path / "in" / f"day2-{k}.csv", k * 60 + 1, 60, changed=75)
    report = import_file(tmp_path / "in", options)
    assert _ids(server)[sent:] == ["C0000075"]
    assert report.accounting_ok and report.unchanged_skipped == 180 - 1 - 3
    assert [s["unchanged_skipped"] for s in report.inputs] == [59, 58, 59]


def test_cli_reads_a_directory_and_a_list(fake_api, cli, tmp_path):
    parts = _parts(tmp_path / "in", 3, 40)
    (tmp_path / "in" / "_SUCCESS").write_text("")
    env = {"BLUESHIFT_API_KEY": API_KEY}
    base = ("--base-url", fake_api.url, "--rate", "1000", "--no-state")
    result = cli("run", str(tmp_path / "in"), *base, env=env)
    assert result.exit_code == 1, result.output  # rows without an identifier: exit 1
    assert "files            3 (3 completed)" in result.output
    assert sorted(_ids(fake_api)) == sorted({f"C{i:07d}" for i in range(1, 121) if i % NO_ID})
    result = cli("validate", str(parts[2]), str(parts[0]))
    assert "rows read 80: valid 79, rejected 1" in result.output
    assert result.exit_code == 1


def test_resume_of_a_finished_file_sends_nothing_and_says_so(fake_api, cli, tmp_path):
    path = _part(tmp_path / "c.csv", 1, 30)
    env = {"BLUESHIFT_API_KEY": API_KEY}
    args = ("run", str(path), "--base-url", fake_api.url, "--rate", "1000", "--resume")
    assert cli(*args, env=env).exit_code == 0
    sent = len(fake_api.state.requests)
    again = cli(*args, env=env)
    assert again.exit_code == 0 and len(fake_api.state.requests) == sent
    assert "files            1 (1 skipped)" in again.output
    # Changed since, it is read again.
    _part(path, 1, 31)
    assert cli(*args, env=env).exit_code == 0
    assert len(fake_api.state.requests) > sent


# -- resume of a set after kill -9 -------------------------------------------------------


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY}
    cmd = [sys.executable, "-m", "importer", "run", *args]
    return subprocess.Popen(
        cmd, cwd=os.getcwd(), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_set_killed_in_the_fourth_file_resumes_where_it_stopped(make_fake_api, tmp_path):
    count, per, batch, concurrency = 10, 400, 20, 4
    _parts(tmp_path / "in", count, per)
    pattern = str(tmp_path / "in" / "part-*.csv.gz")
    common = [
        "--state", str(tmp_path / "state.sqlite"),
        "--rejects", str(tmp_path / "rejects.csv"),
        "--dead-letter", str(tmp_path / "dead.jsonl"),
        "--batch-size", str(batch),
        "--concurrency", str(concurrency),
    ]  # fmt: skip
    first = make_fake_api(bad_field=POISON)
    proc = _start([pattern, "--base-url", first.url, "--rate", "60", *common])
    # Kill once half of the fourth file's customers (records 1201 to 1600) have arrived.
    fourth = {f"C{i:07d}" for i in range(3 * per + 1, 4 * per + 1)}
    deadline = time.monotonic() + 120
    while len(fourth.intersection(_ids(first))) < per // 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not fourth.issubset(_ids(first))

    second = make_fake_api(bad_field=POISON)
    resumed = _start(
        [pattern, "--base-url", second.url, "--rate", "1000", "--resume",
         "--report", str(tmp_path / "report.json"), *common]
    )  # fmt: skip
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 1, err  # rejected rows: exit 1, as for one file

    delivered = Counter(_ids(first)) + Counter(_ids(second))
    assert set(delivered) == _expected(count, per)
    resent = sum(n - 1 for n in delivered.values())
    assert resent <= concurrency * batch
    # Nothing of the three finished files was sent again.
    assert not {f"C{i:07d}" for i in range(1, 3 * per + 1)}.intersection(_ids(second))

    report = orjson.loads((tmp_path / "report.json").read_bytes())
    assert report["accounting"]["balanced"], report["accounting"]
    statuses = [s["status"] for s in report["inputs"]]
    assert all(s.startswith("skipped: finished by run") for s in statuses[:3])
    assert statuses[3:] == ["completed"] * 7
    assert report["inputs"][3]["already_done"] >= per // 2 - concurrency * batch
    assert report["rows_read"] == 7 * per
    # Each rejected and dead-lettered row is in its file once, over both attempts.
    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    dead_keys = [(Path(d["source"]).name, d["record"]) for d in dead]
    assert (
        len(dead_keys)
        == len(set(dead_keys))
        == sum(1 for i in range(1, count * per + 1) if i % POISON_EVERY == 0 and i % NO_ID)
    )
    rejects = (tmp_path / "rejects.csv").read_text().splitlines()[1:]
    assert len(rejects) == len(set(rejects)) == count * per // NO_ID
    print(
        f"\n10-part kill -9: customers {len(delivered)}, resent {resent}, "
        f"{report['accounting']['line']}"
    )


def test_resume_of_a_set_refuses_a_changed_file(make_fake_api, tmp_path):
    parts = _parts(tmp_path / "in", 3, 100)
    state = tmp_path / "state.sqlite"
    server = make_fake_api()
    stop = threading.Event()

    def observe(report):
        if report.rows_read > 150:
            stop.set()

    options = fast_options(server, state_path=state, rate=50.0, batch_size=10, concurrency=1)
    report = import_file(tmp_path / "in", options, observer=observe, stop=stop)
    assert report.stopped == "interrupted"
    assert [s["status"] for s in report.inputs] == ["completed", "interrupted", "not read"]
    assert report.accounting_ok
    _part(parts[1], 101, 90)  # the interrupted file changes
    with pytest.raises(InputChanged, match="changed since the interrupted run"):
        import_file(tmp_path / "in", options.replace(resume=True))


def test_resume_continues_only_the_set_it_stopped_not_an_older_attempt(make_fake_api, tmp_path):
    _parts(tmp_path / "in", 3, 100)
    server = make_fake_api(bad_field=POISON)
    dead = tmp_path / "dead.jsonl"
    options = fast_options(
        server,
        state_path=tmp_path / "state.sqlite",
        dead_letter_path=dead,
        rate=200.0,
        batch_size=10,
        concurrency=1,
    )

    def stop_after(succeeded: int) -> tuple[threading.Event, Callable[[ImportReport], None]]:
        stop = threading.Event()

        def observe(report: ImportReport) -> None:
            if report.succeeded >= succeeded:
                stop.set()

        return stop, observe

    # Stopped in the third file, then started over (replacing the output files) and
    # stopped in the first: the third file's unfinished run is the older attempt's.
    stop, observe = stop_after(230)
    first = import_file(tmp_path / "in", options, observer=observe, stop=stop)
    assert [s["status"] for s in first.inputs] == ["completed", "completed", "interrupted"]
    stop, observe = stop_after(30)
    second = import_file(
        tmp_path / "in", options.replace(overwrite=True), observer=observe, stop=stop
    )
    assert [s["status"] for s in second.inputs] == ["interrupted", "not read", "not read"]
    third = import_file(tmp_path / "in", options.replace(resume=True))
    assert [s["status"] for s in third.inputs] == ["completed"] * 3
    assert third.inputs[0]["already_done"] > 0 and third.inputs[2]["already_done"] == 0
    lines = [orjson.loads(x) for x in dead.read_bytes().splitlines()]
    assert sorted((Path(d["source"]).name, d["record"]) for d in lines) == [
        ("part-00000.csv.gz", 71),
        ("part-00001.csv.gz", 42),
        ("part-00002.csv.gz", 13),
        ("part-00002.csv.gz", 84),
    ]
    assert set(_ids(server)) == _expected(3, 100)


# -- object store and HTTPS ----------------------------------------------------------------


def test_glob_url_in_s3_reads_every_part_in_order(s3_endpoint, make_fake_api, tmp_path):
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, skip_instance_cache=True)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    prefix = f"{BUCKET}/{tmp_path.name}/2026-12-04"
    for path in _parts(tmp_path / "in", 3, 50):
        fs.pipe(f"{prefix}/{path.name}", path.read_bytes())
    fs.pipe(f"{prefix}/_SUCCESS", b"")
    fs.pipe(f"{prefix}/other.csv.gz", b"not part of the set")
    server = make_fake_api()
    options = fast_options(
        server, storage_options={"endpoint_url": s3_endpoint}, state_path=tmp_path / "s"
    )
    report = import_file(f"s3://{prefix}/part-*.csv.gz", options)
    assert [s["source"] for s in report.inputs] == [
        f"s3://{prefix}/part-{k:05d}.csv.gz" for k in range(3)
    ]
    assert report.accounting_ok and report.rows_read == 150
    assert sorted(_ids(server)) == sorted({f"C{i:07d}" for i in range(1, 151) if i % NO_ID})
    # The object store's directory: its files but the marker, in name order.
    listed = expand_inputs(f"s3://{prefix}", {"endpoint_url": s3_endpoint})
    assert [i.path.rsplit("/", 1)[1] for i in listed] == [
        "other.csv.gz",
        *(f"part-{k:05d}.csv.gz" for k in range(3)),
    ]
    assert all(i.size for i in listed)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: ``(cert.pem, key.pem)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def https_root(tmp_path: Path) -> Iterator[tuple[Path, str, Path]]:
    """A directory served over HTTPS on 127.0.0.1: ``(directory, base URL, its cert.pem)``."""
    root = tmp_path / "www"
    root.mkdir()
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with serve_directory(root, context) as port:
        yield root, f"https://127.0.0.1:{port}", cert


def test_https_url_with_a_private_ca_through_ssl_cert_file(https_root, fake_api, tmp_path):
    root, base, cert = https_root
    _part(root / "c.csv.gz", 1, 80)
    args = [f"{base}/c.csv.gz", "--base-url", fake_api.url, "--rate", "1000", "--no-state"]
    env = {**os.environ, "BLUESHIFT_API_KEY": API_KEY}
    env.pop("SSL_CERT_FILE", None)
    # The certificate is checked: unknown to the default trust store, the file is refused.
    refused = subprocess.run(
        [sys.executable, "-m", "importer", "run", *args],
        cwd=os.getcwd(), env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "certificate verify failed" in refused.stderr
    assert _ids(fake_api) == []
    # SSL_CERT_FILE names the CA (here the certificate itself) that OpenSSL trusts.
    done = subprocess.run(
        [sys.executable, "-m", "importer", "run", *args],
        cwd=os.getcwd(), env={**env, "SSL_CERT_FILE": str(cert)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # one row has no identifier
    assert sorted(_ids(fake_api)) == [f"C{i:07d}" for i in range(1, 81) if i % NO_ID]


# -- main's features over a set ------------------------------------------------------


def test_limit_counts_the_rows_of_the_whole_set_and_resume_finishes_it(make_fake_api, tmp_path):
    _parts(tmp_path / "in", 3, 120)
    pattern = str(tmp_path / "in" / "*.csv.gz")
    server = make_fake_api(bad_field=POISON)
    common = {"state_path": tmp_path / "s.sqlite", "rejects_path": tmp_path / "rejects.csv"}
    trial = import_file(pattern, fast_options(server, limit=200, **common))
    assert report_ok(trial) and trial.rows_read == 200
    assert [s["status"] for s in trial.inputs] == ["completed", "interrupted", "not read"]
    assert [s.get("rows_read") for s in trial.inputs] == [120, 80, None]
    assert set(_ids(server)) == _expected(3, 120) & {f"C{i:07d}" for i in range(1, 201)}

    rest = import_file(pattern, fast_options(server, resume=True, **common))
    assert report_ok(rest)
    assert [s["status"].split(":")[0] for s in rest.inputs] == ["skipped", "completed", "completed"]
    # Rows 121-200 were settled (delivered, or 142 dead-lettered) but for 159, rejected again.
    assert rest.inputs[1]["already_done"] == 79 and rest.inputs[1]["rejected"] == 2
    ids = _ids(server)
    assert set(ids) == _expected(3, 120) and len(ids) == len(set(ids))  # none sent twice
    with (tmp_path / "rejects.csv").open(newline="") as f:
        lines = [(Path(r["_source"]).name, r["_line"]) for r in csv.DictReader(f)]
    assert len(lines) == len(set(lines)) == 360 // NO_ID


def report_ok(report: ImportReport) -> bool:
    return report.accounting_ok and report.stopped is None


def test_set_mixing_csv_with_jsonl_is_refused_before_anything_is_sent(fake_api, tmp_path):
    csv_part = _part(tmp_path / "a.csv", 1, 5)
    (tmp_path / "b.jsonl").write_text('{"email": "b@example.com"}\n')
    with pytest.raises(UsageError, match="a.csv is CSV but .*b.jsonl is not"):
        import_file([csv_part, tmp_path / "b.jsonl"], fast_options(fake_api))
    assert fake_api.state.requests == []
    # JSONL and Parquet share the rejects file's format: one run reads both.
    pd.DataFrame({"email": ["p@example.com", "bad"]}).to_parquet(tmp_path / "c.parquet")
    report = import_file(
        [tmp_path / "b.jsonl", tmp_path / "c.parquet"],
        fast_options(fake_api, rejects_path=tmp_path / "r.jsonl"),
    )
    assert report.succeeded == 2 and report.rejected == 1
    [line] = [orjson.loads(x) for x in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    assert line["email"] == "bad" and Path(line["_source"]).name == "c.parquet"


def test_default_rejects_file_of_a_set_is_named_after_its_first_input_and_reimports(
    make_fake_api, tmp_path, monkeypatch
):
    _parts(tmp_path / "in", 2, 60)
    monkeypatch.chdir(tmp_path)
    server = make_fake_api()
    report = import_file(str(tmp_path / "in"), fast_options(server, state_path=None))
    [rejects] = list(tmp_path.glob("*.rejects-*.csv"))
    assert rejects.name.startswith("part-00000.rejects-")
    assert Path(report.files["rejects"]).resolve() == rejects
    with rejects.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(Path(r["_source"]).name, r["_reason"].split(":")[0]) for r in rows] == [
        ("part-00000.csv.gz", "missing identifier"),
        ("part-00001.csv.gz", "missing identifier"),
    ]
    # Fixed, the file imports again; its _ columns (_source too) are not sent.
    for r in rows:
        r["email"] = f"fixed{r['_line']}@example.com"
    fixed = write_csv(tmp_path / "fixed.csv", rows)
    again = import_file(fixed, fast_options(server, state_path=None))
    assert again.succeeded == 2 and again.rejected == 0
    sent = server.state.applied[-2:]
    assert {c["email"] for c in sent} == {f"fixed{r['_line']}@example.com" for r in rows}
    assert not any(k.startswith("_") or k == "source" for c in sent for k in c)


def test_import_records_is_a_set_of_one(fake_api):
    report = import_records([{"email": "r@example.com"}], fast_options(fake_api))
    assert [(s["source"], s["status"], s["succeeded"]) for s in report.inputs] == [
        ("<records>", "completed", 1)
    ]


def test_resumed_set_goes_on_in_its_run_directory_and_default_rejects_file(make_fake_api, tmp_path):
    _parts(tmp_path / "in", 3, 120)
    server = make_fake_api(bad_field=POISON)
    stop = threading.Event()

    def observe(report):
        if report.rows_read > 150:
            stop.set()

    runs = tmp_path / "runs"
    options = fast_options(
        server,
        state_path=tmp_path / "s.sqlite",
        output_dir=runs,
        rate=50.0,
        batch_size=10,
        concurrency=1,
    )
    first = import_file(tmp_path / "in", options, observer=observe, stop=stop)
    assert [s["status"] for s in first.inputs] == ["completed", "interrupted", "not read"]
    [run_dir] = [p for p in runs.iterdir() if p.name != "latest"]
    [rejects] = run_dir.glob("part-00000.rejects-*.csv")

    rest = import_file(tmp_path / "in", options.replace(resume=True))
    assert report_ok(rest) and Path(rest.files["rejects"]) == rejects
    assert [p for p in runs.iterdir() if p.name != "latest"] == [run_dir]
    assert (runs / "latest").resolve() == run_dir.resolve()
    ids = _ids(server)
    assert set(ids) == _expected(3, 120)
    with rejects.open(newline="") as f:
        lines = [(Path(r["_source"]).name, r["_line"]) for r in csv.DictReader(f)]
    assert len(lines) == len(set(lines)) == 360 // NO_ID
    dead = [orjson.loads(x) for x in (run_dir / "dead-letter.jsonl").read_bytes().splitlines()]
    keys = [(Path(d["source"]).name, d["record"]) for d in dead]
    assert len(keys) == len(set(keys)) == sum(1 for i in range(1, 361) if i % 71 == 0 and i % 53)
