"""End to end on files in the shape of real exports (each platform's published header
names and value formats), with default flags: every customer with a valid email or
id arrives, phones in the row's own country, identifiers unaltered, dates in ISO 8601.

The fixtures are built here, a few hundred rows each, so that every expectation can
be computed from the row that produced it.
"""

from __future__ import annotations

import csv
import email.utils
import json
import re
from datetime import UTC, datetime, timedelta

import phonenumbers

from importer import import_file

from .conftest import API_KEY, fast_options, write_csv
from .platform_exports import COUNTRIES, e164


def _calling_code(e164: str) -> int:
    return phonenumbers.parse(e164).country_code


# -- Shopify ---------------------------------------------------------------------------

SHOPIFY_HEADER = [
    "Customer ID",
    "First Name",
    "Last Name",
    "Email",
    "Accepts Email Marketing",
    "Default Address Company",
    "Default Address Address1",
    "Default Address City",
    "Default Address Province Code",
    "Default Address Country Code",
    "Default Address Zip",
    "Default Address Phone",
    "Phone",
    "Accepts SMS Marketing",
    "Total Spent",
    "Total Orders",
    "Note",
    "Tax Exempt",
    "Tags",
]


def shopify_rows(n: int = 300) -> list[list[str]]:
    """Shopify's customers export: ids guarded with an apostrophe, phones as typed."""
    rows = []
    for i in range(n):
        code, _, phones = COUNTRIES[i % len(COUNTRIES)]
        phone = phones[i % len(phones)] if i % 7 else ""
        email = f"shopper{i}@example.com"
        if i % 50 == 3:
            email = ""  # a customer known by id only
        elif i % 50 == 4:
            email = f"shopper{i}-at-example.com"  # dropped; the id still delivers the row
        rows.append(
            [
                f"'68129095548{i:03d}",
                f"First{i}",
                f"Last{i}",
                email,
                "yes" if i % 3 else "no",
                "",
                f"{i} Main Street",
                "Springfield",
                "",
                code,
                f"{10000 + i}" if code == "US" else "SW1A 1AA",
                phones[(i + 1) % len(phones)],
                phone,
                "no",
                f"{i * 3}.50",
                str(i % 9),
                "",
                "no",
                "vip, newsletter" if i % 4 == 0 else "",
            ]
        )
    return rows


def test_shopify_export_every_customer_with_its_own_id_and_countrys_phone(fake_api, tmp_path):
    rows = shopify_rows()
    path = write_csv(tmp_path / "customers_export.csv", rows, SHOPIFY_HEADER)
    report = import_file(path, fast_options(fake_api, rejects_path=tmp_path / "rejects.csv"))
    by_id = {c["customer_id"]: c for c in fake_api.state.applied}
    # Every row has a Customer ID: every customer arrives, its id without the guard.
    assert len(fake_api.state.applied) == len(rows) == report.succeeded
    assert sorted(by_id) == sorted(row[0].removeprefix("'") for row in rows)
    assert report.rejected == 0 and report.accounting_ok
    for row in rows:
        sent = by_id[row[0][1:]]
        code = row[SHOPIFY_HEADER.index("Default Address Country Code")]
        phone = row[SHOPIFY_HEADER.index("Phone")]
        if phone:
            assert sent["phone_number"] == e164(phone, code)
            assert _calling_code(sent["phone_number"]) == phonenumbers.country_code_for_region(code)
        else:
            assert "phone_number" not in sent
        other = row[SHOPIFY_HEADER.index("Default Address Phone")]
        assert sent["default_address_phone"] == e164(other, code)
    # The malformed emails were left out, and listed.
    assert report.dropped_field_reasons == {"Email": {"invalid email": 6}}
    assert all("email" not in by_id[row[0][1:]] for row in rows if "-at-" in row[3])


# -- Salesforce ------------------------------------------------------------------------

SALESFORCE_HEADER = [
    "Id",
    "Salutation",
    "FirstName",
    "LastName",
    "Email",
    "Phone",
    "MobilePhone",
    "HomePhone",
    "MailingCity",
    "MailingCountry",
    "CreatedDate",
    "HasOptedOutOfEmail",
]


def salesforce_rows(n: int = 200) -> list[list[str]]:
    """A Salesforce Contact export: three phone columns and the mailing country by name."""
    rows = []
    for i in range(n):
        code, name, phones = COUNTRIES[i % len(COUNTRIES)]
        rows.append(
            [
                f"0035g00000{i:05d}AAA",
                "Ms." if i % 2 else "Mr.",
                f"First{i}",
                f"Last{i}",
                f"contact{i}@example.org",
                phones[i % len(phones)],
                phones[(i + 1) % len(phones)] if i % 5 else "",
                phones[(i + 2) % len(phones)] if i % 3 else "",
                "Town",
                name,
                f"2021-03-{1 + i % 28:02d}T10:22:33.000+0000",
                "false" if i % 4 else "true",
            ]
        )
    return rows


def test_salesforce_contacts_with_three_phone_columns_never_stop_the_run(cli, fake_api, tmp_path):
    rows = salesforce_rows()
    path = write_csv(tmp_path / "contacts.csv", rows, SALESFORCE_HEADER)
    report_path = tmp_path / "report.json"
    result = cli(
        "run", str(path), "--base-url", fake_api.url, "--report", str(report_path),
        env={"BLUESHIFT_API_KEY": API_KEY},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert ["MobilePhone", "phone_number"] in report["mapping"]
    assert ["Phone", "phone"] in report["mapping"] and ["HomePhone", "home_phone"] in report[
        "mapping"
    ]
    assert ["MailingCountry", "(country of phones)"] in report["mapping"]
    by_email = {c["email"]: c for c in fake_api.state.applied}
    assert len(by_email) == len(rows) == report["succeeded"]
    column = {name: SALESFORCE_HEADER.index(name) for name in SALESFORCE_HEADER}
    for row in rows:
        sent = by_email[row[column["Email"]]]
        code = next(c for c, name, _ in COUNTRIES if name == row[column["MailingCountry"]])
        for header, key in (
            ("MobilePhone", "phone_number"),
            ("Phone", "phone"),
            ("HomePhone", "home_phone"),
        ):
            if row[column[header]]:
                assert sent[key] == e164(row[column[header]], code)
            else:
                assert key not in sent
        # The salesforce-contact preset: Salesforce's own time format, zone and all,
        # arrives as UTC in joined_at; opted out of e-mail is unsubscribed.
        assert sent["joined_at"] == row[column["CreatedDate"]][:19] + "Z"
        assert sent["unsubscribed"] is (row[column["HasOptedOutOfEmail"]] == "true")


def test_rejects_file_lists_each_dropped_field(fake_api, tmp_path):
    rows = shopify_rows(60)
    rows[1][SHOPIFY_HEADER.index("Phone")] = "06 12"  # too short for France
    path = write_csv(tmp_path / "customers_export.csv", rows, SHOPIFY_HEADER)
    rejects = tmp_path / "rejects.csv"
    report = import_file(path, fast_options(fake_api, rejects_path=rejects))
    with rejects.open(newline="") as f:
        lines = list(csv.DictReader(f))
    phone = [line for line in lines if line["_column"] == "Phone"]
    assert [(p["_line"], p["Phone"], p["_value"], p["_outcome"]) for p in phone] == [
        ("3", "06 12", "06 12", "field dropped")
    ]
    assert phone[0]["_reason"].endswith("(read as a number of CA)")
    assert report.succeeded == 60 and report.dropped_fields == len(lines)


# -- a messy date file -----------------------------------------------------------------

#: Each format, and what it becomes: a date, a time as given, or a time in UTC.
DATE_FORMATS = [
    (lambda d: d.strftime("%Y-%m-%d"), "date"),
    (lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ"), "utc"),
    (lambda d: d.strftime("%d %b %Y"), "date"),  # 24 Nov 2022
    (lambda d: d.strftime("%m/%d/%Y"), "date"),  # 11/13/2021
    (lambda d: d.strftime("%Y%m%d"), "date"),  # 20240122
    (lambda d: d.strftime("%b %d, %Y"), "date"),  # Jan 15, 2016
    (lambda d: d.strftime("%d.%m.%Y"), "date"),  # 13.11.2021
    (lambda d: f"{d.month}/{d.day}/{d.year} {d.hour}:{d.minute:02d}", "naive"),  # Excel, US
    (lambda d: d.strftime("%m/%d/%Y %I:%M %p"), "naive"),
    (lambda d: email.utils.format_datetime(d.replace(tzinfo=UTC)), "utc"),  # RFC 2822
    (lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC", "utc"),  # Braze
    (lambda d: str(int(d.replace(tzinfo=UTC).timestamp())), "utc"),  # Unix seconds
    (lambda d: str(int(d.replace(tzinfo=UTC).timestamp() * 1000)), "utc"),  # and milliseconds
]


def messy_date_rows(n: int = 390) -> tuple[list[list[str]], list[str]]:
    """Rows of ``email, joined_at, Last Order, Renewal`` and each row's expected joined_at.

    ``joined_at`` mixes every format of :data:`DATE_FORMATS`; ``Last Order`` holds
    day-first dates (13/11/2021), ``Renewal`` slash dates whose order nothing shows.
    """
    rows, expected = [], []
    for i in range(n):
        d = datetime(2015, 1, 1, 8, 30) + timedelta(days=7 * i + i % 5, minutes=37 * i)
        if DATE_FORMATS[i % len(DATE_FORMATS)][1] == "date":
            d = d.replace(hour=0, minute=0)
        fmt, kind = DATE_FORMATS[i % len(DATE_FORMATS)]
        order = d + timedelta(days=3)
        rows.append(
            [
                f"person{i}@example.com",
                fmt(d),
                order.strftime("%d/%m/%Y"),
                f"{1 + i % 12:02d}/{1 + i % 11:02d}/2024",
            ]
        )
        expected.append(
            d.date().isoformat()
            if kind == "date"
            else d.isoformat() + ("Z" if kind == "utc" else "")
        )
    return rows, expected


def test_messy_dates_every_customer_arrives_with_an_iso_joined_at(cli, fake_api, tmp_path):
    rows, expected = messy_date_rows()
    path = write_csv(tmp_path / "joined.csv", rows, ["email", "joined_at", "Last Order", "Renewal"])
    report = import_file(path, fast_options(fake_api))
    assert (report.succeeded, report.rejected, report.dropped_fields) == (len(rows), 0, 0)
    by_email = {c["email"]: c for c in fake_api.state.applied}
    for row, joined in zip(rows, expected, strict=True):
        sent = by_email[row[0]]
        assert sent["joined_at"] == joined, row[1]
        day, month, year = row[2].split("/")
        assert sent["last_order"] == f"{year}-{month}-{day}"
        month, day, year = row[3].split("/")
        assert sent["renewal"] == f"{year}-{month}-{day}"
    assert report.date_orders == {
        "joined_at": {"order": "month-first", "decided_by": "file"},
        "Last Order": {"order": "day-first", "decided_by": "file"},
        "Renewal": {"order": "month-first", "decided_by": "default"},
    }
    checked = cli("validate", str(path))
    assert checked.exit_code == 0, checked.output
    assert "dates in 'Renewal' read month-first (the default" in checked.stdout
    assert "dates in 'Last Order' read day-first (shown by the file" in checked.stdout
    # --date-order decides for every column: Renewal's dates now read day first.
    report = import_file(path, fast_options(fake_api, date_order="day-first", dry_run=True))
    assert report.date_orders["Renewal"] == {"order": "day-first", "decided_by": "option"}
    day_above_12 = [r for r in rows if re.match(r"[0-9]+/(1[3-9]|[23][0-9])/", r[1])]
    assert report.dropped_field_reasons["joined_at"] == {"invalid date": len(day_above_12)}
