"""Giving way to interactive users of a shared model server, from what the server says.

Requests in the server that are not overnight's are the interactive load. When
some of them wait in the server's queue, overnight's concurrency drops at once by
the length of that queue (a request already sent cannot be taken back, so only
what comes next is held). Otherwise overnight fills what the server has spare,
keeping a reserve of slots free for the next interactive arrivals while there
are interactive users (a FIFO server makes an arrival wait for a free slot).

The server's capacity is learnt, not configured: whenever it queues (or its
cache is full), what it runs is what it can run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from overnight.backends.load import Load

FULL_CACHE = 0.95
# Interactive users seen this recently keep a reserve of free slots for them.
RECENT = 30.0
RESERVE = 0.15  # of the server's capacity (at least one slot)


class YieldController:
    def __init__(
        self,
        *,
        max_share: float = 1.0,
        queue_ahead: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`queue_ahead`: the server schedules by priority and overnight's requests are
        sent at background priority, so some may wait in its queue without delaying
        anyone (they keep the server full the moment a slot frees)."""
        self.max_share = max_share
        self.queue_ahead = queue_ahead
        self.clock = clock
        self.capacity: float | None = None
        self.foreign_seen = -math.inf
        self.last: Load | None = None

    def cap(self, load: Load) -> int | None:
        """How many requests overnight may have in the server now; None: no bound known
        yet (the server never queued), so concurrency grows as without a signal."""
        self.last = load
        now = self.clock()
        foreign = load.foreign
        if foreign >= 1:
            self.foreign_seen = now
        full = load.waiting > 0 or (load.cache_usage or 0.0) >= FULL_CACHE
        grown = self.capacity is not None and load.running > self.capacity
        if (full and load.running > 0) or grown:
            self.capacity = load.running
        capacity = self.capacity
        if capacity is None:
            return None
        reserve = 0.0
        if now - self.foreign_seen < RECENT:
            reserve = max(1.0, RESERVE * capacity)
        ahead = max(1.0, capacity / 4) if self.queue_ahead else 0.0
        room = capacity - foreign - reserve + ahead
        if load.waiting > 0 and foreign >= 1 and not self.queue_ahead:
            # Someone else may be waiting behind overnight's requests: shrink now.
            room = min(room, load.ours - load.waiting)
        share = math.floor(self.max_share * capacity + ahead)
        return max(0, min(math.floor(room), share))
