"""The rejects file: the rejected rows as read, in the input's format, fixed and imported again."""

from __future__ import annotations

import csv
import shlex
import stat
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from importer import import_file
from importer.errors import UsageError
from importer.outcomes import REJECTS_COLUMNS, ImportReport, neutralise_formula, restore_formula
from importer.progress import fix_command

from .conftest import API_KEY, fast_options, stop_after, write_csv

HEADER = ["email", "customer_id", "Phone", "zip", "note", "loyalty_points"]


def _rows() -> list[list[str]]:
    """30 good rows, 5 rejected (an email written with (at), no customer_id) whose cells a
    spreadsheet would run as formulas, and 3 sent without their too-short phone."""
    good = [
        [f"u{i}@x.io", f"C{i}", f"+44 20 7946 0{i:03d}", f"0{i:04d}", "plain", str(i)]
        for i in range(30)
    ]
    bad = [
        [f"r{i}(at)x.io", "", f"+44 20 7946 1{i:03d}", "00123", f"=1+{i}", f"-{i}"]
        for i in range(5)
    ]
    dropped = [[f"d{i}@x.io", f"D{i}", "12", "00042", "plain", "1"] for i in range(3)]
    return good + bad + dropped


def _applied(server) -> list[bytes]:
    return sorted(orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in server.state.applied)


def _fix_csv(path: Path) -> None:
    """What a user's script does: correct the e-mails, keep every other cell and column."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header, lines = reader.fieldnames, list(reader)
    for line in lines:
        line["email"] = line["email"].replace("(at)", "@")
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(lines)


def test_rejects_csv_fixed_by_a_script_delivers_exactly_those_rows(make_fake_api, tmp_path):
    first, again, direct = make_fake_api(), make_fake_api(), make_fake_api()
    path = write_csv(tmp_path / "customers.csv", _rows(), HEADER)
    rejects = tmp_path / "rejects.csv"
    report = import_file(path, fast_options(first, rejects_path=rejects))
    assert (report.succeeded, report.rejected, report.dropped_fields) == (33, 5, 3)

    with rejects.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == HEADER + list(REJECTS_COLUMNS)
    rejected = [line for line in lines if line["_outcome"] == "rejected"]
    # The row as read, line numbers of the input, the formula guard on cells a spreadsheet runs.
    assert [(r["_line"], r["note"], r["loyalty_points"], r["zip"]) for r in rejected] == [
        (str(32 + i), f"'=1+{i}", f"'-{i}", "00123") for i in range(5)
    ]
    assert rejected[0]["Phone"] == "'+44 20 7946 1000"
    assert [line["_column"] for line in lines if line["_outcome"] == "field dropped"] == [
        "Phone"
    ] * 3

    _fix_csv(rejects)
    report = import_file(rejects, fast_options(again, rejects_path=tmp_path / "r2.csv"))
    # Only the fixed rows are sent; the rows already sent with a field dropped are skipped.
    assert (report.succeeded, report.rejected, report.already_done) == (5, 0, 3)
    assert report.accounting_ok and not (tmp_path / "r2.csv").exists()

    corrected = [[r[0].replace("(at)", "@"), *r[1:]] for r in _rows()[30:35]]
    import_file(write_csv(tmp_path / "fixed.csv", corrected, HEADER), fast_options(direct))
    assert _applied(again) == _applied(direct)
    received = again.state.applied
    assert all(not key.startswith("_") for c in received for key in c)
    assert sorted(c["note"] for c in received) == [f"=1+{i}" for i in range(5)]
    assert {c["zip"] for c in received} == {"00123"}
    assert all(c["phone_number"].startswith("+44207946") for c in received)


def test_rejects_keep_the_exports_own_identifier_guard_and_strip_it_on_import(
    make_fake_api, tmp_path
):
    first, again = make_fake_api(), make_fake_api()
    path = write_csv(
        tmp_path / "shopify.csv",
        [["'6812909554841", "x(at)y.io", "+1-x"]],
        ["Customer ID", "Email", "Note"],
    )
    rejects = tmp_path / "rejects.csv"
    options = {"on_invalid": "skip-row", "rejects_path": rejects}
    assert import_file(path, fast_options(first, **options)).rejected == 1
    with rejects.open(newline="") as f:
        (line,) = csv.DictReader(f)
    assert (line["Customer ID"], line["Note"]) == ("'6812909554841", "'+1-x")
    _fix_csv_column(rejects, "Email")
    import_file(
        rejects, fast_options(again, on_invalid="skip-row", rejects_path=tmp_path / "r2.csv")
    )
    assert again.state.applied == [
        {"customer_id": "6812909554841", "email": "x@y.io", "note": "+1-x"}
    ]


def _fix_csv_column(path: Path, column: str) -> None:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, lines = reader.fieldnames, list(reader)
    for line in lines:
        line[column] = line[column].replace("(at)", "@")
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(lines)


def test_rejects_jsonl_keep_the_rows_keys_and_values_and_import_again(make_fake_api, tmp_path):
    first, again, direct = make_fake_api(), make_fake_api(), make_fake_api()
    good = [{"email": f"u{i}@x.io", "customer_id": f"C{i}", "points": i} for i in range(10)]
    bad = [
        {
            "email": "r1(at)x.io",
            "points": 7,
            "tags": ["x", "y"],
            "vip": None,
            "address": {"city": "Oslo"},
        },
        {"email": "r2(at)x.io", "score": 1.5, "note": "=SUM(A1)"},
    ]
    dropped = [{"email": "d@x.io", "customer_id": "D1", "phone_number": "12"}]
    path = tmp_path / "customers.jsonl"
    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in good + bad + dropped))
    rejects = tmp_path / "rejects.jsonl"
    report = import_file(path, fast_options(first, rejects_path=rejects))
    assert (report.rejected, report.dropped_fields) == (2, 1)

    lines = [orjson.loads(line) for line in rejects.read_bytes().splitlines()]
    extras = set(REJECTS_COLUMNS)
    # Exactly the keys each row had (no key of another row), values as read, not guarded.
    assert [{k: v for k, v in line.items() if k not in extras} for line in lines] == bad + dropped
    assert [(line["_line"], line["_outcome"]) for line in lines] == [
        (11, "rejected"), (12, "rejected"), (13, "field dropped")
    ]  # fmt: skip

    fixed = [{**line, "email": line["email"].replace("(at)", "@")} for line in lines]
    rejects.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in fixed))
    report = import_file(rejects, fast_options(again, rejects_path=tmp_path / "r2.jsonl"))
    assert (report.succeeded, report.rejected, report.already_done) == (2, 0, 1)

    corrected = tmp_path / "fixed.jsonl"
    corrected.write_bytes(
        b"".join(orjson.dumps({**o, "email": o["email"].replace("(at)", "@")}) + b"\n" for o in bad)
    )
    import_file(corrected, fast_options(direct))
    assert _applied(again) == _applied(direct)
    assert all(not key.startswith("_") for c in again.state.applied for key in c)


def test_rejects_of_parquet_are_jsonl_and_import_again(make_fake_api, tmp_path):
    first, again = make_fake_api(), make_fake_api()
    path = tmp_path / "c.parquet"
    table = pa.table({"email": ["a@x.io", "b(at)x.io"], "points": pa.array([1, 2], pa.int64())})
    pq.write_table(table, path)
    report = import_file(path, fast_options(first, report_path=tmp_path / "out" / "report.json"))
    rejects = Path(report.files["rejects"])
    assert rejects.parent == tmp_path / "out" and rejects.name.startswith("c.rejects-")
    assert rejects.suffix == ".jsonl"
    (line,) = [orjson.loads(x) for x in rejects.read_bytes().splitlines()]
    assert (line["email"], line["points"]) == ("b(at)x.io", 2)
    rejects.write_bytes(orjson.dumps({**line, "email": "b@x.io"}) + b"\n")
    import_file(rejects, fast_options(again))
    assert again.state.applied == [{"email": "b@x.io", "points": 2}]


def test_rejects_named_for_the_other_format_are_refused(fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(), HEADER)
    with pytest.raises(UsageError, match="name it r.csv"):
        import_file(path, fast_options(fake_api, rejects_path=tmp_path / "r.jsonl"))
    with pytest.raises(UsageError, match="is the input"):
        import_file(path, fast_options(fake_api, rejects_path=path, overwrite=True))
    assert path.exists()


def test_default_rejects_file_only_when_needed_private_and_named_in_the_summary(
    cli, fake_api, tmp_path
):
    env = {"BLUESHIFT_API_KEY": API_KEY}
    clean = write_csv(tmp_path / "clean.csv", _rows()[:30], HEADER)
    result = cli("run", str(clean), "--base-url", fake_api.url, "--rate", "1000", env=env)
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("*.rejects-*"))

    path = write_csv(tmp_path / "c.csv", _rows(), HEADER)
    args = ["run", str(path), "--base-url", fake_api.url, "--rate", "1000", "--strict"]
    first = cli(*args, env=env)
    second = cli(*args, env=env)  # a second night in the same directory does not collide
    assert (first.exit_code, second.exit_code) == (1, 1), second.output
    files = sorted(tmp_path.glob("c.rejects-*.csv"))
    assert len(files) == 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    (summary,) = [line for line in first.stdout.splitlines() if "fix them and run" in line]
    name = summary.split("rejects written to ", 1)[1].split(";")[0]
    assert Path(name) in [f.relative_to(tmp_path) for f in files]
    assert f"8 rows rejected (never sent) → rejects written to {name}; fix them and run:" in summary
    command = shlex.split(summary.split("fix them and run: ", 1)[1])
    # The command repeats the API's address and the cleaning options; it works as printed.
    assert command[:3] == ["blueshift-import", "run", name] and "--on-invalid" in command
    _fix_csv(Path(name))
    fake_api.state.applied.clear()
    fixed = cli(*command[1:], env=env)
    # The three rows with a short phone stay rejected (the script fixed only e-mails).
    assert len(fake_api.state.applied) == 5, fixed.output
    assert {c["email"] for c in fake_api.state.applied} == {f"r{i}@x.io" for i in range(5)}


def test_validate_writes_the_default_rejects_file(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", _rows(), HEADER)
    result = cli("validate", str(path))
    assert result.exit_code == 1
    (rejects,) = tmp_path.glob("c.rejects-*.csv")
    assert f"rejects: {rejects.name}" in result.stdout
    with rejects.open(newline="") as f:
        assert sum(line["_outcome"] == "rejected" for line in csv.DictReader(f)) == 5


def test_resumed_run_goes_on_in_its_default_rejects_file(make_fake_api, tmp_path):
    rows = [[f"u{i}@x.io" if i % 10 else f"bad{i}", "", "", "", "", ""] for i in range(3_000)]
    path = write_csv(tmp_path / "c.csv", rows, HEADER)
    first, second = make_fake_api(), make_fake_api()
    stop, observer = stop_after(300)

    state = tmp_path / "state.sqlite"
    options = fast_options(first, state_path=state, chunk_rows=500, rate=50.0)
    report = import_file(path, options, observer=observer, stop=stop)
    assert report.stopped == "interrupted"
    rejects = Path(report.files["rejects"])
    report = import_file(path, fast_options(second, state_path=state, chunk_rows=500, resume=True))
    assert Path(report.files["rejects"]).resolve() == rejects.resolve()
    assert [p.resolve() for p in tmp_path.glob("c.rejects-*")] == [rejects.resolve()]
    with rejects.open(newline="") as f:
        lines = [int(line["_line"]) - 1 for line in csv.DictReader(f)]
    assert lines == list(range(1, 3_001, 10))  # each rejected row once, in order


def test_formula_guard_round_trips_every_cell():
    for cell in ["=1", "+1", "-1", "@a", "\tx", "'=1", "''+1", "'6812", "plain", "", "'"]:
        assert restore_formula(neutralise_formula(cell)) == cell


def test_rejects_rows_are_read_again_as_the_whole_file_was(make_fake_api, tmp_path):
    """A few rows may not show what the file showed: "5" in a text column, 02/03 day first."""
    first, again = make_fake_api(), make_fake_api()
    rows = [[f"u{i}@x.io", f"{13 + i}/03/2021", "call me", "1.5"] for i in range(10)]
    rows.append(["r(at)x.io", "02/03/2021", "5", "7"])
    path = write_csv(tmp_path / "c.csv", rows, ["email", "joined_at", "note", "score"])
    report = import_file(path, fast_options(first, rejects_path=tmp_path / "r.csv"))
    assert shlex.split(fix_command(report) or "") == [
        "blueshift-import",
        "run",
        str(tmp_path / "r.csv"),
    ]
    _fix_csv(tmp_path / "r.csv")
    report = import_file(tmp_path / "r.csv", fast_options(again))
    assert again.state.applied == [
        {"email": "r@x.io", "joined_at": "2021-03-02", "note": "5", "score": 7.0}
    ]
    assert report.date_orders == {"joined_at": {"order": "day-first", "decided_by": "file"}}


def test_rejects_columns_never_sent_even_when_the_user_deleted_some(make_fake_api, tmp_path):
    first, again = make_fake_api(), make_fake_api()
    path = write_csv(tmp_path / "c.csv", _rows(), HEADER)
    rejects = tmp_path / "r.csv"
    import_file(path, fast_options(first, rejects_path=rejects, on_invalid="skip-row"))
    with rejects.open(newline="") as f:
        lines = [
            {k: v for k, v in line.items() if k not in ("_outcome", "_column", "_value")}
            for line in csv.DictReader(f)
        ]
    write_csv(rejects, lines)
    _fix_csv(rejects)
    report = import_file(rejects, fast_options(again, rejects_path=tmp_path / "r2.csv"))
    assert report.succeeded == 8 and report.rejected == 0
    assert all(set(c) <= {"email", "customer_id", "phone_number", "zip", "note", "loyalty_points"}
               for c in again.state.applied)  # fmt: skip


def test_achieved_rate_is_the_pace_between_the_first_and_last_request():
    # Six requests one every 0.2 s take 1 s from the first to the last: 5/s, not 6/s.
    report = ImportReport(source="c.csv")
    report.requests, report.first_request_s, report.last_request_s = 6, 0.1, 1.1
    report.finish()
    assert report.achieved_rate == 5.0
    one = ImportReport(source="c.csv")
    one.requests, one.first_request_s, one.last_request_s = 1, 0.1, 0.1
    one.finish()
    assert one.achieved_rate is None
