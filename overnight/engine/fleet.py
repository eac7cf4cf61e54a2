"""A route's limits held by the whole fleet: workers sharing a PostgreSQL store.

Each worker alone would apply `rpm = 600` itself, and three would send 1,800 a
minute. Here the budget lives in the store (store/base.py `FleetStore`):

- `rpm`, `tpm` and a pace learnt from an upstream's headers are token buckets in
  rows, drawn from in chunks of a tenth of a second's worth, so the store sees a
  few transactions a second however fast requests go;
- `max_concurrency` is shared as leased slots, renewed every second; a worker
  that dies stops renewing and its slots are free again after SLOT_LEASE;
- a rate one worker learns from headers is written for the others to pace to;
- each worker with work for the route says so (`present`, renewed at each sync), so
  that an allowance the upstream's headers tell (`remaining` before the reset) is
  split between the workers spending it.

On a single-process store (SQLite) none of this runs: the lane's own buckets are
the whole fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from overnight.engine.limits import Limiter
from overnight.engine.pacing import LEARNT_TTL, MARGIN
from overnight.store.base import FleetStore
from overnight.store.faults import log_failure

log = logging.getLogger("overnight.fleet")

CHUNK_SECONDS = 0.1  # a draw from a shared bucket: this many seconds of its rate
SYNC_EVERY = 1.0
# Just after a route gets work, how often a worker looks who else is on it: workers start
# a batch within a poll of each other, and the first window of a told limit is theirs.
JOINING_SYNC_EVERY = 0.2
JOINING_FOR = 2.0
SLOT_LEASE = 10.0  # a dead worker's slots are free again after this


def learnt_burst(rate: float) -> float:
    """The burst a pace learnt from headers allows the fleet, as pacing.RateLearner's
    (within the margin under the limit), for the shortest window such a rate is
    counted over (1 s): the limit's own window is not shared."""
    return max(1.0, rate * (1 - MARGIN) / 2)


class SharedBucket:
    """A token bucket the fleet shares; same `take` as engine.pacing.TokenBucket."""

    def __init__(
        self,
        fleet: FleetStore,
        name: str,
        per_minute: float,
        burst: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.name = name
        self.rate = per_minute / 60.0
        self.capacity = burst
        self.clock = clock
        self.local = 0.0  # granted by the store, not spent yet
        # One draw at a time per process: every worker slot waiting here would otherwise
        # poll the store's row lock on its own, crowding out the ledger's connections.
        self._drawing = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)
        async with self._drawing:
            await self._fill_to(amount)
            self.local -= amount

    async def _fill_to(self, amount: float) -> None:
        while self.local < amount:
            want = max(amount - self.local, min(self.capacity, self.rate * CHUNK_SECONDS))
            try:
                self.local += await self.fleet.take(
                    self.name, want, self.rate, self.capacity, self.clock()
                )
            except Exception as exc:
                log_failure(log, exc, "could not draw from the shared budget %s", self.name)
                await asyncio.sleep(1.0)
                continue
            if self.local < amount:
                await asyncio.sleep(max(0.01, (amount - self.local) / self.rate))


class SharedPace:
    """A rate learnt from an upstream's headers, kept by the whole fleet: each draw
    reserves this worker's next few sends on the store's one schedule (`reserve`), and
    each send waits for its time. Every send is drawn whatever the chunk, so the fleet
    goes at the rate with bursts no larger than `burst`, at a few store transactions a
    second (a plain shared bucket needs a burst as large as its chunk, or a
    transaction per request)."""

    def __init__(
        self,
        fleet: FleetStore,
        name: str,
        per_second: float,
        burst: float,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.fleet = fleet
        self.name = name
        self.rate = per_second
        self.sleep = sleep
        self.burst = burst
        self.clock = clock
        self.chunk = max(1, round(per_second * CHUNK_SECONDS))
        self._due: deque[float] = deque()  # times of the sends reserved, not used yet
        self._drawing = asyncio.Lock()
        self.not_before = 0.0  # nothing is reserved before this (the upstream is full)

    def hold_until(self, when: float) -> None:
        """The upstream said it is full until `when`: no send of the fleet's before then.
        Times this worker reserved before are dropped: they would go into the full window."""
        if when > self.not_before:
            self.not_before = when
            self._due.clear()

    async def take(self, amount: float = 1.0) -> None:
        async with self._drawing:
            now = self.clock()
            # A reserved time long past is not saved up: sent late, it would add to
            # whatever the fleet sends now.
            while self._due and self._due[0] < now - CHUNK_SECONDS:
                self._due.popleft()
            while not self._due:
                # The hold goes on the fleet's one schedule, so that the workers that did
                # not see the upstream full wait for it too.
                hold = self.not_before if self.not_before > now else None
                try:
                    level = await self.fleet.reserve(
                        self.name, self.chunk, self.rate, self.burst, now, hold
                    )
                except Exception as exc:
                    log_failure(log, exc, "could not draw from the shared pace %s", self.name)
                    await self.sleep(1.0)
                    now = self.clock()
                    continue
                self._due.extend(
                    now + max(0.0, i - level) / self.rate for i in range(1, self.chunk + 1)
                )
            wait = self._due.popleft() - self.clock()
            if wait > 0:
                await self.sleep(wait)


class FleetLimits:
    """Keeps one lane's limiter inside the fleet's budget for its route."""

    def __init__(
        self,
        fleet: FleetStore,
        route: str,
        owner: str,
        limiter: Limiter,
        *,
        rpm: int | None,
        tpm: int | None,
        max_concurrency: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.route = route
        self.owner = owner
        self.limiter = limiter
        self.max_concurrency = max_concurrency
        self.clock = clock
        self._shared_rate: float | None = None
        self._learnt = asyncio.Event()  # also set by `wake`
        self._pace: SharedPace | None = None
        self._busy_since: float | None = None  # the route got work then (None: idle)
        self._hold_until = 0.0  # the upstream said it is full until then (unix time)
        self.idle: Callable[[], bool] = lambda: False  # the lane's: nothing to send
        limiter.on_learnt = self._on_learnt
        limiter.on_pause = self._hold
        if rpm:
            limiter.rpm = SharedBucket(fleet, f"rpm:{route}", rpm, max(1.0, rpm / 60.0), clock)
        if tpm:
            limiter.tpm = SharedBucket(fleet, f"tpm:{route}", tpm, max(1.0, tpm / 6.0), clock)
        # Nothing is sent before the first sync: a worker joining a route the fleet
        # already sends to learns its lease, its pace and who else is there first.
        limiter.fleet_cap = 0

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, exc, "could not sync the fleet's limits for %s", self.route)
                if not self.max_concurrency:
                    self.limiter.set_fleet_cap(None)  # the store is away: pace alone
            self._learnt.clear()
            joining = self._busy_since is not None and (
                self.clock() - self._busy_since < JOINING_FOR
            )
            with contextlib.suppress(TimeoutError):  # woken early by `_on_learnt`, `wake`
                await asyncio.wait_for(
                    self._learnt.wait(), JOINING_SYNC_EVERY if joining else SYNC_EVERY
                )

    def wake(self) -> None:
        """The lane got batches to run: say so to the fleet now, not at the next sync."""
        self._learnt.set()

    def _on_learnt(self, rate: float) -> None:
        """This worker's own headers told a rate: pace the fleet's bucket to it at once
        (alone, at the full rate, it would send as much again as every other worker
        doing the same) and write it for the others now rather than at the next sync."""
        self._pace_to(rate)
        self._learnt.set()
        own = self.limiter.learner.bucket
        if own is not None:
            # The headers said the upstream is full (the learner starts in debt by what
            # was sent since): the shared schedule starts when this worker's own would.
            self._hold(own.wait_for())

    def _hold(self, seconds: float) -> None:
        """The upstream is full for `seconds` (a 429's `retry-after`, or the learnt
        budget's debt): the fleet's schedule sends nothing before then."""
        self._hold_until = max(self._hold_until, self.clock() + seconds)
        if self._pace is not None:
            self._pace.hold_until(self._hold_until)

    def _pace_to(self, rate: float | None) -> None:
        limiter = self.limiter
        if rate is None:
            limiter.shared_pace = self._pace = None
        elif self._pace is None or abs(self._pace.rate - rate * MARGIN) > 1e-9:
            per_second = rate * MARGIN
            self._pace = SharedPace(
                self.fleet, f"learnt:{self.route}", per_second, learnt_burst(rate), self.clock
            )
            self._pace.hold_until(self._hold_until)  # a refusal came just before
            limiter.shared_pace = self._pace

    async def sync(self) -> None:
        now = self.clock()
        limiter = self.limiter
        idle = self.idle()
        joining = not idle and self._busy_since is None
        if idle or joining:
            self._busy_since = None if idle else now
        present = await self.fleet.present(
            self.route, self.owner, now, None if idle else now + SLOT_LEASE
        )
        limiter.fleet_size = 1 if idle else max(1, present)
        if joining and present > 1 and limiter.slow_start:
            # Others send to this upstream already, maybe at its limit: this worker's
            # first requests would go out before it has seen one answer. It sends one,
            # whose answer tells the upstream's state (its rate-limit headers, its
            # time), and grows from there in slow start: a round trip per doubling.
            limiter.limit = float(limiter.floor)
        if self.max_concurrency:
            held = await self.fleet.lease_slots(
                self.route,
                self.owner,
                0 if idle else max(1, limiter.wanted),
                self.max_concurrency,
                now,
                now + SLOT_LEASE,
                in_use=limiter.outstanding,
            )
            limiter.set_fleet_cap(held)
        learnt = limiter.learner.rate
        if learnt is not None and learnt != self._shared_rate:
            await self.fleet.set_learnt(self.route, learnt, now)
            self._shared_rate = learnt
        shared = await self.fleet.learnt(self.route, now, LEARNT_TTL)
        self._pace_to(shared)
        if not self.max_concurrency:
            limiter.set_fleet_cap(None)  # synced once: free to send

    async def release(self) -> None:
        try:
            await self.fleet.release_slots(self.owner)
        except Exception as exc:
            log_failure(log, exc, "could not hand back the fleet slots of %s", self.owner)
