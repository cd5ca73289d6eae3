"""The ``blueshift-import`` command against the fake API over loopback HTTP."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import orjson

from .conftest import API_KEY

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"


def _sample_rows(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def _sample_identifiers(path: Path) -> tuple[set[str], list[int], list[int]]:
    """Customer ids of sample rows with an identifier, and record numbers of rows
    without one and of rows whose email has no @-sign (they all have a customer id)."""
    ids, missing, bad_email = set(), [], []
    for n, row in enumerate(_sample_rows(path), start=1):
        email = row.get("Email Address", "").strip()
        if not row.get("Customer ID", "").strip() and not email:
            missing.append(n)
            continue
        if email and "@" not in email:
            bad_email.append(n)
        ids.add(row["Customer ID"])
    return ids, missing, bad_email


def _run_sample(cli, fake_api, tmp_path: Path, name: str):
    sample = SAMPLES / name
    result = cli(
        "run",
        str(sample),
        "--base-url",
        fake_api.url,
        "--rate",
        "500",
        "--rejects",
        str(tmp_path / f"rejects.{sample.suffix[1:]}"),  # in the input's format
        "--dead-letter",
        str(tmp_path / "dead.jsonl"),
        "--report",
        str(tmp_path / "report.json"),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )
    return sample, result


def test_cli_imports_sample_files_each_valid_customer_once(cli, fake_api, tmp_path):
    for name in ("customers.csv", "customers.jsonl"):
        fake_api.state.applied.clear()
        out = tmp_path / name
        out.mkdir()
        sample, result = _run_sample(cli, fake_api, out, name)
        assert result.exit_code in (0, 1), result.output
        ids, missing, bad_email = _sample_identifiers(sample)
        assert bad_email, "the sample should contain malformed emails"
        received = [c["customer_id"] for c in fake_api.state.applied]
        assert len(received) == len(set(received)), "a customer arrived twice"
        # Phones are normalised and a bad email is dropped: every identified customer arrives.
        assert set(received) == ids
        assert all(
            re.fullmatch(r"\+[1-9]\d{4,12}", c.get("phone_number", "+10000"))
            for c in fake_api.state.applied
        )
        assert not (out / "dead.jsonl").exists()  # nothing dead-lettered: no empty file
        if name.endswith(".csv"):
            with (out / "rejects.csv").open(newline="") as f:
                rejects = [(int(r["_line"]) - 1, r) for r in csv.DictReader(f)]
        else:
            rows = (out / "rejects.jsonl").read_bytes().splitlines()
            rejects = [(r["_line"], r) for r in map(json.loads, rows)]
        lines = {n: (r["_outcome"], r["_reason"]) for n, r in rejects}
        assert sorted(lines) == sorted(missing + bad_email)
        missing_line = ("rejected", "missing identifier: no email or customer_id")
        assert all(lines[n] == missing_line for n in missing)
        assert all(lines[n][0] == "field dropped" for n in bad_email)
        assert all(lines[n][1].startswith("invalid email") for n in bad_email)
        report = json.loads((out / "report.json").read_text())
        assert report["rows_read"] == len(ids) + len(missing)
        assert report["succeeded"] == len(received)
        assert report["rejected"] == len(missing)
        assert report["reject_reasons"] == {"missing identifier": len(missing)}
        assert report["dropped_fields"] == len(bad_email)
        dropped = {"Email Address": {"invalid email": len(bad_email)}}
        assert report["dropped_field_reasons"] == dropped
        assert report["dead_lettered"] == 0
        assert report["accounting"]["balanced"] is True
        assert "accounting" in result.stdout


def test_cli_mock_runs_without_credentials(cli, tmp_path):
    result = cli("run", str(SAMPLES / "customers.csv"), "--mock", "--rate", "500")
    assert result.exit_code in (0, 1), result.output
    assert "fake API received" in result.stderr
    assert "rows read        1000" in result.stdout


def test_cli_missing_file_is_one_line_exit_2(cli, tmp_path):
    result = cli("run", str(tmp_path / "nope.csv"), "--api-key", "k")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no such file" in result.stderr
    assert "Traceback" not in result.output


def test_cli_batch_size_over_50_is_usage_error(cli, tmp_path):
    result = cli("run", str(SAMPLES / "customers.csv"), "--api-key", "k", "--batch-size", "51")
    assert result.exit_code == 2
    assert "--batch-size must be between 1 and 50" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_cli_without_key_says_how_to_set_it(cli):
    result = cli("run", str(SAMPLES / "customers.csv"))
    assert result.exit_code == 2
    assert "BLUESHIFT_API_KEY" in result.stderr


def test_cli_unknown_format_exit_2(cli, tmp_path):
    path = tmp_path / "customers.xlsx"
    path.write_text("x")
    result = cli("run", str(path), "--api-key", "k")
    assert result.exit_code == 2
    assert "--format" in result.stderr


def test_cli_reads_stdin_with_format(cli, fake_api):
    data = "email,First Name\nA@Example.com,Ann\nb@example.com,Bob\n"
    result = cli(
        "run",
        "-",
        "--format",
        "csv",
        "--base-url",
        fake_api.url,
        "--rate",
        "100",
        env={"BLUESHIFT_API_KEY": API_KEY},
        input=data,
    )
    assert result.exit_code == 0, result.output
    assert sorted(c["email"] for c in fake_api.state.applied) == ["a@example.com", "b@example.com"]


def test_python_dash_m_importer_help():
    proc = subprocess.run(
        [sys.executable, "-m", "importer", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "blueshift-import" in proc.stdout
    assert "run" in proc.stdout and "fake-api" in proc.stdout


def test_validate_gives_the_verdict_of_run_dry_run_with_every_cleaning_option(cli, tmp_path):
    """validate takes --config, --map, --phone-region and --on-invalid like run does."""
    data = tmp_path / "people.csv"
    data.write_text(
        "Mail,Tel,Points\n"
        "a@example.com,020 7946 0958,1\n"  # a UK number: valid only with --phone-region GB
        "b@example.com,not a phone,2\n"  # drop-field keeps the row, skip-row rejects it
        ",,3\n",  # no identifier: rejected either way
        encoding="utf-8",
    )
    config = tmp_path / "import.toml"
    config.write_text('[columns."Points"]\ntarget = "loyalty_points"\ntype = "int"\n')
    args = [
        str(data),
        "--config",
        str(config),
        "--map",
        "Mail=email",
        "--map",
        "Tel=phone_number",
        "--phone-region",
        "GB",
        "--on-invalid",
        "drop-field",
        "--show",
        "5",
    ]
    checked = cli("validate", *args, "--report", str(tmp_path / "validate.json"))
    dry = cli("run", *args, "--dry-run", "--no-state", "--report", str(tmp_path / "dry.json"))
    assert checked.exit_code == dry.exit_code == 1
    verdicts = []
    for name in ("validate.json", "dry.json"):
        report = json.loads((tmp_path / name).read_text())
        verdicts.append(
            (report["rows_read"], report["rejected"], report["not_sent"], report["reject_reasons"])
        )
    assert verdicts[0] == verdicts[1] == (3, 1, 2, verdicts[0][3])
    payloads = [
        json.loads(line.strip()) for line in checked.stdout.splitlines() if line.startswith("  {")
    ]
    assert payloads[0] == {
        "email": "a@example.com",
        "phone_number": "+442079460958",
        "loyalty_points": 1,
    }
    assert payloads[1] == {"email": "b@example.com", "loyalty_points": 2}
    assert [line for line in dry.stdout.splitlines() if line.startswith("  {")] == [
        line for line in checked.stdout.splitlines() if line.startswith("  {")
    ]


def test_cli_forgiving_by_default_strict_rejects_the_row(cli, tmp_path):
    data = tmp_path / "people.csv"
    data.write_text("Email,Phone\na@example.com,not a phone\nb@example.com,\n", encoding="utf-8")
    strict_config = tmp_path / "strict.toml"
    strict_config.write_text("strict = true\n")
    verdicts = {}
    for name, extra in {
        "default": [],
        "strict": ["--strict"],
        "config": ["--config", str(strict_config)],
        "flag wins": ["--config", str(strict_config), "--on-invalid", "drop-field"],
    }.items():
        report_path = tmp_path / f"{len(verdicts)}.json"
        result = cli("validate", str(data), *extra, "--report", str(report_path))
        report = json.loads(report_path.read_text())
        verdicts[name] = (result.exit_code, report["rejected"], report["dropped_fields"])
    assert verdicts == {
        "default": (0, 0, 1),
        "strict": (1, 1, 0),
        "config": (1, 1, 0),
        "flag wins": (0, 0, 1),
    }
