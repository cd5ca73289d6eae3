"""The fake API's seeded faults, seen from a plain HTTP client over loopback."""

from __future__ import annotations

import time

import orjson
import pytest
import requests

from importer.fake_api import (
    BULK_PATH,
    FakeApiConfig,
    parse_fault_spec,
    parse_outage_spec,
)
from importer.sending import basic_auth_header

from .conftest import API_KEY

AUTH = {"Authorization": basic_auth_header(API_KEY), "Content-Type": "application/json"}


def _post(server, customers, key: str = API_KEY, timeout: float = 5.0) -> requests.Response:
    headers = {**AUTH, "Authorization": basic_auth_header(key)}
    body = orjson.dumps({"customers": customers})
    return requests.post(server.url + BULK_PATH, data=body, headers=headers, timeout=timeout)


def _customers(n: int, start: int = 0) -> list[dict]:
    return [
        {"email": f"f{i}@example.com", "customer_id": f"id{i}"} for i in range(start, start + n)
    ]


def test_fake_api_applies_valid_and_reports_per_record_errors(make_fake_api):
    server = make_fake_api()
    resp = _post(server, [*_customers(2), {"city": "Oslo"}, {"email": "not-an-email"}])
    assert resp.status_code == 200
    errors = resp.json()["errors"]
    assert [e["error"] for e in errors] == ["user_identifier_missing", "invalid_email"]
    assert server.state.applied_ids() == ["f0@example.com", "f1@example.com"]


def test_fake_api_wrong_key_and_revocation(make_fake_api):
    server = make_fake_api(revoke_key_after=2)
    assert _post(server, _customers(1), key="nope").status_code == 401
    assert _post(server, _customers(1)).status_code == 200
    assert _post(server, _customers(1), key=API_KEY).status_code == 401  # third request
    assert server.state.fault_counts() == {"revoked": 1}


def test_fake_api_status_faults_are_seeded(make_fake_api):
    def run(seed: int) -> list[int]:
        server = make_fake_api(faults={503: 0.3, 502: 0.2}, seed=seed)
        return [_post(server, _customers(1, i)).status_code for i in range(40)]

    first, again = run(5), run(5)
    assert first == again
    assert {200, 502, 503} <= set(first)


def test_fake_api_gateway_faults_answer_html_or_empty(make_fake_api):
    server = make_fake_api(faults={502: 1.0})
    resp = _post(server, _customers(1))
    assert resp.status_code == 502 and resp.text.startswith("<html>")
    server = make_fake_api(faults={404: 1.0})
    assert _post(server, _customers(1)).content == b""
    server = make_fake_api(faults={429: 1.0}, retry_after="7")
    assert _post(server, _customers(1)).headers["Retry-After"] == "7"
    assert server.state.applied == []


def test_fake_api_drop_closes_connection_without_applying(make_fake_api):
    server = make_fake_api(drop=1.0)
    with pytest.raises(requests.ConnectionError):
        _post(server, _customers(2))
    assert server.state.applied == []
    assert server.state.requests[0].status == 0
    assert server.state.requests[0].ids == ("f0@example.com", "f1@example.com")


def test_fake_api_applied_then_fail_stores_the_records(make_fake_api):
    server = make_fake_api(applied_then_fail=1.0, seed=1)
    outcomes = []
    for i in range(10):
        try:
            outcomes.append(_post(server, _customers(1, i)).status_code)
        except requests.ConnectionError:
            outcomes.append(0)
    assert set(outcomes) == {0, 503}
    assert len(server.state.applied) == 10


def test_fake_api_slow_answer_beyond_client_timeout(make_fake_api):
    server = make_fake_api(slow=1.0, slow_seconds=0.5)
    with pytest.raises(requests.Timeout):
        _post(server, _customers(1), timeout=0.1)
    deadline = time.monotonic() + 5
    while not server.state.applied and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.state.applied_ids() == ["f0@example.com"]  # applied, though nobody heard


def test_fake_api_outage_window(make_fake_api):
    server = make_fake_api(outage=(0.0, 0.3))
    resp = _post(server, _customers(1))
    assert resp.status_code == 503 and "<html>" in resp.text
    time.sleep(0.35)
    assert _post(server, _customers(1)).status_code == 200


def test_fake_api_batch_limit_and_bad_field(make_fake_api):
    server = make_fake_api(max_customers=3, bad_field="poison")
    assert _post(server, _customers(4)).status_code == 413
    assert _post(server, [*_customers(2), {"email": "p@example.com", "poison": 1}]).status_code == (
        400
    )
    assert _post(server, _customers(3)).status_code == 200


def test_fake_api_record_errors_mix_transient_and_permanent(make_fake_api):
    server = make_fake_api(record_errors=0.5, seed=3)
    errors = _post(server, _customers(50)).json()["errors"]
    kinds = {e["error"] for e in errors}
    assert kinds == {"internal_error", "record_rejected"}
    assert any("index" not in e for e in errors)  # some name only the customer
    assert len(server.state.applied) == 50 - len(errors)


def test_fake_api_config_is_backwards_compatible_and_validated():
    config = FakeApiConfig(api_key="k", rate=5, burst=2, faults={503: 0.1}, seed=1)
    assert config.max_customers == 50 and config.drop == 0
    with pytest.raises(ValueError):
        FakeApiConfig(faults={503: 0.7, 502: 0.7})
    assert parse_fault_spec("503=0.25") == (503, 0.25)
    assert parse_outage_spec("2:5") == (2.0, 5.0)
    for bad in ("503", "x=1", "503=2"):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)
    with pytest.raises(ValueError):
        parse_outage_spec("5:2")


def test_fake_api_latency_delays_each_answer_within_a_third(make_fake_api):
    server = make_fake_api(latency=0.3, seed=2)
    took = []
    for i in range(4):
        started = time.monotonic()
        assert _post(server, _customers(1, i)).status_code == 200
        took.append(time.monotonic() - started)
    assert min(took) >= 0.2 - 0.01  # 0.3 s less a third, never sooner
    with pytest.raises(ValueError, match="latency"):
        FakeApiConfig(latency=-1)
