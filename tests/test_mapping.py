"""Header matching, explicit choices and the TOML mapping file; ``validate`` end to end."""

from __future__ import annotations

import csv

import pytest

from importer.errors import MappingError
from importer.mapping import (
    ColumnSpec,
    header_key,
    load_mapping_file,
    match_standard_field,
    parse_map_option,
    resolve_mapping,
)

from .conftest import write_csv


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("E-Mail", "email"),
        ("Email Address", "email"),
        ("EMAIL", "email"),
        ("Customer Id", "customer_id"),
        ("customerID", "customer_id"),
        ("user_id", "customer_id"),
        ("Phone", "phone_number"),
        ("Mobile", "phone_number"),
        ("Phone 1", "phone_number"),
        ("First Name", "firstname"),
        ("given_name", "firstname"),
        ("Last Name", "lastname"),
        ("surname", "lastname"),
        ("Gender", "gender"),
        ("Joined At", "joined_at"),
        ("unsubscribed", "unsubscribed"),
        ("Subscription Groups", "subscription_groups"),
        ("Loyalty Points", None),
    ],
)
def test_mapping_matches_header_variants(header, field):
    assert match_standard_field(header) == field


def test_mapping_unmapped_columns_become_snake_case_or_are_dropped():
    m = resolve_mapping(["Email", "Loyalty Points", "favouriteColour"])
    assert m.targets == {
        "Email": "email",
        "Loyalty Points": "loyalty_points",
        "favouriteColour": "favourite_colour",
    }
    m = resolve_mapping(["Email", "Loyalty Points"], drop_unmapped=True)
    assert m.targets == {"Email": "email"} and m.dropped == ("Loyalty Points",)


def test_mapping_ambiguity_names_both_columns():
    with pytest.raises(MappingError, match="'Email' and 'E-Mail' both map to 'email'"):
        resolve_mapping(["Email", "E-Mail"])
    m = resolve_mapping(["Email", "E-Mail"], drop=["E-Mail"])
    assert m.targets == {"Email": "email"}


@pytest.mark.parametrize(
    ("columns", "phone"),
    [
        (["Phone", "MobilePhone", "HomePhone"], "MobilePhone"),  # Salesforce Contact
        (["Phone Number", "Mobile Phone Number"], "Mobile Phone Number"),  # HubSpot
        (["Phone 1", "Phone 2"], "Phone 1"),
        (["Default Address Phone", "Phone"], "Phone"),  # Shopify
        (["billing_phone"], "billing_phone"),  # WooCommerce
    ],
)
def test_mapping_several_phone_columns_one_is_phone_number_mobile_first(columns, phone):
    m = resolve_mapping(["Email", *columns])
    assert [src for src, target in m.targets.items() if target == "phone_number"] == [phone]
    others = {src: target for src, target in m.targets.items() if src not in ("Email", phone)}
    assert all(m.types[target] == "phone" for target in others.values())
    named = {"Phone Number": "other_phone_number"}
    assert others == {src: named.get(src, header_key(src)) for src in columns if src != phone}


def test_mapping_explicit_phone_number_wins_over_header_matching():
    m = resolve_mapping(["Mobile", "Tel", "Fax"], {"Fax": "phone_number"})
    assert m.targets == {"Mobile": "mobile", "Tel": "tel", "Fax": "phone_number"}
    assert m.types == {"mobile": "phone", "tel": "phone"}
    m = resolve_mapping(["Mobile", "Tel"], drop=["Mobile"])
    assert m.targets == {"Tel": "phone_number"} and m.types == {}
    # A mapping file's phone_number column that this input lacks chooses nothing.
    specs = {"Handy": ColumnSpec(target="phone_number"), "Tel": ColumnSpec(type="string")}
    m = resolve_mapping(["Mobile", "Tel"], specs=specs)
    assert m.targets == {"Mobile": "phone_number", "Tel": "tel"}
    assert m.types == {"tel": "string"}


@pytest.mark.parametrize(
    ("columns", "country"),
    [
        (["Email", "Phone", "Country"], "Country"),
        (["Email", "Phone", "Country/Region"], "Country/Region"),  # HubSpot
        (["Email", "MobilePhone", "MailingCountry"], "MailingCountry"),  # Salesforce
        (
            ["Email", "Phone", "Country", "Default Address Country Code"],
            "Default Address Country Code",
        ),
        (["Email", "Phone", "CC"], "CC"),
        (["Email", "Phone", "City"], None),
    ],
)
def test_mapping_finds_the_country_column_of_phones_by_header(columns, country):
    m = resolve_mapping(columns, drop_unmapped=True)
    assert m.phone_country == country
    if country:
        assert (country, "(country of phones)") in m.describe()


def test_mapping_explicit_map_and_errors():
    m = resolve_mapping(["Mail", "Work Mail"], parse_map_option(["Work Mail=work_email"]))
    assert m.targets == {"Mail": "email", "Work Mail": "work_email"}
    with pytest.raises(MappingError, match="not in the input: 'Nope'"):
        resolve_mapping(["Email"], {"Nope": "x"})
    with pytest.raises(MappingError, match="expects 'Source Column=target'"):
        parse_map_option(["no-equals"])


MAPPING_TOML = """
title = "nightly import"         # other top-level keys are ignored

[columns."Email Address"]
target = "email"

[columns."Signup"]
target = "joined_at"
type = "date"

[columns."Points"]
type = "int"

[columns."Internal Notes"]
drop = true

[columns."Not In This File"]
target = "other"
"""


def test_mapping_file_targets_types_and_drops(tmp_path):
    path = tmp_path / "mapping.toml"
    path.write_text(MAPPING_TOML)
    specs = load_mapping_file(path)
    assert specs["Signup"] == ColumnSpec("joined_at", "date", False)
    m = resolve_mapping(
        ["Email Address", "Signup", "Points", "Internal Notes", "City"],
        specs=specs,
        drop_unmapped=True,
    )
    assert m.targets == {"Email Address": "email", "Signup": "joined_at", "Points": "points"}
    assert m.dropped == ("Internal Notes", "City")
    assert m.types == {"joined_at": "date", "points": "int"}


def test_mapping_explicit_map_wins_over_mapping_file(tmp_path):
    specs = {"Signup": ColumnSpec(target="joined_at", type="date")}
    m = resolve_mapping(["Email", "Signup"], {"Signup": "signup_source"}, specs=specs)
    assert m.targets["Signup"] == "signup_source"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[columns.x\ntarget='a'", "not valid TOML"),
        ("columns = 3", "'columns' must be a table"),
        ("[columns]\nx = 'email'", r"\[columns.x\] must be a table"),
        ('[columns."A B"]\ntype = "decimal"', r'\[columns."A B"\]: type must be one of int'),
        ("[columns.x]\ntarget = ''", "target must be a non-empty string"),
        ("[columns.x]\ndrop = 'yes'", "drop must be true or false"),
        ("[columns.x]\ndrop = true\ntarget = 'y'", "cannot also have a target"),
        ("[columns.x]\ntarget = 'a'\nformat = '%d'", "unknown key 'format'; use target"),
        ("[columns.x]\ntarget = 'a'\nvalue = {a = 1}", "unknown key 'value'; did you mean values"),
        ("[columns.x]\ninvrt = true", "did you mean invert"),
        ("[columns.x]\nvalues = 3", "values must be a table"),
        ("[columns.x]\ninvert = 'yes'", "invert must be true or false"),
        ("[columns.x]\nsplit = ''", "split must be a separator"),
        (
            "[columns.x]\ntarget = 'joined_on'",
            "'joined_on' is not a Blueshift field; did you mean joined_at",
        ),
        ("[columns.x]\ntarget = 'firstName'", "did you mean firstname"),
    ],
)
def test_mapping_file_errors_are_one_line(tmp_path, text, message):
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(MappingError, match=message) as info:
        load_mapping_file(path)
    assert "\n" not in str(info.value)


def test_mapping_file_missing_or_binary(tmp_path):
    with pytest.raises(MappingError, match="no such file"):
        load_mapping_file(tmp_path / "none.toml")
    (tmp_path / "b.toml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MappingError, match="m|M"):
        load_mapping_file(tmp_path / "b.toml")
    with pytest.raises(MappingError, match="is a directory"):
        load_mapping_file(tmp_path)


# -- through the CLI ---------------------------------------------------------------------------


def _customers(tmp_path):
    return write_csv(
        tmp_path / "c.csv",
        [
            ["a@x.io", "2024-01-02", "10", "secret", "Oslo"],
            ["b@x.io", "2024-02-03", "20", "secret", "Rome"],
            ["", "2024-02-03", "30", "secret", "Lima"],
            ["c@x.io", "2024-02-03", "30", "secret"],
        ],
        header=["Email Address", "Signup", "Points", "Internal Notes", "City"],
    )


def test_cli_validate_shows_mapping_counts_and_payloads(cli, tmp_path):
    (tmp_path / "m.toml").write_text(MAPPING_TOML)
    result = cli(
        "validate",
        str(_customers(tmp_path)),
        "--mapping",
        str(tmp_path / "m.toml"),
        "--show",
        "1",
        "--rejects",
        str(tmp_path / "rejects.csv"),
    )
    assert result.exit_code == 1, result.output  # rows were rejected
    out = result.stdout
    assert "Email Address   -> email" in out
    assert "Signup          -> joined_at" in out
    assert "Internal Notes  (dropped)" in out
    assert "rows read 4: valid 2, rejected 2, merged 0" in out
    assert "rejected: 1 × missing identifier" in out
    assert "rejected: 1 × ragged row" in out
    assert "balanced" in out
    payloads = [line.strip() for line in out.splitlines() if line.startswith("  {")]
    assert payloads == ['{"city":"Oslo","email":"a@x.io","joined_at":"2024-01-02","points":10}']
    assert "secret" not in out
    with (tmp_path / "rejects.csv").open(newline="") as f:
        assert sorted(r["_line"] for r in csv.DictReader(f)) == ["4", "5"]


def test_cli_validate_all_valid_exit_0_and_matches_dry_run(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@x.io", "Ann"], ["b@x.io", "Bob"]], ["E-Mail", "Name"])
    result = cli("validate", str(path))
    assert result.exit_code == 0, result.output
    dry = cli("run", str(path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    for payload in ('{"email":"a@x.io","name":"Ann"}', '{"email":"b@x.io","name":"Bob"}'):
        assert payload in result.stdout and payload in dry.stdout


def test_cli_bad_mapping_file_is_one_line_exit_2(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@x.io"]], ["email"])
    (tmp_path / "m.toml").write_text("[columns.email]\ntype = 'money'\n")
    for extra in (["validate"], ["run", "--api-key", "k"]):
        result = cli(*extra, str(path), "--mapping", str(tmp_path / "m.toml"))
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1
        assert "type must be one of" in result.stderr
    assert not (tmp_path / "rejects.csv").exists()


def test_cli_run_with_mapping_file_sends_mapped_fields(cli, fake_api, tmp_path):
    (tmp_path / "m.toml").write_text(MAPPING_TOML)
    result = cli(
        "run",
        str(_customers(tmp_path)),
        "--mapping",
        str(tmp_path / "m.toml"),
        "--base-url",
        fake_api.url,
        "--rate",
        "100",
        env={"BLUESHIFT_API_KEY": fake_api.config.api_key},
    )
    assert result.exit_code == 1, result.output
    assert [c["email"] for c in fake_api.state.applied] == ["a@x.io", "b@x.io"]
    assert all("internal_notes" not in c for c in fake_api.state.applied)
    assert fake_api.state.applied[0]["joined_at"] == "2024-01-02"


def test_cli_ambiguous_columns_exit_2_naming_both(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@x.io", "b@x.io"]], ["E-Mail", "Email Address"])
    result = cli("validate", str(path))
    assert result.exit_code == 2
    assert "'E-Mail' and 'Email Address' both map to 'email'" in result.stderr


@pytest.mark.parametrize(
    ("target", "field"),
    [
        ("joined_on", "joined_at"),
        ("firstName", "firstname"),
        ("e_mail", "email"),
        ("emial", "email"),
        ("Last_Nme", "lastname"),
        ("opt_out", "unsubscribed"),
        ("phone", "phone_number"),
    ],
)
def test_map_target_that_looks_like_a_field_is_refused(target, field):
    with pytest.raises(MappingError, match=f"did you mean {field}\\?"):
        resolve_mapping(["Email", "X"], {"X": target})


@pytest.mark.parametrize(
    "target",
    [
        "loyalty_tier",
        "customer_type",
        "unsubscribe_reason",
        "hubspot_record_id",
        "tags",
        "city",
        "name",
        "signup_source",
        "birthdate",
    ],
)
def test_custom_attribute_targets_unlike_any_field_stay_custom(target):
    assert resolve_mapping(["Email", "X"], {"X": target}).targets["X"] == target


def test_mapping_file_target_equal_to_the_automatic_name_is_kept(tmp_path):
    # A starter config names every custom attribute as automatic matching does.
    path = tmp_path / "m.toml"
    path.write_text('[columns."Joined On"]\ntarget = "joined_on"\n')
    assert load_mapping_file(path)["Joined On"].target == "joined_on"


def test_values_and_invert_are_read_case_folded(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(
        '[columns.Consent]\ntarget = "unsubscribed"\nvalues = { " Yes " = false, NO = true }\n'
        '[columns.Accepts]\ntarget = "accepts_marketing"\ninvert = true\n'
    )
    specs = load_mapping_file(path)
    assert specs["Consent"].values == {"yes": False, "no": True}
    assert specs["Accepts"].invert
    m = resolve_mapping(["Email", "Consent", "Accepts"], specs=specs)
    assert set(m.translations) == {"Consent", "Accepts"}
    # --map names the column: its own target, no translation.
    m = resolve_mapping(["Email", "Consent"], {"Consent": "consent_text"}, specs=specs)
    assert m.translations == {}


def test_headers_in_capitals_match_as_their_camel_case_does():
    # Salesforce's Data Loader long wrote API names in capitals.
    mapping = resolve_mapping(["EMAIL", "PHONE", "MOBILEPHONE", "MAILINGCOUNTRY"])
    assert mapping.targets["MOBILEPHONE"] == "phone_number"
    assert mapping.targets["PHONE"] == "phone" and mapping.types["phone"] == "phone"
    assert mapping.phone_country == "MAILINGCOUNTRY"
