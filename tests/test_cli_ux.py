"""What the command shows and returns: exit codes, summaries, status lines, logs, precedence."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import importer.pipeline
from importer.logs import SecretFilter, setup_logging
from importer.outcomes import REPORT_SCHEMA_VERSION, ImportReport
from importer.progress import RunProgress, rerun_command, summary_lines

from .conftest import API_KEY, write_csv

#: Any control character but newline (colour codes, cursor moves, carriage returns).
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f\x9b]")
SECRET = "sk-live-0123456789abcdef"


def _rows(n: int, missing_id: int = 0) -> list[dict[str, str]]:
    rows = [{"email": f"user{i}@example.com", "customer_id": f"c{i}"} for i in range(n)]
    rows += [{"email": "", "customer_id": ""} for _ in range(missing_id)]
    return rows


def _run(cli, server, path: Path, *args: str, key: str = API_KEY):
    return cli(
        "run", str(path), "--base-url", server.url, "--rate", "1000", *args,
        env={"BLUESHIFT_API_KEY": key},
    )  # fmt: skip


# -- exit codes ---------------------------------------------------------------


def test_exit_0_when_every_row_is_delivered(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(120))
    result = _run(cli, fake_api, path)
    assert result.exit_code == 0, result.output
    assert sorted(c["customer_id"] for c in fake_api.state.applied) == sorted(
        f"c{i}" for i in range(120)
    )


def test_exit_1_when_rows_are_rejected_beyond_the_error_rate(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(3, missing_id=1))
    result = _run(cli, fake_api, path)
    assert result.exit_code == 1, result.output
    assert len(fake_api.state.applied) == 3
    # One failed row in four is 25 %: tolerated at 0.25, not at 0.2.
    assert _run(cli, fake_api, path, "--max-error-rate", "0.25").exit_code == 0
    assert _run(cli, fake_api, path, "--max-error-rate", "0.2").exit_code == 1


def test_exit_1_when_customers_are_dead_lettered(cli, make_fake_api, tmp_path):
    server = make_fake_api(faults={400: 1.0}, seed=1)
    path = write_csv(tmp_path / "c.csv", _rows(4))
    dead = tmp_path / "dead.jsonl"
    result = _run(cli, server, path, "--dead-letter", str(dead), "--max-backoff", "0.01")
    assert result.exit_code == 1, result.output
    assert len(dead.read_text().splitlines()) == 4
    assert "dead-lettered    4" in result.stdout
    assert f"re-run the failures: blueshift-import run {dead} --base-url {server.url}" in (
        result.stdout
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--rate", "0"),
        ("--batch-size", "51"),
        ("--max-error-rate", "2"),
        ("--no-such-option",),
        ("--log-format", "xml"),
    ],
)
def test_exit_2_for_usage_errors(cli, fake_api, tmp_path, args):
    path = write_csv(tmp_path / "c.csv", _rows(2))
    result = _run(cli, fake_api, path, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert fake_api.state.requests == []


def test_exit_2_for_input_errors(cli, fake_api, tmp_path):
    assert _run(cli, fake_api, tmp_path / "missing.csv").exit_code == 2
    bad_header = tmp_path / "dup.csv"
    bad_header.write_text("email,email\na@example.com,b@example.com\n")
    result = _run(cli, fake_api, bad_header)
    assert result.exit_code == 2
    assert "duplicate column" in result.stderr
    assert fake_api.state.requests == []


def test_exit_3_when_the_key_is_rejected_and_summary_still_printed(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(200))
    report = tmp_path / "report.json"
    result = _run(cli, fake_api, path, "--report", str(report), key="wrong-key")
    assert result.exit_code == 3, result.output
    assert "import stopped" in result.stdout
    assert fake_api.state.applied == []
    data = json.loads(report.read_text())
    assert data["stopped"] and data["succeeded"] == 0
    assert data["accounting"]["balanced"] is True


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_exit_130_143_when_interrupted(customers_file, tmp_path, sig, code):
    path = customers_file(2_000)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "importer", "run", str(path), "--mock", "--rate", "5",
         "--status-every", "0.05", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        # The first status line means the run is under way with its signal handlers set.
        for line in proc.stderr:
            if line.startswith("status:"):
                break
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, out
    assert "import stopped after " in out and ": interrupted" in out
    data = json.loads(report.read_text())
    assert data["stopped"] == "interrupted"
    assert data["not_sent"] > 0
    assert data["accounting"]["balanced"] is True


# -- summary and report ------------------------------------------------------------


def test_summary_accounting_line_and_counts_match_the_report(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(130, missing_id=3))
    report_path = tmp_path / "out" / "report.json"
    rejects = tmp_path / "out" / "rejects.csv"
    result = _run(cli, fake_api, path, "--report", str(report_path), "--rejects", str(rejects))
    assert result.exit_code == 1
    report = json.loads(report_path.read_text())
    lines = result.stdout.splitlines()
    accounting = [line for line in lines if line.strip().startswith("accounting:")]
    assert accounting == [f"  accounting: {report['accounting']['line']}"]
    assert report["accounting"]["line"] == (
        "rows read 133 = succeeded 130 + rejected 3 + dead-lettered 0 + merged 0 (balanced)"
    )
    for label, key in [
        ("rows read", "rows_read"),
        ("succeeded", "succeeded"),
        ("rejected", "rejected"),
        ("dead-lettered", "dead_lettered"),
    ]:
        assert f"  {label:<16} {report[key]}" in lines
    assert "  rejected: 3 × missing identifier" in lines
    assert f"  rejects: {rejects}" in lines
    assert f"  report: {report_path}" in lines
    assert "  API answers      200: 3" in lines


def test_json_report_schema(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(60, missing_id=1))
    report_path = tmp_path / "report.json"
    assert _run(cli, fake_api, path, "--report", str(report_path)).exit_code == 1
    report = json.loads(report_path.read_text())
    assert report["schema_version"] == REPORT_SCHEMA_VERSION == 1
    types = {
        "source": str,
        "dry_run": bool,
        "started_at": str,
        "finished_at": str,
        "duration_s": float,
        "rows_read": int,
        "bytes_read": int,
        "bytes_total": int,
        "succeeded": int,
        "rejected": int,
        "dropped_fields": int,
        "dead_lettered": int,
        "merged_duplicates": int,
        "unchanged_skipped": int,
        "already_done": int,
        "not_sent": int,
        "requests": int,
        "retries": int,
        "splits": int,
        "status_counts": dict,
        "reject_reasons": dict,
        "dead_letter_reasons": dict,
        "rate_limit": float,
        "achieved_rate": float,  # null only for a dry run or a single request
        "final_rate": float,
        "files": dict,
        "mapping": list,
        "error_rate": float,
        "accounting": dict,
    }
    for key, kind in types.items():
        assert isinstance(report[key], kind), (key, report[key])
    assert report["stopped"] is None
    assert report["bytes_read"] == report["bytes_total"] == path.stat().st_size
    assert report["status_counts"] == {"200": 2}
    assert report["reject_reasons"] == {"missing identifier": 1}
    assert report["error_rate"] == pytest.approx(1 / 61, abs=1e-6)
    assert report["mapping"] == [["email", "email"], ["customer_id", "customer_id"]]
    assert report["files"]["report"] == str(report_path)
    # The rejected row went to a rejects file beside the report, though none was asked for.
    assert set(report["files"]) == {"report", "state", "rejects"}
    assert Path(report["files"]["rejects"]).parent == tmp_path
    assert set(report["accounting"]) == {"balanced", "line"}
    assert "preview" not in report


def test_rerun_command_repeats_connection_options_but_never_the_key(tmp_path):
    report = ImportReport(source="in.csv", dead_lettered=2, files={"dead_letter": "out/dl.jsonl"})
    command = rerun_command(report, ["--region", "eu"])
    assert command == (
        "blueshift-import run out/dl.jsonl --region eu --dead-letter out/dl.retry.jsonl"
    )
    report.files["dead_letter"] = "my dir/failed.jsonl"
    assert "'my dir/failed.jsonl'" in (rerun_command(report) or "")
    assert rerun_command(ImportReport(source="x", files={"dead_letter": "dl.jsonl"})) is None


# -- output without a terminal -------------------------------------------------------


def test_non_tty_output_has_no_control_characters(cli, make_fake_api, tmp_path):
    server = make_fake_api()
    path = write_csv(tmp_path / "c.csv", _rows(200, missing_id=2))
    args = ["--rate", "20", "--status-every", "0.01"]
    result = cli(
        "run", str(path), "--base-url", server.url, *args, "--rejects", str(tmp_path / "r.csv"),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert not CONTROL.search(result.stdout)
    assert not CONTROL.search(result.stderr)
    status = [line for line in result.stderr.splitlines() if line.startswith("status:")]
    # Four requests at 20/s take at least 0.15 s: several 0.01 s ticks.
    assert status, result.stderr
    assert re.fullmatch(
        r"status: read \d+, done \d+, sent \d+, ok \d+, rejected \d+, dead \d+, retries \d+, "
        r"rate ([\d.]+|-)/20 req/s, (concurrency \d+ of 32, )?"
        r"(answers p50 [\d.]+ s p90 [\d.]+ s, )?"
        r"elapsed \d+:\d\d(, \d+%)?(, eta \d+:\d\d)?",
        status[-1],
    ), status[-1]
    assert "accounting:" in result.stdout


def test_status_every_zero_shows_no_status(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(100))
    result = _run(cli, fake_api, path, "--status-every", "0")
    assert result.exit_code == 0
    assert "status:" not in result.stderr


def test_quiet_prints_only_errors_and_the_accounting_line(cli, make_fake_api, tmp_path):
    server = make_fake_api(faults={503: 0.3}, seed=3)
    path = write_csv(tmp_path / "c.csv", _rows(300, missing_id=2))
    result = _run(cli, server, path, "-q", "--status-every", "0.01", "--max-backoff", "0.01")
    assert result.exit_code == 1  # the rows without an identifier
    assert result.stdout.splitlines() == [
        "accounting: rows read 302 = succeeded 300 + rejected 2 + dead-lettered 0 + merged 0 "
        "(balanced)"
    ]
    assert result.stderr == ""
    stopped = _run(cli, server, path, "-q", "--base-url", "http://127.0.0.1:9")
    assert stopped.exit_code == 2 and len(stopped.stdout.splitlines()) == 1
    assert stopped.stderr.splitlines() == [
        "error: cannot reach the API at 127.0.0.1:9: connection refused "
        "(nothing listens on that port); check --base-url"
    ]


def test_json_log_format_writes_json_lines_on_stderr(cli, make_fake_api, tmp_path):
    server = make_fake_api()
    path = write_csv(tmp_path / "c.csv", _rows(150))
    result = cli(
        "run", str(path), "--base-url", server.url, "--rate", "20", "--status-every", "0.01",
        "--log-format", "json", env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["event"] for e in events} == {"status", "summary"}
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["succeeded"] == 150 and summary["accounting"]["balanced"]
    status = [e for e in events if e["event"] == "status" and "rows_read" in e]
    assert status and status[-1]["rate_limit"] == 20.0


def test_progress_is_live_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert RunProgress(Tty()).live is True
    assert RunProgress(Tty(), quiet=True).live is False
    assert RunProgress(io.StringIO()).live is False
    assert RunProgress(Tty(), as_json=True).live is False


class _Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _report_at(progress: RunProgress, clock: _Clock, now: float, **counts: int) -> None:
    """Move the clock to ``now`` and give the progress the report's new counts."""
    clock.now = now
    report = progress.report or ImportReport(source="x", rate_limit=5.0, bytes_total=100_000)
    for name, value in counts.items():
        setattr(report, name, value)
    progress.observe(report)


def test_status_line_rate_and_eta_from_bytes_read():
    clock, stream = _Clock(100.0), io.StringIO()
    lines = RunProgress(stream, clock=clock)
    assert lines.status_line() == "status: starting, elapsed 0:00"
    # A quarter of the file read, 500 of its 1,000 rows done, 10 requests made ...
    counts = {"rows_read": 1_000, "bytes_read": 25_000, "succeeded": 490, "rejected": 10}
    _report_at(lines, clock, 110.0, **counts, requests=10)
    lines.status_line()
    # ... then half of it, 1,500 of 2,000 rows done (a quarter of the file in 10 s) and 50
    # more requests: 5 requests/s, and the last 62.5 % of the file take 25 s more.
    counts = {"rows_read": 2_000, "bytes_read": 50_000, "succeeded": 1_490}
    _report_at(lines, clock, 120.0, **counts, requests=60)
    # 1,490 sent in 10 s after 490: 100 a second, 2,490 of the file's 3,980 left to send.
    assert lines.status_line() == (
        "status: read 2000, done 1500, sent 1490, ok 1490, rejected 10, dead 0, retries 0, "
        "rate 5.0/5 req/s, elapsed 0:20, 38%, eta 0:25"
    )
    # Once calls were answered: the concurrency in use and the answer times too.
    lines.report.concurrency, lines.report.concurrency_ceiling = 3, 32  # type: ignore[union-attr]
    lines.report.answer_time_s = {"mean": 0.5, "p50": 0.48, "p90": 0.7, "p99": 0.9}  # type: ignore[union-attr]
    assert lines.status_line() == (
        "status: read 2000, done 1500, sent 1490, ok 1490, rejected 10, dead 0, retries 0, "
        "rate 5.0/5 req/s, concurrency 3 of 32, answers p50 0.48 s p90 0.70 s, "
        "elapsed 0:20, 38%, eta 0:25"
    )
    as_json = RunProgress(io.StringIO(), as_json=True, clock=clock)
    as_json.observe(lines.report)  # type: ignore[arg-type]
    data = json.loads(as_json.status_line())
    assert data["percent"] == 37.5 and data["rows_read"] == 2000 and "eta_s" not in data
    assert data["concurrency"] == 3 and data["answer_p90_s"] == 0.7


def test_live_display_renders_counts_rate_and_eta():
    from rich.console import Console

    clock = _Clock(0.0)
    display = RunProgress(io.StringIO(), clock=clock)
    _report_at(display, clock, 8.0, rows_read=100, bytes_read=20_000, succeeded=80, requests=2)
    display.render()
    counts = {"rows_read": 200, "bytes_read": 50_000, "succeeded": 150, "dead_lettered": 10}
    _report_at(display, clock, 16.0, **counts, requests=6, retries=1)
    display.report.status_counts = {"200": 3, "429": 1}  # type: ignore[union-attr]
    display.report.concurrency, display.report.concurrency_ceiling = 2, 32  # type: ignore[union-attr]
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(display.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for part in ("rows read 200", "sent 160", "succeeded 150", "dead-lettered 10", "retries 1"):
        assert part in text
    assert "0.5 of 5 req/s  concurrency 2 of 32" in text and "API 200: 3, 429: 1" in text
    # 160 of 200 rows in half of the file: 40 %; 80 sent in 8 s: the 240 left take 0:24.
    assert "40%" in text and "elapsed 0:16  ETA 0:24" in text


def test_rejected_rows_do_not_speed_up_the_eta_and_no_rate_shows_before_it_is_known():
    clock = _Clock(0.0)
    lines = RunProgress(io.StringIO(), clock=clock)
    # The whole file read at once: 680 of its 1,000 rows rejected, 50 sent in the first second.
    counts = {"rows_read": 1_000, "bytes_read": 100_000, "rejected": 680, "succeeded": 50}
    _report_at(lines, clock, 1.0, **counts, requests=1)
    first = lines.status_line()
    assert "rate -/5 req/s" in first and "eta" not in first
    _report_at(lines, clock, 2.0, succeeded=100, requests=2)
    # 78 % done, but the 220 customers left to send go at 50 a second: 4 s, not 0.
    assert lines.status_line().endswith("78%, eta 0:04")


def test_summary_lines_are_plain_text():
    report = ImportReport(source="x", rows_read=3, succeeded=2, rejected=1)
    report.reject_reasons = {"missing identifier": 1}
    lines = summary_lines(report)
    assert not any(CONTROL.search(line) for line in lines)
    assert lines[-1].endswith("(balanced)")


def test_summary_lines_show_calls_in_flight_what_limited_the_pace_and_the_shared_limit():
    report = ImportReport(source="x", rate_limit=5.0, requests=300, peak_in_flight=32)
    report.concurrency, report.concurrency_ceiling = 32, 32
    report.answer_time_s = {"mean": 7.1, "p50": 7.0, "p90": 9.0, "p99": 9.4}
    report.concurrency_limited = True
    report.shared_limit, report.shared_processes = "redis://10.0.0.5:6379/0", 3
    report.shared_limit_fallback = "cannot reach Redis at redis://10.0.0.5:6379/0 (refused)"
    text = "\n".join(summary_lines(report))
    assert (
        "  in flight        at most 32 (limit 32 at the end, ceiling 32); "
        "answers p50 7 s, p90 9 s, p99 9.4 s, mean 7.1 s"
    ) in text
    assert (
        "  pace limited by the concurrency ceiling (32 in flight), not the API's cap: "
        "5/s × 7.1 s per answer needs about 36 in flight"
    ) in text
    assert "  shared limit     redis://10.0.0.5:6379/0, 3 process(es) sharing it" in text
    assert "  shared limit lost: cannot reach Redis at redis://10.0.0.5:6379/0" in text
    report.concurrency_limited = False
    assert "pace limited" not in "\n".join(summary_lines(report))


# -- configuration precedence ---------------------------------------------------------


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "import.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_precedence_flag_over_env_over_config_for_base_url(cli, make_fake_api, tmp_path):
    flag_api, env_api, config_api = make_fake_api(), make_fake_api(), make_fake_api()
    path = write_csv(tmp_path / "c.csv", _rows(10))
    config = _config(tmp_path, f'base-url = "{config_api.url}"\nrate = 1000\n')
    env = {"BLUESHIFT_API_KEY": API_KEY, "BLUESHIFT_BASE_URL": env_api.url}

    def received() -> tuple[int, int, int]:
        a, b, c = (len(s.state.applied) for s in (flag_api, env_api, config_api))
        return a, b, c

    args = ["run", str(path), "--config", str(config), "--overwrite"]
    assert cli(*args, "--base-url", flag_api.url, env=env).exit_code == 0
    assert received() == (10, 0, 0)
    assert cli(*args, env=env).exit_code == 0
    assert received() == (10, 10, 0)
    assert cli(*args, env={"BLUESHIFT_API_KEY": API_KEY}).exit_code == 0
    assert received() == (10, 10, 10)


def test_precedence_for_the_api_key_env_over_config(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(5))
    config = _config(tmp_path, f'api-key = "wrong-key"\nbase-url = "{fake_api.url}"\n')
    # The environment's right key beats the file's wrong one ...
    env = {"BLUESHIFT_API_KEY": API_KEY}
    assert cli("run", str(path), "--config", str(config), env=env).exit_code == 0
    # ... the file's key beats having none ...
    result = cli("run", str(path), "--config", str(config))
    assert result.exit_code == 3 and "wrong-key" not in result.output
    # ... and a flag beats the environment.
    result = cli("run", str(path), "--config", str(config), "--api-key", "wrong-key", env=env)
    assert result.exit_code == 3
    assert "visible to other users in the process list" in result.stderr
    assert "wrong-key" not in result.output


def test_precedence_config_over_defaults_for_error_rate_and_paths(cli, fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(3, missing_id=1))
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = _config(conf_dir, 'max_error_rate = 0.5\nreport = "out/report.json"\nrate = 1000\n')
    env = {"BLUESHIFT_API_KEY": API_KEY, "BLUESHIFT_BASE_URL": fake_api.url}
    assert cli("run", str(path), env=env).exit_code == 1  # default 0.0
    assert cli("run", str(path), "--config", str(config), env=env).exit_code == 0
    # Relative to the config file, not to the working directory.
    assert json.loads((conf_dir / "out" / "report.json").read_text())["rows_read"] == 4
    flag = ["--max-error-rate", "0", "--report", str(tmp_path / "r.json")]
    assert cli("run", str(path), "--config", str(config), *flag, env=env).exit_code == 1


def test_config_with_columns_becomes_the_mapping_file(cli, fake_api, tmp_path, monkeypatch):
    seen = []
    real = importer.pipeline.import_file

    def spy(path, options=None, **kw):
        seen.append(options)
        return real(path, options, **kw)

    monkeypatch.setattr(importer.pipeline, "import_file", spy)
    path = write_csv(tmp_path / "c.csv", _rows(2))
    with_columns = _config(tmp_path, '[columns."email"]\ntarget = "email"\n')
    env = {"BLUESHIFT_API_KEY": API_KEY, "BLUESHIFT_BASE_URL": fake_api.url}
    assert cli("run", str(path), "--config", str(with_columns), env=env).exit_code == 0
    assert seen[-1].mapping_file == with_columns
    plain = tmp_path / "plain.toml"
    plain.write_text("rate = 100\n")
    assert cli("run", str(path), "--config", str(plain), env=env).exit_code == 0
    assert seen[-1].mapping_file is None and seen[-1].rate == 100.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rate = [", "not valid TOML"),
        ("speed = 5", "unknown option(s) 'speed'"),
        ("[settings]\nrate = 5", "unknown section [settings]"),
        ('rate = "fast"', "fast"),
    ],
)
def test_bad_config_is_exit_2(cli, tmp_path, text, message):
    path = write_csv(tmp_path / "c.csv", _rows(2))
    config = _config(tmp_path, text)
    result = cli("run", str(path), "--config", str(config), env={"BLUESHIFT_API_KEY": API_KEY})
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


# -- the API key never shows ------------------------------------------------------


def test_api_key_never_printed_even_at_debug(cli, make_fake_api, tmp_path):
    server = make_fake_api(api_key=SECRET)
    path = write_csv(tmp_path / "c.csv", _rows(60, missing_id=1))
    for fmt in ("text", "json"):
        result = cli(
            "-vv", "run", str(path), "--base-url", server.url, "--rate", "1000", "-vv",
            "--log-format", fmt, "--api-key", SECRET, "--report", str(tmp_path / f"{fmt}.json"),
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        assert SECRET not in result.output
        assert SECRET not in (tmp_path / f"{fmt}.json").read_text()
    assert len(server.state.applied) == 120


def test_secret_filter_masks_key_and_basic_auth_in_any_logger():
    import base64

    stream = io.StringIO()
    handler = setup_logging(2, "text", stream=stream)
    from importer.logs import secret_filter

    secret_filter.add(SECRET)
    try:
        auth = base64.b64encode(f"{SECRET}:".encode()).decode()
        logging.getLogger("importer.sending").debug("key %s header Basic %s", SECRET, auth)
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError:
            logging.getLogger("importer.x").exception("boom")
    finally:
        logging.getLogger("importer").removeHandler(handler)
        logging.getLogger("importer").setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert SECRET not in text and auth not in text
    assert "key *** header Basic ***" in text and "bad ***" in text
    assert SecretFilter().mask(SECRET) == SECRET  # nothing registered: unchanged


# -- the library prints nothing ------------------------------------------------------


def test_library_prints_nothing_and_raises_typed_errors(fake_api, tmp_path):
    # In a fresh interpreter: pytest's own log capture would hide a stray print to stderr.
    path = tmp_path / "latin.csv"
    path.write_bytes("email,city\nzoe@example.com,Montr\xe9al\n".encode("cp1252"))
    script = f"""
import sys
from importer import ImportOptions, InputUnreadable, UsageError, import_file
options = ImportOptions(api_key={API_KEY!r}, base_url={fake_api.url!r}, rate=1000)
report = import_file({str(path)!r}, options)  # logs a warning: the encoding was guessed
assert report.succeeded == 1, report
try:
    import_file({str(tmp_path / "missing.csv")!r}, options)
except InputUnreadable:
    pass
try:
    ImportOptions(rate=-1)
except UsageError:
    pass
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    assert [c["email"] for c in fake_api.state.applied] == ["zoe@example.com"]


# -- honest progress: -v, timestamps, dry runs, counts that add up ------------------------

ISO_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (INFO|WARNING|ERROR|DEBUG) ")


def test_verbose_logs_one_timestamped_line_per_retry_and_split(cli, make_fake_api, tmp_path):
    server = make_fake_api(faults={503: 0.3}, seed=11)
    rows = _rows(400)
    path = write_csv(tmp_path / "c.csv", rows)
    report_path = tmp_path / "r.json"
    result = _run(
        cli, server, path, "-v", "--max-backoff", "0.01", "--status-every", "0",
        "--report", str(report_path), "--batch-size", "50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    retries = [line for line in result.stderr.splitlines() if "; retry " in line]
    assert report["retries"] > 0 and len(retries) == report["retries"]
    assert all(ISO_LINE.match(line) and "HTTP 503" in line for line in retries), retries[:3]
    assert not any("@example.com" in line for line in result.stderr.splitlines())
    # Without -v, none of them.
    quiet_run = _run(cli, server, path, "--max-backoff", "0.01", "--status-every", "0")
    assert "; retry " not in quiet_run.stderr


def test_verbose_logs_a_line_per_split(caplog, make_fake_api, tmp_path):
    from importer import import_file

    from .conftest import fast_options

    server = make_fake_api(max_customers=10)
    path = write_csv(tmp_path / "c.csv", _rows(40))
    with caplog.at_level(logging.INFO, logger="importer"):
        report = import_file(path, fast_options(server, batch_size=40))
    splits = [r.getMessage() for r in caplog.records if "splitting" in r.getMessage()]
    assert report.splits > 0 and len(splits) == report.splits
    assert splits[0].endswith("HTTP 413; splitting 40 records in two")


def test_a_dry_run_reports_no_achieved_rate(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(120))
    report_path = tmp_path / "r.json"
    result = cli("run", str(path), "--dry-run", "--no-state", "--report", str(report_path))
    assert result.exit_code == 0, result.output
    assert json.loads(report_path.read_text())["achieved_rate"] is None
    requests_line = next(line for line in result.stdout.splitlines() if "requests" in line)
    assert "achieved" not in requests_line


def test_dropped_fields_and_rejected_rows_are_counted_apart(cli, fake_api, tmp_path):
    rows = [
        {"email": "a@example.com", "phone": "not a phone", "gender": "robot"},
        {"email": "", "phone": "", "gender": ""},
        {"email": "b@example.com", "phone": "", "gender": ""},
    ]
    path = write_csv(tmp_path / "c.csv", rows)
    report_path, rejects = tmp_path / "r.json", tmp_path / "rejects.csv"
    result = _run(
        cli, fake_api, path, "--report", str(report_path), "--rejects", str(rejects),
        "--max-error-rate", "0.5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert (report["succeeded"], report["rejected"], report["dropped_fields"]) == (2, 1, 2)
    assert sum(report["reject_reasons"].values()) == report["rejected"]
    reasons = report["dropped_field_reasons"].values()
    dropped = sum(n for by_reason in reasons for n in by_reason.values())
    assert dropped == report["dropped_fields"]
    lines = rejects.read_text().splitlines()[1:]
    assert len(lines) == report["rejected"] + report["dropped_fields"]
    assert "  rejected         1" in result.stdout
    assert "  fields dropped   2 (invalid values left out of rows sent)" in result.stdout
