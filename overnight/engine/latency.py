"""Queueing seen in overnight's own answers: the load signal when an upstream has no other.

By Little's law, requests in flight = throughput x time per request. Once an
upstream is saturated, more requests in flight no longer raise throughput: they
wait in its queue, and each answer takes longer. So the ratio of recent time per
request to the least time seen (TCP Vegas's `rtt / base_rtt`) measures how much
of each answer is waiting. Time is counted per token of the answer where usage
says, so a batch of long and short answers does not read as a queue.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# Past this inflation the upstream queues overnight's requests (Netflix's Gradient2
# uses the same tolerance); below HOLD, concurrency may grow.
TOLERANCE = 2.0
HOLD = 1.5
# Inflation smaller than this is noise (scheduling, network), not a queue.
MIN_EXCESS = 0.1
BASE_WINDOW = 60.0  # the base is the least time per unit seen in this many seconds


@dataclass(frozen=True, slots=True)
class Verdict:
    ratio: float  # recent time per request over the base
    inflight: float  # requests in flight, on average, over the samples

    @property
    def queued(self) -> bool:
        return self.ratio > TOLERANCE

    @property
    def hold(self) -> bool:
        return self.ratio > HOLD

    def target(self) -> float:
        """The concurrency that would bring the inflation back to the tolerance (a queue
        grows with every request past the upstream's capacity)."""
        return self.inflight * TOLERANCE / self.ratio


class LatencyGauge:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._mins: deque[tuple[float, float]] = deque()  # (bucket start, least per unit)
        self._sum = 0.0
        self._seconds = 0.0
        self._inflight = 0.0
        self._n = 0
        self._since = clock()

    @property
    def base(self) -> float | None:
        return min(m for _, m in self._mins) if self._mins else None

    def add(self, seconds: float, units: int, inflight: int) -> None:
        """One answer that took `seconds` for `units` (tokens of answer, at least 1), sent
        with `inflight` requests outstanding."""
        now = self.clock()
        per_unit = seconds / max(1, units)
        bucket = now - now % 10.0
        if self._mins and self._mins[-1][0] == bucket:
            if per_unit < self._mins[-1][1]:
                self._mins[-1] = (bucket, per_unit)
        else:
            self._mins.append((bucket, per_unit))
        while self._mins and self._mins[0][0] < now - BASE_WINDOW:
            self._mins.popleft()
        self._sum += per_unit
        self._seconds += seconds
        self._inflight += inflight
        self._n += 1

    def verdict(self) -> Verdict | None:
        """Once per round trip: how inflated the answers since the last verdict were."""
        now = self.clock()
        if self._n == 0 or now - self._since < self._seconds / self._n:
            return None
        base = self.base
        recent = self._sum / self._n
        excess = self._seconds / self._n * (1 - base / recent) if base and recent else 0.0
        inflight = self._inflight / self._n
        self._sum = self._seconds = self._inflight = 0.0
        self._n = 0
        self._since = now
        if not base or excess < MIN_EXCESS:
            return Verdict(1.0, inflight)
        return Verdict(recent / base, inflight)
