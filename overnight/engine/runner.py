"""The registry of lanes: one per route (upstream), opened as its batches appear.

Each lane owns the attempts of its requests (engine/lane.py) and what became of
them (engine/outcomes.py); the runner tells lanes which batches may run, and
drains them on shutdown. Every lane records into one ResultSink.
"""

from __future__ import annotations

import asyncio
import logging

from overnight.engine.breaker import Breaker
from overnight.engine.deps import EngineDeps
from overnight.engine.fleet import FleetLimits
from overnight.engine.lane import ActiveBatch, Lane
from overnight.engine.limits import Limiter
from overnight.engine.outcomes import RetryPolicy
from overnight.engine.results import ResultSink
from overnight.engine.yielding import YieldController
from overnight.store.faults import log_failure

log = logging.getLogger("overnight.runner")

LOCAL_CONCURRENCY = 64


class Runner:
    def __init__(self, svc: EngineDeps) -> None:
        self.svc = svc
        self.lanes: dict[str, Lane] = {}
        s = svc.settings
        self.sink = ResultSink(svc.store.ledger, svc.owner, s.flush_interval, s.flush_max)
        self.policy = RetryPolicy(s.max_attempts, s.retry_base_delay, s.retry_max_delay)

    def start(self) -> None:
        self.sink.start()

    async def set_active(self, batches: list[ActiveBatch]) -> None:
        """The scheduler's view of which batches may send requests now."""
        by_lane: dict[str, list[ActiveBatch]] = {}
        for b in batches:
            key = self.svc.router.key(b.model)
            if key is not None:
                by_lane.setdefault(key, []).append(b)
        for key, group in by_lane.items():
            lane = self.lanes.get(key) or await self._open_lane(key, group[0].model)
            if lane is not None:
                await lane.set_batches(group)
        for key, lane in self.lanes.items():
            if key not in by_lane:
                await lane.set_batches([])

    async def _open_lane(self, key: str, model: str) -> Lane | None:
        s = self.svc.settings
        route = self.svc.router.route(model)
        try:
            backend = await self.svc.router.backend(model)
        except Exception:
            log.exception("could not start the backend for %r", key)
            return None
        assert route is not None
        local = not route.replicas
        ceiling = route.max_concurrency or (LOCAL_CONCURRENCY if local else s.max_concurrency)
        limiter = Limiter(
            initial=ceiling if local else min(s.initial_concurrency, ceiling),
            ceiling=ceiling,
            rpm=route.rpm,
            tpm=route.tpm,
        )
        yielder = None
        if not local and route.yield_mode == "auto":
            yielder = YieldController(max_share=route.max_share)
        fleet = None
        if not local and not self.svc.store.single_process:
            # A fleet on one database: the route's limits hold for all its workers.
            fleet = FleetLimits(
                self.svc.store.fleet,
                key,
                self.svc.owner,
                limiter,
                rpm=route.rpm,
                tpm=route.tpm,
                max_concurrency=route.max_concurrency,
                clock=self.svc.clock,
            )
        lane = Lane(
            key,
            backend,
            limiter,
            Breaker(key),
            self.svc.store.ledger,
            self.svc.owner,
            self.sink,
            self.policy,
            claim_chunk=s.claim_chunk,
            lease_seconds=s.lease_seconds,
            poll_interval=s.poll_interval,
            clock=self.svc.clock,
            yielder=yielder,
            load_interval=route.load_interval,
            fleet=fleet,
            deadlines=s.deadline_scheduling,
        )
        lane.start()
        self.lanes[key] = lane
        return lane

    def poke(self) -> None:
        for lane in self.lanes.values():
            lane.poke()

    @property
    def idle(self) -> bool:
        return all(lane.idle for lane in self.lanes.values())

    def begin_drain(self) -> None:
        for lane in self.lanes.values():
            lane.begin_drain()

    async def stop(self, deadline: float) -> None:
        """Let requests in flight answer until `deadline` (monotonic), record every result,
        and hand back the leases of what was not sent."""
        await asyncio.gather(*(lane.stop(deadline) for lane in self.lanes.values()))
        await self.sink.stop()
        # A claim cut short by the shutdown may have committed without its answer reaching
        # a lane: no lane knows those leases. Every answer is recorded by now, so what this
        # process still holds goes back, and nothing waits for a lease to run out.
        try:
            stray = await self.svc.store.ledger.release_owned(self.svc.owner)
        except Exception as exc:
            log_failure(log, exc, "could not hand back leases at shutdown; they will expire")
        else:
            if stray:
                log.info("handed back %d leases no lane knew of", stray)
