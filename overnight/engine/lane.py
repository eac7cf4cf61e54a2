"""One upstream's share of the engine: a short queue of claimed requests and its workers.

The feeder claims small chunks from the lane's batches in turn (round robin,
so no batch starves behind a big one). Workers take requests from the queue;
only the first `limiter.current` workers run, so adaptive concurrency is the
number of awake workers. A request to retry is put back on the queue after
its backoff instead of holding a worker while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from overnight import logs, tracing
from overnight.backends.base import Backend, TransientError, UnusableAnswer
from overnight.engine.breaker import Breaker
from overnight.engine.deadlines import Demand, Stride, weights
from overnight.engine.fleet import FleetLimits
from overnight.engine.limits import Limiter
from overnight.engine.outcomes import RetryPolicy, answered, given_up, no_answer
from overnight.engine.results import ResultSink
from overnight.engine.yielding import YieldController
from overnight.metrics import (
    ERROR_RESPONSE,
    GAVE_UP,
    INTERNAL_ERROR,
    OK,
    OUTCOMES,
    RETRIED,
    UNREACHABLE,
    route_stats,
)
from overnight.store.base import Claimed, LedgerStore, Outcome
from overnight.store.faults import log_failure

log = logging.getLogger("overnight.lane")


@dataclass(slots=True)
class ActiveBatch:
    seq: int
    id: str
    endpoint: str
    model: str
    remaining: int = 0  # requests not finished, as of the scheduler's last look
    expires_at: float = float("inf")
    priority: int = 0


@dataclass(slots=True)
class Item:
    batch: ActiveBatch
    req: Claimed


RATE_SPAN = 10.0
LOAD_INTERVAL = 0.1  # seconds between readings of the upstream's load signal


def estimate_tokens(body: bytes) -> int:
    """A cheap upper-bound guess for tokens-per-minute budgets: ~4 bytes a token + output cap."""
    return len(body) // 4 + 256


@dataclass
class Lane:
    key: str
    backend: Backend
    limiter: Limiter
    breaker: Breaker
    ledger: LedgerStore
    owner: str
    sink: ResultSink
    policy: RetryPolicy
    claim_chunk: int = 256
    lease_seconds: float = 60.0
    poll_interval: float = 0.2
    clock: Callable[[], float] = time.time  # unix seconds, for lease deadlines
    yielder: YieldController | None = None  # yield = "auto": give way to others' requests
    load_interval: float = LOAD_INTERVAL
    fleet: FleetLimits | None = None  # the route's limits shared with other workers
    deadlines: bool = True  # batches at risk of expiring get the rate they need first
    batches: dict[int, ActiveBatch] = field(default_factory=dict)
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    busy: int = 0
    retrying: int = 0
    _stride: Stride = field(default_factory=Stride)
    _finished: deque[float] = field(default_factory=deque)  # when answers came, 10 s
    _drained: set[int] = field(default_factory=set)
    _has_work: asyncio.Event = field(default_factory=asyncio.Event)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    draining: bool = False
    # What the lane holds besides its queue, so that a stop hands every lease back.
    _held: dict[asyncio.Task[Any], Item] = field(default_factory=dict)  # taken, maybe sent
    _sending: set[asyncio.Task[Any]] = field(default_factory=set)
    _waiting: dict[asyncio.TimerHandle, Item] = field(default_factory=dict)  # backoffs

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._feed(), name=f"feed:{self.key}"))
        for index in range(self.limiter.ceiling):
            self._tasks.append(asyncio.create_task(self._work(index), name=f"work:{self.key}"))
        if self.yielder is not None:
            self._tasks.append(asyncio.create_task(self._watch_load(), name=f"load:{self.key}"))
        if self.fleet is not None:
            self.fleet.idle = lambda: not self.batches and self.idle
            self._tasks.append(asyncio.create_task(self.fleet.run(), name=f"fleet:{self.key}"))
        self.limiter.on_grow = self._grew.set

    async def _watch_load(self) -> None:
        """yield = "auto": bound concurrency by what the upstream says of its load, or,
        where it says nothing, by the queueing seen in overnight's own answers."""
        assert self.yielder is not None
        limiter = self.limiter
        while True:
            if not self.batches and self.busy == 0:
                await asyncio.sleep(self.load_interval * 8)
                continue
            try:
                load = await self.backend.load()
            except Exception:
                log.exception("reading the load of %s failed", self.key)
                load = None
            limiter.use_latency = load is None
            limiter.set_cap(self.yielder.cap(load) if load is not None else None)
            await asyncio.sleep(self.load_interval)

    @property
    def idle(self) -> bool:
        return self.busy == 0 and self.retrying == 0 and self.queue.empty()

    def _low_water(self) -> int:
        return max(8, self.limiter.current * 2)

    async def set_batches(self, batches: list[ActiveBatch]) -> None:
        new = {b.seq: b for b in batches}
        if new and not self.batches and self.fleet is not None:
            self.fleet.wake()
        gone = set(self.batches) - set(new)
        self._drained &= set(new)
        self.batches = new
        self._has_work.set()
        if gone and not self.queue.empty():
            # Claimed but never sent: hand the leases back so the batch can close at once.
            kept: list[Item] = []
            dropped: list[Item] = []
            while not self.queue.empty():
                item = self.queue.get_nowait()
                (dropped if item.batch.seq in gone else kept).append(item)
            for item in kept:
                self.queue.put_nowait(item)
            await self.ledger.release(self.owner, [i.req.id for i in dropped])

    def poke(self) -> None:
        """Something may have become claimable (new batch, released leases)."""
        self._drained.clear()
        self._has_work.set()

    def _record(self, outcome: Outcome) -> None:
        self._finished.append(time.monotonic())
        self.sink.add(outcome)

    def rate(self) -> float:
        """Requests a second this lane finished over the last RATE_SPAN seconds."""
        done = self._finished
        if len(done) < 2:
            return 0.0
        now = time.monotonic()
        while done and done[0] < now - RATE_SPAN:
            done.popleft()
        return len(done) / max(now - done[0], 1.0) if done else 0.0

    def retry_later(self, item: Item, delay: float) -> None:
        self.retrying += 1

        def requeue() -> None:
            self.retrying -= 1
            self._waiting.pop(handle, None)
            self.queue.put_nowait(item)

        handle = asyncio.get_running_loop().call_later(delay, requeue)
        self._waiting[handle] = item

    async def _feed(self) -> None:
        while True:
            low_water = self._low_water()
            candidates = [b for b in self.batches.values() if b.seq not in self._drained]
            if self.queue.qsize() >= low_water or not candidates:
                self._has_work.clear()
                try:
                    await asyncio.wait_for(self._has_work.wait(), self.poll_interval * 5)
                except TimeoutError:
                    self._drained.clear()
                continue
            demands = [Demand(b.seq, b.remaining, b.expires_at, b.priority) for b in candidates]
            shares = weights(demands, self.rate(), self.clock(), self.deadlines)
            seq = self._stride.pick(shares)
            batch = self.batches[seq]
            want = min(self.claim_chunk, max(8, low_water * 2 - self.queue.qsize()))
            try:
                claimed = await self.ledger.claim(
                    batch.seq, self.owner, want, self.clock() + self.lease_seconds
                )
            except Exception as exc:
                log_failure(log, exc, "claim failed for batch %s", batch.id)
                await asyncio.sleep(1.0)
                continue
            self._stride.charge(seq, len(claimed), shares[seq])
            if len(claimed) < want:
                self._drained.add(batch.seq)
            for req in claimed:
                self.queue.put_nowait(Item(batch, req))

    async def _work(self, index: int) -> None:
        limiter = self.limiter
        while True:
            if index >= limiter.current:
                self._grew.clear()
                await self._grew.wait()
                continue
            # An unreachable route: wait here, before taking a request, so requests of
            # batches that stop meanwhile are still in the queue to be handed back.
            probe = await self.breaker.admit() if self.breaker.open else False
            item = await self.queue.get()
            if self.queue.qsize() < self._low_water():
                self._has_work.set()  # refill before the queue runs dry
            me = asyncio.current_task()
            assert me is not None
            self._held[me] = item
            self.busy += 1
            logs.current_batch.set(item.batch.id)  # for the log lines of this request
            cancelled = False
            try:
                if limiter.gated:
                    await limiter.gate(estimate_tokens(item.req.body) if limiter.tpm else 0)
                if limiter.cap is not None and self.yielder is not None:
                    wait = limiter.spacing.wait(self.yielder.capacity)
                    if wait > 0:
                        await asyncio.sleep(wait)
                if limiter.cap is not None and index >= limiter.current:
                    self.queue.put_nowait(item)  # the upstream filled meanwhile: not now
                    continue
                if item.batch.seq not in self.batches or self.draining:
                    # Stopped (cancel, expiry, shutdown) while waiting: never sent.
                    await self.ledger.release(self.owner, [item.req.id])
                    continue
                self._sending.add(me)
                if tracing.enabled:
                    await self._traced_attempt(item, probe)
                else:
                    await self._attempt(item, probe)
                probe = False
            except asyncio.CancelledError:
                cancelled = True  # what it held stays in `_held`, for `stop` to hand back
                raise
            except Exception:
                log.exception("worker error on %s", self.key)
            finally:
                self._sending.discard(me)
                if not cancelled:
                    self._held.pop(me, None)
                self.busy -= 1
                if probe:
                    self.breaker.release_probe()

    async def _traced_attempt(self, item: Item, probe: bool) -> None:
        """`_attempt` in a span of its own (tracing on), current while the request is sent."""
        batch, req = item.batch, item.req
        with tracing.attempt(batch.id, batch.model, req.custom_id, req.attempts + 1) as span:
            tracing.attempt_outcome(span, OUTCOMES[await self._attempt(item, probe)])

    async def _attempt(self, item: Item, probe: bool) -> int:
        """Send one request once; record its outcome, or queue it again after a backoff.
        Returns the outcome (an index of overnight.metrics.OUTCOMES).

        `probe`: the request tests a route whose breaker is half-open."""
        req = item.req
        req.attempts += 1
        limiter = self.limiter
        ticket = limiter.ticket()
        stats = route_stats(self.key)
        started = stats.sent()
        breaker = self.breaker
        try:
            response = await self.backend.send_raw(item.batch.endpoint, req.body)
        except TransientError as exc:
            limiter.finished()
            if exc.unsent:
                # Nothing reached the upstream: no attempt spent, and an outage of the
                # whole route pauses it instead of failing its requests.
                req.attempts -= 1
                stats.done(started, UNREACHABLE)
                if exc.route_down:
                    breaker.unreachable(probe)
                self.retry_later(item, 0.0)
                return UNREACHABLE
            breaker.reached()
            if exc.overloaded:
                limiter.on_overload(
                    exc.retry_after,
                    exc.response.headers if exc.response else None,
                    ticket=ticket,
                    timed_out=exc.code == "request_timeout",
                )
            elif exc.retry_after is not None:
                limiter.pause(exc.retry_after)
            stopped = item.batch.seq not in self.batches
            if req.attempts >= self.policy.max_attempts or stopped:
                stats.done(started, GAVE_UP)
                self._record(given_up(req, item.batch.seq, exc))
                return GAVE_UP
            stats.done(started, RETRIED)
            self.retry_later(item, self.policy.backoff(req.attempts, exc.retry_after))
            return RETRIED
        except UnusableAnswer as exc:
            limiter.finished()
            breaker.reached()
            limiter.on_success(exc.headers, ticket)
            stats.done(started, ERROR_RESPONSE)
            self._record(no_answer(req, item.batch.seq, "invalid_upstream_response", exc.message))
            return ERROR_RESPONSE
        except Exception as exc:  # a bug in a backend must not take the engine down
            limiter.finished()
            stats.done(started, INTERNAL_ERROR)
            log.exception("request %s of %s failed inside overnight", req.custom_id, item.batch.id)
            message = f"overnight failed to run this request: {type(exc).__name__}"
            self._record(no_answer(req, item.batch.seq, "internal_error", message))
            return INTERNAL_ERROR
        finally:
            if probe:
                breaker.release_probe()  # a no-op once the probe's outcome was told
        limiter.finished()
        breaker.reached()
        outcome = answered(req, item.batch.seq, response)
        limiter.on_success(response.headers, ticket, outcome.usage.output_tokens)
        result = OK if outcome.ok else ERROR_RESPONSE
        stats.done(started, result, outcome.usage)
        self._record(outcome)
        return result

    def begin_drain(self) -> None:
        """Shutting down: claim nothing more and send nothing more, at once. Requests
        already sent go on until `stop` (their answers are billed generations)."""
        if self.draining:
            return
        self.draining = True
        for task in self._tasks:
            if task not in self._sending:
                task.cancel()  # the feeder, and workers not sending (what they hold is kept)

    async def stop(self, deadline: float) -> None:
        """Wait for the requests in flight until `deadline` (monotonic), then hand every
        lease this lane holds back to the ledger, so nothing waits for a lease to expire."""
        self.begin_drain()
        while self._sending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        late = len(self._sending)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        held = [item.req.id for item in self._held.values()]
        for handle, item in self._waiting.items():
            handle.cancel()
            held.append(item.req.id)
        self._waiting.clear()
        while not self.queue.empty():
            held.append(self.queue.get_nowait().req.id)
        if late:
            log.warning(
                "%s: %d requests still unanswered at the end of the shutdown grace period; "
                "they will be sent again",
                self.key,
                late,
            )
        await self.ledger.release(self.owner, held)
        if self.fleet is not None:
            await self.fleet.release()
