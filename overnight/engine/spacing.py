"""Overnight's sends to a server it yields to, spread out instead of sent in bursts.

When room opens in a shared server (an interactive request ended, the reading showed a
free slot), sending every request the room allows at once starts them together, so they
also end together: for a whole answer time the server then has no slot that frees soon,
and the next interactive arrival waits that long. Spaced by the answer time over the
server's capacity (the mean time between completions of a full server), overnight's
requests end one after another and a slot frees every gap. The spacing never holds
overnight below the server's own throughput (capacity / answer time requests a second);
what the reading allows is still checked after the wait (lane.py). bench/README.md has
what it changes on the shared-upstream bench; bench/sim_shared_upstream.py models it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SMOOTHING = 0.2  # weight of the newest answer time in the running mean


class SendSpacing:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.answer_time: float | None = None
        self.next_at = 0.0

    def answered(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.answer_time is None:
            self.answer_time = seconds
        else:
            self.answer_time += SMOOTHING * (seconds - self.answer_time)

    def wait(self, capacity: float | None) -> float:
        """Seconds until this send's turn; each call takes the next turn."""
        if self.answer_time is None or not capacity or capacity <= 0:
            return 0.0
        now = self.clock()
        start = max(now, self.next_at)
        self.next_at = start + self.answer_time / capacity
        return start - now
