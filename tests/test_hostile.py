"""The CLI on hostile files: no traceback, a clear outcome, no secret, balanced counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .hostile.generate import CASES, Case, generate

SECRET = "sk-live-HOSTILE-9f8e7d6c5b4a"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return {case.file: path for case, path in generate(tmp_path_factory.mktemp("hostile"))}


@pytest.fixture
def api(make_fake_api):
    return make_fake_api(api_key=SECRET)


def _args(case: Case, path: Path, out: Path, url: str) -> list[str]:
    return [
        "run",
        str(path),
        "--base-url",
        url,
        "--rate",
        "1000",
        "--max-retries",
        "0",
        "--report",
        str(out / "report.json"),
        "--rejects",
        # Rejects are written in the input's format.
        str(out / ("rejects.jsonl" if ".jsonl" in case.file else "rejects.csv")),
        "--dead-letter",
        str(out / "dead.jsonl"),
        *case.options,
    ]


def _check(case: Case, code: int, stdout: str, stderr: str, out: Path) -> None:
    expected = case.exit_code if isinstance(case.exit_code, tuple) else (case.exit_code,)
    assert code in expected, f"{case.name}: exit {code}\n{stdout}\n{stderr}"
    assert "Traceback" not in stdout + stderr
    assert SECRET not in stdout + stderr
    for written in out.rglob("*"):
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written
    if code == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, stderr
        assert not stdout.strip()
        return
    assert "(balanced)" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["accounting"]["balanced"] is True
    failed = report["rejected"] + report["dead_lettered"]
    assert code == (1 if failed else 0), f"{case.name}: exit {code} with {failed} failures"


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_hostile_file_in_process(cli, api, corpus, tmp_path, case):
    result = cli(
        *_args(case, corpus[case.file], tmp_path, api.url), env={"BLUESHIFT_API_KEY": SECRET}
    )
    _check(case, result.exit_code, result.stdout, result.stderr, tmp_path)


SUBPROCESS_CASES = ("garbage.csv", "truncated.csv.gz", "wide.csv", "deep.jsonl", "directory.csv")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_hostile_file_subprocess(api, corpus, tmp_path, name):
    case = next(c for c in CASES if c.file == name)
    env = {**os.environ, "BLUESHIFT_API_KEY": SECRET}
    proc = subprocess.run(
        [sys.executable, "-m", "importer", "-vv", *_args(case, corpus[name], tmp_path, api.url)],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.getcwd(),
        timeout=120,
    )
    _check(case, proc.returncode, proc.stdout, proc.stderr, tmp_path)


def test_hostile_rows_land_where_expected(cli, api, corpus, tmp_path):
    """Spot checks that the right rows were refused, with their line numbers."""
    case = next(c for c in CASES if c.file == "big_field.csv")
    result = cli(
        *_args(case, corpus[case.file], tmp_path, api.url), env={"BLUESHIFT_API_KEY": SECRET}
    )
    assert result.exit_code == 1
    assert len(api.state.applied) == 20
    rejects = (tmp_path / "rejects.csv").read_text().splitlines()
    assert len(rejects) == 2 and ",2,rejected," in rejects[1]
    assert "longer than" in rejects[1]
