"""Docs that check themselves: every command has help with an example and is in the README;
the README documents every exit code and every option, docs/REPORT.md every key of the JSON report.

The README's options table is generated from the option fields
(:func:`options_table`), its presets table and docs/PLATFORMS.md from the
preset files (:func:`presets_table`, :func:`platforms_doc`);
``UPDATE_README=1 python -m pytest tests/test_docs.py`` rewrites them in place
instead of failing when they are out of date.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from importer import cli as cli_module
from importer.cli import main
from importer.mapping import ColumnSpec
from importer.options import SECTIONS, cli_default, cli_fields, flag_name, spec_of
from importer.outcomes import ImportReport
from importer.presets import Preset, load_preset, preset_names

README_PATH = Path(__file__).resolve().parent.parent / "README.md"
README = README_PATH.read_text(encoding="utf-8")


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
    """The README's text under the heading ``title`` (## or ###), up to the next one as high."""
    match = re.search(rf"^(##+) {re.escape(title)}\n", README, re.M)
    assert match, f"README has no '## {title}' section"
    level = len(match.group(1))
    end = re.compile(rf"^#{{2,{level}}} ", re.M).search(README, match.end())
    return README[match.end() : end.start() if end else len(README)]


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
    assert codes == [0, 1, 2, 3, 4, 130, 143]
    for code in codes:
        assert re.search(rf"^\| [^|]*\b{code}\b[^|]* \|", table, re.M), f"exit code {code}"


def test_docs_report_schema_names_every_key():
    schema = (README_PATH.parent / "docs" / "REPORT.md").read_text(encoding="utf-8")
    assert "docs/REPORT.md" in _section("Outputs")
    report = ImportReport(source="x")
    for key in report.to_dict():
        assert f"`{key}`" in schema, f"report key {key!r} is not documented"


def test_docs_readme_order_follows_what_users_ask_first():
    headings = re.findall(r"^## (.+)$", README, re.M)
    wanted = [
        "Importing",
        "Columns and cleaning",
        "Outputs",
        "Exit codes",
        "Resume and nightly runs",
        "Configuration",
        "Options",
        "Library use",
    ]
    positions = [headings.index(h) for h in wanted]
    assert positions == sorted(positions), headings
    assert README.index("make demo") < README.index("## ")
    assert README.index("make test") < README.index("## ")


OPTIONS_START, OPTIONS_END = "<!-- options:start -->", "<!-- options:end -->"
SECTION_TITLES = {
    "connection": "Connection",
    "pace": "Pace and retries",
    "input": "Input",
    "cleaning": "Mapping and cleaning",
    "state": "State",
    "outputs": "Outputs",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(f: dataclasses.Field[object]) -> str:
    value = cli_default(f)
    if value is None or value is False or value == ():
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def options_table() -> str:
    """The README's options table: every command-line option field, a section at a time."""
    lines = ["| option | default | environment | meaning |", "| --- | --- | --- | --- |"]
    for section in SECTIONS:
        lines.append(f"| **{SECTION_TITLES.get(section, section)}** | | | |")
        for f in cli_fields(section):
            m = spec_of(f)
            flag = flag_name(f) + (f" {m.metavar}" if m.metavar else "")
            env = f"`{m.env}`" if m.env else ""
            meaning = m.help
            if m.choices:
                meaning += " One of " + ", ".join(f"`{c}`" for c in m.choices) + "."
            cells = [f"`{_cell(flag)}`", _default(f), env, _cell(meaning)]
            lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n".join(lines)


def test_docs_readme_options_table_matches_the_option_fields():
    _generated(README_PATH, "\n" + options_table() + "\n", OPTIONS_START, OPTIONS_END)


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


def test_docs_readme_stays_a_manual():
    size = len(README.encode("utf-8"))
    assert size <= 20_000, (
        f"README.md is {size} bytes; keep the user's manual within 20,000 "
        "(internals belong in docs/ARCHITECTURE.md, figures in benchmarks/README.md)"
    )


def test_docs_every_markdown_file_named_exists():
    root = README_PATH.parent
    sources = [README_PATH, *root.glob("docs/*.md"), *root.glob("benchmarks/*.md")]
    sources += [*root.glob("importer/**/*.py"), *root.glob("benchmarks/*.py")]
    for source in sources:
        for name in re.findall(r"[\w./-]+\.md\b", source.read_text(encoding="utf-8")):
            assert (root / name).is_file() or (source.parent / name).is_file(), (
                f"{source.relative_to(root)} names {name}, which does not exist"
            )


PRESETS_START, PRESETS_END = "<!-- presets:start -->", "<!-- presets:end -->"
PLATFORMS_PATH = README_PATH.parent / "docs" / "PLATFORMS.md"


def _column(preset: Preset, target: str) -> tuple[str, ColumnSpec] | None:
    return next(((c, s) for c, s in preset.columns.items() if s.target == target), None)


def _joined(preset: Preset) -> str:
    """The columns feeding ``joined_at`` (one file has one of them)."""
    return ", ".join(f"`{c}`" for c, s in preset.columns.items() if s.target == "joined_at")


def _identifier(preset: Preset) -> str:
    found = _column(preset, "customer_id")
    if found:
        return f"`{found[0]}`"
    if preset.record_id:
        kept = preset.columns[preset.record_id].target
        return f"(`{preset.record_id}` → `{kept}`)"
    return ""


def _consent(preset: Preset) -> str:
    """Which column says ``unsubscribed``, and which of its values mean true."""
    found = _column(preset, "unsubscribed")
    if not found:
        return ""
    column, spec = found
    if spec.invert:
        return f"not `{column}`"
    if spec.values:
        true = [v for v, to in spec.values.items() if to is True]
        return f"`{column}` " + ("set" if true == ["*"] else " ".join(true))
    return f"`{column}`"


def presets_table() -> str:
    """The README's table of platform presets, one line each, from the preset files."""
    lines = [
        "| preset | `customer_id` | `joined_at` | `unsubscribed` if |",
        "| --- | --- | --- | --- |",
    ]
    for preset in map(load_preset, preset_names()):
        cells = [
            f"`{preset.name}`",
            _identifier(preset),
            _joined(preset),
            _consent(preset),
        ]
        lines.append("|" + "|".join(f" {c} " if c else " " for c in cells) + "|")
    return "\n".join(lines)


def _summary(preset: Preset) -> str:
    """docs/PLATFORMS.md's list of what ``preset`` maps."""
    own = _column(preset, "customer_id")
    lines = [
        "detected by " + ", ".join(f"`{c}`" for c in preset.detect),
        "`customer_id`: " + (f"`{own[0]}`" if own else "none, e-mail only"),
        "`joined_at`: " + (_joined(preset) or "none"),
        "`unsubscribed` true if: " + (_consent(preset) or "none"),
    ]
    if preset.record_id:
        kept = preset.columns[preset.record_id].target
        lines.append(
            f"`{preset.record_id}`, the platform's record id, kept as `{kept}` "
            f'(`--map "{preset.record_id}=customer_id"` makes it the identifier); rows sharing '
            "an e-mail but not it are merged into one profile, each listed as `conflict`"
        )
    for column, spec in preset.columns.items():
        if spec.split:
            lines.append(f"`{column}` → `{spec.target}`, a list split on `{spec.split}`")
        elif spec.values and spec.target != "unsubscribed":
            pairs = ", ".join(f"{k} → {v}" for k, v in spec.values.items())
            lines.append(f"`{column}` → `{spec.target}`: {pairs}")
    return "".join(f"- {line}\n" for line in lines)


def platforms_doc() -> str:
    """docs/PLATFORMS.md: a section per preset, what it maps and its file as shipped."""
    parts = [
        "# Platform presets\n\n"
        "Generated from `importer/presets/*.toml` by `tests/test_docs.py`\n"
        "(`UPDATE_README=1` rewrites it). A preset applies when the input's\n"
        "header has all its `detect` columns (in any case), or by `--preset NAME`;\n"
        "each is a "
        "mapping file ([MAPPING.md](MAPPING.md)) that\n"
        "`blueshift-import presets show NAME` prints for you to copy and adapt.\n"
        "Columns it does not name are matched by header as in any file: phones\n"
        "(mobile first), the country phones are read in, names, e-mail.\n"
    ]
    for preset in map(load_preset, preset_names()):
        parts.append(
            f"\n## {preset.name}\n\n{preset.description}:\n\n{_summary(preset)}\n"
            f"```toml\n{preset.text.rstrip()}\n```\n"
        )
    return "".join(parts)


def _generated(path: Path, expected: str, start: str = "", end: str = "") -> None:
    """Fail (or with UPDATE_README, rewrite the file) when ``path``'s text between the
    markers ``start`` and ``end`` (no markers: all of it) is not ``expected``."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    a = text.index(start) + len(start) if start else 0
    b = text.index(end) if end else len(text)
    if text[a:b] == expected:
        return
    if os.environ.get("UPDATE_README"):
        path.write_text(text[:a] + expected + text[b:], encoding="utf-8")
        return
    pytest.fail(
        f"{path.name} is out of date; run UPDATE_README=1 python -m pytest tests/test_docs.py, "
        "or paste:\n" + expected
    )


def test_docs_readme_presets_table_matches_the_preset_files():
    _generated(README_PATH, "\n" + presets_table() + "\n", PRESETS_START, PRESETS_END)
    section = _section("Platform exports")
    for name in preset_names():
        assert f"| `{name}` |" in section, f"preset {name} is not in the README"


def test_docs_platforms_doc_has_a_section_per_preset():
    _generated(PLATFORMS_PATH, platforms_doc())
    assert "docs/PLATFORMS.md" in _section("Platform exports")
