"""Merging repeated customers."""

from __future__ import annotations

import csv

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
    out, merged, _ = merge_repeats(customers)
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
    out, merged, _ = merge_repeats(customers)
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


def test_merge_repeats_never_merges_one_email_with_two_customer_ids():
    customers = [
        _c(1, email="a@x.com", customer_id="cus_A", city="Oslo"),
        _c(2, email="a@x.com", customer_id="cus_B"),
        _c(3, email="a@x.com", city="Bergen"),  # no id: the first of the email's customers
        _c(4, email="a@x.com", customer_id="cus_B", firstname="Bo"),
        _c(5, email="a@x.com", customer_id="cus_C"),
    ]
    out, merged, conflicts = merge_repeats(customers)
    assert merged == 2
    assert [(c.record, c.merged_records, c.payload.get("customer_id")) for c in out] == [
        (1, (3,), "cus_A"),
        (2, (4,), "cus_B"),
        (5, (), "cus_C"),
    ]
    assert out[0].payload["city"] == "Bergen" and out[1].payload["firstname"] == "Bo"
    # Both rows of each conflict are listed, the first one once.
    assert [(r.record, r.value, r.outcome, r.identifier) for r in conflicts] == [
        (1, "cus_A", "conflict", "a@x.com"),
        (2, "cus_B", "conflict", "a@x.com"),
        (5, "cus_C", "conflict", "a@x.com"),
    ]
    assert "customer_id cus_B (record 2)" in conflicts[0].reason
    assert "customer_id cus_A (record 1)" in conflicts[2].reason


def test_stripe_like_export_sends_every_customer_id_and_reports_the_conflict(fake_api, tmp_path):
    """Stripe's customers export holds several customers per email; none may vanish."""
    header = ["id", "Email", "Name", "Created (UTC)"]
    rows = [
        ["cus_P1aaaaaaaaaaaa", "pat@example.com", "Pat", "2023-02-01 10:00:00"],
        ["cus_P2bbbbbbbbbbbb", "pat@example.com", "Pat", "2023-05-07 11:30:00"],
        ["cus_Q1cccccccccccc", "quinn@example.com", "Quinn", "2023-06-01 09:00:00"],
    ]
    path = write_csv(tmp_path / "stripe.csv", rows, header)
    options = fast_options(
        fake_api, column_map={"id": "customer_id"}, rejects_path=tmp_path / "rejects.csv"
    )
    report = import_file(path, options)
    sent = sorted((c["customer_id"], c["email"]) for c in fake_api.state.applied)
    assert sent == [
        ("cus_P1aaaaaaaaaaaa", "pat@example.com"),
        ("cus_P2bbbbbbbbbbbb", "pat@example.com"),
        ("cus_Q1cccccccccccc", "quinn@example.com"),
    ]
    assert (report.succeeded, report.rejected, report.merged_duplicates) == (3, 0, 0)
    assert report.identifier_conflicts == 2 and report.accounting_ok
    with (tmp_path / "rejects.csv").open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert [(line["id"], line["_line"]) for line in lines] == [(rows[0][0], "2"), (rows[1][0], "3")]
    assert all(line["_outcome"] == "conflict" for line in lines)


def test_merge_repeats_names_every_platform_record_id_it_merges():
    customers = [
        _c(1, email="a@x.com", stripe_id="cus_A", city="Oslo"),
        _c(2, email="a@x.com", city="Bergen"),  # no record id: merged quietly
        _c(3, email="a@x.com", stripe_id="cus_B"),
        _c(4, email="a@x.com", stripe_id="cus_A"),  # the first row's id again: no conflict
        _c(5, email="a@x.com", stripe_id="cus_C"),
        _c(6, email="b@x.com", stripe_id="cus_D"),
    ]
    out, merged, conflicts = merge_repeats(customers, "stripe_id")
    # One profile per email: Blueshift keys it by email, so both would land on it anyway.
    assert merged == 4
    assert [(c.record, c.merged_records) for c in out] == [(1, (2, 3, 4, 5)), (6, ())]
    assert out[0].payload == {"email": "a@x.com", "stripe_id": "cus_C", "city": "Bergen"}
    assert [(r.record, r.column, r.value, r.outcome) for r in conflicts] == [
        (1, "stripe_id", "cus_A", "conflict"),
        (3, "stripe_id", "cus_B", "conflict"),
        (5, "stripe_id", "cus_C", "conflict"),
    ]
    assert "stripe_id cus_B (record 3)" in conflicts[0].reason
    assert "stripe_id cus_A (record 1)" in conflicts[1].reason
    assert "merged into one profile" in conflicts[2].reason
    # Without a record id field the same rows merge without a word.
    assert merge_repeats(customers)[2] == []
