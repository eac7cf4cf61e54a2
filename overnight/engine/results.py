"""Collect finished requests and write them to the ledger in batched transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from overnight.store.ledger import Ledger, Outcome

log = logging.getLogger("overnight.results")


class ResultSink:
    """Buffers outcomes; one transaction per `flush_max` results or `interval` seconds.

    Batching keeps the per-request cost of durability tiny; the price is that a
    crash can lose up to one interval of finished results, which are then sent
    again (they count as "in flight at the crash").
    """

    def __init__(self, ledger: Ledger, owner: str, interval: float, flush_max: int) -> None:
        self.ledger = ledger
        self.owner = owner
        self.interval = interval
        self.flush_max = flush_max
        self._buffer: list[Outcome] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_flush: Callable[[], None] | None = None

    def add(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        if len(self._buffer) >= self.flush_max:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="overnight-results")

    async def _loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[: self.flush_max], self._buffer[self.flush_max :]
            try:
                await self.ledger.record(self.owner, chunk)
                if self.on_flush is not None and not self._buffer:
                    self.on_flush()
            except Exception:
                # Keep the results and try again: losing them would resend the requests.
                log.exception("could not record %d results; retrying", len(chunk))
                self._buffer[:0] = chunk
                await asyncio.sleep(1.0)
                if self._stopping:
                    return

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        await self.flush()
