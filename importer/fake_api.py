"""The embedded fake Blueshift API: an aiohttp.web server that behaves like the real one.

Owns: ``POST /api/v1/customers/bulk`` as modelled in DESIGN.md — Basic auth
(401), more than 50 customers (413), malformed JSON (400), a token-bucket rate
limit (429 with ``Retry-After``), per-record validation reported as a 200
with an ``errors`` array — plus seeded faults for testing. It records every
request and every applied customer so tests and demos can see what arrived.

Runs standalone (``blueshift-import fake-api``), in a background thread
(:class:`FakeApiServer`, for ``--mock`` and tests), or inside a running loop.
It never logs request bodies or the API key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

BULK_PATH = "/api/v1/customers/bulk"
MAX_CUSTOMERS = 50
DEFAULT_KEY = "fake-api-key"
_E164 = re.compile(r"^\+[1-9]\d{4,12}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
RETRYABLE_FAULTS = (404, 409, 429, 500, 502, 503, 504)


@dataclass
class FakeApiConfig:
    """How the fake API behaves. ``rate`` None means no rate limit."""

    api_key: str = DEFAULT_KEY
    rate: float | None = None
    burst: int = 1
    #: Probability of answering each status instead of processing, e.g. ``{503: 0.1}``.
    faults: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    #: Append every applied customer to this JSONL file as well.
    record_path: Path | None = None


@dataclass
class RequestLog:
    """One request as the fake API saw it."""

    at: float
    status: int
    customers: int


class FakeApiState:
    """What the fake API has received and applied (thread-safe to read after stop)."""

    def __init__(self) -> None:
        self.requests: list[RequestLog] = []
        self.applied: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def status_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.requests:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def applied_ids(self) -> list[str]:
        """Identifiers of applied customers (email, else customer_id), in arrival order."""
        return [str(c.get("email") or c.get("customer_id")) for c in self.applied]


STATE_KEY: web.AppKey[FakeApiState] = web.AppKey("state", FakeApiState)
CONFIG_KEY: web.AppKey[FakeApiConfig] = web.AppKey("config", FakeApiConfig)


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


def create_app(
    config: FakeApiConfig | None = None, state: FakeApiState | None = None
) -> web.Application:
    """The aiohttp application; ``app[STATE_KEY]`` holds what it received."""
    config = config or FakeApiConfig()
    state = state or FakeApiState()
    bucket = _TokenBucket(config.rate, config.burst) if config.rate else None
    rng = random.Random(config.seed)
    record_file = open(config.record_path, "ab") if config.record_path else None  # noqa: SIM115

    def answer(status: int, n: int, response: web.Response) -> web.Response:
        with state.lock:
            state.requests.append(RequestLog(time.monotonic(), status, n))
        return response

    async def bulk(request: web.Request) -> web.Response:
        if key_from_auth_header(request.headers.get("Authorization")) != config.api_key:
            return answer(401, 0, _error(401, "Invalid API key"))
        if bucket is not None:
            wait = bucket.take()
            if wait:
                retry_after = str(max(1, math.ceil(wait)))
                return answer(
                    429, 0, _error(429, "rate limit exceeded", {"Retry-After": retry_after})
                )
        for status, probability in sorted(config.faults.items()):
            if rng.random() < probability:
                headers = {"Retry-After": "1"} if status in (429, 503) else None
                return answer(status, 0, _error(status, f"injected fault {status}", headers))
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return answer(400, 0, _error(400, "request body is not valid JSON"))
        customers = body.get("customers") if isinstance(body, dict) else None
        if not isinstance(customers, list):
            return answer(400, 0, _error(400, "body must be an object with a 'customers' array"))
        if len(customers) > MAX_CUSTOMERS:
            return answer(
                413,
                len(customers),
                _error(413, f"at most {MAX_CUSTOMERS} customers per call, got {len(customers)}"),
            )
        errors = []
        applied = []
        for index, customer in enumerate(customers):
            problem = validate_customer(customer)
            if problem:
                c = customer if isinstance(customer, dict) else {}
                errors.append(
                    {
                        "index": index,
                        "email": c.get("email"),
                        "customer_id": c.get("customer_id"),
                        "error": problem,
                    }
                )
            else:
                applied.append(customer)
        with state.lock:
            state.applied.extend(applied)
        if record_file is not None and applied:
            record_file.write(b"".join(orjson.dumps(c) + b"\n" for c in applied))
            record_file.flush()
        payload: dict[str, Any] = {"status": "ok", "processed": len(applied)}
        if errors:
            payload["errors"] = errors
        return answer(200, len(customers), web.json_response(payload))

    async def close_record_file(app: web.Application) -> None:
        if record_file is not None:
            record_file.close()

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_post(BULK_PATH, bulk)
    app.on_cleanup.append(close_record_file)
    return app


def key_from_auth_header(header: str | None) -> str | None:
    """The username (API key) of a Basic ``Authorization`` header, or None."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        return base64.b64decode(header[6:], validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return None


class FakeApiServer:
    """The fake API on 127.0.0.1 in a background thread, on a port the OS chooses.

    Use as a context manager; ``url`` is its base URL, ``state`` what it received.
    """

    def __init__(self, config: FakeApiConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or FakeApiConfig()
        self.state = FakeApiState()
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeApiServer:
        self._thread = threading.Thread(target=self._run, name="fake-api", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        assert self._runner is not None
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    async def _start_site(self) -> None:
        self._runner = web.AppRunner(create_app(self.config, self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FakeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(config: FakeApiConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the fake API in the foreground until interrupted."""
    web.run_app(create_app(config), host=host, port=port, access_log=None, print=None)
