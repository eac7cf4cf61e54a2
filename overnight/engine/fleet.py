"""A route's limits held by the whole fleet: workers sharing a PostgreSQL store.

Each worker alone would apply `rpm = 600` itself, and three would send 1,800 a
minute. Here the budget lives in the store (store/base.py `FleetStore`):

- `rpm`, `tpm` and a pace learnt from an upstream's headers are token buckets in
  rows, drawn from in chunks of a tenth of a second's worth, so the store sees a
  few transactions a second however fast requests go;
- `max_concurrency` is shared as leased slots, renewed every second; a worker
  that dies stops renewing and its slots are free again after SLOT_LEASE;
- a rate one worker learns from headers is written for the others to pace to.

On a single-process store (SQLite) none of this runs: the lane's own buckets are
the whole fleet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from overnight.engine.limits import Limiter
from overnight.engine.pacing import LEARNT_TTL, MARGIN
from overnight.store.base import FleetStore
from overnight.store.faults import log_failure

log = logging.getLogger("overnight.fleet")

CHUNK_SECONDS = 0.1  # a draw from a shared bucket: this many seconds of its rate
SYNC_EVERY = 1.0
SLOT_LEASE = 10.0  # a dead worker's slots are free again after this


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

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)
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
        self.local -= amount


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
        self.idle: Callable[[], bool] = lambda: False  # the lane's: nothing to send
        if rpm:
            limiter.rpm = SharedBucket(fleet, f"rpm:{route}", rpm, max(1.0, rpm / 60.0), clock)
        if tpm:
            limiter.tpm = SharedBucket(fleet, f"tpm:{route}", tpm, max(1.0, tpm / 6.0), clock)
        if max_concurrency:
            limiter.fleet_cap = 0  # nothing is sent before the first lease

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, exc, "could not sync the fleet's limits for %s", self.route)
            await asyncio.sleep(SYNC_EVERY)

    async def sync(self) -> None:
        now = self.clock()
        limiter = self.limiter
        if self.max_concurrency:
            held = await self.fleet.lease_slots(
                self.route,
                self.owner,
                0 if self.idle() else max(1, limiter.wanted),
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
        if shared is None:
            limiter.shared_pace = None
        elif limiter.shared_pace is None or abs(limiter.shared_pace.rate - shared * MARGIN) > 1e-9:
            per_second = shared * MARGIN
            limiter.shared_pace = SharedBucket(
                self.fleet,
                f"learnt:{self.route}",
                per_second * 60,
                max(1.0, per_second / 10),
                self.clock,
            )

    async def release(self) -> None:
        try:
            await self.fleet.release_slots(self.owner)
        except Exception as exc:
            log_failure(log, exc, "could not hand back the fleet slots of %s", self.owner)
