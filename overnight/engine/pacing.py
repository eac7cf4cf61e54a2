"""Sending no faster than an upstream's rate limit: token buckets, and the limit learnt.

A limit is known two ways: configured (`rpm`/`tpm` of a route), or told by the
upstream's `x-ratelimit-*` headers (on answers and 429s). Once known, requests
are paced to it (a token bucket a little under the limit) instead of probing
past it: every refused call is a wasted round trip, and a burst of them can
trip an upstream's abuse protection.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
# Paced this far under a limit learnt from the upstream: its clock and ours disagree a
# little, and a request on the edge of its window is refused.
MARGIN = 0.97
# How long a learnt limit is trusted without a fresh sign of it; then probing resumes.
LEARNT_TTL = 120.0
MAX_RESET = 300.0


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
    """`rate` units a second, bursting up to `capacity`; `take` waits until enough is there."""

    def __init__(
        self,
        per_minute: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = clock()

    def _fill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float = 1.0) -> float:
        """Seconds until `amount` is there (0: take it now)."""
        self._fill()
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def spend(self, amount: float = 1.0) -> None:
        self.level -= min(amount, self.capacity)

    async def take(self, amount: float = 1.0) -> None:
        while (wait := self.wait_for(amount)) > 0:
            await asyncio.sleep(wait)
        self.spend(amount)


def told_rate(headers: Any, kind: str = "requests") -> float | None:
    """The rate (per second) an upstream's `x-ratelimit-*` headers imply, if they do.

    OpenAI documents `x-ratelimit-reset-*` as the time until the limit "resets to its
    initial state", i.e. until `remaining` is back to `limit`: the upstream refills
    `limit - remaining` in `reset` seconds. Azure sends `-1` where it does not know.
    """
    try:
        limit = float(headers.get(f"x-ratelimit-limit-{kind}") or "nan")
        remaining = float(headers.get(f"x-ratelimit-remaining-{kind}") or "nan")
    except ValueError:
        return None
    reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
    if not (limit > 0 and 0 <= remaining < limit) or not reset:
        return None
    return (limit - remaining) / reset


class RateLearner:
    """What an upstream's request rate limit is, as its `x-ratelimit-*` headers tell it.

    Learnt when the window is nearly spent or a 429 comes (then the rate the headers
    imply is the limit, not merely overnight's own pace). A 429 without those headers
    says nothing about a rate (it may be a concurrency limit, which AIMD finds), so it
    teaches nothing here. A learnt pace expires after LEARNT_TTL without a new sign of
    the limit, so a raised limit is found again.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate: float | None = None  # requests a second
        self.learnt_at = 0.0
        self.bucket: TokenBucket | None = None

    def accepted(self, headers: Any) -> None:
        if self._exhausted(headers):
            self.refused(headers)

    @staticmethod
    def _exhausted(headers: Any) -> bool:
        try:
            limit = float(headers.get("x-ratelimit-limit-requests"))
            remaining = float(headers.get("x-ratelimit-remaining-requests"))
        except (TypeError, ValueError):
            return False
        return remaining <= max(1.0, 0.1 * limit)

    def refused(self, headers: Any = None) -> None:
        told = told_rate(headers) if headers is not None else None
        if told is not None:
            self.learn(told)

    def learn(self, rate: float) -> None:
        self.learnt_at = self.clock()
        if self.rate is not None and abs(rate - self.rate) < 0.02 * self.rate:
            return
        self.rate = rate
        per_second = rate * MARGIN
        # A burst of one tenth of a second's worth: smooth, yet a gap is made up.
        self.bucket = TokenBucket(per_second * 60, max(1.0, per_second / 10), self.clock)

    def pace(self) -> TokenBucket | None:
        if self.bucket is not None and self.clock() - self.learnt_at > LEARNT_TTL:
            self.bucket, self.rate = None, None
        return self.bucket
