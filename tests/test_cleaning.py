"""Cleaning rules, table-driven per field, plus property tests over generated rows."""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer import import_file
from importer.cleaning import (
    DateOrder,
    InvalidRecord,
    clean_chunk,
    decide_date_orders,
    infer_column_types,
    rules,
)
from importer.dedupe import merge_repeats
from importer.errors import UsageError
from importer.mapping import ColumnMapping, resolve_mapping
from importer.options import ImportOptions
from importer.records import FIELD_DROPPED, REJECTED
from importer.source import Chunk, Source

from .conftest import fast_options, write_csv

PHONE = re.compile(r"^\+[1-9]\d{4,12}$")


def csv_chunk(rows: list[dict[str, str]], start: int = 1) -> Chunk:
    """A chunk as the CSV source yields it: every cell text, records numbered from ``start``."""
    columns = list(rows[0])
    frame = pd.DataFrame({c: np.array([r[c] for r in rows], dtype=object) for c in columns})
    records = np.arange(start, start + len(rows), dtype=np.int64)
    return Chunk(frame, records, records + 1)


def jsonl_chunk(objects: list[dict[str, Any]]) -> Chunk:
    frame = pd.DataFrame.from_records(objects).astype(object)
    records = np.arange(1, len(objects) + 1, dtype=np.int64)
    return Chunk(frame, records, records.copy())


def _outcome(chunk: Chunk, types: bool, options: ImportOptions) -> Any:
    """What cleaning ``chunk`` gives: the inferred types and the result, or the error raised."""
    mapping = resolve_mapping(chunk.column_names)
    column_types = infer_column_types(chunk, mapping) if types else None
    try:
        return column_types, clean_chunk(chunk, mapping, options, column_types)
    except Exception as exc:  # compared, not swallowed: the caller re-raises it
        return column_types, exc


def clean(rows: list[dict[str, Any]], jsonl: bool = False, types: bool = True, **options: Any):
    """Clean ``rows`` as one chunk."""
    chunk = jsonl_chunk(rows) if jsonl else csv_chunk(rows)
    _, result = _outcome(chunk, types and not jsonl, ImportOptions(**options))
    if isinstance(result, Exception):
        raise result
    return result


def one(column: str, value: Any, **options: Any) -> tuple[Any, str | None]:
    """Clean one cell beside a valid customer_id: (payload value, reject reason), one is None.

    By default a bad value drops its field only: the customer is still sent without it.
    """
    result = clean([{"customer_id": "c1", column: value}], **options)
    target = resolve_mapping([column]).targets[column]
    if result.rejects:
        (reject,) = result.rejects
        if reject.outcome == FIELD_DROPPED:
            (customer,) = result.customers
            assert target not in customer.payload and customer.payload["customer_id"] == "c1"
        else:
            assert not result.customers
        return None, reject.reason
    (customer,) = result.customers
    return customer.payload.get(target), None


# -- email -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.COM", "ann@example.com"),
        ("  bob@example.com \t", "bob@example.com"),
        ("o'brien+tag@mail.example.co.uk", "o'brien+tag@mail.example.co.uk"),
        ("NORA.MÜLLER@MAIL.EXAMPLE.ORG", "nora.müller@mail.example.org"),
        ("a@xn--bcher-kva.com", "a@bücher.com"),
        ("a@b.c", "a@b.c"),
        ("x" * 52 + "@example.com", "x" * 52 + "@example.com"),  # exactly 64
        ("日本語@example.com", "日本語@example.com"),
    ],
)
def test_email_normalised(raw, expected):
    assert one("email", raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("x" * 53 + "@example.com", "longer than 64"),  # 65 characters
        ("ann-at-example.com", "@-sign"),
        ("a..b@example.com", "two periods"),
        ("a@localhost", "period"),
        ("a@shop.test", "special-use"),
        ("a@b_c.com", "invalid characters"),
        ("nan", "@-sign"),
        ("a b@example.com", "invalid email"),
    ],
)
def test_email_rejected(raw, reason):
    value, why = one("email", raw)
    assert value is None
    assert why.startswith("invalid email: ") and reason in why


def test_email_fast_path_agrees_with_library():
    from email_validator import validate_email

    samples = [
        "plain@example.com",
        "UP.Case@Example.Org",
        "chloé.x@ex.com",
        "x²@ex.com",
        "a_b@ex.com",
        "a@-b.com",
        "a@b-.com",
        "-a@b.com",
        "a@b.123",
        "a@b.local",
        "a.@b.com",
    ]
    result = clean([{"customer_id": str(i), "email": e} for i, e in enumerate(samples)])
    got = {int(c.payload["customer_id"]): c.payload.get("email") for c in result.customers}
    for i, e in enumerate(samples):
        try:
            expected = validate_email(e.lower(), check_deliverability=False).normalized.lower()
        except Exception:
            expected = None
        assert got.get(i) == expected, e


# -- phone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+12025550123", "+12025550123"),
        ("(202) 555-0123", "+12025550123"),
        ("202-555-0123", "+12025550123"),
        ("202.555.0123", "+12025550123"),
        ("2025550123", "+12025550123"),
        ("+1 (202) 555-0123", "+12025550123"),
        ("1 202 555 0123", "+12025550123"),
        ("+44 7911 123456", "+447911123456"),
        ("+49 30 1234567", "+49301234567"),
        ("+4912345678901", "+4912345678901"),  # 14 characters
        ("+6834002", "+6834002"),  # Niue: short numbers are real
    ],
)
def test_phone_normalised_to_e164(raw, expected):
    assert one("phone_number", raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("+0123456789", "country code"),
        ("+1234", "too short"),  # 5 characters
        ("+12345", "too short"),  # 6 characters but not a possible +1 number
        ("555-1234", "local number"),
        ("+49 1234 567890123", "6 to 14"),  # possible in Germany, 16 characters
        ("call me", "not a phone number"),
        ("nan", "not a phone number"),
    ],
)
def test_phone_rejected(raw, reason):
    value, why = one("phone_number", raw)
    assert value is None
    assert why.startswith("invalid phone number: ") and reason in why


def test_phone_national_format_uses_region():
    assert one("phone_number", "030 1234567", phone_region="DE") == ("+49301234567", None)
    assert one("phone_number", "07911 123456", phone_region="gb") == ("+447911123456", None)


def test_phone_region_unknown_is_usage_error():
    with pytest.raises(UsageError, match="phone_region"):
        one("phone_number", "2025550123", phone_region="XX")


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("06 12 34 01 72", "FR", "+33612340172"),
        ("222 123 2885", "MX", "+522221232885"),
        ("001-380-728-9758", "US", "+13807289758"),
        ("001-380-728-9758x1234", "US", "+13807289758"),
        ("0044 20 7946 0958", "US", "+442079460958"),
        ("011 44 20 7946 0958", "US", "+442079460958"),
        ("241.813.7449x12", "US", "+12418137449"),
        ("(415) 555-0132 ext. 123", "US", "+14155550132"),
        ("'+16135550135", "CA", "+16135550135"),
        ("+33 6 12 34 01 72", "US", "+33612340172"),  # its own country code wins
        ("+33 6 12 34 01 72", "ZZ", "+33612340172"),
    ],
)
def test_phone_international_prefixes_extensions_and_regions(raw, region, expected):
    assert rules.clean_phone(raw, region) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("06 12 34", "FR", "too short for its country (read as a number of FR)"),
        ("222 123 2885 12", "MX", "(read as a number of MX)"),
        ("06 12 34 01 72", "ZZ", "no country code, and the row's country is unknown"),
        ("+1 202", "FR", "too short for its country"),
    ],
)
def test_phone_not_possible_names_the_country_assumed(raw, region, reason):
    value, why = rules.clean_phone(raw, region)
    assert value is None and why.startswith("invalid phone number: ") and why.endswith(reason)


@settings(max_examples=200, deadline=None)
@given(
    st.from_regex(r"0?[1-9][0-9 .-]{5,13}", fullmatch=True),
    st.sampled_from(["US", "FR", "MX", "GB", "DE", "IN", "BR"]),
)
def test_property_a_national_number_is_never_sent_as_another_countrys(raw, region):
    idd = rules.phonenumbers.PhoneMetadata.metadata_for_region(region).international_prefix
    if re.match(idd, re.sub(r"\D", "", raw)):
        return  # dialled abroad from the region (011 from the US, 09 from Mexico)
    value, _ = rules.clean_phone(raw, region)
    code = rules.phonenumbers.country_code_for_region(region)
    assert value is None or value.startswith(f"+{code}")


@pytest.mark.parametrize(
    ("cell", "code"),
    [
        ("FR", "FR"),
        ("fr", "FR"),
        ("FRA", "FR"),
        ("France", "FR"),
        ("México", "MX"),
        ("Mexico", "MX"),
        ("United States", "US"),
        ("USA", "US"),
        ("UK", "GB"),
        ("United Kingdom", "GB"),
        ("Germany", "DE"),
        ("+33", "FR"),
        ("1", "US"),
        ("999", "ZZ"),
        ("Narnia", "ZZ"),
        ("Antarctica", "ZZ"),  # a country phonenumbers has no numbers for
    ],
)
def test_country_cells_read_as_regions(cell, code):
    assert rules.country_code(cell) == code


def test_phone_read_in_each_rows_country_once_per_distinct_pair(monkeypatch):
    rules._phone_by_library.cache_clear()
    calls: list[tuple[str, str]] = []
    real = rules.phonenumbers.parse

    def counting(value, region, **kwargs):
        calls.append((value, region))
        return real(value, region, **kwargs)

    monkeypatch.setattr(rules.phonenumbers, "parse", counting)
    rows = [
        {"customer_id": f"{country}-{i}", "phone": phone, "Country": country}
        for i in range(50)
        for phone, country in (
            ("06 12 34 01 72", "France"),
            ("06 12 34 01 72", "FR"),
            ("222 123 2885", "Mexico"),
            ("222 123 2885", ""),  # no country: --phone-region
        )
    ]
    result = clean(rows, phone_region="US")
    phones = {
        c.payload["customer_id"].split("-")[0]: c.payload["phone_number"] for c in result.customers
    }
    assert phones == {
        "France": "+33612340172",
        "FR": "+33612340172",
        "Mexico": "+522221232885",
        "": "+12221232885",
    }
    assert all(c.payload["country"] in ("France", "FR", "Mexico") for c in result.customers[:3])
    assert sorted(calls) == [
        ("06 12 34 01 72", "FR"),
        ("222 123 2885", "MX"),
        ("222 123 2885", "US"),
    ]


def test_phone_each_distinct_value_parsed_once(monkeypatch):
    from importer.cleaning import rules

    rules._phone_by_library.cache_clear()
    calls: list[str] = []
    real = rules.phonenumbers.parse

    def counting(value, region, **kwargs):
        calls.append(value)
        return real(value, region, **kwargs)

    monkeypatch.setattr(rules.phonenumbers, "parse", counting)
    rows = [{"customer_id": str(i), "phone": "+49 30 1234567"} for i in range(500)]
    rows += [{"customer_id": "x", "phone": "(202) 555-0123"}]
    result = clean(rows)
    assert {c.payload["phone_number"] for c in result.customers} == {
        "+49301234567",
        "+12025550123",
    }
    assert calls == ["+49 30 1234567"]  # the US shape never reached the library


# -- names, gender, dates, booleans -----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Ann ", "Ann"),
        ("NA", "NA"),
        ("null", "null"),
        ("None", "None"),
        ("nan", "nan"),
        ("N" * 64, "N" * 64),
    ],
)
def test_name_trimmed_and_text_kept(raw, expected):
    assert one("First Name", raw) == (expected, None)
    assert one("surname", raw) == (expected, None)


def test_name_over_64_rejected():
    assert one("firstname", "N" * 65) == (None, "invalid firstname: longer than 64 characters")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("M", "male"),
        ("male", "male"),
        ("Man", "male"),
        ("f", "female"),
        ("Female", "female"),
        ("WOMAN", "female"),
        ("u", "unknown"),
        ("Unknown", "unknown"),
        ("prefer not to say", "unknown"),
    ],
)
def test_gender_spellings(raw, expected):
    assert one("gender", raw) == (expected, None)


def test_gender_unknown_spelling_rejected():
    assert one("gender", "dog")[1] == "invalid gender: not one of the known spellings"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2020-02-29", "2020-02-29"),
        ("2020/02/29", "2020-02-29"),
        ("2020-02-29 13:45", "2020-02-29T13:45:00"),
        ("2020-02-29T13:45:10.5", "2020-02-29T13:45:10.500000"),
        ("2020-02-29T13:45:10Z", "2020-02-29T13:45:10Z"),
        ("2020-02-29T13:45:10+02:00", "2020-02-29T11:45:10Z"),
    ],
)
def test_dates_to_iso_8601(raw, expected):
    assert one("joined_at", raw) == (expected, None)
    assert one("unsubscribed_at", raw) == (expected, None)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2021-09-19 20:55:24.757 UTC", "2021-09-19T20:55:24.757000Z"),  # Braze
        ("2021-09-19T20:55:24.757123456Z", "2021-09-19T20:55:24.757123Z"),
        ("2021-03-04T10:22:33.000+0000", "2021-03-04T10:22:33Z"),  # Salesforce
        ("2021-04-06 12:34:56 -0400", "2021-04-06T16:34:56Z"),  # Shopify
        ("2021-03-04 10:22:33 +00:00", "2021-03-04T10:22:33Z"),
        ("20210919T205524Z", "2021-09-19T20:55:24Z"),
        ("Mon, 15 Jan 2016 10:22:00 +0000", "2016-01-15T10:22:00Z"),  # RFC 2822
        ("Fri, 15 Jan 2016 10:22:00 GMT", "2016-01-15T10:22:00Z"),
        ("Jan 15, 2016", "2016-01-15"),
        ("January 15, 2016", "2016-01-15"),
        ("15 Jan 2016", "2016-01-15"),
        ("24 Nov 2022", "2022-11-24"),
        ("15-Jan-2016", "2016-01-15"),
        ("20240122", "2024-01-22"),
        ("13.11.2021", "2021-11-13"),
        ("01.02.2021", "2021-02-01"),  # dotted dates are day first
        ("11/13/2021", "2021-11-13"),
        ("3/14/2021 10:22", "2021-03-14T10:22:00"),  # a US Excel re-save
        ("3/14/2021 10:22 PM", "2021-03-14T22:22:00"),
        ("3/14/21", "2021-03-14"),
        ("03/04/2020", "2020-03-04"),  # month first by default
        ("1453939200", "2016-01-28T00:00:00Z"),  # Unix seconds
        ("1453939200123", "2016-01-28T00:00:00.123000Z"),  # and milliseconds
    ],
)
def test_dates_in_common_formats(raw, expected):
    assert one("joined_at", raw) == (expected, None)


def test_dates_day_first_and_json_epochs():
    assert rules.clean_date("03/04/2020", day_first=True) == ("2020-04-03", None)
    assert rules.clean_date("2020/04/03", day_first=True) == ("2020-04-03", None)
    assert rules.clean_date("3/14/2021", day_first=True) == (
        None,
        "invalid date: no month 14 (dates here are day first)",
    )
    assert rules.clean_date(1453939200) == ("2016-01-28T00:00:00Z", None)
    assert rules.clean_date(1453939200123) == ("2016-01-28T00:00:00.123000Z", None)
    assert rules.clean_date(True)[1] == "invalid date: expected text or a number"


@pytest.mark.parametrize(
    "raw",
    [
        "2021-02-29",
        "yesterday",
        "2020-13-01",
        "nan",
        "0000-00-00",
        "March 2020",
        "Tuesday",
        "10:22",
        "2016",
        "1.5.3",
        "2021-09-19 20:55:24 EST",  # a zone name that means different things in places
        "12345",
    ],
)
def test_dates_rejected(raw):
    value, why = one("joined_at", raw)
    assert value is None and why.startswith("invalid date: ")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("Y", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("n", False),
        ("0", False),
    ],
)
def test_booleans(raw, expected):
    assert one("unsubscribed", raw) == (expected, None)


def test_boolean_rejected():
    assert one("unsubscribed", "maybe")[1].startswith("invalid boolean: ")


# -- empty cells, identifiers --------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   ", "\t", " \n "])
def test_empty_and_whitespace_cells_are_left_out(blank):
    result = clean([{"customer_id": "c1", "email": blank, "First Name": blank, "city": blank}])
    assert [c.payload for c in result.customers] == [{"customer_id": "c1"}]


def test_empty_as_null_sends_null_but_never_for_identifiers():
    result = clean(
        [{"customer_id": "c1", "email": " ", "First Name": "", "city": ""}], empty_as_null=True
    )
    assert [c.payload for c in result.customers] == [
        {"customer_id": "c1", "firstname": None, "city": None}
    ]


def test_read_chunks_clean_with_types_from_the_first_chunk(tmp_path):
    """Chunks as the reader gives them, the first split as a run splits it."""
    header = ["customer_id", "email", "First Name", "points", "subscription_group_id"]
    header.append("subscription_group_subscribed")
    rows = [
        ["c1", " Bad@@Example.com ", "Ann", "1", "news", "yes"],
        ["c2", "", " Zoë ", "2", "", ""],
        ["", "\u3000", "Émile", "3", "", "y"],
        ["c4", "ok@example.com", "  ", "4", "news", "maybe"],
        ["c5", "ünï@example.com", "日本", " 5 ", "", " no "],
        ["c6", "x" * 70 + "@example.com", "Ann", "", "g", ""],
        ["c7", " Ünï@Example.com ", "日本", "7", "news", "no"],
    ] * 3
    rows[10] = [*rows[10][:3], "lots", *rows[10][4:]]  # after the chunk the types come from
    path = write_csv(tmp_path / "c.csv", rows, header)
    for options in (
        ImportOptions(on_invalid="drop-field"),
        ImportOptions(empty_as_null=True),
        ImportOptions(),
    ):
        with Source(path, ImportOptions(chunk_rows=4)) as source:
            chunks = list(source.chunks())
        mapping = resolve_mapping(chunks[0].column_names)
        types = infer_column_types(chunks[0], mapping)
        head, tail = chunks[0].split(1)
        results = [clean_chunk(c, mapping, options, types) for c in (head, tail, *chunks[1:])]
    assert types == {"points": "int"}
    # Rejects quote the cell as it was read, surrounding spaces included.
    quoted = {(r.record, r.column, r.value) for result in results for r in result.rejects}
    assert quoted >= {
        (1, "email", " Bad@@Example.com "),
        (3, "subscription_group_subscribed", "y"),
        (5, "subscription_group_subscribed", " no "),
        (11, "points", "lots"),
    }
    customers = {c.record: c.payload for result in results for c in result.customers}
    assert customers[2] == {"customer_id": "c2", "firstname": "Zoë", "points": 2}
    assert customers[7] == {
        "customer_id": "c7",
        "email": "ünï@example.com",
        "firstname": "日本",
        "points": 7,
        "subscription_groups": [{"id": "news", "subscribed": False}],
    }


def test_row_without_identifier_rejected_with_numbers():
    chunk = csv_chunk([{"email": " ", "customer_id": "", "city": "Oslo"}], start=7)
    result = clean_chunk(chunk, resolve_mapping(chunk.frame.columns))
    (reject,) = result.rejects
    assert (reject.record, reject.line) == (7, 8)
    assert reject.reason == "missing identifier: no email or customer_id"
    assert not result.customers


def test_customer_id_kept_byte_for_byte():
    ids = ["00123", "1234567890123456789", "0", "007", "NA"]
    result = clean([{"customer_id": i, "zip": z} for i, z in zip(ids, ["02134"] * 5, strict=True)])
    assert [c.payload["customer_id"] for c in result.customers] == ids
    assert {c.payload["zip"] for c in result.customers} == {"02134"}


# -- custom attribute types ----------------------------------------------------------


def test_custom_types_inferred_once_per_column():
    rows = [
        {"customer_id": "a", "points": "10", "ratio": "0.5", "vip": "yes", "since": "2020-01-02"},
        {"customer_id": "b", "points": "", "ratio": "2", "vip": "no", "since": ""},
    ]
    chunk = csv_chunk(rows)
    mapping = resolve_mapping(chunk.frame.columns)
    types = infer_column_types(chunk, mapping)
    assert types == {"points": "int", "ratio": "float", "vip": "bool", "since": "date"}
    payloads = [c.payload for c in clean_chunk(chunk, mapping, None, types).customers]
    assert payloads == [
        {"customer_id": "a", "points": 10, "ratio": 0.5, "vip": True, "since": "2020-01-02"},
        {"customer_id": "b", "ratio": 2.0, "vip": False},
    ]
    assert type(payloads[0]["points"]) is int  # a blank never turns the column into 1.0


@pytest.mark.parametrize(
    "values",
    [
        ["00123", "42"],  # leading zero
        ["+5", "6"],
        ["12345678901234567890", "1"],  # beyond 2**53
        ["nan", "1.5"],
        ["NA", "3"],
        ["inf", "2"],
    ],
)
def test_custom_type_stays_text_when_not_lossless(values):
    rows = [{"customer_id": str(i), "code": v} for i, v in enumerate(values)]
    chunk = csv_chunk(rows)
    mapping = resolve_mapping(chunk.frame.columns)
    assert infer_column_types(chunk, mapping) == {"code": "string"}
    result = clean_chunk(chunk, mapping, None, infer_column_types(chunk, mapping))
    assert [c.payload["code"] for c in result.customers] == values


def test_later_value_not_fitting_the_column_type_is_invalid():
    first = csv_chunk([{"customer_id": "a", "points": "1"}])
    mapping = resolve_mapping(first.frame.columns)
    types = infer_column_types(first, mapping)
    later = csv_chunk([{"customer_id": "b", "points": "lots"}, {"customer_id": "c", "points": "7"}])
    result = clean_chunk(later, mapping, None, types)
    assert [c.payload for c in result.customers] == [
        {"customer_id": "b"},
        {"customer_id": "c", "points": 7},
    ]
    assert result.rejects[0].reason.startswith("invalid integer: ")
    assert result.rejects[0].value == "lots"


def test_declared_types_in_mapping_win():
    chunk = csv_chunk([{"customer_id": "a", "code": "0012", "score": "3"}])
    mapping = ColumnMapping(
        {"customer_id": "customer_id", "code": "code", "score": "score"},
        types={"code": "string", "score": "float"},
    )
    types = infer_column_types(chunk, mapping)
    assert types == {}
    (c,) = clean_chunk(chunk, mapping, None, types).customers
    assert c.payload == {"customer_id": "a", "code": "0012", "score": 3.0}


def test_jsonl_values_keep_their_json_types():
    rows = [
        {"customer_id": 123, "email": "A@B.com", "points": 5, "tags": ["x"], "code": "007"},
        {"customer_id": "c2", "points": None, "vip": True, "ratio": 1.5},
    ]
    result = clean(rows, jsonl=True)
    assert [c.payload for c in result.customers] == [
        {"customer_id": "123", "email": "a@b.com", "points": 5, "tags": ["x"], "code": "007"},
        {"customer_id": "c2", "vip": True, "ratio": 1.5},
    ]


# -- subscription groups --------------------------------------------------------------


def test_subscription_groups_from_json_column():
    value = '[{"id": "news", "subscribed": true}, {"id": 7, "subscribed": "no"}]'
    assert one("subscription_groups", value) == (
        [{"id": "news", "subscribed": True}, {"id": 7, "subscribed": False}],
        None,
    )
    assert one("subscription_groups", "not json")[1].startswith("invalid subscription groups")
    assert one("subscription_groups", '[{"subscribed": true}]')[1].startswith(
        "invalid subscription groups"
    )


def test_subscription_groups_from_flat_pair():
    rows = [
        {"customer_id": "a", "subscription_group_id": "news", "subscription_group_subscribed": "y"},
        {"customer_id": "b", "subscription_group_id": "", "subscription_group_subscribed": ""},
        {"customer_id": "c", "subscription_group_id": "news", "subscription_group_subscribed": ""},
        {"customer_id": "d", "subscription_group_id": "news", "subscription_group_subscribed": "?"},
    ]
    result = clean(rows, on_invalid="skip-row")
    assert [c.payload for c in result.customers] == [
        {"customer_id": "a", "subscription_groups": [{"id": "news", "subscribed": True}]},
        {"customer_id": "b"},
    ]
    assert [(r.record, r.column) for r in result.rejects] == [
        (3, "subscription_group_subscribed"),
        (4, "subscription_group_subscribed"),
    ]


# -- --on-invalid ---------------------------------------------------------------------

BAD_ROWS = [
    {"customer_id": "a", "email": "a@example.com", "phone": "+0123", "gender": "m"},
    {"customer_id": "", "email": "not-an-email", "phone": "", "gender": "f"},
    {"customer_id": "c", "email": "", "phone": "2025550123", "gender": "?"},
    {"customer_id": "d", "email": "d@example.com", "phone": "", "gender": ""},
]


def test_on_invalid_skip_row_rejects_whole_rows_once():
    result = clean(BAD_ROWS, on_invalid="skip-row")
    assert [c.payload for c in result.customers] == [{"customer_id": "d", "email": "d@example.com"}]
    got = [(r.record, r.line, r.column, r.value, r.identifier, r.outcome) for r in result.rejects]
    assert got == [
        (1, 2, "phone", "+0123", "a@example.com", REJECTED),
        (2, 3, "email", "not-an-email", None, REJECTED),
        (3, 4, "gender", "?", "c", REJECTED),
    ]


def test_on_invalid_drop_field_is_the_default_and_keeps_customers():
    result = clean(BAD_ROWS)
    assert result == clean(BAD_ROWS, on_invalid="drop-field")
    assert [c.payload for c in result.customers] == [
        {"customer_id": "a", "email": "a@example.com", "gender": "male"},
        {"customer_id": "c", "phone_number": "+12025550123"},
        {"customer_id": "d", "email": "d@example.com"},
    ]
    got = [(r.record, r.column, r.outcome) for r in result.rejects]
    # Without a valid identifier the row cannot be kept: it is rejected whole.
    dropped = FIELD_DROPPED
    assert got == [(2, "email", REJECTED), (1, "phone", dropped), (3, "gender", dropped)]


def test_on_invalid_stop_names_the_first_bad_record():
    with pytest.raises(InvalidRecord, match=r"record 1 \(line 2\) in column 'phone'") as info:
        clean(BAD_ROWS, on_invalid="stop")
    assert "+0123" not in str(info.value)  # values are personal data: not in messages
    assert isinstance(info.value, UsageError)


# -- properties -------------------------------------------------------------------------

_cells = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", "null", "None", "NA", "0", "00123", "1.0", "yes"]),
    st.text(max_size=12),
)
_emails = st.one_of(
    _cells,
    st.emails().map(lambda e: e if len(e) < 80 else e[-60:]),
    st.sampled_from(["A@EXAMPLE.COM", " a@example.com ", "x" * 53 + "@example.com"]),
)
_phones = st.one_of(
    _cells,
    st.from_regex(r"\+?[0-9 ()-]{0,16}", fullmatch=True),
    st.sampled_from(["+12025550123", "(202) 555-0123", "+44 7911 123456", "+0123", "+12345"]),
)
_rows = st.fixed_dictionaries(
    {
        "customer_id": st.one_of(st.just(""), st.sampled_from(["1", "2", "3", "00123"])),
        "email": _emails,
        "phone": _phones,
        "First Name": _cells,
        "gender": st.one_of(_cells, st.sampled_from(["M", "female", "woman"])),
        "joined_at": st.one_of(_cells, st.sampled_from(["2020-01-01", "2020-02-30"])),
        "unsubscribed": _cells,
        "points": _cells,
    }
)


def _assert_clean(payload: dict[str, Any]) -> None:
    assert payload.get("email") or payload.get("customer_id")
    for key, value in payload.items():
        assert value is not None and value != "" and value != [], key
        assert not (isinstance(value, float) and math.isnan(value)), key
        assert not (isinstance(value, str) and value != value.strip()), key
    if "email" in payload:
        assert payload["email"] == payload["email"].lower() and len(payload["email"]) <= 64
    if "phone_number" in payload:
        assert PHONE.match(payload["phone_number"])
    orjson.dumps(payload)  # strict JSON: no NaN, no numpy types


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(_rows, min_size=1, max_size=30),
    on_invalid=st.sampled_from(["skip-row", "drop-field"]),
)
def test_property_every_row_ends_in_exactly_one_place(rows, on_invalid):
    result = clean(rows, on_invalid=on_invalid)
    customers, merged, _ = merge_repeats(result.customers)
    sent = [c.record for c in customers]
    merged_away = [r for c in customers for r in c.merged_records]
    rejected = [r.record for r in result.rejects if r.outcome == REJECTED]
    assert len(merged_away) == merged
    assert sorted(sent + merged_away + rejected) == list(range(1, len(rows) + 1))
    for c in customers:
        _assert_clean(c.payload)
    for r in result.rejects:
        assert r.reason.split(":", 1)[0] in (
            "missing identifier",
            "invalid email",
            "invalid phone number",
            "invalid firstname",
            "invalid gender",
            "invalid date",
            "invalid boolean",
            "invalid integer",
            "invalid number",
        )


# -- end to end -------------------------------------------------------------------------


def test_cleaned_rows_arrive_at_the_api(fake_api, tmp_path):
    path = write_csv(
        tmp_path / "c.csv",
        [
            {
                "Email": " Ann@Example.com",
                "Phone": "(202) 555-0123",
                "Sex": "F",
                "Joined": "2020/01/02",
            },
            {"Email": "bob@example.com", "Phone": "202-555-0199", "Sex": "m", "Joined": ""},
            {"Email": "ANN@example.com", "Phone": "", "Sex": "", "Joined": "2021-05-06"},
            {"Email": "bad", "Phone": "+12025550100", "Sex": "", "Joined": ""},
        ],
    )
    report = import_file(path, fast_options(fake_api))
    assert sorted(fake_api.state.applied, key=lambda c: c["email"]) == [
        {
            "email": "ann@example.com",
            "phone_number": "+12025550123",
            "gender": "female",
            "joined_at": "2021-05-06",
        },
        {"email": "bob@example.com", "phone_number": "+12025550199", "gender": "male"},
    ]
    assert (report.succeeded, report.rejected, report.merged_duplicates) == (2, 1, 1)
    assert report.reject_reasons == {"invalid email": 1}
    assert report.accounting_ok


def test_drop_field_counted_apart_and_stop_exits_2(cli, fake_api, tmp_path):
    path = write_csv(
        tmp_path / "c.csv",
        [{"email": "a@example.com", "phone": "+0123"}, {"email": "b@example.com", "phone": ""}],
    )
    report = import_file(path, fast_options(fake_api))
    assert (report.succeeded, report.rejected, report.dropped_fields) == (2, 0, 1)
    assert report.dropped_field_reasons == {"phone": {"invalid phone number": 1}}
    assert report.reject_reasons == {}
    assert {c["email"] for c in fake_api.state.applied} == {"a@example.com", "b@example.com"}
    assert all("phone_number" not in c for c in fake_api.state.applied)
    result = cli(
        "run",
        str(path),
        "--base-url",
        fake_api.url,
        "--on-invalid",
        "stop",
        env={"BLUESHIFT_API_KEY": "fake-api-key"},
    )
    assert result.exit_code == 2
    assert "record 1 (line 2)" in result.stderr and "Traceback" not in result.output
    result = cli(
        "run",
        str(path),
        "--base-url",
        fake_api.url,
        "--phone-region",
        "GB",
        "--empty-as-null",
        "--on-invalid",
        "drop-field",
        env={"BLUESHIFT_API_KEY": "fake-api-key"},
    )
    assert result.exit_code == 0, result.output
    assert {"email": "b@example.com", "phone_number": None} in fake_api.state.applied


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("'6812909554841", "6812909554841"),
        ('="00123"', "00123"),
        ("'00123", "00123"),
        ("00123", "00123"),
        ("A'B", "A'B"),
        ('="a"b"', 'a"b'),
    ],
)
def test_customer_id_loses_its_spreadsheet_guard_only(raw, expected):
    assert one("customer_id", raw) == (expected, None)


def test_email_loses_the_formula_guard_but_keeps_an_apostrophe():
    assert one("email", '="Ann@Example.com"') == ("ann@example.com", None)
    assert one("email", "'ann@example.com") == ("'ann@example.com", None)


def test_date_order_decided_per_column_from_the_first_chunk():
    rows = [
        {"email": "a@x.org", "joined_at": "03/04/2020", "Seen": "13/04/2020", "Paid": "04/13/2020"},
        {"email": "b@x.org", "joined_at": "2020-01-02", "Seen": "01/02/2020", "Paid": "01/02/2020"},
    ]
    chunk = csv_chunk(rows)
    mapping = resolve_mapping(chunk.frame.columns)
    types = infer_column_types(chunk, mapping)
    assert types == {"seen": "date", "paid": "date"}
    orders = decide_date_orders(chunk, mapping, types)
    assert orders == {
        "joined_at": DateOrder("month-first", "default"),
        "Seen": DateOrder("day-first", "file"),
        "Paid": DateOrder("month-first", "file"),
    }
    result = clean_chunk(chunk, mapping, None, types, orders)
    assert [c.payload for c in result.customers] == [
        {"email": "a@x.org", "joined_at": "2020-03-04", "seen": "2020-04-13", "paid": "2020-04-13"},
        {"email": "b@x.org", "joined_at": "2020-01-02", "seen": "2020-02-01", "paid": "2020-01-02"},
    ]
    forced = decide_date_orders(chunk, mapping, types, "day-first")
    assert set(forced.values()) == {DateOrder("day-first", "option")}


def test_jsonl_country_that_is_not_text_is_no_country():
    rows = [
        {"email": "a@x.org", "phone": "06 12 34 01 72", "country": "FR"},
        {"email": "b@x.org", "phone": "(415) 555-0132", "country": ["FR"]},
        {"email": "c@x.org", "phone": "(415) 555-0133", "country": 33},
    ]
    result = clean(rows, jsonl=True)
    assert [c.payload["phone_number"] for c in result.customers] == [
        "+33612340172",
        "+14155550132",
        "+14155550133",
    ]


def test_jsonl_dates_as_epoch_numbers_and_braze_times():
    result = clean(
        [
            {"external_id": "u1", "created_at": "2021-09-19 20:55:24.757 UTC"},
            {"external_id": "u2", "created_at": 1632084924},
            {"external_id": "u3", "created_at": 1632084924757},
        ],
        jsonl=True,
    )
    assert [c.payload["joined_at"] for c in result.customers] == [
        "2021-09-19T20:55:24.757000Z",
        "2021-09-19T20:55:24Z",
        "2021-09-19T20:55:24.757000Z",
    ]
    assert not result.rejects
