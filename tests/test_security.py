"""Secrets never leak; record files are private and never silently replaced; TLS is verified."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import requests

from importer import ImportOptions, import_file
from importer.errors import ApiKeyRejected, ApiUnreachable
from importer.outcomes import neutralise_formula

from .conftest import API_KEY, fast_options, write_csv

SECRET = "sk-live-SECRET-0a1b2c3d4e5f"
ROOT = Path(__file__).resolve().parent.parent


#: A custom attribute the fake API refuses (HTTP 400), so its record is dead-lettered.
REFUSED = "refused_by_api"


def _mixed_file(tmp_path: Path) -> Path:
    """Valid rows, rows rejected by cleaning, and one the API refuses (see ``REFUSED``)."""
    rows = [[f"user{i}@example.com", f"C{i}", "Ann", ""] for i in range(30)]
    rows += [["", "", "Nobody", ""], ["not-an-email", "", "Bad", ""], ["x@example.com", "C99"]]
    rows += [["refused@example.com", "C100", "Refused", "yes"]]
    return write_csv(tmp_path / "in.csv", rows, ["email", "customer_id", "First Name", REFUSED])


def _assert_no_secret(*texts: str, files: Path | None = None) -> None:
    for text in texts:
        assert SECRET not in text
    if files is not None:
        for path in files.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def _outputs(out: Path) -> list[str]:
    return [
        "--report",
        str(out / "report.json"),
        "--rejects",
        str(out / "rejects.csv"),
        "--dead-letter",
        str(out / "dead.jsonl"),
    ]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["run", "--help"], ["validate", "--help"], ["fake-api", "--help"], ["--version"]],
)
def test_security_help_never_shows_the_key(cli, args):
    env = {"BLUESHIFT_API_KEY": SECRET, "FAKE_API_KEY": SECRET}
    result = cli(*args, env=env)
    assert result.exit_code == 0
    _assert_no_secret(result.output)


def test_security_run_with_retries_rejects_and_dead_letters_leaks_nothing(make_fake_api, tmp_path):
    server = make_fake_api(api_key=SECRET, faults={503: 0.3, 500: 0.1}, seed=3, bad_field=REFUSED)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "importer",
            "-vv",
            "run",
            str(_mixed_file(tmp_path)),
            "--base-url",
            server.url,
            "--rate",
            "1000",
            "--batch-size",
            "5",
            "--max-backoff",
            "0.01",
            *_outputs(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "BLUESHIFT_API_KEY": SECRET},
        cwd=os.getcwd(),
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DEBUG" in proc.stderr  # -vv really logged at debug level
    assert (out / "dead.jsonl").stat().st_size > 0
    assert (out / "rejects.csv").stat().st_size > 0
    _assert_no_secret(proc.stdout, proc.stderr, files=out)


def test_security_library_and_fake_api_logs_hold_no_key(make_fake_api, tmp_path, caplog):
    server = make_fake_api(api_key=SECRET, faults={503: 0.5}, seed=5, bad_field=REFUSED)
    caplog.set_level(logging.DEBUG)
    options = fast_options(
        server,
        api_key=SECRET,
        batch_size=5,
        rejects_path=tmp_path / "r.csv",
        dead_letter_path=tmp_path / "d.jsonl",
        report_path=tmp_path / "report.json",
    )
    report = import_file(_mixed_file(tmp_path), options)
    assert report.requests > 0 and report.retries > 0
    assert SECRET not in repr(options) and SECRET not in str(report.to_dict())
    _assert_no_secret(caplog.text, files=tmp_path)
    for record in caplog.records:
        assert SECRET not in record.getMessage()


def test_security_rejected_key_message_and_traceback_hold_no_key(make_fake_api, tmp_path, cli):
    server = make_fake_api(api_key="the-right-key")
    path = _mixed_file(tmp_path)
    with pytest.raises(ApiKeyRejected) as info:
        import_file(path, fast_options(server, api_key=SECRET))

    _assert_no_secret(
        str(info.value), repr(info.value), "".join(traceback.format_exception(info.value))
    )
    out = tmp_path / "out"
    result = cli(
        "-vv",
        "run",
        str(path),
        "--base-url",
        server.url,
        *_outputs(out),
        env={"BLUESHIFT_API_KEY": SECRET},
    )
    assert result.exit_code == 3
    assert "API key rejected" in result.stderr
    _assert_no_secret(result.output, files=out)


@pytest.mark.parametrize("command", [["validate"], ["run", "--dry-run"]])
def test_security_preview_commands_hold_no_key(cli, tmp_path, command):
    out = tmp_path / "out"
    result = cli(
        *command,
        str(_mixed_file(tmp_path)),
        "--rejects",
        str(out / "r.csv"),
        "--report",
        str(out / "report.json"),
        env={"BLUESHIFT_API_KEY": SECRET},
    )
    assert result.exit_code == 1, result.output
    _assert_no_secret(result.output, files=out)


def test_security_fake_api_command_logs_no_key(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer", "-vv", "fake-api", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FAKE_API_KEY": SECRET},
        cwd=os.getcwd(),
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1/customers/bulk"
        body = {"customers": [{"email": "a@example.com"}]}
        for _ in range(200):
            try:
                wrong = requests.post(url, json=body, auth=("wrong-key", ""), timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.05)
        right = requests.post(url, json=body, auth=(SECRET, ""), timeout=5)
        assert wrong.status_code == 401 and right.status_code == 200
        _assert_no_secret(wrong.text, right.text)
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    _assert_no_secret(stdout, stderr)


# -- transport ----------------------------------------------------------------------------------


def test_security_plain_http_to_remote_host_refused_through_cli(cli, tmp_path):
    path = _mixed_file(tmp_path)
    result = cli(
        "run",
        str(path),
        "--base-url",
        "http://api.example.com",
        "--dry-run",
        env={"BLUESHIFT_API_KEY": SECRET},
    )
    assert result.exit_code == 2
    assert "refusing plain http:// to api.example.com" in result.stderr
    _assert_no_secret(result.output)
    allowed = cli(
        "run",
        str(path),
        "--base-url",
        "http://api.example.com",
        "--insecure-http",
        "--dry-run",
        env={"BLUESHIFT_API_KEY": SECRET},
    )
    assert allowed.exit_code == 1, allowed.output  # only the rejected row fails; nothing sent
    assert "dry run" in allowed.stdout


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_security_tls_certificate_is_verified(tmp_path):
    cert, key = _self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    refused: list[str] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    with context.wrap_socket(conn, server_side=True) as tls:
                        received.append(tls.recv(65536))
                except (ssl.SSLError, OSError) as exc:
                    refused.append(type(exc).__name__)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        options = ImportOptions(
            api_key=SECRET,
            base_url=f"https://127.0.0.1:{port}",
            rate=1000.0,
            max_retries=0,
            backoff_base=0.001,
            max_backoff=0.01,
            timeout=5.0,
            give_up_after=0.5,
        )
        path = write_csv(tmp_path / "c.csv", [["a@example.com"]], ["email"])
        # Stopped at once, naming host and cause: retrying cannot make a certificate trusted.
        message = f"cannot reach the API at 127.0.0.1:{port}: its TLS certificate is not trusted"
        with pytest.raises(ApiUnreachable, match=re.escape(message)) as info:
            import_file(path, options)
    finally:
        done.set()
        thread.join(5)
        listener.close()
    report = info.value.report
    assert report is not None and report.succeeded == 0 and report.not_sent == 1
    assert received == [] and refused, "the client sent a request over an unverified connection"


# -- files holding records ----------------------------------------------------------------------


def test_security_output_files_are_private_even_with_a_permissive_umask(make_fake_api, tmp_path):
    old = os.umask(0)
    try:
        report = import_file(
            _mixed_file(tmp_path),
            fast_options(
                make_fake_api(bad_field=REFUSED),  # one customer dead-lettered
                rejects_path=tmp_path / "r.csv",
                dead_letter_path=tmp_path / "d.jsonl",
                report_path=tmp_path / "report.json",
            ),
        )
    finally:
        os.umask(old)
    assert report.rejected >= 1 and report.dead_lettered == 1
    for name in ("r.csv", "d.jsonl", "report.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("flag", ["--rejects", "--dead-letter", "--report"])
def test_security_existing_output_not_overwritten(cli, fake_api, tmp_path, flag):
    target = tmp_path / "existing.out"
    target.write_text("previous run\n")
    args = ["run", str(_mixed_file(tmp_path)), "--base-url", fake_api.url, flag, str(target)]
    result = cli(*args, env={"BLUESHIFT_API_KEY": API_KEY})
    assert result.exit_code == 2
    assert "already exists; pass --overwrite" in result.stderr
    assert target.read_text() == "previous run\n"
    assert fake_api.state.requests == []  # refused before anything was sent
    result = cli(*args, "--overwrite", env={"BLUESHIFT_API_KEY": API_KEY})
    assert result.exit_code == 1, result.output
    # Replaced; nothing was dead-lettered, so that file is gone rather than left empty.
    assert (
        (not target.exists()) if flag == "--dead-letter" else target.read_text() != "previous run\n"
    )


def test_security_csv_rejects_neutralise_formulas(cli, tmp_path):
    starts = ["=1+1", "+1", "-1", "@SUM(A1)", "\tTAB", "'=guarded"]
    path = write_csv(tmp_path / "in.csv", [["", s] for s in starts], ["email", "note"])
    result = cli("validate", str(path), "--delimiter", ",", "--rejects", str(tmp_path / "r.csv"))
    assert result.exit_code == 1, result.output
    with (tmp_path / "r.csv").open(newline="") as f:
        values = [row["note"] for row in csv.DictReader(f)]
    assert values == ["'" + s for s in starts]
    assert neutralise_formula("plain") == "plain" and neutralise_formula(5) == 5
    assert neutralise_formula("'6812") == "'6812"  # a guard of the export's own stays as it is
