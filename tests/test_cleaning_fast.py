"""The pyarrow fast paths of cleaning give exactly what the per-value rules give.

Text columns are cleaned in pyarrow (RE2 shapes for ASCII values, each distinct
value once); every other column goes through the per-value rules on Python
objects. These tests run the same cells both ways and compare.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from importer import cleaning
from importer.records import Customer

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


def test_whitespace_list_is_what_isspace_accepts():
    # The trimmed set is written out in cleaning.py; it must stay what str.strip() removes.
    every = "".join(c for c in map(chr, range(0x110000)) if c.isspace())
    assert every == cleaning._WHITESPACE


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
    payloads = [{"email": "a@example.com"}, {"customer_id": "c2", "gender": "male"}]
    built = cleaning._new_customers(payloads, [1, 2], [2, 3])
    assert built == [Customer(payloads[0], 1, 2), Customer(payloads[1], 2, 3)]
    assert built[0].payload is payloads[0] and built[1].merged_records == ()
    with pytest.raises(AttributeError):
        built[0].record = 5  # type: ignore[misc]


def test_payload_builder_keeps_key_order_and_odd_names():
    keys = ("email", 'it\'s "odd"', "ünïcode", "x")
    build = cleaning._payload_builder(keys)
    rows = build(["a", "b"], [1, 2], [None, True], [[1], {}])
    assert [list(r.items()) for r in rows] == [
        [("email", "a"), ('it\'s "odd"', 1), ("ünïcode", None), ("x", [1])],
        [("email", "b"), ('it\'s "odd"', 2), ("ünïcode", True), ("x", {})],
    ]


def test_collector_state_is_restored():
    assert gc.isenabled()
    with cleaning._collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cleaning._collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
