"""Giving way to interactive users of a shared model server, from what the server says.

Requests in the server that are not overnight's are the interactive load.
overnight may have in the server what it can hold less the others and a reserve
of free slots for the next interactive arrivals (while there are interactive
users: a FIFO server makes an arrival wait for a free slot). So when others
queue, overnight's concurrency drops at once by that queue and the reserve (a
request already sent cannot be taken back: only what comes next is held), and
when the server has room, overnight fills it.

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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_share = max_share
        self.clock = clock
        self.capacity: float | None = None
        self.foreign_seen = -math.inf

    def cap(self, load: Load) -> int | None:
        """How many requests overnight may have in the server now; None: no bound known
        yet (the server never queued), so concurrency grows as without a signal."""
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
        # Saturated, this is what overnight has running less the queue and the reserve:
        # a queue of others makes it drop at once by that much.
        room = capacity - foreign - reserve
        share = math.floor(self.max_share * capacity)
        return max(0, min(math.floor(room), share))
