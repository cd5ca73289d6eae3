"""When a call may start: the pace, the calls in flight, and the pace shared through Redis.

Owns: :class:`RateGovernor` (one start every 1/rate seconds, halved on a 429,
climbing back), :class:`InFlightLimit` (how many calls may be under way:
fixed, or following the API's answer times), :class:`SharedPace` (one pace
for every process naming the same Redis and API key) and :class:`Pacer`,
which puts them in order for the sender. Only this module talks to Redis;
redis exceptions never leave it.

Must not: make HTTP calls or read answers: :mod:`importer.sending` tells it
when a call starts and ends and when a 429 came.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

from aiolimiter import AsyncLimiter

from .errors import SharedLimitUnavailable
from .options import ImportOptions

log = logging.getLogger(__name__)

#: The in-flight limit plans for this share of recent answer times, with this margin.
ANSWER_PERCENTILE = 0.9
HEADROOM = 1.25
#: Answer times kept for the percentiles.
RECENT_ANSWERS = 500
#: How often a call waiting for room looks again: the limit grows while a call is slow.
RECHECK_S = 0.05
#: Seconds a Redis command may take before the shared limit counts as lost.
REDIS_TIMEOUT_S = 2.0
#: Seconds after its last call that a process stops counting as one sharing the limit.
SHARER_TTL_S = 30


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
        self.climb_seconds = climb_seconds
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

    def lower_cap(self, max_rate: float) -> None:
        """Cap the pace at ``max_rate`` from now on (a share of the rate, alone)."""
        self.max_rate = max_rate
        self.min_rate = min(self.min_rate, max_rate)
        self.climb_per_s = max_rate / self.climb_seconds
        self._set(self.rate)

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


class InFlightLimit:
    """How many calls may be under way at once: fixed, or following answer times.

    Fixed when ``fixed`` is given (``--concurrency``). Otherwise it is what
    keeps ``rate`` calls a second under way (Little's law): ``rate`` × the
    90th percentile of recent answer times × 1.25, plus one, at most
    ``ceiling`` (``--max-concurrency``). A call not yet answered counts with
    its age, so the limit grows from the first slow call on, before any answer.
    A slot is held from before a call's turn at the pace until its answer.
    """

    def __init__(
        self,
        rate: float,
        fixed: int | None,
        ceiling: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.rate = rate
        self.fixed = fixed
        self.ceiling = fixed or ceiling
        self.clock = clock
        self.recent: deque[float] = deque(maxlen=RECENT_ANSWERS)
        self.answers = 0
        self.answer_total_s = 0.0
        self.peak_in_flight = 0
        self._held = 0
        self._started: dict[int, float] = {}  # calls under way: id → start
        self._ids = itertools.count()
        self._freed = asyncio.Event()

    def percentile(self, share: float) -> float | None:
        """The answer time that ``share`` of recent answers took at most (None before any)."""
        if not self.recent:
            return None
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def mean_answer_s(self) -> float | None:
        """The mean answer time over the whole run (None before any)."""
        return self.answer_total_s / self.answers if self.answers else None

    def needed(self) -> int:
        """Calls in flight that keep ``rate`` with the answer times seen, ceiling aside."""
        oldest = min(self._started.values(), default=None)
        age = 0.0 if oldest is None else self.clock() - oldest
        seconds = max(self.percentile(ANSWER_PERCENTILE) or 0.0, age)
        return math.ceil(self.rate * seconds * HEADROOM) + 1

    @property
    def limit(self) -> int:
        """How many calls may be under way now."""
        return self.fixed or min(self.ceiling, self.needed())

    @property
    def limited_the_pace(self) -> bool:
        """True when the answer times needed more calls in flight than the ceiling allows."""
        mean = self.mean_answer_s
        return mean is not None and self.rate * mean > self.ceiling

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the ``limit`` slots, waiting for room."""
        while self._held >= self.limit:
            self._freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), RECHECK_S)
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            self._freed.set()

    def started(self) -> int:
        """Note a call leaving; returns its id for :meth:`ended`."""
        call = next(self._ids)
        self._started[call] = self.clock()
        self.peak_in_flight = max(self.peak_in_flight, len(self._started))
        return call

    def ended(self, call: int, answered: bool) -> None:
        """Note a call's end; an answer's time counts towards the limit (a timeout's not)."""
        seconds = self.clock() - self._started.pop(call)
        if answered:
            self.recent.append(seconds)
            self.answers += 1
            self.answer_total_s += seconds

    def answer_times(self) -> dict[str, float]:
        """Mean (whole run) and p50, p90, p99 (recent answers) in seconds; empty before any."""
        mean = self.mean_answer_s
        if mean is None:
            return {}
        times = {"mean": mean}
        for name, share in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
            times[name] = self.percentile(share) or 0.0
        return {name: round(value, 3) for name, value in times.items()}


# One script for the two things done to an account's shared pace, so each is atomic.
# KEYS[1]: the pace (a hash: next start, rate, when the rate was set, last halving);
# KEYS[2]: the processes sharing it (a sorted set: member → last call).
# ARGV: "take" or "throttle", max rate, min rate, climb per second, member, sharer TTL.
# Times are Redis's own clock, so every machine agrees on them.
_PACE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local max_rate, min_rate, climb = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pace = redis.call('HMGET', KEYS[1], 'next', 'rate', 'since', 'halved')
local since = tonumber(pace[3]) or now
local rate = math.min(max_rate, (tonumber(pace[2]) or max_rate) + climb * (now - since))
local halved = tonumber(pace[4]) or 0
local start = math.max(tonumber(pace[1]) or now, now)
local wait = 0
if ARGV[1] == 'throttle' then
  if now - halved >= 1 then
    rate = math.max(min_rate, rate / 2)
    halved = now
  end
else
  wait = start - now
  start = start + 1 / rate
end
redis.call('HSET', KEYS[1], 'next', start, 'rate', rate, 'since', now, 'halved', halved)
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
redis.call('EXPIRE', KEYS[2], 3600)
return {tostring(wait), redis.call('ZCARD', KEYS[2])}
"""


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


class SharedPace:
    """One pace for every process that names the same Redis and API key.

    Redis holds, per account, the time the next call may start and the
    account's rate; each call takes the next start atomically (one Lua
    script, on Redis's clock) and sleeps until it, so the calls of all the
    processes leave one every 1/rate seconds. A 429 seen by any of them
    halves the shared rate, which climbs back over ``climb_seconds``. The
    account is named by a SHA-256 of the base URL and the API key, never the
    key. Raises :class:`SharedLimitUnavailable` when Redis cannot be reached.
    """

    def __init__(
        self,
        url: str,
        base_url: str,
        api_key: str,
        rate: float,
        min_rate: float = 0.1,
        climb_seconds: float = 30.0,
    ):
        self.url = url
        account = hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:32]
        self.keys = [f"blueshift-import:{account}:pace", f"blueshift-import:{account}:sharers"]
        self.member = uuid.uuid4().hex
        self.args = [rate, min(min_rate, rate), rate / climb_seconds, self.member, SHARER_TTL_S]
        #: Processes seen sharing the limit (this one included) at the last call.
        self.processes = 1
        #: Why Redis was lost mid-run; from then on no call waits for it again.
        self.lost: str | None = None
        self._client: Any = None
        self._script: Any = None
        # One call of this process at a time waits for its start: the next one asks for
        # its own when this one's has come, so no process holds many starts ahead.
        self._turn = asyncio.Lock()

    async def connect(self) -> None:
        """Reach Redis (raises :class:`SharedLimitUnavailable` if it cannot)."""
        # Imported here: runs without --shared-limit do not pay for it.
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = redis.from_url(
            self.url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 1),
        )
        self._script = self._client.register_script(_PACE_SCRIPT)
        try:
            with self._unreachable():
                await self._client.ping()
        except SharedLimitUnavailable:
            await self.close()
            raise

    @contextlib.contextmanager
    def _unreachable(self) -> Iterator[None]:
        """Turn the redis client's failures into :class:`SharedLimitUnavailable`."""
        import redis

        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise SharedLimitUnavailable(
                f"cannot reach Redis at {redacted(self.url)} ({exc})"
            ) from exc

    async def _call(self, action: str) -> float:
        """Run the pace script; returns the seconds to wait for a taken start."""
        if self.lost is not None:
            raise SharedLimitUnavailable(self.lost)
        try:
            with self._unreachable():
                wait, processes = await self._script(keys=self.keys, args=[action, *self.args])
        except SharedLimitUnavailable as exc:
            self.lost = str(exc)
            raise
        self.processes = int(processes)
        return max(0.0, float(wait))

    async def wait_turn(self) -> None:
        """Take the next start of the account's pace and wait for it."""
        async with self._turn:
            await asyncio.sleep(await self._call("take"))

    async def throttle(self) -> None:
        """Halve the account's pace for every process (at most once a second)."""
        await self._call("throttle")

    async def close(self) -> None:
        """Leave the sharers and close the connection (never raises)."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):
            await self._client.zrem(self.keys[1], self.member)
        with contextlib.suppress(Exception):
            await self._client.aclose()
        self._client = None


class Pacer:
    """Everything a call waits for before it leaves, shared by all calls of a run.

    A call holds an in-flight slot, then waits its turn at the process's
    pace, then (with ``--shared-limit``) its start at the account's pace.
    When Redis goes away mid-run the process goes on alone at its share of
    the rate (``rate`` / processes seen sharing it) and says so in
    :attr:`fallback`; nothing is lost.
    """

    def __init__(self, options: ImportOptions):
        self.rate = options.rate
        self.governor = RateGovernor(options.rate)
        self.in_flight = InFlightLimit(options.rate, options.concurrency, options.in_flight_ceiling)
        self.shared: SharedPace | None = None
        if options.shared_limit and not options.dry_run:
            self.shared = SharedPace(
                options.shared_limit, options.resolved_base_url, options.api_key or "", options.rate
            )
        #: Why the run stopped sharing the limit and went on alone, or None.
        self.fallback: str | None = None

    async def open(self) -> None:
        """Reach the shared limit's Redis, if any; raises :class:`SharedLimitUnavailable`."""
        if self.shared is not None:
            await self.shared.connect()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait until a call may leave; hold its in-flight slot until the block ends."""
        async with self.in_flight.slot():
            await self.governor.acquire()
            if self.shared is not None and self.fallback is None:
                try:
                    await self.shared.wait_turn()
                except SharedLimitUnavailable as exc:
                    self._go_alone(str(exc))
                    # Calls that were waiting for a shared start take a turn at the share.
                    await self.governor.acquire()
            yield

    async def throttled(self) -> None:
        """A 429 came: slow this process, and every process sharing the limit."""
        self.governor.on_throttled()
        if self.shared is not None and self.fallback is None:
            try:
                await self.shared.throttle()
            except SharedLimitUnavailable as exc:
                self._go_alone(str(exc))

    def _go_alone(self, reason: str) -> None:
        assert self.shared is not None
        if self.fallback is not None:
            return  # calls that were waiting when Redis went away
        processes = self.shared.processes
        share = self.rate / processes
        self.governor.lower_cap(share)
        self.fallback = (
            f"{reason}; went on alone at {share:.3g} requests/s "
            f"(1/{processes} of the rate, {processes} process(es) were sharing it)"
        )
        log.warning("shared limit lost: %s", self.fallback)
