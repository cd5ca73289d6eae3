"""Properties of the cleaning rules and of ``clean_chunk``, which applies each rule
once per distinct value of a column: every cell is cleaned exactly as its rule says
on its own, rules are idempotent, and shortcuts inside a rule agree with the library
it stands in for.
"""

from __future__ import annotations

import math
from datetime import date
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer.cleaning import clean_chunk, rules
from importer.mapping import ColumnMapping, resolve_mapping
from importer.records import FIELD_DROPPED, encode_payload
from importer.source import Chunk

_SPACES = [c for c in map(chr, range(0x3100)) if c.isspace()]
_SAMPLES = [
    "a@example.com",
    "Ann@Example.COM",
    "a@xn--bcher-kva.com",
    "xn--a@example.com",
    "a.xn--b@example.com",
    "a@foo.test",
    "a@foo.local",
    "İnci@example.com",
    "straße@example.com",
    "x" * 53 + "@example.com",
    "é" * 60 + "@ex.com",
    "e\u0301@example.com",
    "NORA.MÜLLER.2@MAIL.EXAMPLE.ORG",
    "ŸVES.ÀÉÎ.õü@x.io",
    "çağrı@örnek.com",
    "x×y@ex.com",
    "ß.ſ.ĳ@x.de",
    "ẞ@x.de",
    "ǅ@x.io",
    "é@xn--bcher-kva.com",
    "é@foo.test",
    "é" * 52 + "@example.com",
    "é" * 51 + "@example.com",
    "+12025550123",
    "(202) 555-0123",
    "202.555.0123",
    "+44 7911 123456",
    "٢٠٢٥٥٥٠١٢٣",
    "20٢5550123",
    "２０２５５５０１２３",
    "+0123",
    "2020-01-02",
    "２０２０-01-02",
    "2021-02-29",
    "0000-01-01",
    "2020-01-02T13:45+02:00",
    "M",
    "ﬀ",
    "yes",
    "１",
    "00123",
    "'00123",
    '="00123"',
    "9007199254740993",
    "9007199254740991",
    "-9007199254740991",
    "12345678901234567",
    "-0",
    "-12",
    "0012",
    "1e3",
    "1e400",
    '[{"id": "g1", "subscribed": true}]',
    '{"id": 42, "subscribed": "no"}',
    "x" * 65,
    "é" * 65,
]
_cells = st.one_of(
    st.sampled_from(_SAMPLES),
    st.builds(
        lambda a, s, b: a + s + b,
        st.sampled_from(_SPACES),
        st.sampled_from(_SAMPLES),
        st.sampled_from([*_SPACES, ""]),
    ),
    st.sampled_from(_SPACES),
    st.text(alphabet=st.sampled_from("aZ0١۳９-+.@ ()_xnİıé日ß/:TZ\u0301\x85\u3000"), max_size=20),
)
#: JSON values as a JSONL chunk holds them (None: null or a missing key).
_json_values = st.one_of(
    _cells,
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 0.0, 1.0, 2**53, 2**53 + 1, 1.5, -0.0]),
    st.lists(st.sampled_from(["x", 1, {"id": "g"}]), max_size=2),
    st.sampled_from([{"id": "news"}, {"id": 7, "subscribed": "yes"}, {"x": 1}]),
)
#: Each rule with the field it cleans (custom attributes: their column type, or none).
_TARGETS: dict[str, tuple[Any, str, str | None]] = {
    "email": (rules.clean_email, "email", None),
    "phone": (lambda v: rules.clean_phone(v, "US"), "phone_number", None),
    "customer_id": (rules.FIELD_RULES["customer_id"], "customer_id", None),
    "name": (rules.FIELD_RULES["firstname"], "firstname", None),
    "gender": (rules.FIELD_RULES["gender"], "gender", None),
    "bool": (rules.clean_bool, "unsubscribed", None),
    "date": (rules.clean_date, "joined_at", None),
    "int": (rules.clean_int, "n", "int"),
    "float": (rules.clean_float, "n", "float"),
    "string": (rules.TYPE_RULES["string"], "n", "string"),
    "keep": (rules.keep_value, "n", None),
    "groups": (rules.clean_groups, "subscription_groups", None),
}


def _typed(value: Any) -> Any:
    """A value with its type, so that ``1``, ``1.0`` and ``True`` differ."""
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def _column(cells: list[Any]) -> np.ndarray:
    """A 1-d object array of ``cells``, even when they are lists of one length."""
    out = np.empty(len(cells), object)
    for i, cell in enumerate(cells):
        out[i] = cell
    return out


def _each_cell_as_its_rule_says(name: str, cells: list[Any]) -> None:
    """Clean ``cells`` as one column of a chunk; each row must get what the rule gives alone."""
    rule, target, kind = _TARGETS[name]
    n = len(cells)
    # The identifier is always valid, so every row stays a customer or drops only the field.
    ident = "email" if target == "customer_id" else "customer_id"
    frame = pd.DataFrame(
        {
            ident: np.array([f"u{i}@example.com" for i in range(n)], dtype=object),
            "cell": _column(cells),
        }
    )
    records = np.arange(1, n + 1)
    mapping = ColumnMapping({ident: ident, "cell": target}, types={target: kind} if kind else {})
    result = clean_chunk(Chunk(frame, records, records + 1), mapping)
    assert [c.record for c in result.customers] == list(range(1, n + 1))
    dropped = {r.record: r for r in result.rejects}
    assert all(r.outcome == FIELD_DROPPED and r.column == "cell" for r in result.rejects)
    for i, (cell, customer) in enumerate(zip(cells, result.customers, strict=True)):
        if isinstance(cell, str):
            cell = cell.strip()
        if cell is None or cell == "":
            assert target not in customer.payload and i + 1 not in dropped
            continue
        value, reason = rule(cell)
        if reason is None:
            assert _typed(customer.payload[target]) == _typed(value)
            assert i + 1 not in dropped
        else:
            assert target not in customer.payload
            assert dropped[i + 1].reason == reason
            assert dropped[i + 1].value is cells[i] or dropped[i + 1].value == cells[i]
        assert customer.encoded == encode_payload(customer.payload)
        assert orjson.loads(customer.encoded) == customer.payload


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_TARGETS)), cells=st.lists(_cells, min_size=1, max_size=25))
def test_property_csv_cells_cleaned_once_per_distinct_value_as_one_by_one(name, cells):
    _each_cell_as_its_rule_says(name, cells)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(_TARGETS)), cells=st.lists(_json_values, max_size=25))
def test_property_jsonl_values_cleaned_as_one_by_one(name, cells):
    _each_cell_as_its_rule_says(name, cells)


@pytest.mark.parametrize("name", sorted(_TARGETS))
def test_every_sample_cleaned_as_its_rule_says(name):
    padded = [f"\u3000{s}\x85" for s in _SAMPLES]
    _each_cell_as_its_rule_says(name, _SAMPLES + [s.upper() for s in _SAMPLES] + padded)


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(_TARGETS)), value=_json_values)
def test_property_rules_answer_once_and_are_idempotent(name, value):
    rule = _TARGETS[name][0]
    if value is None or (isinstance(value, str) and (value != value.strip() or not value)):
        return  # rules see trimmed, non-empty cells only
    clean, reason = rule(value)
    if reason is not None:
        assert clean is None and reason.startswith("invalid ")
        return
    assert rule(clean) == (clean, None)
    assert not (isinstance(clean, float) and not math.isfinite(clean))
    if name == "phone":
        assert rules.E164.fullmatch(clean), clean  # ASCII digits only
    if name == "email":
        assert clean == clean.lower() and len(clean) <= rules.MAX_EMAIL


_addresses = st.one_of(
    st.sampled_from(_SAMPLES),
    st.emails(),
    st.text(alphabet=st.sampled_from(list("xn-.atesrplocid@éÜß_+")), max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(_addresses)
def test_property_email_shortcut_agrees_with_the_library(value):
    value = value.strip()
    if not value:
        return
    try:
        normalized = validate_email(value.lower(), check_deliverability=False).normalized.lower()
        expected = normalized if len(normalized) <= rules.MAX_EMAIL else None
    except EmailNotValidError:
        expected = None
    assert rules.clean_email(value)[0] == expected


_phones = st.one_of(
    st.sampled_from(_SAMPLES),
    st.from_regex(r"\+?1?[ (]?[2-9][0-9]{2}[) .-]{0,2}[2-9][0-9]{2}[ .-]?[0-9]{4}", fullmatch=True),
    st.from_regex(r"\+44 ?7[0-9]{3} ?[0-9]{6}", fullmatch=True),
    st.text(alphabet=st.sampled_from("0123456789 +-.()٢"), max_size=16),
)


@settings(max_examples=300, deadline=None)
@given(_phones, st.sampled_from(["US", "CA", "GB", "DE"]))
def test_property_phone_shortcut_agrees_with_the_library(value, region):
    value = value.strip()
    if not value:
        return
    # 00 is read as the international prefix whatever the region's own.
    read = "+" + value[2:] if value.startswith("00") else value
    assert rules.clean_phone(value, region)[0] == rules._phone_by_library(read, region)[0]


def test_address_without_at_sign_gets_the_libraries_reason():
    with pytest.raises(EmailNotValidError) as caught:
        validate_email("jo-at-example.com", check_deliverability=False)
    expected = f"invalid email: {caught.value}"
    for value in ("jo-at-example.com", "a b", "é-at-x.org"):
        assert rules.clean_email(value) == (None, expected)
    # With an @-sign or an angle bracket of any kind, the library decides.
    for value in ("jo＠example.com", "Jo <jo-at-example.com>", "jo@"):
        assert rules.clean_email(value) == rules._email_by_library(value.lower())


def test_plain_dates_valid_exactly_when_the_day_exists():
    years = [0, 1, 4, 1582, 1899, 1900, 2000, 2001, 2024, 2100, 9999]
    for text in (f"{y:04d}-{m:02d}-{d:02d}" for y in years for m in range(14) for d in range(33)):
        try:
            date.fromisoformat(text)
            expected: tuple[Any, Any] = (text, None)
        except ValueError:
            expected = (None, "invalid date: no such date, or not in a known format")
        assert rules.clean_date(text) == expected


def test_dates_out_of_range_in_utc_are_invalid_not_a_crash():
    assert rules.clean_date("0001-01-01T00:00+02:00") == (None, "invalid date: out of range in UTC")
    assert rules.clean_date("9999-12-31T23:00-05:00")[1] == "invalid date: out of range in UTC"
    assert rules.clean_date("2020/01/02") == ("2020-01-02", None)


def test_integer_column_gives_plain_json_numbers():
    cells = ["7", "-0", "0012", "", "9007199254740992", "12"]
    frame = pd.DataFrame({"email": [f"u{i}@x.org" for i in range(6)], "n": cells})
    chunk = Chunk(frame, np.arange(1, 7), np.arange(2, 8))
    mapping = resolve_mapping(list(frame.columns))
    result = clean_chunk(chunk, mapping, None, {"n": "int"})
    assert [c.encoded for c in result.customers] == [
        b'{"email":"u0@x.org","n":7}',
        b'{"email":"u1@x.org","n":0}',
        b'{"email":"u2@x.org"}',
        b'{"email":"u3@x.org"}',
        b'{"email":"u4@x.org","n":9007199254740992}',
        b'{"email":"u5@x.org","n":12}',
    ]
    assert [(r.record, r.value) for r in result.rejects] == [(3, "0012")]
