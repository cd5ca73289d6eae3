"""The pyarrow fast paths of cleaning give exactly what the per-value rules give.

Text columns are cleaned in pyarrow (RE2 shapes for ASCII values, each distinct
value once); every other column goes through the per-value rules on Python
objects. These tests run the same cells both ways and compare.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer import cleaning, records
from importer.mapping import resolve_mapping
from importer.records import Customer, encode_payload
from importer.source import Chunk

_SPACES = [c for c in map(chr, range(0x3100)) if c.isspace()] + ["\u200b", "\ufeff"]
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
    "２０２５５５０１２３",
    "+0123",
    "2020-01-02",
    "２０２０-01-02",
    "2021-02-29",
    "2020-01-02T13:45+02:00",
    "M",
    "ﬀ",
    "yes",
    "１",
    "00123",
    "9007199254740993",
    "9007199254740991",
    "-9007199254740991",
    "12345678901234567",
    "-0",
    "-12",
    "0012",
    "1e3",
    '[{"id": "g1", "subscribed": true}]',
    "x" * 65,
    "é" * 65,
    "",
]
_cells = st.one_of(
    st.sampled_from(_SAMPLES),
    st.builds(
        lambda a, s, b: a + s + b,
        st.sampled_from(_SPACES),
        st.sampled_from(_SAMPLES),
        st.sampled_from([*_SPACES, ""]),
    ),
    st.text(alphabet=st.sampled_from("aZ0١۳９-+.@ ()_xnİıé日ß/:TZ\u0301\x85\u3000"), max_size=20),
)
_RULES = {
    "email": cleaning._rule_email,
    "phone": cleaning._rule_phone,
    "customer_id": cleaning._rule_text("customer_id"),
    "name": cleaning._rule_text("firstname", cleaning.MAX_NAME),
    "gender": cleaning._rule_gender,
    "bool": cleaning._rule_bool,
    "date": cleaning._rule_date,
    "int": cleaning._rule_int,
    "float": cleaning._rule_float,
    "string": cleaning._rule_string,
    "keep": cleaning._rule_keep,
    "groups": cleaning._rule_groups,
}


def _typed(values: np.ndarray) -> list[tuple[str, Any]]:
    return [(type(v).__name__, v) for v in values]


def _both_ways(rule: Any, cells: list[str], region: str) -> None:
    ctx = cleaning._Context(region)
    series = pd.Series(np.array(cells, dtype=object))
    fast_column = cleaning._prepare_column(series)
    assert fast_column.text is not None
    fast = cleaning._apply(rule, ctx, "col", fast_column)
    values, empty = cleaning._prepare(series)
    slow = cleaning._apply_objects(rule, ctx, "col", series.to_numpy(dtype=object), values, empty)
    assert fast.empty.tolist() == slow.empty.tolist()
    assert fast.bad.tolist() == slow.bad.tolist()
    assert _typed(fast.reasons) == _typed(slow.reasons)
    assert [v is cleaning._OMIT for v in fast.values] == [v is cleaning._OMIT for v in slow.values]
    kept = ~fast.bad & ~fast.empty
    assert _typed(fast.values[kept]) == _typed(slow.values[kept])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule=st.sampled_from(sorted(_RULES)),
    cells=st.lists(_cells, min_size=1, max_size=25),
    region=st.sampled_from(["US", "GB"]),
)
def test_text_fast_path_matches_per_value_rules(rule, cells, region):
    _both_ways(_RULES[rule], cells, region)


@pytest.mark.parametrize("rule", sorted(_RULES))
def test_every_sample_same_both_ways(rule):
    cells = _SAMPLES + [s.upper() for s in _SAMPLES] + [f"\u3000{s}\x85" for s in _SAMPLES]
    _both_ways(_RULES[rule], cells, "US")


def test_trimmed_characters_are_those_str_strip_removes():
    spaces = "".join(filter(str.isspace, map(chr, range(0x110000))))
    assert spaces == cleaning._WHITESPACE


def test_whole_frame_conversion_matches_column_by_column():
    frame = pd.DataFrame(
        {
            "a": np.array([" x ", "", "\u3000y", "z"], dtype=object),
            "b": np.array(["1", None, np.nan, " 2\x85"], dtype=object),
            "c": np.array(["p", 3, "q", "r"], dtype=object),  # not text: prepared alone
        }
    )
    prepared = cleaning._prepare_frame(frame, ["a", "b", "c"])
    for src in frame.columns:
        alone = cleaning._prepare_column(frame[src])
        assert prepared[src].empty.tolist() == alone.empty.tolist()
        assert prepared[src].values.tolist() == alone.values.tolist()
        assert list(prepared[src].raw) == list(frame[src])
    assert prepared["c"].text is None


def test_bytes_are_not_taken_for_text():
    frame = pd.DataFrame({"a": np.array(["x", b"y"], dtype=object)})
    assert cleaning._prepare_frame(frame, ["a"])["a"].text is None


def test_customers_built_in_bulk_equal_constructed_ones():
    encoded = [b'{"email":"a@example.com"}', b'{"customer_id":"c2","gender":"male"}']
    built = records.new_customers(encoded, ["a@example.com", "\0c2"], [1, 2], [2, 3])
    assert built == [
        Customer({"email": "a@example.com"}, 1, 2),
        Customer({"customer_id": "c2", "gender": "male"}, 2, 3),
    ]
    assert built[0].encoded is encoded[0] and built[1].merged_records == ()
    assert [c.key for c in built] == ["a@example.com", "\0c2"]
    assert [c.identifier for c in built] == ["a@example.com", "c2"]
    with pytest.raises(AttributeError):
        built[0].record = 5  # type: ignore[misc]


def _cleaned_rows(values: list, empty: list[bool]) -> cleaning._Cleaned:
    n = len(values)
    rows = cleaning._object_array(values)
    none = np.full(n, None, object)
    return cleaning._Cleaned(rows, none, none, none, np.array(empty), np.zeros(n, bool))


def _cleaned_distinct(distinct: list, codes: list[int]) -> cleaning._Cleaned:
    n = len(codes)
    none = np.full(n, None, object)
    codes_ = np.array(codes)
    empty = codes_ == len(distinct) - 1
    return cleaning._Cleaned(
        None, none, none, none, empty, np.zeros(n, bool), cleaning._object_array(distinct), codes_
    )


@pytest.mark.parametrize("empty_as_null", [False, True])
def test_payloads_encoded_column_wise_equal_orjson_of_the_dict(empty_as_null):
    omit = cleaning._OMIT
    odd = 'it\'s "odd"\n'
    fields = {
        "email": _cleaned_distinct(["a@x.org", "b@x.org", omit], [0, 1, 2, 1]),
        "customer_id": _cleaned_rows(["c1", omit, "c\u00e9\t3", "c4"], [False, True, False, False]),
        odd: _cleaned_distinct([1.5, float("nan"), True, omit], [0, 1, 3, 2]),
        "ünïcode": _cleaned_rows(
            [[{"subscribed": False, "id": "g"}], omit, None, {"z": 1, "a": [{"y": 1, "b": 2}]}],
            [False, True, False, False],
        ),
        "big": _cleaned_distinct([2**60, "\u2028 \\ \x00", omit], [2, 0, 1, 2]),
    }
    order = list(fields)
    keep = np.array([True, True, True, True])
    records, lines = np.arange(1, 5), np.arange(2, 6)
    built = cleaning._customers(fields, order, keep, records, lines, empty_as_null)
    for pos, customer in enumerate(built):
        expected = {}
        for f in order:
            c = fields[f]
            value = c.values[pos]
            if value is omit and empty_as_null and c.empty[pos] and f not in cleaning.IDENTIFIERS:
                value = None
            if value is not omit:
                expected[f] = value
        assert customer.encoded == orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
        assert customer.encoded == encode_payload(customer.payload)
        assert (customer.record, customer.line) == (pos + 1, pos + 2)
    assert [c.key for c in built] == ["a@x.org", "b@x.org", "\0c\u00e9\t3", "b@x.org"]


def test_kept_rows_only_are_encoded():
    fields = {"email": _cleaned_distinct(["a@x.org", "b@x.org", cleaning._OMIT], [0, 1, 0])}
    keep = np.array([False, True, True])
    built = cleaning._customers(fields, ["email"], keep, np.arange(1, 4), np.arange(2, 5), False)
    assert [(c.encoded, c.record) for c in built] == [
        (b'{"email":"b@x.org"}', 2),
        (b'{"email":"a@x.org"}', 3),
    ]


def test_collector_state_is_restored():
    assert gc.isenabled()
    with records.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with records.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_plain_dates_same_both_ways():
    years = [0, 1, 4, 1582, 1899, 1900, 2000, 2001, 2024, 2100, 9999]
    cells = [f"{y:04d}-{m:02d}-{d:02d}" for y in years for m in range(14) for d in range(33)]
    _both_ways(cleaning._rule_date, cells, "US")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=12)), max_size=30), st.integers(0, 3))
def test_strings_encoded_in_pyarrow_equal_orjson(values, offset):
    # Sliced, so the array's buffers start before its first value.
    text = pa.array(["pad"] * offset + values, pa.string()).slice(offset)
    got = cleaning._json_strings(b'"k":', text).to_pylist()
    assert got == [None if v is None else b'"k":' + orjson.dumps(v) for v in values]


def test_address_without_at_sign_gets_the_libraries_reason():
    with pytest.raises(EmailNotValidError) as caught:
        validate_email("jo-at-example.com", check_deliverability=False)
    expected = f"invalid email: {caught.value}"
    for value in ("jo-at-example.com", "", "a b", "é-at-x.org"):
        assert cleaning._email_from_text(value) == (None, expected)
    # With an @-sign or an angle bracket of any kind, the library decides.
    for value in ("jo＠example.com", "Jo <jo-at-example.com>", "jo@"):
        assert cleaning._email_from_text(value) == cleaning._email_by_library(value.lower())


def test_text_fields_encoded_in_pyarrow_equal_those_encoded_by_orjson():
    omit = cleaning._OMIT
    distinct = ["a@x.org", 'q"uote', "tab\there", "é", omit]
    codes = [0, 1, 2, 3, 4, 0]
    plain = _cleaned_distinct(distinct, codes)
    as_text = _cleaned_distinct(distinct, codes)
    as_text.text_omitted = np.array([v is omit for v in distinct])
    keep = np.array([True, True, True, True, False, True])
    records, lines = np.arange(1, 7), np.arange(2, 8)
    one = cleaning._customers({"email": plain}, ["email"], keep, records, lines, False)
    two = cleaning._customers({"email": as_text}, ["email"], keep, records, lines, False)
    assert as_text.text() is not None
    assert two.payloads().to_pylist() == one.payloads().to_pylist()
    assert (
        two.merge_keys().to_pylist()
        == one.merge_keys().to_pylist()
        == ["a@x.org", 'q"uote', "tab\there", "é", "a@x.org"]
    )


@pytest.mark.parametrize("rule", ["email", "phone", "customer_id", "name", "string", "keep"])
def test_columns_of_mostly_different_values_same_row_by_row(rule):
    # Enough different values that the column is cleaned row by row, not per distinct value.
    cells = [
        f"{sample[:30]}{i}" if i % 3 else sample
        for i, sample in enumerate(_SAMPLES * (cleaning._SAMPLE // len(_SAMPLES) + 2))
    ]
    cells[5] = cells[9] = ""
    cells[7] = "  \u3000"
    text = pa.array(cells, pa.string())
    assert cleaning._by_row(_RULES[rule], text)
    _both_ways(_RULES[rule], cells, "US")
    _both_ways(_RULES[rule], [c for c in cells if c.strip()], "GB")  # no empty cell


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.text(alphabet="0123 .()-+é日", max_size=12)), st.booleans()
        ),
        max_size=30,
    )
)
def test_separators_taken_out_of_the_bytes_equal_str_replace(cells):
    values = [v for v, _ in cells]
    marks = np.array([m for _, m in cells], bool)
    plain = [None if v is None else v.translate(str.maketrans("", "", " .()-")) for v in values]
    expected = ["+1" + v if m and v is not None else v for v, m in zip(plain, marks, strict=True)]
    for arr in (pa.array(values, pa.string()), pa.array(["x", *values], pa.string()).slice(1)):
        for mask, want in ((None, plain), (marks, expected)):
            got = cleaning._digits(arr, mask)
            got.validate(full=True)
            assert got.to_pylist() == want


_TEXTS = st.lists(
    st.one_of(st.none(), st.text(alphabet=st.sampled_from(["a", "é", "-", ".", *_SPACES]))),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(_TEXTS, st.integers(0, 2))
def test_trimming_only_where_needed_equals_trimming_everything(values, offset):
    text = pa.array(["x"] * offset + values, pa.string()).slice(offset)
    expected = pc.utf8_trim(text, characters=cleaning._WHITESPACE)
    assert cleaning._trim(text).to_pylist() == expected.to_pylist()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.sampled_from(list("xn-.atesrplocid@é")), max_size=14)
        | st.sampled_from(["a@b.test", "a@xn--b.com", "xn--@b.org", "a@localhost", "a@b.com"]),
        max_size=20,
    )
)
def test_addresses_for_the_library_include_every_idna_and_special_use_one(values):
    flagged = cleaning._idna_or_special(pa.array(values, pa.string())).tolist()
    for value, flag in zip(values, flagged, strict=True):
        if "xn--" in value or value.endswith(cleaning._SPECIAL_SUFFIXES):
            assert flag, value
        elif flag:  # flagged for sharing the last four bytes of a special-use name
            assert value.encode()[-4:] in {s[-4:].encode() for s in cleaning._SPECIAL_SUFFIXES}


def test_integer_fields_encoded_in_pyarrow_equal_those_encoded_by_orjson():
    omit = cleaning._OMIT
    distinct = [0, -5, 2**53, 17, omit]
    codes = [0, 1, 2, 3, 4, 2]
    plain = _cleaned_distinct(distinct, codes)
    as_ints = _cleaned_distinct(distinct, codes)
    as_ints.text_omitted = np.array([v is omit for v in distinct])
    as_ints.int_values = True
    keep = np.ones(6, bool)
    records, lines = np.arange(1, 7), np.arange(2, 8)
    fields = {"email": _cleaned_distinct(["a@x.org", omit], [0] * 6)}
    one = cleaning._customers({**fields, "n": plain}, ["email", "n"], keep, records, lines, False)
    two = cleaning._customers({**fields, "n": as_ints}, ["email", "n"], keep, records, lines, False)
    assert as_ints.text() is None
    assert two.payloads().to_pylist() == one.payloads().to_pylist()
    assert [c.payload.get("n") for c in two] == [0, -5, 2**53, 17, None, 2**53]


def test_integer_column_cleaned_in_pyarrow_gives_plain_json_numbers():
    chunk_cells = ["7", "-0", "0012", "", "9007199254740992", "12"]
    frame = pd.DataFrame({"email": [f"u{i}@x.org" for i in range(6)], "n": chunk_cells})
    chunk = Chunk(frame, np.arange(1, 7), np.arange(2, 8))
    mapping = resolve_mapping(list(frame.columns))
    result = cleaning.clean_chunk(chunk, mapping, None, {"n": "int"})
    assert [c.encoded for c in result.customers] == [
        b'{"email":"u0@x.org","n":7}',
        b'{"email":"u1@x.org","n":0}',
        b'{"email":"u3@x.org"}',
        b'{"email":"u4@x.org","n":9007199254740992}',
        b'{"email":"u5@x.org","n":12}',
    ]
    assert [(r.record, r.value) for r in result.rejects] == [(3, "0012")]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.binary(max_size=3)), min_size=1, max_size=9)))
def test_pieces_concatenated_in_groups_equal_joining_each_row(rows):
    # Rows whose pieces are all null must stay: pyarrow's "skip" would drop them.
    width = max((len(r) for r in rows), default=1)
    rows = [r + [None] * (width - len(r)) for r in rows]
    columns = [pa.array([r[j] for r in rows], pa.binary()) for j in range(width)]
    got = cleaning._concatenated([cleaning._OPEN, *columns]).to_pylist()
    assert got == [b"{" + b"".join(p for p in r if p is not None) for r in rows]


def test_values_at_positions_equal_the_values_of_those_rows():
    omit = cleaning._OMIT
    distinct = _cleaned_distinct(["a", "b", omit], [2, 0, 1, 0])
    as_text = _cleaned_distinct(["a", "b", omit], [2, 0, 1, 0])
    as_text.text_omitted = np.array([False, False, True])
    assert as_text.text() is not None
    as_text.distinct = None  # only the pyarrow text is left
    rows = _cleaned_rows(["x", omit, "z", "w"], [False, True, False, False])
    positions = np.array([3, 0, 2])
    for c in (distinct, as_text, rows):
        got = c.values_at(positions)  # before .values, which makes every row's value
        assert got == c.values[positions].tolist()
    assert as_text.values_at(positions) == ["a", omit, "b"]
