from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from importer.batching import BatchPacker, pack_batches
from importer.records import Customer, encode_payload


def _customers(n: int, start: int = 0) -> list[Customer]:
    return [Customer({"email": f"u{i}@example.com"}, i + 1, i + 2) for i in range(start, start + n)]


@given(st.lists(st.integers(min_value=0, max_value=130), max_size=12), st.integers(1, 50))
def test_batching_full_batches_across_chunks(chunk_sizes, size):
    packer = BatchPacker(size)
    batches = []
    start = 0
    for n in chunk_sizes:
        batches.extend(packer.add(_customers(n, start)))
        start += n
    batches.extend(packer.flush())
    assert sum(len(b) for b in batches) == start
    assert all(len(b) == size for b in batches[:-1])
    assert all(1 <= len(b) <= size for b in batches)
    records = [c.record for b in batches for c in b.customers]
    assert records == list(range(1, start + 1))


def test_batching_never_more_than_50():
    batches = list(pack_batches(_customers(260), size=500))
    assert [len(b) for b in batches] == [50, 50, 50, 50, 50, 10]


def test_batching_byte_ceiling_and_strict_json_body():
    big = [Customer({"email": f"u{i}@example.com", "note": "x" * 400}, i, i) for i in range(20)]
    batches = list(pack_batches(big, max_bytes=2000))
    for b in batches:
        assert len(b.body()) <= 2000
        assert orjson.loads(b.body())["customers"] == [c.payload for c in b.customers]
    assert sum(len(b) for b in batches) == 20


def test_batching_split_keeps_order():
    (batch,) = pack_batches(_customers(7))
    a, b = batch.split()
    assert [c.record for c in a.customers + b.customers] == list(range(1, 8))
    assert len(a) == 4 and a.body() + b.body() != batch.body()
    assert (
        orjson.loads(a.body())["customers"] + orjson.loads(b.body())["customers"]
        == (orjson.loads(batch.body())["customers"])
    )


def test_batching_encoding_does_not_depend_on_key_order():
    # The state hashes these bytes to tell a changed customer from an unchanged one.
    a = {"email": "a@example.com", "attrs": {"x": 1, "y": [{"b": 2, "a": 1}]}, "city": "Oslo"}
    b = {"city": "Oslo", "attrs": {"y": [{"a": 1, "b": 2}], "x": 1}, "email": "a@example.com"}
    assert encode_payload(a) == encode_payload(b)
    assert orjson.loads(encode_payload(a)) == a


def test_batching_encoded_payloads_hold_only_their_own_bytes():
    import tracemalloc

    payload = {"email": "ana.smith@example.com", "customer_id": "C00000001", "firstname": "Ana"}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        encoded = [encode_payload(payload) for _ in range(1000)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert encoded[0] == orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    # Each bytes object is about 33 bytes of header plus the JSON; a 4 KiB buffer would show.
    assert held < 1000 * (len(encoded[0]) + 200)


def test_customer_is_immutable_and_encoded_once_when_made():
    customer = Customer({"email": "a@example.com", "customer_id": "c1"}, 1, 2)
    assert customer.encoded == encode_payload(customer.payload)
    assert customer.encoded is customer.encoded
    assert (customer.key, customer.identifier) == ("a@example.com", "a@example.com")
    assert Customer({"customer_id": "c1"}, 1, 2).key == "\0c1"
    assert customer == Customer({"customer_id": "c1", "email": "a@example.com"}, 1, 2)
    assert "a@example.com" not in repr(customer)  # personal data stays out of logs
    with pytest.raises(dataclasses.FrozenInstanceError):
        customer.record = 5  # type: ignore[misc]
