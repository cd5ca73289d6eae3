"""Docs that check themselves: every command has help with an example and is in the README;
the README documents every exit code and every key of the JSON report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from importer import cli as cli_module
from importer.cli import main
from importer.outcomes import ImportReport

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under ``group``, sub-groups included (commands added later too)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = (*prefix, name)
        yield path
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None
        command = found
    return command


COMMANDS = sorted(_commands(main))


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_docs_found_the_commands():
    assert {("run",), ("fake-api",), ("init-config",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_docs_every_command_has_help_with_an_example(cli, path):
    command = _command(path)
    assert command.help and command.help.strip(), f"{' '.join(path)} has no help text"
    result = cli(*path, "--help")
    assert result.exit_code == 0
    assert re.search(r"^\s*Examples?:\s*$", result.stdout, re.M), result.stdout
    assert "blueshift-import " + " ".join(path) in result.stdout


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_docs_every_command_is_in_the_readme(path):
    assert "blueshift-import " + " ".join(path) in README


def test_docs_readme_lists_every_exit_code():
    table = _section("Exit codes")
    codes = sorted({value for name, value in vars(cli_module).items() if name.startswith("EXIT_")})
    assert codes == [0, 1, 2, 3, 130, 143]
    for code in codes:
        assert re.search(rf"^\| [^|]*\b{code}\b[^|]* \|", table, re.M), f"exit code {code}"


def test_docs_readme_report_schema_names_every_key():
    schema = _section("Report schema")
    report = ImportReport(source="x")
    for key in report.to_dict():
        assert f"`{key}`" in schema, f"report key {key!r} is not documented"


def test_docs_readme_order_follows_what_users_ask_first():
    headings = re.findall(r"^## (.+)$", README, re.M)
    wanted = [
        "Importing into Blueshift",
        "Columns and cleaning",
        "What happens to each row",
        "Running nightly",
        "Resuming after a crash",
        "Performance",
        "Troubleshooting by HTTP status",
    ]
    positions = [headings.index(h) for h in wanted]
    assert positions == sorted(positions), headings
    assert README.index("make demo") < README.index("## ")


def _options(command: click.Command) -> Iterator[str]:
    for param in command.params:
        yield from (*param.opts, *param.secondary_opts)
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None
            yield from _options(sub)


def test_docs_every_option_the_readme_names_exists(capsys):
    from benchmarks import bench_cleaning, bench_http_floor
    from benchmarks.run import run_benchmark

    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", README))
    known = {*_options(main), "--help", "--check"}  # --check: `ruff format --check`
    for entry in (run_benchmark, bench_cleaning.main, bench_http_floor.main):
        with pytest.raises(SystemExit):
            entry(["--help"])
        known |= set(re.findall(r"--[a-z][a-z0-9-]*", capsys.readouterr().out))
    assert named <= known, f"the README names options nothing has: {sorted(named - known)}"
