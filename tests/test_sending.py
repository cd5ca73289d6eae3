"""The sender: response policy as pure functions, and the retry loop over loopback HTTP.

The loop tests use a scripted aiohttp server on 127.0.0.1 that answers a
fixed sequence of responses, so each case (HTML bodies, unreadable 2xx,
Retry-After values, unattributable errors) is exact.
"""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from importer.batching import pack_batches
from importer.errors import ApiKeyRejected, ApiUnavailable
from importer.options import ImportOptions
from importer.records import Batch, Customer
from importer.sending import (
    BISECT,
    FAIL,
    OK,
    RETRY,
    RETRY_FEW,
    SPLIT,
    STOP,
    Sender,
    attribute_errors,
    classify_status,
    error_message,
    is_transient_record_error,
    parse_retry_after,
    retry_wait,
    retry_waits,
)

from .conftest import API_KEY


def _batch(n: int, start: int = 0) -> Batch:
    customers = [
        Customer({"email": f"u{i}@example.com", "customer_id": f"c{i}"}, i + 1, i + 2)
        for i in range(start, start + n)
    ]
    return next(pack_batches(customers, size=50))


# -- pure policy ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (200, OK),
        (207, OK),
        (401, STOP),
        (403, STOP),
        (404, RETRY),
        (409, RETRY),
        (429, RETRY),
        (502, RETRY),
        (503, RETRY),
        (504, RETRY),
        (500, RETRY_FEW),
        (501, RETRY_FEW),
        (413, SPLIT),
        (400, BISECT),
        (422, BISECT),
        (405, FAIL),
    ],
)
def test_classify_status_follows_the_response_policy(status, action):
    assert classify_status(status) == action


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", None),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
    ],
)
def test_parse_retry_after_seconds_and_garbage(value, expected):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 30, usegmt=True)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(future, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(past, now=now) is None


def test_retry_wait_honours_longer_retry_after_on_429_and_503_only():
    assert retry_wait(0.1, 5.0, 429, 60) == 5.0
    assert retry_wait(0.1, 5.0, 503, 60) == 5.0
    assert retry_wait(0.1, 5.0, 502, 60) == 0.1  # not a status where the header counts
    assert retry_wait(3.0, 1.0, 429, 60) == 3.0  # shorter than computed: computed wins
    assert retry_wait(0.1, None, 429, 60) == 0.1  # 0, negative or garbage parse to None
    assert retry_wait(0.1, 500.0, 429, 60) == 60  # never beyond --max-backoff


def test_retry_waits_grow_with_full_jitter_under_the_ceiling():
    waits = retry_waits(0.5, 4.0)
    values = [next(waits) for _ in range(200)]
    assert all(0 <= w <= 4.0 for w in values)
    assert len(set(values)) > 150  # jittered, not a fixed schedule
    assert max(values[100:]) > 2.0  # grows to the ceiling


def test_error_message_for_json_html_and_empty_bodies():
    assert error_message(400, b'{"message": "bad attribute"}') == "HTTP 400: bad attribute"
    assert error_message(502, b"<html><body>Bad Gateway</body></html>") == (
        "HTTP 502: non-JSON (HTML) body"
    )
    assert error_message(404, b"") == "HTTP 404"
    assert error_message(500, b"oops \n  plain") == "HTTP 500: oops plain"


def test_attribute_errors_by_index_then_identifier():
    batch = _batch(4)
    body = orjson.dumps(
        {
            "errors": [
                {"index": 1, "error": "invalid_email"},
                {"email": "U3@example.com", "error": "record_rejected"},
                {"customer_id": "c0", "error": "internal_error"},
            ]
        }
    )
    found = attribute_errors(batch, body)
    assert found.errors == {1: "invalid_email", 3: "record_rejected", 0: "internal_error"}
    assert not found.unattributed and not found.unreadable


def test_attribute_errors_unmatched_and_unreadable():
    batch = _batch(3)
    found = attribute_errors(batch, orjson.dumps({"errors": [{"error": "mystery"}, "x"]}))
    assert found.unattributed == ["mystery", "x"]
    assert attribute_errors(batch, orjson.dumps({"errors": [{"index": 9, "error": "e"}]}))
    assert attribute_errors(batch, b"<html>ok</html>").unreadable
    assert attribute_errors(batch, b"").errors == {}


def test_transient_record_errors():
    assert is_transient_record_error("internal_error")
    assert is_transient_record_error("Timeout: try later")
    assert not is_transient_record_error("user_identifier_missing")
    assert not is_transient_record_error("invalid_email")


# -- the retry loop against a scripted server ----------------------------------


@dataclass
class Scripted:
    """Answers the responses of ``script`` in order (the last one repeats); counts calls."""

    script: list[Callable[[], web.Response]]
    url: str = ""
    bodies: list[list[dict]] = field(default_factory=list)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Scripted]]:
    runners: list[web.AppRunner] = []

    async def start(*script: Callable[[], web.Response]) -> Scripted:
        server = Scripted(list(script))

        async def bulk(request: web.Request) -> web.Response:
            customers = orjson.loads(await request.read())["customers"]
            if customers[0].get("customer_id") == HEALTHY:
                return web.json_response({"status": "ok"})  # not in the script, not counted
            server.bodies.append(customers)
            i = min(len(server.bodies), len(server.script)) - 1
            return server.script[i]()

        app = web.Application()
        app.router.add_post("/api/v1/customers/bulk", bulk)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


def _options(url: str, **changes) -> ImportOptions:
    base = {
        "api_key": API_KEY,
        "base_url": url,
        "rate": 1000.0,
        "backoff_base": 0.001,
        "max_backoff": 0.01,
        "timeout": 5.0,
    }
    base.update(changes)
    return ImportOptions(**base)


def ok(body: dict | None = None) -> Callable[[], web.Response]:
    return lambda: web.json_response(body or {"status": "ok"})


def status(code: int, text: str = "", headers: dict | None = None) -> Callable[[], web.Response]:
    return lambda: web.Response(status=code, text=text, headers=headers)


async def _send(options: ImportOptions, batch: Batch):
    async with Sender(options) as sender:
        outcomes = await sender.send(batch)
    return sender, outcomes


#: A customer the scripted server always accepts, outside its script.
HEALTHY = "healthy"


async def _send_while_healthy(options: ImportOptions, batch: Batch):
    """Send ``batch`` while other calls keep succeeding: the API is up, so its failures
    are about this batch."""
    other = next(pack_batches([Customer({"customer_id": HEALTHY}, 1, 2)], size=50))
    async with Sender(options) as sender:

        async def keep_succeeding() -> None:
            while True:
                await sender.send(other)
                await asyncio.sleep(0.001)

        task = asyncio.create_task(keep_succeeding())
        outcomes = await sender.send(batch)
        task.cancel()
    return sender, outcomes


async def test_sender_retries_html_502_then_delivers(scripted):
    server = await scripted(status(502, "<html>Bad Gateway</html>"), status(504, ""), ok())
    sender, outcomes = await _send(_options(server.url), _batch(5))
    assert len(server.bodies) == 3  # two retries really happened
    assert all(o.delivered and o.attempts == 3 for o in outcomes)
    assert sender.stats.retries == 2


async def test_sender_dead_letters_after_max_retries_with_message(scripted):
    server = await scripted(status(503, '{"message": "maintenance"}'))
    _, outcomes = await _send_while_healthy(_options(server.url, max_retries=3), _batch(2))
    assert len(server.bodies) == 4
    assert {(o.delivered, o.status, o.error, o.attempts) for o in outcomes} == {
        (False, 503, "HTTP 503: maintenance", 4)
    }


async def test_sender_500_is_tried_three_times(scripted):
    server = await scripted(status(500, "boom"))
    _, outcomes = await _send_while_healthy(_options(server.url, max_retries=8), _batch(2))
    assert len(server.bodies) == 3
    assert all(o.status == 500 and o.error == "HTTP 500: boom" for o in outcomes)


async def test_sender_honours_retry_after_on_429(scripted):
    server = await scripted(status(429, "", {"Retry-After": "0.3"}), ok())
    options = _options(server.url, max_backoff=5.0)
    clock = asyncio.get_running_loop().time
    async with Sender(options) as sender:
        started = clock()
        outcomes = await sender.send(_batch(1))
        elapsed = clock() - started
    assert outcomes[0].delivered and len(server.bodies) == 2
    assert elapsed >= 0.25  # waited as asked, not the computed ~1 ms


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
async def test_sender_bad_retry_after_falls_back_to_computed_wait(scripted, value):
    server = await scripted(status(503, "", {"Retry-After": value}), ok())
    sender, outcomes = await _send(_options(server.url), _batch(1))
    assert outcomes[0].delivered and sender.stats.retries == 1


async def test_sender_unreadable_2xx_is_not_counted_as_delivered(scripted):
    server = await scripted(status(200, "<html>proxy</html>"))
    _, outcomes = await _send(_options(server.url, max_retries=2), _batch(3))
    assert len(server.bodies) == 3
    assert all(not o.delivered and o.kind == "unconfirmed" for o in outcomes)


async def test_sender_unattributable_error_rechecks_in_halves(scripted):
    # The first answer carries an error naming no record; the halves come back clean.
    server = await scripted(ok({"errors": [{"error": "something failed"}]}), ok())
    sender, outcomes = await _send(_options(server.url), _batch(4))
    assert [len(b) for b in server.bodies] == [4, 2, 2]
    assert all(o.delivered for o in outcomes) and len(outcomes) == 4
    assert sender.stats.splits == 1


async def test_sender_persistent_unattributable_error_dead_letters_only_that_record(scripted):
    server = await scripted(ok())

    def answer() -> web.Response:
        # Any request holding u2 gets an error that names no record.
        if any(c["email"] == "u2@example.com" for c in server.bodies[-1]):
            return web.json_response({"errors": [{"error": "cannot say which"}]})
        return web.json_response({"status": "ok"})

    server.script = [answer]
    _, outcomes = await _send(_options(server.url), _batch(4))
    failed = [o for o in outcomes if not o.delivered]
    assert [o.customer.payload["email"] for o in failed] == ["u2@example.com"]
    assert failed[0].error == "unattributed per-record error: cannot say which"
    assert sum(o.delivered for o in outcomes) == 3 and len(outcomes) == 4


async def test_sender_transient_record_error_retries_only_that_record(scripted):
    server = await scripted(
        ok({"errors": [{"index": 1, "error": "internal_error"}, {"index": 2, "error": "bad"}]}),
        ok(),
    )
    _, outcomes = await _send(_options(server.url), _batch(3))
    assert [len(b) for b in server.bodies] == [3, 1]
    assert server.bodies[1][0]["email"] == "u1@example.com"
    by_email = {o.customer.payload["email"]: o for o in outcomes}
    assert by_email["u0@example.com"].delivered
    assert by_email["u1@example.com"].delivered and by_email["u1@example.com"].attempts == 2
    assert not by_email["u2@example.com"].delivered
    assert by_email["u2@example.com"].error == "bad"


async def test_sender_transient_record_error_budget_is_bounded(scripted):
    server = await scripted(ok({"errors": [{"index": 0, "error": "internal_error"}]}))
    _, outcomes = await _send(_options(server.url, max_retries=2), _batch(1))
    assert len(server.bodies) == 3
    assert outcomes[0].kind == "record" and outcomes[0].error == "internal_error"


async def test_sender_403_raises_and_makes_no_further_call(scripted):
    server = await scripted(status(403, "forbidden"))
    async with Sender(_options(server.url)) as sender:
        with pytest.raises(ApiKeyRejected, match=r"API key rejected \(HTTP 403\)"):
            await sender.send(_batch(2))
        with pytest.raises(ApiKeyRejected):
            await sender.send(_batch(2, start=10))
    assert len(server.bodies) == 1


async def test_sender_gives_up_when_nothing_succeeds(scripted):
    server = await scripted(status(503))
    options = _options(server.url, give_up_after=0.05, max_backoff=0.02, max_retries=1000)
    async with Sender(options) as sender:
        with pytest.raises(ApiUnavailable) as info:
            await sender.send(_batch(2))
    assert info.value.outcomes == []  # type: ignore[attr-defined]
    assert 1 <= len(server.bodies) < 1000


async def test_sender_in_an_outage_keeps_the_batch_pending_until_it_gives_up(scripted):
    # Nothing succeeds since the batch's first try: an outage, not a bad batch. It is
    # not dead-lettered after its retries but waits; the stop leaves it pending.
    server = await scripted(status(503))
    options = _options(server.url, give_up_after=0.3, max_backoff=0.02, max_retries=1)
    async with Sender(options) as sender:
        with pytest.raises(ApiUnavailable) as info:
            await sender.send(_batch(2))
    assert info.value.outcomes == []  # type: ignore[attr-defined]
    assert len(server.bodies) > 2  # retried past max_retries, waiting for the API


async def test_sender_interrupt_leaves_unfinished_records_out(scripted):
    server = await scripted(status(503))
    async with Sender(_options(server.url, max_backoff=0.05, max_retries=1000)) as sender:
        task = asyncio.create_task(sender.send(_batch(3)))
        while len(server.bodies) < 2:
            await asyncio.sleep(0.01)
        sender.interrupt()
        outcomes = await task
        calls = len(server.bodies)
    assert outcomes == []
    assert calls < 1000
