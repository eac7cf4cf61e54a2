"""Execute claimed requests against their backends, retrying what is transient.

Each route (upstream) gets a `Lane` with its own `Limiter`; the runner opens
lanes as batches appear and turns every answer, or the lack of one, into an
`Outcome` for the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from overnight.backends.base import Response, TransientError, UnusableAnswer
from overnight.engine.breaker import Breaker
from overnight.engine.lane import ActiveBatch, Item, Lane
from overnight.engine.limits import Limiter
from overnight.engine.results import ResultSink
from overnight.metrics import (
    ERROR_RESPONSE,
    GAVE_UP,
    INTERNAL_ERROR,
    OK,
    RETRIED,
    UNREACHABLE,
    route_stats,
)
from overnight.models import Usage
from overnight.services import Services
from overnight.store.base import Outcome, error_json

log = logging.getLogger("overnight.runner")

LOCAL_CONCURRENCY = 64
MAX_MESSAGE = 2000


def answer_error(response: Response) -> str:
    """`{code, message}` for a line the model answered with an error status.

    OpenAI leaves `error` null on such lines and puts the answer in `response`; clients
    that read `error` for every failed line would see nothing, so it is filled too
    (no SDK type describes these lines; see docs/compatibility.md).
    """
    detail = response.body.get("error") if isinstance(response.body, dict) else None
    code: Any = None
    message: Any = None
    if isinstance(detail, dict):
        code = detail.get("code") or detail.get("type")
        message = detail.get("message")
    elif isinstance(detail, str):
        message = detail
    if not isinstance(code, str) or not code:
        code = f"http_{response.status_code}"
    if not isinstance(message, str) or not message:
        message = f"The model answered HTTP {response.status_code}."
    return error_json(code[:100], message[:MAX_MESSAGE])


class Runner:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.lanes: dict[str, Lane] = {}
        s = svc.settings
        self.sink = ResultSink(svc.store.ledger, svc.owner, s.flush_interval, s.flush_max)

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
        lane = Lane(
            key,
            backend,
            limiter,
            Breaker(key),
            self.svc.store.ledger,
            self.svc.owner,
            self.execute,
            claim_chunk=s.claim_chunk,
            lease_seconds=s.lease_seconds,
            poll_interval=s.poll_interval,
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

    async def execute(self, lane: Lane, item: Item, probe: bool = False) -> None:
        """Send one request once; record its outcome, or queue it again after a backoff.

        `probe`: the request tests a route whose breaker is half-open."""
        req = item.req
        req.attempts += 1
        epoch = lane.limiter.epoch
        stats = route_stats(lane.key)
        started = stats.sent()
        breaker = lane.breaker
        try:
            response = await lane.backend.send_raw(item.batch.endpoint, req.body)
        except TransientError as exc:
            if exc.unsent:
                # Nothing reached the upstream: no attempt spent, and an outage of the
                # whole route pauses it instead of failing its requests.
                req.attempts -= 1
                stats.done(started, UNREACHABLE)
                if exc.route_down:
                    breaker.unreachable(probe)
                lane.retry_later(item, 0.0)
                return
            breaker.reached()
            if exc.overloaded:
                headers = exc.response.headers if exc.response else None
                lane.limiter.on_overload(exc.retry_after, headers, epoch)
            elif exc.retry_after is not None:
                lane.limiter.pause(exc.retry_after)
            stopped = item.batch.seq not in lane.batches
            if req.attempts >= self.svc.settings.max_attempts or stopped:
                stats.done(started, GAVE_UP)
                self.sink.add(self._given_up(item, exc))
            else:
                stats.done(started, RETRIED)
                lane.retry_later(item, self._backoff(req.attempts, exc.retry_after))
            return
        except UnusableAnswer as exc:
            breaker.reached()
            lane.limiter.on_success(exc.headers)
            stats.done(started, ERROR_RESPONSE)
            self.sink.add(self._no_answer(item, "invalid_upstream_response", exc.message))
            return
        except Exception as exc:  # a bug in a backend must not take the engine down
            stats.done(started, INTERNAL_ERROR)
            log.exception("request %s of %s failed inside overnight", req.custom_id, item.batch.id)
            message = f"overnight failed to run this request: {type(exc).__name__}"
            self.sink.add(self._no_answer(item, "internal_error", message))
            return
        finally:
            if probe:
                breaker.release_probe()  # a no-op once the probe's outcome was told
        breaker.reached()
        lane.limiter.on_success(response.headers)
        outcome = self._answered(item, response)
        stats.done(started, OK if outcome.ok else ERROR_RESPONSE, outcome.usage)
        self.sink.add(outcome)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.svc.settings
        if retry_after is not None:
            return min(s.retry_max_delay * 5, retry_after + random.uniform(0, 0.1))
        base = min(s.retry_max_delay, s.retry_base_delay * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.5)

    def _answered(self, item: Item, response: Response) -> Outcome:
        ok = 200 <= response.status_code < 300
        return Outcome(
            item.req.id,
            item.batch.seq,
            ok,
            response.status_code,
            response.compact_body(),
            None if ok else answer_error(response),
            response.request_id or None,
            item.req.attempts,
            Usage.from_body(response.body) if ok else Usage(),
        )

    def _no_answer(self, item: Item, code: str, message: str) -> Outcome:
        return Outcome(
            item.req.id,
            item.batch.seq,
            False,
            None,
            None,
            error_json(code, message),
            None,
            item.req.attempts,
            Usage(),
        )

    def _given_up(self, item: Item, exc: TransientError) -> Outcome:
        if exc.response is not None:
            return self._answered(item, exc.response)
        message = f"{exc.message} Gave up after {item.req.attempts} attempts."
        return self._no_answer(item, exc.code, message)

    def begin_drain(self) -> None:
        for lane in self.lanes.values():
            lane.begin_drain()

    async def stop(self, deadline: float) -> None:
        """Let requests in flight answer until `deadline` (monotonic), record every result,
        and hand back the leases of what was not sent."""
        await asyncio.gather(*(lane.stop(deadline) for lane in self.lanes.values()))
        await self.sink.stop()
