"""How many requests an upstream gets at once, and how fast: discovered, not configured.

`Limiter` is AIMD on concurrency (TCP-style slow start, then +1 per window of
successes, x0.7 on overload signals at most once per window), plus a shared
pause that honours `retry-after` and the `x-ratelimit-*` headers, plus
optional static requests-per-minute and tokens-per-minute buckets.

`x-ratelimit-remaining-requests` with its reset is also an allowance: once the
upstream says only N more requests fit before the reset, at most N more are
sent until then. Without it, every request in flight when the window closes
comes back as a 429 (a fast engine has hundreds in flight).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """OpenAI's reset durations ("1s", "6m0s", "20ms", "0.5s") or plain seconds, to seconds."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    total, matched = 0.0, False
    for number, unit in _DURATION.findall(value):
        matched = True
        n = float(number)
        total += {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]
    return total if matched else None


class TokenBucket:
    """`rate` units per minute, bursting up to `burst`; `take` waits until enough is there."""

    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, per_minute / 60.0)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _fill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)
        while True:
            self._fill()
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)


class Limiter:
    def __init__(
        self,
        *,
        initial: int = 16,
        ceiling: int = 256,
        floor: int = 1,
        rpm: int | None = None,
        tpm: int | None = None,
    ) -> None:
        self.limit = float(min(initial, ceiling))
        self.ceiling = ceiling
        self.floor = floor
        self.slow_start = True
        self.paused_until = 0.0
        self.allowance = 0  # requests the upstream still accepts before `allowance_until`
        self.allowance_until = 0.0
        self.on_grow: Callable[[], None] | None = None
        self.epoch = 0  # bumped at each decrease; requests remember the epoch they left in
        self._successes = 0
        self.overloads = 0
        self.rpm = TokenBucket(rpm, burst=max(1.0, rpm / 60.0)) if rpm else None
        self.tpm = TokenBucket(tpm, burst=max(1.0, tpm / 6.0)) if tpm else None

    @property
    def current(self) -> int:
        return max(self.floor, int(self.limit))

    @property
    def gated(self) -> bool:
        """Whether `gate` could wait at all (skipping the call is the common, fast case)."""
        now = time.monotonic()
        return (
            self.rpm is not None
            or self.tpm is not None
            or self.paused_until > now
            or self.allowance_until > now
        )

    async def gate(self, tokens: int = 0) -> None:
        """Wait out a pause, a spent allowance and the static buckets before sending one request."""
        while True:
            now = time.monotonic()
            wait = self.paused_until - now
            if wait <= 0 and self.allowance_until > now and self.allowance <= 0:
                wait = self.allowance_until - now
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        if self.allowance_until > time.monotonic():
            self.allowance -= 1
        if self.rpm:
            await self.rpm.take()
        if self.tpm and tokens:
            await self.tpm.take(tokens)

    def _grow(self) -> None:
        before = self.current
        self.limit = min(float(self.ceiling), self.limit + 1)
        if self.current > before and self.on_grow is not None:
            self.on_grow()

    def on_success(self, headers: Any = None) -> None:
        if self.slow_start:
            self._grow()
        else:
            self._successes += 1
            if self._successes >= self.current:
                self._successes = 0
                self._grow()
        if headers is not None:
            self._read_headers(headers)

    def on_overload(
        self, retry_after: float | None = None, headers: Any = None, sent_epoch: int | None = None
    ) -> None:
        """A 429, 503 or timeout: shrink once per window, and pause if told to."""
        self.overloads += 1
        self.slow_start = False
        # Every request in flight sees the same overload; only those sent after the
        # last decrease may shrink the window again (TCP's once-per-window rule).
        if sent_epoch is None or sent_epoch == self.epoch:
            self.epoch += 1
            self.limit = max(float(self.floor), self.limit * 0.7)
        if retry_after is not None:
            self.pause(retry_after)
        if headers is not None:
            self._read_headers(headers)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + min(seconds, 300.0))

    def _read_headers(self, headers: Any) -> None:
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
                # The upstream's latest count: it already includes what it has received.
                self.allowance = int(left)
                self.allowance_until = time.monotonic() + min(reset, 300.0)
            if left <= 0:
                self.pause(reset)
