"""Merging repeated customers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from importer import import_file
from importer.dedupe import customer_key, merge_payloads, merge_repeats
from importer.records import Customer, CustomerBlock, encode_payload

from .conftest import fast_options, write_csv


def _c(record: int, **payload):
    return Customer(payload, record, record + 1)


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({"email": "a@x.com", "customer_id": "1"}, "a@x.com"),
        ({"customer_id": "1"}, "\0" + "1"),
        ({"customer_id": "a@x.com"}, "\0a@x.com"),  # an id never collides with an email
        ({}, None),
    ],
)
def test_customer_key(payload, key):
    assert customer_key(payload) == key


def test_merge_later_non_empty_values_win():
    merged = merge_payloads(
        {"email": "a@x.com", "firstname": "Ann", "city": "Oslo", "lastname": "Old"},
        {"email": "a@x.com", "city": "Bergen", "lastname": None},
    )
    assert merged == {"email": "a@x.com", "firstname": "Ann", "city": "Bergen", "lastname": "Old"}


def test_merge_subscription_groups_by_id():
    merged = merge_payloads(
        {"subscription_groups": [{"id": "a", "subscribed": True}, {"id": "b", "subscribed": True}]},
        {
            "subscription_groups": [
                {"id": "b", "subscribed": False},
                {"id": "c", "subscribed": True},
            ]
        },
    )
    assert merged["subscription_groups"] == [
        {"id": "a", "subscribed": True},
        {"id": "b", "subscribed": False},
        {"id": "c", "subscribed": True},
    ]


def test_merge_repeats_keeps_first_place_and_lists_merged_records():
    customers = [
        _c(1, email="a@x.com", firstname="Ann"),
        _c(2, customer_id="7", city="Oslo"),
        _c(3, email="a@x.com", lastname="Lee"),
        _c(4, email="b@x.com"),
        _c(5, customer_id="7", city="Bergen"),
        _c(6, email="a@x.com", firstname="Anne"),
    ]
    out, merged = merge_repeats(customers)
    assert merged == 3
    assert [(c.record, c.line, c.merged_records) for c in out] == [
        (1, 2, (3, 6)),
        (2, 3, (5,)),
        (4, 5, ()),
    ]
    assert out[0].payload == {"email": "a@x.com", "firstname": "Anne", "lastname": "Lee"}
    assert out[1].payload == {"customer_id": "7", "city": "Bergen"}


def test_merge_repeats_without_repeats_returns_the_same_list():
    customers = [_c(1, email="a@x.com"), _c(2, email="b@x.com")]
    out, merged = merge_repeats(customers)
    assert out is customers and merged == 0


def test_repeated_customers_sent_once_and_counted(fake_api, tmp_path):
    rows = [
        {"email": "A@x.com", "First Name": "Ann", "city": ""},
        {"email": "b@x.com", "First Name": "Bob", "city": "Oslo"},
        {"email": " a@X.COM ", "First Name": "", "city": "Bergen"},
    ]
    path = write_csv(tmp_path / "c.csv", rows)
    report = import_file(path, fast_options(fake_api))
    assert sorted(fake_api.state.applied, key=lambda c: c["email"]) == [
        {"email": "a@x.com", "firstname": "Ann", "city": "Bergen"},
        {"email": "b@x.com", "firstname": "Bob", "city": "Oslo"},
    ]
    assert (report.rows_read, report.succeeded, report.merged_duplicates) == (3, 2, 1)
    assert report.accounting_ok


def _block(payloads: list[dict], keys: list[str | None]) -> CustomerBlock:
    encoded = pa.array([encode_payload(p) for p in payloads], pa.binary())
    records = np.arange(1, len(payloads) + 1)
    return CustomerBlock(encoded, pa.array(keys, pa.string()), records, records + 1)


def test_block_without_repeats_is_returned_without_making_customers():
    block = _block([{"email": "a@x.com"}, {"customer_id": "a@x.com"}], ["a@x.com", "\0a@x.com"])
    kept, merged = merge_repeats(block)
    assert kept is block and merged == 0
    assert block._items is None  # no Customer was made to find that out
    assert list(block) == [_c(1, email="a@x.com"), _c(2, customer_id="a@x.com")]


def test_block_with_repeats_merges_like_a_list():
    payloads = [
        {"email": "a@x.com", "city": "Oslo"},
        {"email": "b@x.com"},
        {"email": "a@x.com", "firstname": "Ann"},
    ]
    block = _block(payloads, ["a@x.com", "b@x.com", "a@x.com"])
    assert block.has_repeats()
    as_list = [_c(i + 1, **p) for i, p in enumerate(payloads)]
    assert merge_repeats(block) == merge_repeats(as_list)
    kept, merged = merge_repeats(block)
    assert merged == 1 and kept[0].merged_records == (3,)


def test_block_is_a_sequence_of_customers():
    block = _block([{"email": "a@x.com"}, {"email": "b@x.com"}], ["a@x.com", "b@x.com"])
    assert len(block) == 2 and block[1].record == 2 and block[1].line == 3
    assert block[1:] == [_c(2, email="b@x.com")]
    assert block == [_c(1, email="a@x.com"), _c(2, email="b@x.com")]
    assert block[0].encoded == b'{"email":"a@x.com"}' and block[0].key == "a@x.com"
    assert _block([{"city": "Oslo"}], [None]).has_repeats()  # no key: checked one by one
    with pytest.raises(ValueError):
        CustomerBlock(pa.array([b"{}"]), pa.array([], pa.string()), np.arange(1), np.arange(1))


def test_block_with_positions_holds_only_those_rows():
    payloads = [{"email": "a@x.com"}, {"email": "b@x.com", "city": "Oslo"}, {"email": "a@x.com"}]
    encoded = pa.array([encode_payload(p) for p in payloads], pa.binary())
    keys = pa.array(["a@x.com", "b@x.com", "a@x.com"], pa.string())
    positions = np.array([1, 2])
    block = CustomerBlock(encoded, keys, np.array([2, 3]), np.array([3, 4]), positions)
    assert len(block) == 2 and not block.has_repeats()  # the repeat of row 0 is not the block's
    assert block.payloads().to_pylist() == [encode_payload(p) for p in payloads[1:]]
    assert block.merge_keys().to_pylist() == ["b@x.com", "a@x.com"]
    assert block.encoded_sizes().tolist() == [len(encode_payload(p)) for p in payloads[1:]]
    assert list(block) == [
        Customer(payloads[1], 2, 3),
        Customer(payloads[2], 3, 4),
    ]
    assert [c.key for c in block] == ["b@x.com", "a@x.com"]
    with pytest.raises(ValueError):
        CustomerBlock(encoded, keys, np.array([2]), np.array([3]), positions)
