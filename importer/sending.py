"""Sending stage: deliver batches to the bulk customers API within the rate cap.

Owns: the one aiohttp session of a run, retries with ``backoff``'s
exponential full-jitter waits, 413 splits, 400 bisection, per-record error
attribution, and the fatal stops (401/403, API down). Every attempt waits
for its turn at the run's :class:`~importer.pacing.Pacer` and tells it how
long the answer took. aiohttp exceptions never leave this module.

Must not: read files, clean data or write outcome files: it returns
:class:`~importer.records.Outcome` values and the caller records them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from urllib.parse import urlsplit

import aiohttp
import backoff
import orjson

from .errors import ApiKeyRejected, ApiUnavailable, ApiUnreachable, RunStopped, TransientApiError
from .options import ImportOptions
from .pacing import Pacer
from .records import Batch, Outcome

log = logging.getLogger(__name__)

BULK_PATH = "/api/v1/customers/bulk"
#: A 500 (or another 5xx) may be a bug on the server's side: this many attempts in all.
MAX_ATTEMPTS_ON_500 = 3
#: Per-record error codes in a 2xx that are worth retrying for that record alone.
TRANSIENT_RECORD_ERRORS = frozenset(
    {"internal_error", "timeout", "temporarily_unavailable", "service_unavailable"}
)

# What to do with an answer (see :func:`classify_status`).
OK = "ok"  # read the per-record errors
STOP = "stop"  # the key is refused: stop the run
RETRY = "retry"  # try again later, up to ``max_retries`` times
RETRY_FEW = "retry-few"  # maybe a server bug: MAX_ATTEMPTS_ON_500 attempts in all
SPLIT = "split"  # too large: send the batch in halves
BISECT = "bisect"  # refused content: halve down to the bad record(s)
FAIL = "fail"  # the batch cannot be delivered as it is


def classify_status(status: int) -> str:
    """The response policy for one HTTP status, as docs/ARCHITECTURE.md models the API."""
    if 200 <= status < 300:
        return OK
    if status in (401, 403):
        return STOP
    if status in (404, 408, 409, 429, 502, 503, 504):
        return RETRY
    if status >= 500:
        return RETRY_FEW
    if status == 413:
        return SPLIT
    if status in (400, 422):
        return BISECT
    return FAIL


def unreachable_cause(exc: aiohttp.ClientError) -> str | None:
    """What says the API's address is wrong in a connection error, or None for any other.

    A name that does not resolve, a certificate that is not trusted, a port
    nothing listens on. Before the API has answered once in a run they stop
    it at once (a typo in the base URL never heals); after, the host was
    right, and a refusal (a restarting server) is retried like other
    network errors.
    """
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the name does not resolve ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    ):
        return "connection refused (nothing listens on that port)"
    return None


def _label(failure: TransientApiError) -> str:
    """A failed attempt in words that quote nothing from a record (for info logs)."""
    if failure.kind in ("timeout", "connection"):
        return str(failure)
    if failure.kind == "http":
        return f"HTTP {failure.status}"
    return {"record": "per-record error", "unconfirmed": "unreadable 2xx answer"}[failure.kind]


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
    return seconds if seconds > 0 else None  # not for NaN or a moment not in the future


def retry_wait(
    computed: float, retry_after: float | None, status: int | None, ceiling: float
) -> float:
    """The wait before the next attempt.

    The computed backoff wait, or the server's ``Retry-After`` when it asks
    for longer on a 429 or 503; never more than ``ceiling`` (``--max-backoff``).
    """
    if retry_after is not None and status in (429, 503):
        computed = max(computed, retry_after)
    return max(0.0, min(computed, ceiling))


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
    by_email: dict[str, list[int]] = {}
    by_id: dict[str, list[int]] = {}
    for i, customer in enumerate(batch.customers):
        if customer.payload.get("email") is not None:
            by_email.setdefault(str(customer.payload["email"]).lower(), []).append(i)
        if customer.payload.get("customer_id") is not None:
            by_id.setdefault(str(customer.payload["customer_id"]), []).append(i)
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
    #: ``time.monotonic()`` when the latest request left.
    last_request_at: float | None = None
    #: Whether the API has answered anything (any status) in this run.
    answered: bool = False


def retry_waits(base: float, max_wait: float) -> Iterator[float]:
    """Exponential waits with full jitter (from ``backoff``), capped at ``max_wait``."""
    expo = backoff.expo(base=2, factor=base, max_value=max_wait)
    next(expo)  # backoff's generators are primed with one empty step
    while True:
        yield min(max_wait, backoff.full_jitter(next(expo)))


class Sender:
    """Delivers batches; use as an async context manager within one event loop.

    Shared by every worker of a run: one session, one pacer, one stop flag.
    After :meth:`interrupt` no new attempt starts; after a fatal stop
    (401/403, API down) no call at all is made. Entering it reaches the shared
    limit's Redis, if any, before anything else: raises
    :class:`~importer.errors.SharedLimitUnavailable` when it cannot.
    """

    def __init__(self, options: ImportOptions):
        self.options = options
        self.stats = SendStats()
        self.url = options.resolved_base_url + BULK_PATH
        self.pacer = Pacer(options)
        self._session: aiohttp.ClientSession | None = None
        self._fatal: RunStopped | None = None
        #: When the latest call that succeeded had started (the API was up then).
        self._ok_started = float("-inf")
        self._interrupted = asyncio.Event()

    async def __aenter__(self) -> Sender:
        await self.pacer.open()
        connector = aiohttp.TCPConnector(limit=self.options.in_flight_ceiling)
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
        await self.pacer.close()

    def interrupt(self) -> None:
        """Start no new attempt; requests in flight finish (bounded by the timeout)."""
        self._interrupted.set()

    def _halt(self, exc: RunStopped) -> RunStopped:
        if self._fatal is None:
            self._fatal = exc
        # Calls waiting to retry end now, with their batches pending, not in a minute.
        self._interrupted.set()
        return exc

    async def _post(self, batch: Batch) -> tuple[int, bytes, float | None]:
        """One HTTP attempt: POST, return status, body and Retry-After seconds."""
        assert self._session is not None, "use Sender as an async context manager"
        self.stats.requests += 1
        self.stats.last_request_at = time.monotonic()
        if self.stats.first_request_at is None:
            self.stats.first_request_at = self.stats.last_request_at
        call = self.pacer.in_flight.started()
        answered = False
        try:
            async with self._session.post(self.url, data=batch.body()) as resp:
                body = await resp.read()
                answered = self.stats.answered = True
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                self.stats.status_counts[str(resp.status)] += 1
                return resp.status, body, retry_after
        except TimeoutError as exc:
            self.stats.status_counts["timeout"] += 1
            raise TransientApiError(
                f"no answer within {self.options.timeout:g} s", None, "timeout"
            ) from exc
        except aiohttp.ClientError as exc:
            self.stats.status_counts["connection_error"] += 1
            cause = unreachable_cause(exc)
            if cause is not None and not self.stats.answered:
                host = urlsplit(self.url).netloc
                check = "base_url" if self.options.base_url else "region"
                message = f"cannot reach the API at {host}: {cause}; check {check}"
                raise self._halt(ApiUnreachable(message, check)) from exc
            raise TransientApiError(
                f"connection error ({type(exc).__name__})", None, "connection"
            ) from exc
        finally:
            self.pacer.in_flight.ended(call, answered)

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
        #: When this batch's first failed attempt started (None: none failed yet).
        failing_since: float | None = None
        while True:
            retry_after: float | None = None
            try:
                # The in-flight slot is held for the call only: a split or a retry's
                # wait holds none, so the halves of a batch never wait for their parent.
                async with self.pacer.turn():
                    if self._fatal is not None:
                        raise type(self._fatal)(str(self._fatal))
                    if self._interrupted.is_set():
                        return
                    attempts += 1
                    used += 1
                    started = time.monotonic()
                    code, body, retry_after = await self._post(batch)
                action = classify_status(code)
                if action == OK:
                    self.stats.last_success = time.monotonic()
                    self._ok_started = max(self._ok_started, started)
                    self.pacer.governor.on_success()
                    retry = await self._confirmed(batch, body, attempts, done)
                    if retry is None:
                        return
                    batch, failure = retry
                    raise failure
                if action == STOP:
                    raise self._halt(self._key_rejected(code))
                failure = TransientApiError(error_message(code, body), code, "http")
                if action in (SPLIT, BISECT):
                    await self._split(batch, done, attempts, failure)
                    return
                if action == FAIL:
                    log.warning("batch %d: refused (%s)", batch.seq, failure)
                    done.extend(self._failed(batch, code, str(failure), attempts, "http"))
                    return
                if code == 429:
                    await self.pacer.throttled()
                raise failure
            except TransientApiError as failure:
                if failing_since is None:
                    failing_since = started
                status = failure.status
                few = status is not None and classify_status(status) == RETRY_FEW
                limit = MAX_ATTEMPTS_ON_500 if few else self.options.max_retries + 1
                # Retries run out only while the API is otherwise healthy (a call started
                # after this batch first failed has succeeded): in an outage the batch
                # waits for the API, and the run stops with it pending (--give-up-after).
                if used >= limit and self._ok_started > failing_since:
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
                # Info (-v) names the status only: an error body may quote a record.
                log.info(
                    "batch %d (%d records): %s; retry %d in %.1f s",
                    batch.seq, len(batch), _label(failure), used, wait,
                )  # fmt: skip
                log.debug("batch %d: %s", batch.seq, failure)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._interrupted.wait(), wait)
                    return  # interrupted while waiting

    def _key_rejected(self, code: int) -> ApiKeyRejected:
        """The stop for a 401 or 403, saying where the key was sent and what to check."""
        o = self.options
        if o.base_url:
            where, hint = f"by {o.resolved_base_url}", "check the key and base_url"
        else:
            where = f"by {o.resolved_base_url} (region {o.region})"
            other = "us" if o.region == "eu" else "eu"
            an = "an" if other == "eu" else "a"
            hint = f"check the key; {an} {other.upper()} account's key needs region {other}"
        return ApiKeyRejected(
            f"API key rejected (HTTP {code}) {where}: {hint}", "base_url", "region"
        )

    def _failed(
        self, batch: Batch, status: int | None, error: str, attempts: int, kind: str
    ) -> list[Outcome]:
        return [Outcome(c, False, status, error, attempts, kind) for c in batch.customers]

    def _check_alive(self, upcoming_wait: float) -> None:
        limit = self.options.give_up_after
        if time.monotonic() + upcoming_wait - self.stats.last_success > limit:
            raise self._halt(
                ApiUnavailable(f"API unavailable: no request has succeeded for {limit:g} s")
            )

    async def _split(
        self, batch: Batch, done: list[Outcome], attempts: int, failure: TransientApiError
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
        log.info(
            "batch %d: %s; splitting %d records in two", batch.seq, _label(failure), len(batch)
        )
        log.debug("batch %d: %s", batch.seq, failure)
        await self._deliver(first, done, attempts, 0)
        await self._deliver(second, done, attempts, 0)

    async def _confirmed(
        self, batch: Batch, body: bytes, attempts: int, done: list[Outcome]
    ) -> tuple[Batch, TransientApiError] | None:
        """Record the outcomes a 2xx answer confirms; return what is left to retry.

        Returns the records whose per-record error was transient, with the
        failure to retry them on, or None when every record is settled. Errors
        that cannot be matched to records make the whole batch suspect: it is
        re-checked in halves. Raises :class:`TransientApiError` for a 2xx whose
        body cannot be read.
        """
        found = attribute_errors(batch, body)
        if found.unreadable:
            # A 2xx we cannot read confirms nothing: resend it whole (upserts make that safe).
            raise TransientApiError("2xx answer with an unreadable body", None, "unconfirmed")
        if found.unattributed:
            if len(batch) > 1:
                log.warning(
                    "batch %d: %d per-record error(s) could not be matched; re-checking in halves",
                    batch.seq,
                    len(found.unattributed),
                )
            message = f"unattributed per-record error: {found.unattributed[0]}"
            await self._split(batch, done, attempts, TransientApiError(message, 200, "record"))
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
        again = Batch(tuple(batch.customers[i] for i in retry), batch.seq)
        return again, TransientApiError(found.errors[retry[0]], 200, "record")
