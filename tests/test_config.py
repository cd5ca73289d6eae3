"""The TOML configuration file and the starter file ``init-config`` writes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from importer.cli import run
from importer.config import (
    ConfigFile,
    default_map,
    detect_starter_config,
    load_config,
    starter_config,
    toml_string,
)
from importer.errors import InputUnreadable, UsageError
from importer.mapping import parse_column_specs, resolve_mapping

from .conftest import API_KEY, write_csv


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_load_config_folds_keys_and_notes_columns(tmp_path):
    path = _write(
        tmp_path / "c.toml",
        'Dead-Letter = "dl.jsonl"\nmax_error_rate = 0.1\n[columns."E Mail"]\ntarget = "email"\n',
    )
    config = load_config(path)
    assert config.options == {"dead_letter": "dl.jsonl", "max_error_rate": 0.1}
    assert config.has_columns is True
    assert load_config(_write(tmp_path / "d.toml", "rate = 2\n")).has_columns is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rate = ", "not valid TOML"),
        ("[limits]\nrate = 1", "unknown section [limits]"),
        ("columns = 3", "must be a table"),
        ("max-retries = 1\nmax_retries = 2", "given twice"),
    ],
)
def test_load_config_refuses_bad_files(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(_write(tmp_path / "c.toml", text))


def test_load_config_missing_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_default_map_uses_option_and_parameter_names_and_resolves_paths(tmp_path):
    config = ConfigFile(
        tmp_path / "conf" / "import.toml",
        {
            "format": "jsonl",
            "dead_letter": "out/dl.jsonl",
            "report_path": "/abs/report.json",
            "map": "Mail=email",
            "drop": ["A", "B"],
            "rate": 2,
            "mock": True,
        },
    )
    result = default_map(config, run.params)
    assert result == {
        "format": "jsonl",
        "dead_letter_path": str(tmp_path / "conf" / "out" / "dl.jsonl"),
        "report_path": "/abs/report.json",
        "column_map": ["Mail=email"],
        "drop_columns": ["A", "B"],
        "rate": 2,
        "mock": True,
    }


def test_default_map_names_unknown_keys_and_the_known_ones(tmp_path):
    config = ConfigFile(tmp_path / "c.toml", {"speed": 5, "config": "other.toml"})
    with pytest.raises(UsageError) as info:
        default_map(config, run.params)
    message = str(info.value)
    assert "'speed'" in message and "'config'" in message
    assert "dead-letter" in message and "max-error-rate" in message


def test_config_warns_when_others_can_read_a_key(tmp_path):
    shared = load_config(_write(tmp_path / "a.toml", 'api_key = "x"\n', mode=0o644))
    assert any("chmod 600" in w for w in shared.warnings())
    private = load_config(_write(tmp_path / "b.toml", 'api_key = "x"\n', mode=0o600))
    assert private.warnings() == []
    assert load_config(_write(tmp_path / "c.toml", "rate = 1\n", mode=0o644)).warnings() == []


@given(st.text(max_size=30))
def test_toml_string_round_trips(text):
    assert tomllib.loads(f"k = {toml_string(text)}")["k"] == text


def test_starter_config_parses_and_holds_the_mapping(tmp_path):
    mapping = resolve_mapping(["E-Mail", 'Odd "name"\\', "Phone", "Notes"], drop=["Notes"])
    text = starter_config("my customers.csv", mapping, "csv")
    data = tomllib.loads(text)
    assert data["columns"] == {
        "E-Mail": {"target": "email"},
        'Odd "name"\\': {"target": "odd_name"},
        "Phone": {"target": "phone_number"},
        "Notes": {"drop": True},
    }
    assert data["format"] == "csv" and data["rate"] == 5 and data["region"] == "us"
    assert "api_key" not in data and "api-key" not in data
    # What it sets is accepted by `run`.
    config = load_config(_write(tmp_path / "import.toml", text))
    assert set(default_map(config, run.params)) == {
        "region",
        "rate",
        "format",
        "max_error_rate",
    }


def test_starter_config_never_holds_cell_values(tmp_path):
    path = write_csv(
        tmp_path / "c.csv",
        [{"Email Address": "secret.person@example.com", "Customer ID": "C-991", "Tier": "gold"}],
    )
    text = detect_starter_config(path)
    assert "secret.person" not in text and "C-991" not in text and "gold" not in text
    assert tomllib.loads(text)["columns"] == {
        "Email Address": {"target": "email"},
        "Customer ID": {"target": "customer_id"},
        "Tier": {"target": "tier"},
    }


def test_detect_starter_config_jsonl_and_errors(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"mail": "a@example.com", "userId": "1"}\n{"mail": "b@example.com"}\n')
    data = tomllib.loads(detect_starter_config(path))
    assert data["format"] == "jsonl"
    assert data["columns"] == {"mail": {"target": "email"}, "userId": {"target": "customer_id"}}
    with pytest.raises(InputUnreadable):
        detect_starter_config(tmp_path / "missing.csv")


def test_init_config_output_drives_a_run(cli, fake_api, tmp_path):
    path = write_csv(
        tmp_path / "c.csv",
        [{"E-Mail": f"u{i}@example.com", "Customer Id": f"{i}"} for i in range(7)],
    )
    result = cli("init-config", str(path))
    assert result.exit_code == 0, result.output
    config = _write(tmp_path / "import.toml", result.stdout)
    assert tomllib.loads(result.stdout)["columns"]["E-Mail"] == {"target": "email"}
    run_result = cli(
        "run", str(path), "--config", str(config), "--base-url", fake_api.url, "--rate", "1000",
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert run_result.exit_code == 0, run_result.output
    assert sorted(c["email"] for c in fake_api.state.applied) == [
        f"u{i}@example.com" for i in range(7)
    ]


def test_init_config_missing_file_is_exit_2(cli, tmp_path):
    result = cli("init-config", str(tmp_path / "nope.csv"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_init_config_keeps_the_other_phone_columns_phones(tmp_path):
    path = write_csv(
        tmp_path / "contacts.csv",
        [{"Email": "a@x.org", "Phone": "(415) 555-0132", "MobilePhone": "", "MailingCountry": ""}],
    )
    columns = tomllib.loads(detect_starter_config(path))["columns"]
    assert columns["MobilePhone"] == {"target": "phone_number"}
    assert columns["Phone"] == {"target": "phone", "type": "phone"}
    specs = parse_column_specs(columns)
    header = ["Email", "Phone", "MobilePhone", "MailingCountry"]
    assert resolve_mapping(header, specs=specs) == resolve_mapping(header)
