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
MARGIN = 0.985
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


_WINDOWS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600)


def _whole_window(seconds: float) -> float:
    """The window an exhausted limit's reset belongs to. Rate limits are counted over
    whole seconds or minutes; a reset seen just after the newest use (0.976 s) is a
    little short of its window (1 s), and the rate it implies a little high."""
    for window in _WINDOWS:
        if seconds <= window * 1.001:
            return float(window) if seconds > window * 0.8 else seconds
    return seconds


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
    """An upstream's request budget as its `x-ratelimit-*` headers tell it, kept as a
    token bucket: the refill rate is the one the headers imply (a little under), it
    starts from what the upstream says remains (less what was sent after that
    request), and bursts are small. So requests go at the upstream's pace
    and wait for its refill, not for a whole reset, once it has no room.

    A 429 or an answer without those headers teaches nothing here (a 429 may be a
    concurrency limit, which AIMD finds). Without a new header for LEARNT_TTL the
    budget is forgotten, so a raised limit is found again.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate: float | None = None  # the upstream's refill, requests a second
        self._exact = False  # `rate` was measured at exhaustion
        self.learnt_at = 0.0
        self.bucket: TokenBucket | None = None

    def told(self, headers: Any, sent_since: int = 0) -> bool:
        """Read an answer's headers; `sent_since`: requests sent after it. True once
        the pace keeps the budget; False before (the caller then treats `remaining` as
        an allowance until the reset, and pauses when none is left)."""
        try:
            limit = float(headers.get("x-ratelimit-limit-requests") or "nan")
            remaining = float(headers.get("x-ratelimit-remaining-requests") or "nan")
        except ValueError:
            return False
        if not (limit > 0 and remaining >= 0):
            return False  # absent, or Azure's -1 for "not known"
        rate = told_rate(headers)
        # A token bucket's headers give its refill rate at any level; a sliding window's
        # only once exhausted (far from it they measure overnight's own pace), as
        # limit / (window - age of its newest use): at least the true rate, so the least
        # of those is the best.
        if rate is not None and remaining < 1:
            rate = limit / _whole_window(limit / rate)
            self.rate = rate if not self._exact or self.rate is None else min(self.rate, rate)
            self._exact = True
        if self.rate is None or not self._exact:
            # Not yet seen exhausted: nothing to pace to. A 429 or an answer with none
            # left will tell the limit; until then AIMD and the reset pause go on.
            return False
        now = self.clock()
        self.learnt_at = now
        # Bursts within the margin: paced at MARGIN of the rate, any window of the
        # upstream's then holds less than its limit, a sliding window's as a bucket's.
        burst = max(1.5, limit * (1 - MARGIN) / 2)
        if self.bucket is None:
            self.bucket = TokenBucket(self.rate * MARGIN * 60, burst, self.clock)
            # Start from what the upstream says is left; from then on the pace keeps
            # the count (a sliding window's `remaining` hovers near 0 at full pace while
            # it frees a use every 1/rate s, so following it would hold back).
            self.bucket.level = min(burst, remaining - sent_since)
        bucket = self.bucket
        bucket.wait_for()  # refilled up to now, at the old rate
        bucket.rate = self.rate * MARGIN
        bucket.capacity = burst
        return True

    def pace(self) -> TokenBucket | None:
        if self.bucket is not None and self.clock() - self.learnt_at > LEARNT_TTL:
            self.bucket, self.rate, self._exact = None, None, False
        return self.bucket
