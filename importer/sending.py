"""Sending stage: deliver batches to the bulk customers API within the rate cap.

Owns: the one aiohttp session of a run, the shared rate limiter (paced one
request every 1/R seconds, adapting down on 429), retries with ``backoff``'s
exponential full-jitter waits, 413 splits, 400 bisection, per-record error
attribution, and the fatal stops (401/403, API down). aiohttp exceptions never
leave this module.

Must not: read files, clean data or write outcome files: it returns
:class:`~importer.records.Outcome` values and the caller records them.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC

import aiohttp
import backoff
import orjson
from aiolimiter import AsyncLimiter

from .errors import ApiKeyRejected, ApiUnavailable, TransientApiError
from .options import ImportOptions
from .records import Batch, Customer, Outcome

log = logging.getLogger(__name__)

BULK_PATH = "/api/v1/customers/bulk"
#: Statuses that mean "try again later" (DESIGN.md).
RETRYABLE_STATUSES = frozenset({404, 409, 429, 500, 502, 503, 504})
#: A 500 may be a bug on the server's side: try it this many times in all, then give up.
MAX_ATTEMPTS_ON_500 = 3
#: Per-record error codes in a 2xx that are worth retrying for that record alone.
TRANSIENT_RECORD_ERRORS = frozenset({"internal_error", "timeout", "temporarily_unavailable"})


def basic_auth_header(api_key: str) -> str:
    """Blueshift's Basic auth: the API key as the username, an empty password."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode("ascii")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or HTTP date).

    Returns None for a missing, unparseable, zero or negative value, so the
    caller falls back to its own computed wait instead of retrying at once.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (now if now is not None else time.time())
    if seconds != seconds or seconds <= 0:  # NaN or not in the future
        return None
    return seconds


def error_message(status: int, body: bytes) -> str:
    """A short message for an error answer, whether its body is JSON, HTML or empty."""
    text = ""
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error", "errors", "detail"):
            if data.get(key):
                value = data[key]
                text = value if isinstance(value, str) else orjson.dumps(value).decode()
                break
    elif body:
        snippet = body[:200].decode("utf-8", errors="replace")
        text = " ".join(snippet.replace("<", " <").split())
        if "<" in snippet:
            text = "non-JSON (HTML) body"
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


@dataclass
class Attribution:
    """Per-record errors of a 2xx answer, matched to positions in the batch."""

    errors: dict[int, str] = field(default_factory=dict)
    unattributed: list[str] = field(default_factory=list)


def attribute_errors(batch: Batch, body: bytes) -> Attribution:
    """Match the ``errors`` array of a 2xx body to the batch's records.

    By ``index`` when it is a valid position, else by a unique ``email`` or
    ``customer_id``. Errors that match nothing are ``unattributed``: the
    caller must not count the batch as confirmed.
    """
    result = Attribution()
    if not body:
        return result
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return result
    errors = data.get("errors") if isinstance(data, dict) else None
    if not errors:
        return result
    if not isinstance(errors, list):
        result.unattributed.append(str(errors)[:200])
        return result
    by_email: dict[str, list[int]] = {}
    by_id: dict[str, list[int]] = {}
    for i, c in enumerate(batch.customers):
        if c.payload.get("email") is not None:
            by_email.setdefault(str(c.payload["email"]).lower(), []).append(i)
        if c.payload.get("customer_id") is not None:
            by_id.setdefault(str(c.payload["customer_id"]), []).append(i)
    for err in errors:
        if not isinstance(err, dict):
            result.unattributed.append(str(err)[:200])
            continue
        message = str(err.get("error") or err.get("message") or "record error")
        index = err.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(batch):
            result.errors[index] = message
            continue
        matches: list[int] = []
        if err.get("email") is not None:
            matches = by_email.get(str(err["email"]).lower(), [])
        if not matches and err.get("customer_id") is not None:
            matches = by_id.get(str(err["customer_id"]), [])
        if len(matches) == 1:
            result.errors[matches[0]] = message
        else:
            result.unattributed.append(message)
    return result


class RateGovernor:
    """The shared pace of every request: one every 1/rate seconds, adapting to 429s.

    On a 429 the rate is halved (at most once per second, so one burst of
    429s counts once); every success adds back ``max_rate / 20`` until the
    configured cap. The limiter has a capacity of one, so it never bursts.
    """

    def __init__(self, max_rate: float, min_rate: float = 0.1):
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.rate = max_rate
        self._limiter = AsyncLimiter(1, 1 / max_rate)
        self._last_decrease = 0.0

    async def acquire(self) -> None:
        await self._limiter.acquire()

    def _set(self, rate: float) -> None:
        rate = max(self.min_rate, min(self.max_rate, rate))
        if rate != self.rate:
            self.rate = rate
            self._limiter = AsyncLimiter(1, 1 / rate)

    def on_throttled(self) -> None:
        now = time.monotonic()
        if now - self._last_decrease >= 1.0:
            self._last_decrease = now
            self._set(self.rate / 2)
            log.info("throttled by the API (429): rate lowered to %.2f requests/s", self.rate)

    def on_success(self) -> None:
        if self.rate < self.max_rate:
            self._set(self.rate + self.max_rate / 20)


@dataclass
class SendStats:
    """Counters the sender keeps for the report and the progress display."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    status_counts: Counter[str] = field(default_factory=Counter)
    last_success: float = field(default_factory=time.monotonic)


def retry_waits(base: float, max_wait: float) -> Iterator[float]:
    """Exponential waits with full jitter (from ``backoff``), capped at ``max_wait``."""
    expo = backoff.expo(base=2, factor=base, max_value=max_wait)
    next(expo)  # backoff's generators are primed with one empty step
    while True:
        yield min(max_wait, backoff.full_jitter(next(expo)))


class Sender:
    """Delivers batches; use as an async context manager within one event loop."""

    def __init__(self, options: ImportOptions, stats: SendStats | None = None):
        self.options = options
        self.stats = stats or SendStats()
        self.url = options.resolved_base_url + BULK_PATH
        self.governor = RateGovernor(options.rate)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(limit=self.options.concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            headers={
                "Authorization": basic_auth_header(self.options.api_key or ""),
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        self.stats.last_success = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, batch: Batch) -> tuple[int, bytes, float | None]:
        """One attempt: wait for the limiter, POST, return status, body and Retry-After."""
        assert self._session is not None, "use Sender as an async context manager"
        await self.governor.acquire()
        self.stats.requests += 1
        try:
            async with self._session.post(self.url, data=batch.body()) as resp:
                body = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self.stats.status_counts[str(resp.status)] += 1
                return resp.status, body, retry_after
        except TimeoutError as exc:
            self.stats.status_counts["timeout"] += 1
            raise TransientApiError(f"no answer within {self.options.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            self.stats.status_counts["connection_error"] += 1
            raise TransientApiError(f"connection error ({type(exc).__name__})") from exc

    def _failed(
        self,
        customers: tuple[Customer, ...],
        status: int | None,
        error: str,
        attempts: int,
        kind: str,
    ) -> list[Outcome]:
        return [Outcome(c, False, status, error, attempts, kind) for c in customers]

    async def send(self, batch: Batch) -> list[Outcome]:
        """Deliver one batch and return one outcome per customer.

        Raises :class:`ApiKeyRejected` on 401/403 and :class:`ApiUnavailable`
        when nothing has succeeded for ``give_up_after`` seconds; everything
        else ends as outcomes (delivered, or undeliverable with the reason).
        """
        waits = retry_waits(self.options.backoff_base, self.options.max_backoff)
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            retry_after: float | None = None
            try:
                code, body, retry_after = await self._post(batch)
            except TransientApiError as exc:
                failure = str(exc)
            else:
                status = code
                if 200 <= code < 300:
                    self.stats.last_success = time.monotonic()
                    self.governor.on_success()
                    return await self._confirmed(batch, body, attempt)
                if code in (401, 403):
                    raise ApiKeyRejected(f"API key rejected (HTTP {code})")
                failure = error_message(code, body)
                if code == 413 or (code not in RETRYABLE_STATUSES and code < 500):
                    return await self._split(batch, code, failure, attempt)
                if code == 429:
                    self.governor.on_throttled()
            limit = MAX_ATTEMPTS_ON_500 if status == 500 else self.options.max_retries + 1
            if attempt >= limit:
                kind = "network" if status is None else "http"
                log.warning(
                    "batch %d: giving up after %d attempts (%s)", batch.seq, attempt, failure
                )
                return self._failed(batch.customers, status, failure, attempt, kind)
            wait = next(waits)
            if retry_after is not None and status in (429, 503):
                wait = max(wait, min(retry_after, self.options.max_backoff))
            self._check_alive(wait)
            self.stats.retries += 1
            log.debug("batch %d: %s; retry %d in %.2f s", batch.seq, failure, attempt, wait)
            await asyncio.sleep(wait)

    def _check_alive(self, upcoming_wait: float) -> None:
        idle = time.monotonic() + upcoming_wait - self.stats.last_success
        if idle > self.options.give_up_after:
            raise ApiUnavailable(
                f"API unavailable: no request has succeeded for {self.options.give_up_after:g} s"
            )

    async def _split(self, batch: Batch, status: int, failure: str, attempts: int) -> list[Outcome]:
        """Send the halves of a refused batch; a single refused record is undeliverable.

        For 413 this keeps every record deliverable whatever the size limit;
        for 400 it bisects down to the offending record(s).
        """
        if len(batch) == 1:
            return self._failed(batch.customers, status, failure, attempts, "http")
        self.stats.splits += 1
        first, second = batch.split()
        return [*await self.send(first), *await self.send(second)]

    async def _confirmed(self, batch: Batch, body: bytes, attempts: int) -> list[Outcome]:
        """Turn a 2xx answer into outcomes, using the per-record errors it carries."""
        found = attribute_errors(batch, body)
        if found.unattributed:
            if len(batch) > 1:
                # Which records failed is unknown: re-check in halves rather than
                # count any of them as delivered. Upserts make the resend safe.
                log.warning(
                    "batch %d: %d per-record error(s) could not be matched; re-checking in halves",
                    batch.seq,
                    len(found.unattributed),
                )
                return await self._split(batch, 200, found.unattributed[0], attempts)
            return self._failed(batch.customers, 200, found.unattributed[0], attempts, "record")
        outcomes: list[Outcome] = []
        retry: list[int] = []
        for i, customer in enumerate(batch.customers):
            error = found.errors.get(i)
            if error is None:
                outcomes.append(Outcome(customer, True, 200, None, attempts))
            elif error in TRANSIENT_RECORD_ERRORS and attempts <= self.options.max_retries:
                retry.append(i)
            else:
                outcomes.append(Outcome(customer, False, 200, error, attempts, "record"))
        if retry:
            again = Batch(
                tuple(batch.customers[i] for i in retry),
                tuple(batch.encoded[i] for i in retry),
                batch.seq,
            )
            outcomes.extend(await self.send(again))
        return outcomes
