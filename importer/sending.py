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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC

import aiohttp
import backoff
import orjson
from aiolimiter import AsyncLimiter

from .errors import ApiKeyRejected, ApiUnavailable, RunStopped, TransientApiError
from .options import ImportOptions
from .records import Batch, Outcome

log = logging.getLogger(__name__)

BULK_PATH = "/api/v1/customers/bulk"
#: Statuses that mean "try again later" (see docs/ARCHITECTURE.md), retried up to
#: ``max_retries`` times.
RETRYABLE_STATUSES = frozenset({404, 408, 409, 429, 502, 503, 504})
#: A 500 (or another 5xx) may be a bug on the server's side: this many attempts in all.
MAX_ATTEMPTS_ON_500 = 3
#: Statuses that refuse the content of a batch: bisect it to find the bad record(s).
BISECT_STATUSES = frozenset({400, 422})
#: Per-record error codes in a 2xx that are worth retrying for that record alone.
TRANSIENT_RECORD_ERRORS = frozenset(
    {"internal_error", "timeout", "temporarily_unavailable", "service_unavailable"}
)

#: What to do with an answer, by status (see :func:`classify_status`).
OK, STOP, RETRY, RETRY_FEW, SPLIT, BISECT, FAIL = (
    "ok",
    "stop",
    "retry",
    "retry-few",
    "split",
    "bisect",
    "fail",
)


def classify_status(status: int) -> str:
    """The response policy for one HTTP status.

    ``ok`` 2xx (read the per-record errors); ``stop`` 401/403 (the key is
    refused: stop the run); ``retry`` 404, 408, 409, 429, 502, 503, 504
    (transient: retry up to ``max_retries``); ``retry-few`` 500 and other 5xx
    (retry :data:`MAX_ATTEMPTS_ON_500` times in all); ``split`` 413 (halve
    the batch); ``bisect`` 400/422 (halve to isolate the bad record); ``fail``
    any other status (the batch cannot be delivered as it is).
    """
    if 200 <= status < 300:
        return OK
    if status in (401, 403):
        return STOP
    if status in RETRYABLE_STATUSES:
        return RETRY
    if status >= 500:
        return RETRY_FEW
    if status == 413:
        return SPLIT
    if status in BISECT_STATUSES:
        return BISECT
    return FAIL


def is_transient_record_error(message: str) -> bool:
    """True when a per-record error (``"internal_error"``, ``"timeout: ..."``) may pass."""
    return message.split(":", 1)[0].strip().lower() in TRANSIENT_RECORD_ERRORS


def basic_auth_header(api_key: str) -> str:
    """Blueshift's Basic auth: the API key as the username, an empty password."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode("ascii")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or HTTP date).

    Returns None for a missing, unparseable, zero or negative value, so the
    caller falls back to its own computed wait instead of retrying at once.
    ``now`` (epoch seconds) is the clock an HTTP date is compared with.
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


def retry_wait(
    computed: float, retry_after: float | None, status: int | None, ceiling: float
) -> float:
    """The wait before the next attempt.

    The computed backoff wait, or the server's ``Retry-After`` when it asks
    for longer on a 429 or 503; never more than ``ceiling`` (``--max-backoff``).
    """
    wait = computed
    if retry_after is not None and status in (429, 503) and retry_after > wait:
        wait = retry_after
    return max(0.0, min(wait, ceiling))


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
    elif isinstance(data, str):
        text = data
    elif body:
        snippet = body[:200].decode("utf-8", errors="replace")
        text = "non-JSON (HTML) body" if "<" in snippet else " ".join(snippet.split())
    text = text[:300]
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


@dataclass
class Attribution:
    """Per-record errors of a 2xx answer, matched to positions in the batch.

    ``unreadable`` is set when the body is not JSON at all: nothing in it
    can be trusted as a confirmation.
    """

    errors: dict[int, str] = field(default_factory=dict)
    unattributed: list[str] = field(default_factory=list)
    unreadable: bool = False


def attribute_errors(batch: Batch, body: bytes) -> Attribution:
    """Match the ``errors`` array of a 2xx body to the batch's records.

    By ``index`` when it is a valid position, else by a unique ``email`` or
    ``customer_id``. Errors that match nothing are ``unattributed``: the
    caller must not count the batch as confirmed. An empty body carries no
    errors; a body that is not JSON is ``unreadable``.
    """
    result = Attribution()
    if not body.strip():
        return result
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        result.unreadable = True
        return result
    errors = data.get("errors") if isinstance(data, dict) else None
    if not errors:
        return result
    if not isinstance(errors, list):
        result.unattributed.append(str(errors)[:200])
        return result
    # Identifier indexes are built only if an error lacks a usable index (the common
    # answer names positions, and building them for every batch costs per customer).
    by_email: dict[str, list[int]] = {}
    by_id: dict[str, list[int]] = {}
    indexed = False
    for err in errors:
        if not isinstance(err, dict):
            result.unattributed.append(str(err)[:200])
            continue
        message = str(err.get("error") or err.get("message") or "record error")
        index = err.get("index")
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(batch):
            result.errors[index] = message
            continue
        if not indexed:
            indexed = True
            for i, c in enumerate(batch.customers):
                if c.payload.get("email") is not None:
                    by_email.setdefault(str(c.payload["email"]).lower(), []).append(i)
                if c.payload.get("customer_id") is not None:
                    by_id.setdefault(str(c.payload["customer_id"]), []).append(i)
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

    AIMD: on a 429 the rate is halved (at most once per second, so the 429s
    of requests already in flight count once); while requests succeed it
    climbs back by ``max_rate / climb_seconds`` per second, up to the
    configured cap, in steps at most once a second. Each pace is an
    :class:`~aiolimiter.AsyncLimiter` of capacity one, so it never bursts; a
    new pace gets a new limiter, through aiolimiter's public API only.
    """

    def __init__(
        self,
        max_rate: float,
        min_rate: float = 0.1,
        climb_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.clock = clock
        self.max_rate = max_rate
        self.min_rate = min(min_rate, max_rate)
        self.rate = max_rate
        self.lowest_rate = max_rate
        self.climb_per_s = max_rate / climb_seconds
        self._limiter = AsyncLimiter(1, 1 / max_rate)
        self._fresh = False
        self._last_decrease = -1e9
        self._last_change = clock()

    async def acquire(self) -> None:
        """Wait for this request's turn at the current pace."""
        while True:
            limiter = self._limiter
            if self._fresh:
                # A new limiter starts with its one slot free: burn it, so the first
                # request at the new pace waits a full period too and a change never bursts.
                self._fresh = False
                await limiter.acquire()
                continue
            await limiter.acquire()
            if limiter is self._limiter:
                return
            # The pace changed while this request waited: queue again at the new one.

    def _set(self, rate: float) -> None:
        rate = max(self.min_rate, min(self.max_rate, rate))
        self._last_change = self.clock()
        if rate == self.rate:
            return
        self.rate = rate
        self.lowest_rate = min(self.lowest_rate, rate)
        self._limiter = AsyncLimiter(1, 1 / rate)
        self._fresh = True

    def on_throttled(self) -> None:
        now = self.clock()
        if now - self._last_decrease >= 1.0:
            self._last_decrease = now
            self._set(self.rate / 2)
            log.info("throttled by the API (429): rate lowered to %.2f requests/s", self.rate)

    def on_success(self) -> None:
        elapsed = self.clock() - self._last_change
        if self.rate < self.max_rate and elapsed >= 1.0:
            self._set(self.rate + self.climb_per_s * elapsed)


@dataclass
class SendStats:
    """Counters the sender keeps for the report and the progress display."""

    requests: int = 0
    retries: int = 0
    splits: int = 0
    status_counts: Counter[str] = field(default_factory=Counter)
    last_success: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` when the first request left, or None before it.
    first_request_at: float | None = None


def retry_waits(base: float, max_wait: float) -> Iterator[float]:
    """Exponential waits with full jitter (from ``backoff``), capped at ``max_wait``."""
    expo = backoff.expo(base=2, factor=base, max_value=max_wait)
    next(expo)  # backoff's generators are primed with one empty step
    while True:
        yield min(max_wait, backoff.full_jitter(next(expo)))


class _Failure(TransientApiError):
    """An attempt that did not deliver, worth retrying; ``kind`` goes to the dead-letter line.

    ``kind`` is ``http`` (an HTTP status), ``timeout``, ``connection``,
    ``record`` (a per-record error in a 2xx) or ``unconfirmed`` (a 2xx that
    could not be read).
    """

    def __init__(self, message: str, status: int | None, kind: str):
        super().__init__(message, status)
        self.kind = kind


@dataclass
class _Leftover:
    """Records of a 2xx answer that are not settled yet: retry them, or split and re-check."""

    batch: Batch
    failure: _Failure
    split: bool


class Sender:
    """Delivers batches; use as an async context manager within one event loop.

    Shared by every worker of a run: one session, one rate governor, one
    stop flag. After :meth:`interrupt` no new attempt starts; after a fatal
    stop (401/403, API down) no call at all is made.
    """

    def __init__(self, options: ImportOptions, stats: SendStats | None = None):
        self.options = options
        self.stats = stats or SendStats()
        self.url = options.resolved_base_url + BULK_PATH
        self.governor = RateGovernor(options.rate)
        self._session: aiohttp.ClientSession | None = None
        self._fatal: RunStopped | None = None
        self._interrupted = asyncio.Event()

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

    def interrupt(self) -> None:
        """Start no new attempt; requests in flight finish (bounded by the timeout)."""
        self._interrupted.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    def _halt(self, exc: RunStopped) -> RunStopped:
        if self._fatal is None:
            self._fatal = exc
        return exc

    def _check_halted(self) -> None:
        if self._fatal is not None:
            raise type(self._fatal)(str(self._fatal))

    async def _post(self, batch: Batch) -> tuple[int, bytes, float | None]:
        """One HTTP attempt: POST, return status, body and Retry-After seconds."""
        assert self._session is not None, "use Sender as an async context manager"
        self.stats.requests += 1
        if self.stats.first_request_at is None:
            self.stats.first_request_at = time.monotonic()
        try:
            async with self._session.post(self.url, data=batch.body()) as resp:
                body = await resp.read()
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self.stats.status_counts[str(resp.status)] += 1
                return resp.status, body, retry_after
        except TimeoutError as exc:
            self.stats.status_counts["timeout"] += 1
            raise _Failure(f"no answer within {self.options.timeout:g} s", None, "timeout") from exc
        except aiohttp.ClientError as exc:
            self.stats.status_counts["connection_error"] += 1
            raise _Failure(f"connection error ({type(exc).__name__})", None, "connection") from exc

    async def send(self, batch: Batch) -> list[Outcome]:
        """Deliver one batch and return one outcome per customer.

        Everything the API does ends as outcomes: delivered, or undeliverable
        with the reason. After :meth:`interrupt`, customers whose delivery was
        not finished are left out of the list (the caller counts them as not
        sent). Raises :class:`ApiKeyRejected` on 401/403 and
        :class:`ApiUnavailable` when nothing has succeeded for
        ``give_up_after`` seconds; the exception's ``outcomes`` attribute holds
        the outcomes of the part of the batch finished before the stop.
        """
        done: list[Outcome] = []
        try:
            await self._deliver(batch, done, 0, 0)
        except RunStopped as exc:
            exc.outcomes = done
            raise
        return done

    async def _deliver(self, batch: Batch, done: list[Outcome], prior: int, used: int) -> None:
        """The retry loop for one batch, appending final outcomes to ``done``.

        ``prior`` is how many attempts its records already had (reported in the
        outcomes); ``used`` how many of those count against this batch's retry
        budget (a split half starts a fresh budget; a re-send of the records
        with transient per-record errors does not).
        """
        waits = retry_waits(self.options.backoff_base, self.options.max_backoff)
        attempts = prior
        while True:
            await self.governor.acquire()
            self._check_halted()
            if self.interrupted:
                return
            attempts += 1
            used += 1
            retry_after: float | None = None
            try:
                code, body, retry_after = await self._post(batch)
                action = classify_status(code)
                if action == OK:
                    self.stats.last_success = time.monotonic()
                    self.governor.on_success()
                    left = self._confirmed(batch, body, attempts, done)
                    if left is None:
                        return
                    if left.split:
                        await self._split(batch, done, attempts, left.failure)
                        return
                    batch = left.batch
                    raise left.failure
                if action == STOP:
                    raise self._halt(ApiKeyRejected(f"API key rejected (HTTP {code})"))
                message = error_message(code, body)
                if action in (SPLIT, BISECT):
                    await self._split(batch, done, attempts, _Failure(message, code, "http"))
                    return
                if action == FAIL:
                    log.warning("batch %d: refused (%s)", batch.seq, message)
                    done.extend(self._failed(batch, code, message, attempts, "http"))
                    return
                if code == 429:
                    self.governor.on_throttled()
                raise _Failure(message, code, "http")
            except _Failure as failure:
                status = failure.status
                few = status is not None and classify_status(status) == RETRY_FEW
                limit = MAX_ATTEMPTS_ON_500 if few else self.options.max_retries + 1
                if used >= limit:
                    log.warning(
                        "batch %d: giving up on %d record(s) after %d attempts (%s)",
                        batch.seq,
                        len(batch),
                        attempts,
                        failure,
                    )
                    done.extend(self._failed(batch, status, str(failure), attempts, failure.kind))
                    return
                wait = retry_wait(next(waits), retry_after, status, self.options.max_backoff)
                self._check_alive(wait)
                self.stats.retries += 1
                log.debug("batch %d: %s; retry %d in %.3f s", batch.seq, failure, used, wait)
                if not await self._pause(wait):
                    return

    async def _pause(self, seconds: float) -> bool:
        """Sleep before a retry; False when the run was interrupted meanwhile."""
        try:
            await asyncio.wait_for(self._interrupted.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def _failed(
        self, batch: Batch, status: int | None, error: str, attempts: int, kind: str
    ) -> list[Outcome]:
        return [Outcome(c, False, status, error, attempts, kind) for c in batch.customers]

    def _check_alive(self, upcoming_wait: float) -> None:
        idle = time.monotonic() + upcoming_wait - self.stats.last_success
        if idle > self.options.give_up_after:
            raise self._halt(
                ApiUnavailable(
                    "API unavailable: no request has succeeded for "
                    f"{self.options.give_up_after:g} s"
                )
            )

    async def _split(
        self, batch: Batch, done: list[Outcome], attempts: int, failure: _Failure
    ) -> None:
        """Send the halves of a refused batch; a single refused record is undeliverable.

        For 413 this keeps every record deliverable whatever the size limit
        (only a record too large on its own fails); for 400 it bisects down to
        the offending record(s), costing about 2·log2(n) extra calls per bad
        record.
        """
        if len(batch) == 1:
            message = str(failure)
            if failure.status == 413:
                message = f"record too large to send even alone ({message})"
            done.extend(self._failed(batch, failure.status, message, attempts, failure.kind))
            return
        self.stats.splits += 1
        first, second = batch.split()
        log.debug("batch %d: %s; splitting %d records in two", batch.seq, failure, len(batch))
        await self._deliver(first, done, attempts, 0)
        await self._deliver(second, done, attempts, 0)

    def _confirmed(
        self, batch: Batch, body: bytes, attempts: int, done: list[Outcome]
    ) -> _Leftover | None:
        """Record the outcomes a 2xx answer confirms; say what is left to do.

        Returns None when every record is settled; else the records whose
        per-record error was transient (retry them), or the whole batch when
        errors could not be matched to records (it is suspect: re-check it in
        halves). Raises :class:`_Failure` for a 2xx whose body cannot be read.
        """
        found = attribute_errors(batch, body)
        if found.unreadable:
            # A 2xx we cannot read confirms nothing: resend it whole (upserts make that safe).
            raise _Failure("2xx answer with an unreadable body", None, "unconfirmed")
        if found.unattributed:
            failure = _Failure(
                f"unattributed per-record error: {found.unattributed[0]}", 200, "record"
            )
            if len(batch) > 1:
                # Which records failed is unknown: re-check in halves rather than
                # count any of them as delivered. Upserts make the resend safe.
                log.warning(
                    "batch %d: %d per-record error(s) could not be matched; re-checking in halves",
                    batch.seq,
                    len(found.unattributed),
                )
                return _Leftover(batch, failure, split=True)
            done.extend(self._failed(batch, 200, str(failure), attempts, "record"))
            return None
        if not found.errors:
            done.extend(Outcome(c, True, 200, None, attempts) for c in batch.customers)
            return None
        retry: list[int] = []
        for i, customer in enumerate(batch.customers):
            error = found.errors.get(i)
            if error is None:
                done.append(Outcome(customer, True, 200, None, attempts))
            elif is_transient_record_error(error):
                retry.append(i)
            else:
                done.append(Outcome(customer, False, 200, error, attempts, "record"))
        if not retry:
            return None
        again = Batch(
            tuple(batch.customers[i] for i in retry),
            tuple(batch.encoded[i] for i in retry),
            batch.seq,
        )
        return _Leftover(again, _Failure(found.errors[retry[0]], 200, "record"), split=False)
