"""Platform presets end to end: each platform's export, default flags, the fake API.

Every fixture (tests/platform_exports.py) is imported as a new user would:
the preset is detected from the header, every customer with a valid e-mail or
an id the preset maps to customer_id arrives, unaltered, with phones of its own
country, its creation time in joined_at and its consent in unsubscribed.
"""

from __future__ import annotations

import csv
import json

import pytest

from importer import import_file
from importer.mapping import load_mapping_file
from importer.presets import detect_preset, load_preset, preset_names

from . import platform_exports
from .conftest import API_KEY, fast_options, write_csv


@pytest.mark.parametrize("name", sorted(platform_exports.EXPORTS))
def test_every_platform_export_delivers_every_customer_correctly(fake_api, tmp_path, name):
    export = platform_exports.EXPORTS[name]()
    path = export.write(tmp_path)
    report = import_file(path, fast_options(fake_api))
    assert report.preset == export.preset
    assert report.accounting_ok
    counts = platform_exports.audit(export, fake_api.state.applied)
    assert counts == dict.fromkeys(counts, 0), counts
    # Only rows without any identifier are rejected.
    without_id = sum(1 for e in export.expected if not e.email and not e.customer_id)
    assert report.rejected == without_id


@pytest.mark.parametrize("name", sorted(platform_exports.EXPORTS))
def test_detection_picks_the_platforms_preset(name):
    export = platform_exports.EXPORTS[name]()
    preset = detect_preset(export.header)
    assert preset is not None and preset.name == export.preset


def test_a_file_of_no_platform_gets_no_preset(fake_api, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@example.com", "yes"]], ["Email", "Accepts"])
    report = import_file(path, fast_options(fake_api))
    assert report.preset is None
    assert fake_api.state.applied == [{"email": "a@example.com", "accepts": True}]


def test_crm_record_id_stays_an_attribute_and_the_reject_names_the_map(cli, fake_api, tmp_path):
    export = platform_exports.hubspot(60)
    path = export.write(tmp_path)
    rejects = tmp_path / "rejects.csv"
    result = cli(
        "run", str(path), "--base-url", fake_api.url, "--rejects", str(rejects),
        "--max-error-rate", "1", env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "preset: hubspot" in result.output
    record_ids = {row["Record ID"] for row in export.rows}
    # An id is text, sent exactly as the export wrote it, even when it is all digits.
    sent = [c["hubspot_record_id"] for c in fake_api.state.applied]
    assert sent and all(isinstance(v, str) for v in sent) and set(sent) <= record_ids
    assert all("customer_id" not in c for c in fake_api.state.applied)
    with rejects.open() as f:
        reasons = [r["_reason"] for r in csv.DictReader(f) if r["_outcome"] == "rejected"]
    assert reasons and all('--map "Record ID=customer_id"' in r for r in reasons)


def test_preset_none_and_a_named_preset_override_detection(fake_api, tmp_path):
    export = platform_exports.shopify(20)
    path = export.write(tmp_path)
    report = import_file(path, fast_options(fake_api, preset="none"))
    assert report.preset is None
    sent = fake_api.state.applied[0]
    assert sent["accepts_email_marketing"] in (True, False) and "unsubscribed" not in sent
    # A file whose header fits no preset, read with one by name.
    rows = [["'1", "a@example.com", "yes"]]
    other = write_csv(tmp_path / "c.csv", rows, ["Customer ID", "Email", "Accepts Email Marketing"])
    report = import_file(other, fast_options(fake_api, preset="shopify"))
    assert report.preset == "shopify"
    assert fake_api.state.applied[-1] == {
        "customer_id": "1", "email": "a@example.com", "unsubscribed": False,
    }  # fmt: skip


def test_map_and_mapping_file_beat_the_preset_per_column(fake_api, tmp_path):
    export = platform_exports.shopify(20)
    path = export.write(tmp_path)
    mapping = tmp_path / "m.toml"
    mapping.write_text('[columns.Tags]\ntarget = "labels"\n')
    options = fast_options(
        fake_api, column_map=(("Accepts Email Marketing", "marketing_ok"),), mapping_file=mapping
    )
    report = import_file(path, options)
    assert report.preset == "shopify"
    by_id = {c["customer_id"]: c for c in fake_api.state.applied}
    for row in export.rows:
        sent = by_id[row["Customer ID"][1:]]
        assert sent["marketing_ok"] is (row["Accepts Email Marketing"] == "yes")
        assert "unsubscribed" not in sent and "tags" not in sent
        # The user's table has no split: the cell as it is.
        assert sent.get("labels") == (row["Tags"] or None)


def test_shopify_tags_become_a_list(fake_api, tmp_path):
    export = platform_exports.shopify(8)
    import_file(export.write(tmp_path), fast_options(fake_api))
    tagged = [c for c in fake_api.state.applied if "tags" in c]
    assert tagged and all(c["tags"] == ["vip", "newsletter"] for c in tagged)


def test_presets_list_and_show(cli, tmp_path):
    result = cli("presets", "list")
    assert result.exit_code == 0
    for name in preset_names():
        assert name in result.output
    for name in preset_names():
        shown = cli("presets", "show", name)
        assert shown.exit_code == 0
        path = tmp_path / f"{name}.toml"
        path.write_text(shown.output)
        # What `show` prints is a mapping file, the preset's own columns.
        assert load_mapping_file(path) == load_preset(name).columns
    result = cli("presets", "show", "myspace")
    assert result.exit_code == 2 and "no preset 'myspace'" in result.output


def test_a_copied_preset_used_as_mapping_file_gives_the_same_payloads(cli, fake_api, tmp_path):
    export = platform_exports.braze(40)
    path = export.write(tmp_path)
    copy = tmp_path / "braze.toml"
    copy.write_text(cli("presets", "show", "braze").output)
    import_file(path, fast_options(fake_api))
    first = list(fake_api.state.applied)
    fake_api.state.applied.clear()
    import_file(path, fast_options(fake_api, preset="none", mapping_file=copy))
    assert fake_api.state.applied == first


def test_validate_says_the_preset_and_the_same_verdict_as_a_dry_run(cli, tmp_path):
    export = platform_exports.klaviyo(50)
    path = export.write(tmp_path)
    report_path = tmp_path / "report.json"
    validated = cli("validate", str(path), "--report", str(report_path))
    assert "preset: klaviyo" in validated.output
    dry = cli("run", str(path), "--dry-run", "--mock", "--report", str(tmp_path / "dry.json"))
    assert "preset: klaviyo" in dry.output
    a, b = json.loads(report_path.read_text()), json.loads((tmp_path / "dry.json").read_text())
    assert a["preset"] == b["preset"] == "klaviyo"
    assert (a["rejected"], a["not_sent"]) == (b["rejected"], b["not_sent"])


def test_values_table_translates_and_other_values_follow_the_fields_rule(fake_api, tmp_path):
    mapping = tmp_path / "m.toml"
    mapping.write_text(
        '[columns."Opt In"]\ntarget = "unsubscribed"\nvalues = { " YES " = false, nope = true }\n'
        '[columns.Member]\ntarget = "vip"\ntype = "bool"\ninvert = true\n'
    )
    rows = [
        ["a@example.com", "yes", "true"],
        ["b@example.com", "Nope", "no"],
        ["c@example.com", "false", "1"],  # not in the table: read as a boolean
        ["d@example.com", "maybe", "perhaps"],  # neither: dropped, the customer still arrives
    ]
    path = write_csv(tmp_path / "c.csv", rows, ["Email", "Opt In", "Member"])
    report = import_file(path, fast_options(fake_api, mapping_file=mapping))
    assert fake_api.state.applied == [
        {"email": "a@example.com", "unsubscribed": False, "vip": False},
        {"email": "b@example.com", "unsubscribed": True, "vip": True},
        {"email": "c@example.com", "unsubscribed": False, "vip": False},
        {"email": "d@example.com"},
    ]
    assert report.dropped_fields == 2


def test_a_misspelt_map_target_exits_2_with_a_suggestion(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@example.com", "2021-01-01"]], ["Email", "Since"])
    result = cli("validate", str(path), "--map", "Since=joined_on")
    assert result.exit_code == 2
    assert "did you mean joined_at?" in result.output
    result = cli("validate", str(path), "--map", "Since=member_since")
    assert result.exit_code == 0, result.output


def test_figures_print_one_line_per_fixture(tmp_path, capsys):
    lines = platform_exports.figures(tmp_path)
    assert [line["fixture"] for line in lines] == list(platform_exports.EXPORTS)
    assert all(line["left_out"] == line["wrong_country_phones"] == 0 for line in lines)
    assert all(line["rows"] == 300 for line in lines)


def test_an_unknown_preset_name_exits_2(cli, tmp_path):
    path = write_csv(tmp_path / "c.csv", [["a@example.com"]], ["Email"])
    result = cli("validate", str(path), "--preset", "myspace")
    assert result.exit_code == 2
    assert "--preset must be auto, none or one of braze" in result.output


def test_a_config_file_can_turn_the_preset_off(cli, tmp_path):
    export = platform_exports.hubspot(10)
    path = export.write(tmp_path)
    config = tmp_path / "import.toml"
    config.write_text('preset = "none"\n')
    report_path = tmp_path / "r.json"
    cli("validate", str(path), "--config", str(config), "--report", str(report_path))
    report = json.loads(report_path.read_text())
    assert report["preset"] is None
    assert ["Create Date", "create_date"] in report["mapping"]


def test_translated_rule_on_json_values_lists_and_inverted_non_booleans():
    from importer.cleaning.rules import clean_bool, keep_value, translated

    rule = translated(clean_bool, {"true": False}, invert=False)
    assert rule(True) == (False, None)  # a JSON true looked up as "true"
    assert translated(keep_value, split=",")("[12345, 67890]") == (["12345", "67890"], None)
    assert translated(keep_value, split=",")('"Customer","VIP"') == (["Customer", "VIP"], None)
    assert translated(keep_value, invert=True)("abc") == (
        None, "invalid boolean: invert needs true or false",
    )  # fmt: skip


def test_a_fixed_rejects_file_of_a_platform_export_is_read_with_the_same_preset(fake_api, tmp_path):
    export = platform_exports.hubspot(80)
    rejects = tmp_path / "rejects.csv"
    import_file(export.write(tmp_path), fast_options(fake_api, rejects_path=rejects))
    with rejects.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["_outcome"] == "rejected"]
    assert rows
    for i, row in enumerate(rows):  # the fix: an e-mail for each
        row["Email"] = f"fixed{i}@example.com"
    fixed = write_csv(tmp_path / "fixed.csv", rows)
    before = len(fake_api.state.applied)
    report = import_file(fixed, fast_options(fake_api))
    assert report.preset == "hubspot" and report.rejected == 0
    sent = fake_api.state.applied[before:]
    assert sorted(c["email"] for c in sent) == sorted(r["Email"] for r in rows)
    by_email = {r["Email"]: r for r in rows}
    for c in sent:
        assert c["joined_at"][:16] == by_email[c["email"]]["Create Date"].replace(" ", "T")


def test_stripe_customers_sharing_an_email_lose_no_cus_id(cli, fake_api, tmp_path):
    export = platform_exports.stripe()
    path = export.write(tmp_path)
    rejects = tmp_path / "rejects.csv"
    result = cli(
        "run", str(path), "--base-url", fake_api.url, "--rejects", str(rejects),
        "--max-error-rate", "1", env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with rejects.open() as f:
        conflicts = [r for r in csv.DictReader(f) if r["_outcome"] == "conflict"]
    delivered = {c.get("stripe_id") for c in fake_api.state.applied}
    listed = {r["_value"] for r in conflicts}
    emails = [r["Email"] for r in export.rows if "@" in r["Email"]]
    shared = {e for e in emails if emails.count(e) > 1}
    assert shared and {r["Email"] for r in conflicts} == shared
    # Every cus_ id of a row with an e-mail arrived, or is named in a conflict line.
    for row in export.rows:
        if "@" in row["Email"]:
            assert row["id"] in delivered | listed, row["id"]
    assert all(r["_column"] == "stripe_id" and "cus_" in r["_reason"] for r in conflicts)
    assert f"id conflicts     {len(conflicts)}" in result.output


def test_a_preset_fits_headers_in_another_case():
    preset = detect_preset(["ID", "LASTNAME", "EMAIL", "HASOPTEDOUTOFEMAIL", "CREATEDDATE"])
    assert preset is not None and preset.name == "salesforce-contact"
    fitted = preset.fit(["ID", "LASTNAME", "EMAIL", "HASOPTEDOUTOFEMAIL", "CREATEDDATE"])
    assert fitted.record_id == "ID"
    assert fitted.columns["CREATEDDATE"].target == "joined_at"
    assert fitted.columns["Birthdate"].type == "date"  # not in the file: left as shipped
