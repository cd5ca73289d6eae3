"""Merging repeated customers."""

from __future__ import annotations

import pytest

from importer import import_file
from importer.dedupe import merge_payloads, merge_repeats
from importer.records import Customer, customer_key

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
