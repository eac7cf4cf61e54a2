"""Claim pending requests from the ledger and keep every upstream as busy as it allows.

One `Lane` per route (upstream). A lane's feeder claims small chunks from its
batches in turn (round robin, so no batch starves behind a big one) into a
short local queue; its dispatcher starts a task per request whenever the
lane's `Limiter` grants a slot.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from overnight.backends.base import Backend, Response, TransientError
from overnight.engine.limits import Limiter
from overnight.engine.results import ResultSink
from overnight.models import Usage
from overnight.services import Services
from overnight.store.ledger import Claimed, Outcome

log = logging.getLogger("overnight.runner")


@dataclass(slots=True)
class ActiveBatch:
    seq: int
    id: str
    endpoint: str
    model: str


@dataclass(slots=True)
class _Item:
    batch: ActiveBatch
    req: Claimed


def _estimate_tokens(body: bytes) -> int:
    """A cheap upper-bound guess for tokens-per-minute budgets: ~4 bytes a token + output cap."""
    return len(body) // 4 + 256


def error_json(code: str, message: str) -> str:
    return orjson.dumps({"code": code, "message": message}).decode()


@dataclass
class Lane:
    key: str
    backend: Backend
    limiter: Limiter
    runner: Runner
    batches: dict[int, ActiveBatch] = field(default_factory=dict)
    queue: deque[_Item] = field(default_factory=deque)
    _rr: int = 0
    _drained: set[int] = field(default_factory=set)
    _has_work: asyncio.Event = field(default_factory=asyncio.Event)
    _queued: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._feed(), name=f"feed:{self.key}"),
            asyncio.create_task(self._dispatch(), name=f"dispatch:{self.key}"),
        ]

    async def set_batches(self, batches: list[ActiveBatch]) -> None:
        new = {b.seq: b for b in batches}
        gone = set(self.batches) - set(new)
        self._drained &= set(new)
        self.batches = new
        self._has_work.set()
        if gone and self.queue:
            # Claimed but never sent: hand the leases back so the batch can close at once.
            keep = [i for i in self.queue if i.batch.seq not in gone]
            dropped = [i.req.id for i in self.queue if i.batch.seq in gone]
            self.queue = deque(keep)
            svc = self.runner.svc
            await svc.store.ledger.release(svc.owner, dropped)

    def poke(self) -> None:
        """Something may have become claimable (new batch, released leases)."""
        self._drained.clear()
        self._has_work.set()

    async def _feed(self) -> None:
        s = self.runner.svc.settings
        while True:
            low_water = max(8, self.limiter.current * 2)
            candidates = [b for b in self.batches.values() if b.seq not in self._drained]
            if len(self.queue) >= low_water or not candidates:
                self._has_work.clear()
                try:
                    await asyncio.wait_for(self._has_work.wait(), s.poll_interval * 5)
                except TimeoutError:
                    self._drained.clear()
                continue
            self._rr = (self._rr + 1) % len(candidates)
            batch = candidates[self._rr]
            want = min(s.claim_chunk, max(8, low_water * 2 - len(self.queue)))
            try:
                claimed = await self.runner.svc.store.ledger.claim(
                    batch.seq, self.runner.svc.owner, want, time.time() + s.lease_seconds
                )
            except Exception:
                log.exception("claim failed for batch %s", batch.id)
                await asyncio.sleep(1.0)
                continue
            if len(claimed) < want:
                self._drained.add(batch.seq)
            for req in claimed:
                self.queue.append(_Item(batch, req))
            if claimed:
                self._queued.set()

    async def _dispatch(self) -> None:
        while True:
            while not self.queue:
                self._queued.clear()
                await self._queued.wait()
            item = self.queue.popleft()
            await self.limiter.acquire(self._tokens(item))
            if item.batch.seq not in self.batches:
                # Stopped (cancel, expiry) while waiting for a slot: never sent.
                await self.limiter.release()
                svc = self.runner.svc
                await svc.store.ledger.release(svc.owner, [item.req.id])
                continue
            task = asyncio.create_task(self.runner.execute(self, item))
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

    def _tokens(self, item: _Item) -> int:
        return _estimate_tokens(item.req.body) if self.limiter.tpm else 0

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)
        svc = self.runner.svc
        queued = [item.req.id for item in self.queue]
        self.queue.clear()
        await svc.store.ledger.release(svc.owner, queued)


class Runner:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.lanes: dict[str, Lane] = {}
        self.sink = ResultSink(
            svc.store.ledger, svc.owner, svc.settings.flush_interval, svc.settings.flush_max
        )
        self.sent = 0

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
            lane = self.lanes.get(key)
            if lane is None:
                lane = await self._open_lane(key, group[0].model)
                if lane is None:
                    continue
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
        ceiling = route.max_concurrency or (64 if local else s.max_concurrency)
        limiter = Limiter(
            initial=ceiling if local else min(s.initial_concurrency, ceiling),
            ceiling=ceiling,
            rpm=route.rpm,
            tpm=route.tpm,
        )
        lane = Lane(key, backend, limiter, self)
        lane.start()
        self.lanes[key] = lane
        return lane

    def poke(self) -> None:
        for lane in self.lanes.values():
            lane.poke()

    async def execute(self, lane: Lane, item: _Item) -> None:
        s = self.svc.settings
        req = item.req
        attempts = req.attempts
        outcome: Outcome | None = None
        holding = True
        try:
            body = orjson.loads(req.body)
            while outcome is None:
                attempts += 1
                self.sent += 1
                try:
                    response = await lane.backend.send(item.batch.endpoint, body)
                except TransientError as exc:
                    if exc.overloaded:
                        lane.limiter.on_overload(
                            exc.retry_after, exc.response and exc.response.headers
                        )
                    elif exc.retry_after is not None:
                        lane.limiter.pause(exc.retry_after)
                    stopped = item.batch.seq not in lane.batches
                    if attempts >= s.max_attempts or stopped:
                        outcome = self._given_up(item, exc, attempts)
                        break
                    await lane.limiter.release()
                    holding = False
                    await asyncio.sleep(self._backoff(attempts, exc.retry_after))
                    await lane.limiter.acquire(lane._tokens(item))
                    holding = True
                    continue
                lane.limiter.on_success(response.headers)
                outcome = self._answered(item, response, attempts)
        except Exception as exc:  # a bug in a backend must not take the engine down
            log.exception("request %s of %s failed inside overnight", req.custom_id, item.batch.id)
            outcome = Outcome(
                req.id,
                item.batch.seq,
                False,
                None,
                None,
                error_json(
                    "internal_error", f"overnight failed to run this request: {type(exc).__name__}"
                ),
                None,
                attempts,
                Usage(),
            )
        finally:
            if holding:
                await lane.limiter.release()
        self.sink.add(outcome)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.svc.settings
        if retry_after is not None:
            return min(s.retry_max_delay * 5, retry_after + random.uniform(0, 0.1))
        base = min(s.retry_max_delay, s.retry_base_delay * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)

    def _answered(self, item: _Item, response: Response, attempts: int) -> Outcome:
        ok = 200 <= response.status_code < 300
        return Outcome(
            item.req.id,
            item.batch.seq,
            ok,
            response.status_code,
            orjson.dumps(response.body),
            None,
            response.request_id or None,
            attempts,
            Usage.from_body(response.body) if ok else Usage(),
        )

    def _given_up(self, item: _Item, exc: TransientError, attempts: int) -> Outcome:
        if exc.response is not None:
            return self._answered(item, exc.response, attempts)
        return Outcome(
            item.req.id,
            item.batch.seq,
            False,
            None,
            None,
            error_json(exc.code, f"{exc.message} Gave up after {attempts} attempts."),
            None,
            attempts,
            Usage(),
        )

    def in_flight(self) -> int:
        return sum(len(lane.in_flight) for lane in self.lanes.values())

    async def stop(self) -> None:
        for lane in self.lanes.values():
            await lane.stop()
        await self.sink.stop()
