"""A learnt pace kept by several workers through one store (the memory fleet here, the
SQL ones in tests/integration/test_fleet_contract.py), on a fake clock."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Coroutine
from typing import Any

from overnight.engine.fleet import SLOT_LEASE, FleetLimits, SharedPace, learnt_burst
from overnight.engine.limits import Limiter
from overnight.store.memory_fleet import MemoryFleet

T0 = 1_000_000.0


class FakeTime:
    """A clock that moves only when every task waits: then to the earliest timer."""

    def __init__(self) -> None:
        self.now = T0
        self.timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self.seq = 0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.seq += 1
        heapq.heappush(self.timers, (self.now + seconds, self.seq, future))
        await future

    async def run(self, *coros: Coroutine[Any, Any, None]) -> None:
        tasks = [asyncio.ensure_future(c) for c in coros]
        while not all(t.done() for t in tasks):
            for _ in range(20):  # the memory fleet never waits: this is "all blocked"
                await asyncio.sleep(0)
            if self.timers:
                at, _, future = heapq.heappop(self.timers)
                self.now = max(self.now, at)
                future.set_result(None)
        await asyncio.gather(*tasks)


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_three_workers_on_one_pace_never_pass_the_limit_together() -> None:
    fake, fleet = FakeTime(), MemoryFleet()
    limit = 50.0  # requests a second, the upstream's 1 s window
    rate = limit * 0.985
    paces = [
        SharedPace(fleet, "learnt:r", rate, learnt_burst(limit), fake.clock, fake.sleep)
        for _ in range(3)
    ]
    sent: list[float] = []

    async def worker(pace: SharedPace, n: int) -> None:
        for _ in range(n):
            await pace.take()
            sent.append(fake.now)

    await fake.run(*(worker(p, 100) for p in paces))
    assert len(sent) == 300
    # Chunks of a tenth of a second each, but every send has its own time on the one
    # schedule: no 1 s window holds more than the limit, and the pace is the rate.
    assert paces[0].chunk == 5
    assert most_in_any_window(sent, 1.0) <= limit
    assert (len(sent) - 1) / (max(sent) - min(sent)) >= 0.99 * rate


async def test_a_reserved_time_long_past_is_not_saved_up_for_a_burst() -> None:
    fake, fleet = FakeTime(), MemoryFleet()
    pace = SharedPace(fleet, "learnt:r", 50.0, 1.0, fake.clock, fake.sleep)
    sent: list[float] = []

    async def sends(n: int) -> None:
        for _ in range(n):
            await pace.take()
            sent.append(fake.now)

    await fake.run(sends(1))  # reserves a chunk of 5 sends at 50/s and uses one
    assert pace.chunk == 5
    fake.now += 60  # idle: the other four reserved times are long past
    await fake.run(sends(6))
    # Not four at once: the level is back at its burst (1), so one now, then one per
    # 0.02 s.
    assert [round(t - sent[1], 3) for t in sent[1:]] == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]


async def test_a_pace_learnt_at_a_full_upstream_starts_when_its_window_frees() -> None:
    fake, fleet = FakeTime(), MemoryFleet()
    pace = SharedPace(fleet, "learnt:r", 50.0, 1.0, fake.clock, fake.sleep)
    other = SharedPace(fleet, "learnt:r", 50.0, 1.0, fake.clock, fake.sleep)
    pace.hold_until(T0 + 0.4)  # what the learning worker's own budget said
    sent: list[float] = []

    async def sends(p: SharedPace, n: int, after: float = 0.0) -> None:
        await fake.sleep(after)
        for _ in range(n):
            await p.take()
            sent.append(fake.now)

    # The other worker saw no full upstream; it joins a little later, on the same
    # schedule, and sends nothing into the full window either: its times come after the
    # first worker's chunk of 5 (0.4 to 0.48).
    await fake.run(sends(pace, 2), sends(other, 2, after=0.01))
    assert [round(t - T0, 3) for t in sorted(sent)] == [0.4, 0.42, 0.5, 0.52]


async def test_workers_with_work_on_a_route_count_each_other() -> None:
    fake, fleet = FakeTime(), MemoryFleet()
    limits = []
    for owner in "abc":
        lim = FleetLimits(
            fleet, "r", owner, Limiter(), rpm=None, tpm=None, max_concurrency=None, clock=fake.clock
        )
        limits.append(lim)
    a, b, c = limits
    c.idle = lambda: True  # no batch of this route
    for lim in limits:
        await lim.sync()
    await a.sync()
    assert [lim.limiter.fleet_size for lim in limits] == [2, 2, 1]
    a.idle = lambda: True  # a's batches ended: b spends the allowance alone
    await a.sync()
    await b.sync()
    assert (a.limiter.fleet_size, b.limiter.fleet_size) == (1, 1)
    fake.now += SLOT_LEASE + 1  # b died without a word: c, getting work, is alone
    c.idle = lambda: False
    await c.sync()
    assert c.limiter.fleet_size == 1


async def test_a_worker_joining_others_on_a_route_starts_from_one_request() -> None:
    fake, fleet = FakeTime(), MemoryFleet()

    def limits(owner: str) -> FleetLimits:
        return FleetLimits(
            fleet,
            "r",
            owner,
            Limiter(initial=16),
            rpm=None,
            tpm=None,
            max_concurrency=None,
            clock=fake.clock,
        )

    first, joiner = limits("a"), limits("b")
    assert first.limiter.current == 0  # nothing goes out before the first sync
    await first.sync()
    assert first.limiter.current == 16  # alone on the route: its whole initial window
    await joiner.sync()
    assert joiner.limiter.current == 1  # the others may have filled the upstream
    await first.sync()
    assert first.limiter.current == 16  # later syncs change nothing of that


async def test_a_refusal_holds_the_fleets_schedule_for_every_worker() -> None:
    fake, fleet = FakeTime(), MemoryFleet()
    told = FleetLimits(
        fleet,
        "r",
        "a",
        Limiter(clock=fake.clock),
        rpm=None,
        tpm=None,
        max_concurrency=None,
        clock=fake.clock,
    )
    other = SharedPace(fleet, "learnt:r", 50.0, 1.0, fake.clock, fake.sleep)
    told._pace_to(50.0 / 0.985)  # the rate both pace to (MARGIN under it)
    assert told._pace is not None
    told._pace.sleep = fake.sleep
    told.limiter.pause(0.5)  # a 429 said retry-after: 0.5
    sent: list[float] = []

    async def one(pace: SharedPace, after: float) -> None:
        await fake.sleep(after)
        await pace.take()
        sent.append(round(fake.now - T0, 3))

    await fake.run(one(told._pace, 0.0), one(other, 0.01))
    assert min(sent) >= 0.5 and len(sent) == 2
