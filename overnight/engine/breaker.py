"""A circuit breaker per route: an upstream that refuses connections is down, not wrong.

When no replica of a route can be reached, the route opens: nothing is sent, and the
requests that could not be sent wait without spending an attempt. After a pause
(doubling from `base` to `ceiling` seconds) one request goes as a probe (half-open);
its success closes the route and every waiting worker goes on, its failure opens the
route for the next, longer pause. Attempts stay for requests the upstream answered
badly; waiting ends with the batch's completion window, as for any request.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("overnight.breaker")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class Breaker:
    def __init__(self, name: str, base: float = 0.5, ceiling: float = 30.0) -> None:
        self.name = name
        self.base = base
        self.ceiling = ceiling
        self.state = CLOSED
        self.opened_at = 0.0
        self.retry_at = 0.0
        self.failures = 0  # probes that failed in a row
        self._closed = asyncio.Event()
        self._closed.set()
        self._probing = False

    @property
    def open(self) -> bool:
        return self.state != CLOSED

    async def admit(self) -> bool:
        """Wait until a request may go. True: it goes as the probe of a half-open route."""
        while True:
            if self.state == CLOSED:
                return False
            wait = self.retry_at - time.monotonic()
            if wait <= 0 and not self._probing:
                self._probing = True
                self.state = HALF_OPEN
                return True
            try:
                timeout = wait if wait > 0 else None
                await asyncio.wait_for(self._closed.wait(), timeout)
            except TimeoutError:
                pass

    def unreachable(self, probe: bool) -> None:
        """No replica could be reached: open (again) for a longer pause."""
        now = time.monotonic()
        if self.state == CLOSED:
            self.opened_at = now
            self.failures = 0
            log.warning("upstream %r unreachable: pausing its requests, probing", self.name)
        elif not probe:
            return  # requests already in flight when it opened: the probe decides
        self.failures += 1
        self.state = OPEN
        self._probing = False
        self._closed.clear()
        self.retry_at = now + min(self.ceiling, self.base * 2 ** (self.failures - 1))

    def reached(self) -> None:
        """An answer came back (whatever its status): the upstream is up."""
        if self.state == CLOSED:
            return
        log.warning(
            "upstream %r reachable again after %.1f s", self.name, time.monotonic() - self.opened_at
        )
        self.state = CLOSED
        self.failures = 0
        self._probing = False
        self._closed.set()

    def release_probe(self) -> None:
        """The probe ended without telling (cancelled, stopped batch): let another go."""
        if self._probing:
            self._probing = False
            if self.state == HALF_OPEN:
                self.state = OPEN
