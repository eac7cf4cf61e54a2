"""How many requests an upstream gets at once, and how fast: discovered, not configured.

`Limiter` is AIMD on concurrency (TCP-style slow start, then +1 per window of
successes, x0.7 on overload signals at most once per window), bounded by:

- the upstream's own load, where it tells it (`cap`, set from engine/yielding.py);
- without that, the queueing seen in overnight's own answers (engine/latency.py):
  once answers take over twice their least time, concurrency is brought back to
  where they would not, as TCP Vegas does, because throughput no longer grows;
- a timeout, which cuts concurrency to half of what was in flight: the upstream
  may still be generating the request it did not answer in time;
- a shared pause that honours `retry-after` and the `x-ratelimit-*` headers, the
  static `rpm`/`tpm` buckets of a route, and a pace learnt from 429s and headers
  (engine/pacing.py).

`x-ratelimit-remaining-requests` with its reset is also an allowance: once the
upstream says only N more requests fit before the reset, at most N more are
sent until then, less those sent since the request that carried the header; in a
fleet of k workers on the route, each sends N / k of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from overnight.engine.latency import LatencyGauge
from overnight.engine.pacing import MAX_RESET, RateLearner, TokenBucket, parse_reset
from overnight.engine.spacing import SendSpacing

__all__ = ["Limiter", "Ticket", "TokenBucket", "parse_reset"]


class Bucket(Protocol):
    """A token bucket: this process's own (pacing.TokenBucket) or the fleet's (fleet.py)."""

    rate: float  # units a second

    async def take(self, amount: float = 1.0) -> None: ...


class Ticket(NamedTuple):
    """What a request remembers of the limiter when it left."""

    epoch: int  # decreases before it
    seq: int  # requests sent before it
    started: float


class Limiter:
    def __init__(
        self,
        *,
        initial: int = 16,
        ceiling: int = 256,
        floor: int = 1,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.limit = float(min(initial, ceiling))
        self.ceiling = ceiling
        self.floor = floor
        self.slow_start = True
        self.paused_until = 0.0
        self.allowance = 0  # requests the upstream still accepts before `allowance_until`
        self.allowance_until = 0.0
        self.on_grow: Callable[[], None] | None = None
        # Called with the rate the learner keeps when it changes (a fleet shares it).
        self.on_learnt: Callable[[float], None] | None = None
        # Called with the seconds of each pause the upstream asked for (a fleet shares it).
        self.on_pause: Callable[[float], None] | None = None
        self.epoch = 0  # bumped at each decrease; requests remember the epoch they left in
        self.sent = 0
        self.outstanding = 0  # sent and not yet answered (`ticket` .. `finished`)
        self._told_seq = 0  # the newest request whose headers set the allowance
        self._successes = 0
        self.overloads = 0
        self.timeouts = 0
        self.cap: int | None = None  # from the upstream's own load signal
        self.use_latency = False  # no load signal: read queueing from answer times
        self.latency = LatencyGauge(clock)
        self.spacing = SendSpacing(clock)  # used while `cap` holds (yield mode)
        self.learner = RateLearner(clock)
        self.rpm: Bucket | None = TokenBucket(rpm, max(1.0, rpm / 60.0), clock) if rpm else None
        self.tpm: Bucket | None = TokenBucket(tpm, max(1.0, tpm / 6.0), clock) if tpm else None
        self.fleet_cap: int | None = None  # slots the fleet lets this process hold
        self.fleet_size = 1  # workers sending to this upstream: a told allowance is theirs
        self.shared_pace: Bucket | None = None  # a learnt pace the whole fleet keeps

    @property
    def wanted(self) -> int:
        """The concurrency this process would use were it alone."""
        n = max(self.floor, int(self.limit))
        return n if self.cap is None else min(n, self.cap)

    @property
    def current(self) -> int:
        n = self.wanted
        return n if self.fleet_cap is None else min(n, self.fleet_cap)

    @property
    def gated(self) -> bool:
        """Whether `gate` could wait at all (skipping the call is the common, fast case)."""
        now = self.clock()
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.learner.bucket is not None
            or self.shared_pace is not None
            or self.paused_until > now
            or self.allowance_until > now
        )

    def ticket(self) -> Ticket:
        """Taken as a request is sent; `finished` once its outcome is known."""
        self.sent += 1
        self.outstanding += 1
        return Ticket(self.epoch, self.sent, self.clock())

    def finished(self) -> None:
        self.outstanding -= 1

    async def gate(self, tokens: int = 0) -> None:
        """Wait out a pause, a spent allowance, the static buckets and a learnt pace
        before sending one request."""
        while True:
            now = self.clock()
            wait = self.paused_until - now
            if wait <= 0 and self.allowance_until > now and self.allowance <= 0:
                wait = self.allowance_until - now
            if wait <= 0 and self.shared_pace is None:
                pace = self.learner.pace()
                wait = pace.wait_for() if pace is not None else 0.0
                if wait <= 0 and pace is not None:
                    pace.spend()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        if self.allowance_until > self.clock():
            self.allowance -= 1
        if self.shared_pace is not None:
            await self.shared_pace.take()
        if self.rpm:
            await self.rpm.take()
        if self.tpm and tokens:
            await self.tpm.take(tokens)

    def set_cap(self, cap: int | None) -> None:
        before = self.current
        self.cap = cap
        if self.current > before and self.on_grow is not None:
            self.on_grow()

    def set_fleet_cap(self, cap: int | None) -> None:
        before = self.current
        self.fleet_cap = cap
        if self.current > before and self.on_grow is not None:
            self.on_grow()

    def _grow(self) -> None:
        before = self.current
        self.limit = min(float(self.ceiling), self.limit + 1)
        if self.current > before and self.on_grow is not None:
            self.on_grow()

    def _decrease(self, to: float, ticket: Ticket | None) -> None:
        """Shrink at most once per window: every request in flight sees the same signal,
        and only those sent after the last decrease may shrink it again."""
        self.slow_start = False
        if ticket is None or ticket.epoch == self.epoch:
            self.epoch += 1
            self.limit = max(float(self.floor), min(self.limit, to))

    def on_success(self, headers: Any = None, ticket: Ticket | None = None, units: int = 1) -> None:
        """An answer; `units`: tokens it generated, so time per request compares fairly."""
        hold = False
        if ticket is not None:
            verdict = None
            if self.cap is not None:  # yielding to a shared server: its answer time
                self.spacing.answered(self.clock() - ticket.started)
            if self.use_latency:  # only then: every answer passes here
                # `finished` came first: this request was in flight too.
                self.latency.add(self.clock() - ticket.started, units, self.outstanding + 1)
                verdict = self.latency.verdict()
            if verdict is not None and verdict.queued:
                self._decrease(max(verdict.target(), self.limit * 0.5), None)
            hold = verdict is not None and verdict.hold
        if hold:
            self._successes = 0
        elif self.slow_start:
            self._grow()
        else:
            self._successes += 1
            if self._successes >= self.current:
                self._successes = 0
                self._grow()
        if headers is not None:
            self._read_headers(headers, ticket)

    def on_overload(
        self,
        retry_after: float | None = None,
        headers: Any = None,
        sent_epoch: int | None = None,
        *,
        ticket: Ticket | None = None,
        timed_out: bool = False,
    ) -> None:
        """A 429, 503 or timeout: shrink once per window, and pause if told to."""
        self.overloads += 1
        if ticket is None and sent_epoch is not None:
            ticket = Ticket(sent_epoch, self.sent, self.clock())
        if timed_out:
            self.timeouts += 1
            # Not a free retry: the upstream may still be generating it. What was in
            # flight did not fit in the timeout; half of it will.
            self._decrease(min(self.limit, self.outstanding + 1) * 0.5, ticket)
        else:
            self._decrease(self.limit * 0.7, ticket)
        if retry_after is not None:
            self.pause(retry_after)
        if headers is not None:
            self._read_headers(headers, ticket)

    def pause(self, seconds: float) -> None:
        seconds = min(seconds, MAX_RESET)
        self.paused_until = max(self.paused_until, self.clock() + seconds)
        if self.on_pause is not None:
            self.on_pause(seconds)

    def _read_headers(self, headers: Any, ticket: Ticket | None) -> None:
        for kind in ("requests", "tokens"):
            remaining = headers.get(f"x-ratelimit-remaining-{kind}")
            if remaining is None:
                continue
            try:
                left = float(remaining)
            except ValueError:
                continue
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if not reset:
                continue
            if kind == "requests":
                seq = ticket.seq if ticket is not None else self.sent
                if seq < self._told_seq:
                    continue  # an answer overtaken by a newer one's count
                # The upstream counted up to this request; those sent after it are
                # not in its count yet.
                self._told_seq = seq
                before = self.learner.rate
                if self.learner.told(headers, self.sent - seq):
                    rate = self.learner.rate
                    if rate is not None and rate != before and self.on_learnt is not None:
                        self.on_learnt(rate)
                    continue  # a budget with a refill rate: the learnt pace keeps it
                # Others of the fleet spend the same allowance: each takes its part.
                self.allowance = int(left / self.fleet_size) - (self.sent - seq)
                self.allowance_until = self.clock() + min(reset, MAX_RESET)
            if left <= 0:
                self.pause(reset)
