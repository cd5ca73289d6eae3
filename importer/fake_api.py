"""The embedded fake Blueshift API: an aiohttp.web server that behaves like the real one.

Owns: ``POST /api/v1/customers/bulk`` as modelled in docs/ARCHITECTURE.md — Basic auth
(401), more than 50 customers (413), malformed JSON (400), a token-bucket rate
limit (429 with ``Retry-After``), per-record validation reported as a 200
with an ``errors`` array, answer times (``latency``) — plus seeded faults for
testing: any status with a probability, slow answers, dropped connections,
records applied and then a failure answered, an outage window, a key revoked
after N requests, and per-record errors. It records every request and every applied customer so
tests and demos can see what arrived.

Runs standalone (``blueshift-import fake-api``), in a background thread
(:class:`FakeApiServer`, for ``--mock`` and tests), or inside a running loop.
It never logs request bodies or the API key.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import BasicAuth, web

BULK_PATH = "/api/v1/customers/bulk"
MAX_CUSTOMERS = 50
DEFAULT_KEY = "fake-api-key"
_E164 = re.compile(r"^\+[1-9]\d{4,12}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass
class FakeApiConfig:
    """How the fake API behaves. ``rate`` None means no rate limit.

    Every fault is drawn from one random generator seeded with ``seed``, so a
    run with the same requests in the same order misbehaves the same way.
    Probabilities are per request unless said otherwise.
    """

    api_key: str = DEFAULT_KEY
    rate: float | None = None
    burst: int = 1
    #: Probability of answering each status instead of processing, e.g. ``{503: 0.1}``.
    #: One draw per request: the probabilities add up (their sum must stay at or below 1).
    faults: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    #: Append every applied customer to this JSONL file as well.
    record_path: Path | None = None
    #: ``Retry-After`` value sent with injected 429 and 503 answers (None: no header).
    retry_after: str | None = "1"
    #: Mean seconds before a processed call is answered, each within ±1/3 of it at random.
    latency: float = 0.0
    #: Probability of answering only after ``slow_seconds`` (the records are applied then).
    slow: float = 0.0
    slow_seconds: float = 5.0
    #: Probability of closing the connection without any answer (nothing applied).
    drop: float = 0.0
    #: Probability of applying the records, then answering 503 or dropping the connection.
    applied_then_fail: float = 0.0
    #: ``(start, end)`` seconds after the first request during which every call gets a 503.
    outage: tuple[float, float] | None = None
    #: Answer 401 to every request after this many (the key was revoked mid-run).
    revoke_key_after: int | None = None
    #: Probability, per valid record, of a per-record error in the 200: half of them
    #: transient (``internal_error``), half permanent (``record_rejected``).
    record_errors: float = 0.0
    #: More customers than this in one call is answered with 413.
    max_customers: int = MAX_CUSTOMERS
    #: A call holding a customer with this attribute is refused whole with a 400.
    bad_field: str | None = None

    def __post_init__(self) -> None:
        total = sum(self.faults.values())
        if any(p < 0 for p in self.faults.values()) or total > 1:
            raise ValueError(f"fault probabilities must be >= 0 and add up to at most 1: {total}")
        if self.latency < 0:
            raise ValueError(f"latency must be 0 or more seconds, got {self.latency}")
        for name in ("slow", "drop", "applied_then_fail", "record_errors"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability between 0 and 1")


def parse_fault_spec(spec: str) -> tuple[int, float]:
    """``"503=0.1"`` → ``(503, 0.1)``; raises ValueError for anything else."""
    status, sep, prob = spec.partition("=")
    try:
        code, p = int(status), float(prob)
        if sep and 100 <= code <= 599 and 0 <= p <= 1:
            return code, p
    except ValueError:
        pass
    raise ValueError(f"expected STATUS=PROBABILITY, got {spec!r}")


def parse_outage_spec(spec: str) -> tuple[float, float]:
    """``"2:5"`` → ``(2.0, 5.0)``: an outage from 2 s to 5 s after the first request."""
    start, sep, end = spec.partition(":")
    try:
        window = (float(start), float(end))
        if sep and 0 <= window[0] < window[1]:
            return window
    except ValueError:
        pass
    raise ValueError(f"expected START:END in seconds, got {spec!r}")


@dataclass
class RequestLog:
    """One request as the fake API saw it.

    ``at`` is when it was answered and ``arrived`` when it came (both
    ``time.monotonic()``); ``status`` is what was answered (0 when the
    connection was dropped); ``fault`` names an injected misbehaviour;
    ``ids`` are the identifiers (email, else customer_id) of the customers in
    the body, in order, when the body was read.
    """

    at: float
    status: int
    customers: int
    fault: str | None = None
    ids: tuple[str, ...] = ()
    arrived: float = 0.0


class FakeApiState:
    """What the fake API has received and applied (thread-safe to read after stop)."""

    def __init__(self) -> None:
        self.requests: list[RequestLog] = []
        self.applied: list[dict[str, Any]] = []
        #: Requests that have arrived, answered or not yet (a slow answer is logged late).
        self.arrived = 0
        #: ``time.monotonic()`` when the first request arrived.
        self.first_arrival: float | None = None
        #: Requests arrived and not yet answered, now and at the most.
        self.in_flight = 0
        self.peak_in_flight = 0
        self.lock = threading.Lock()

    def status_counts(self) -> Counter[int]:
        return Counter(r.status for r in self.requests)

    def fault_counts(self) -> Counter[str]:
        return Counter(r.fault for r in self.requests if r.fault)

    def applied_ids(self) -> list[str]:
        """Identifiers of applied customers (email, else customer_id), in arrival order."""
        return [_identifier(c) for c in self.applied]

    def attempts_by_id(self) -> Counter[str]:
        """How many requests carried each identifier (a retried record counts every time)."""
        return Counter(ident for r in self.requests for ident in r.ids)


def _identifier(customer: Any) -> str:
    if not isinstance(customer, dict):
        return ""
    return str(customer.get("email") or customer.get("customer_id") or "")


class _TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.capacity = max(1, burst)
        self.tokens = float(self.capacity)
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def validate_customer(customer: Any) -> str | None:
    """The per-record error the API would report for ``customer``, or None."""
    if not isinstance(customer, dict):
        return "invalid_customer"
    email = customer.get("email")
    cid = customer.get("customer_id")
    if not email and not cid:
        return "user_identifier_missing"
    if email is not None and (
        not isinstance(email, str) or len(email) > 64 or not _EMAIL.match(email)
    ):
        return "invalid_email"
    phone = customer.get("phone_number")
    if phone is not None and (not isinstance(phone, str) or not _E164.match(phone)):
        return "invalid_phone_number"
    return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": status, "message": message}, status=status, headers=headers)


def _gateway_page(status: int, title: str) -> web.Response:
    """The HTML page a gateway answers with, as the client meets it in production."""
    html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def _fault_response(status: int, retry_after: str | None) -> web.Response:
    """An injected fault's answer: gateways answer 502/504 in HTML, 404 comes empty."""
    if status in (502, 504):
        return _gateway_page(status, "502 Bad Gateway" if status == 502 else "504 Gateway Time-out")
    if status == 404:
        return web.Response(status=status, body=b"")
    headers = {"Retry-After": retry_after} if retry_after and status in (429, 503) else None
    return _error(status, f"injected fault {status}", headers)


def create_app(
    config: FakeApiConfig | None = None, state: FakeApiState | None = None
) -> web.Application:
    """The aiohttp application; ``state`` (a new one by default) records what it receives."""
    config = config or FakeApiConfig()
    state = state or FakeApiState()
    bucket = _TokenBucket(config.rate, config.burst) if config.rate else None
    rng = random.Random(config.seed)
    # Its own generator: answer times drawn or not, the faults stay the same for a seed.
    latency_rng = random.Random(config.seed)
    record_file = open(config.record_path, "ab") if config.record_path else None  # noqa: SIM115

    def apply(customers: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        errors: list[dict[str, Any]] = []
        applied: list[dict[str, Any]] = []
        for index, customer in enumerate(customers):
            problem = validate_customer(customer)
            c = customer if isinstance(customer, dict) else {}
            draw = rng.random()
            if problem is None and draw < config.record_errors:
                problem = "internal_error" if draw < config.record_errors / 2 else "record_rejected"
            if problem:
                error: dict[str, Any] = {
                    "email": c.get("email"),
                    "customer_id": c.get("customer_id"),
                    "error": problem,
                }
                # Some errors name only the customer, not its position, as real APIs do.
                if rng.random() < 0.7:
                    error["index"] = index
                errors.append(error)
            else:
                applied.append(customer)
        with state.lock:
            state.applied.extend(applied)
        if record_file is not None and applied:
            record_file.write(b"".join(orjson.dumps(c) + b"\n" for c in applied))
            record_file.flush()
        return applied, errors

    async def bulk(request: web.Request) -> web.Response:
        with state.lock:
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            return await handle(request)
        finally:
            with state.lock:
                state.in_flight -= 1

    async def handle(request: web.Request) -> web.Response:
        now = time.monotonic()
        with state.lock:
            state.arrived += 1
            arrived = state.arrived
            if state.first_arrival is None:
                state.first_arrival = now
            since_first = now - state.first_arrival
        customers: list[Any] = []  # known once the body is read

        def answer(
            status: int, response: web.Response | None, fault: str | None = None
        ) -> web.Response:
            """Log the request and return ``response``; None drops the connection instead."""
            ids = tuple(_identifier(c) for c in customers)
            with state.lock:
                state.requests.append(
                    RequestLog(time.monotonic(), status, len(customers), fault, ids, now)
                )
            if response is None:
                if request.transport is not None:
                    request.transport.abort()
                # The transport is gone: this answer is never written; aiohttp discards it quietly.
                raise web.HTTPServiceUnavailable()
            return response

        # Draw the same number of values for every request so one fault does not
        # shift the ones after it.
        draws = [rng.random() for _ in range(5)]
        try:
            key = BasicAuth.decode(request.headers.get("Authorization", ""), "utf-8").login
        except ValueError:
            key = None
        if key != config.api_key:
            return answer(401, _error(401, "Invalid API key"))
        if config.revoke_key_after is not None and arrived > config.revoke_key_after:
            return answer(401, _error(401, "API key revoked"), "revoked")
        if config.outage is not None:
            start, end = config.outage
            if start <= since_first < end:
                return answer(503, _gateway_page(503, "503 Service Unavailable"), "outage")
        if bucket is not None:
            wait = bucket.take()
            if wait:
                retry_after = str(max(1, math.ceil(wait)))
                return answer(429, _error(429, "rate limit exceeded", {"Retry-After": retry_after}))
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return answer(400, _error(400, "request body is not valid JSON"))
        if not isinstance(body, dict) or not isinstance(body.get("customers"), list):
            return answer(400, _error(400, "body must be an object with a 'customers' array"))
        customers = body["customers"]
        n = len(customers)
        cumulative = 0.0
        for status, probability in sorted(config.faults.items()):
            cumulative += probability
            if draws[0] < cumulative:
                return answer(
                    status, _fault_response(status, config.retry_after), f"status {status}"
                )
        if draws[1] < config.drop:
            return answer(0, None, "drop")
        if n > config.max_customers:
            return answer(
                413, _error(413, f"at most {config.max_customers} customers per call, got {n}")
            )
        if config.bad_field is not None and any(
            isinstance(c, dict) and config.bad_field in c for c in customers
        ):
            return answer(400, _error(400, f"malformed attribute {config.bad_field!r} in request"))
        if config.latency:
            await asyncio.sleep(config.latency * (2 + 2 * latency_rng.random()) / 3)
        slow = draws[2] < config.slow
        if slow:
            await asyncio.sleep(config.slow_seconds)
        applied, errors = apply(customers)
        if draws[3] < config.applied_then_fail:
            if draws[4] < 0.5:
                return answer(0, None, "applied then dropped")
            return answer(503, _fault_response(503, config.retry_after), "applied then 503")
        payload: dict[str, Any] = {"status": "ok", "processed": len(applied)}
        if errors:
            payload["errors"] = errors
        return answer(200, web.json_response(payload), "slow" if slow else None)

    async def close_record_file(app: web.Application) -> None:
        if record_file is not None:
            record_file.close()

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post(BULK_PATH, bulk)
    app.on_cleanup.append(close_record_file)
    return app


class FakeApiServer:
    """The fake API on 127.0.0.1 in a background thread, on a port the OS chooses.

    Use as a context manager; ``url`` is its base URL, ``state`` what it received.
    """

    def __init__(self, config: FakeApiConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or FakeApiConfig()
        self.state = FakeApiState()
        self.host = host
        self.port = port
        self._thread = threading.Thread(target=self._run, name="fake-api", daemon=True)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeApiServer:
        """Start serving; raises what kept the server from starting (a port in use)."""
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        # Leaving asyncio.run cancels the answers still sleeping (slow faults).
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        # A short shutdown timeout: a deliberately slow answer must not hold up stop().
        runner = web.AppRunner(
            create_app(self.config, self.state), access_log=None, shutdown_timeout=0.5
        )
        try:
            await runner.setup()
            await web.TCPSite(runner, self.host, self.port).start()
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            return
        finally:
            self._ready.set()
        await asyncio.to_thread(self._stop.wait)
        await runner.cleanup()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(config: FakeApiConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the fake API in the foreground until interrupted."""
    web.run_app(
        create_app(config), host=host, port=port, access_log=None, print=None, shutdown_timeout=1
    )
