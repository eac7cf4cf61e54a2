"""Collect finished requests and write them to the ledger in batched transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from overnight.models import Usage
from overnight.store.base import LedgerStore, Outcome, error_json
from overnight.store.faults import is_disk_full, is_transient, log_failure

log = logging.getLogger("overnight.results")


def unstorable(outcome: Outcome, reason: str) -> Outcome:
    """The failed line that replaces a result the store cannot hold."""
    message = f"overnight could not store the upstream's answer to this request ({reason})."
    error = error_json("invalid_upstream_response", message)
    return Outcome(
        outcome.id,
        outcome.batch_seq,
        False,
        None,
        None,
        error,
        None,
        outcome.attempts,
        Usage(),
    )


class ResultSink:
    """Buffers outcomes; one transaction per `flush_max` results or `interval` seconds.

    Batching keeps the per-request cost of durability tiny; the price is that a
    crash can lose up to one interval of finished results, which are then sent
    again (they count as "in flight at the crash").
    """

    def __init__(self, ledger: LedgerStore, owner: str, interval: float, flush_max: int) -> None:
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
            except Exception as exc:
                if not await self._one_by_one(chunk):
                    # The store itself fails (down, disk full): the results were kept, to be
                    # tried again, since losing them would send the requests again.
                    log_failure(log, exc, "could not record %d results; retrying", len(chunk))
                    await asyncio.sleep(1.0)
                    if self._stopping:
                        return
                    continue
            if self.on_flush is not None and not self._buffer:
                self.on_flush()

    async def _one_by_one(self, chunk: list[Outcome]) -> bool:
        """Record `chunk` one result at a time, so that one the store refuses (a value it
        cannot hold) becomes a failed line instead of blocking every other. False when not
        even a plain failed line can be written: then the store is at fault, not the data."""
        for index, outcome in enumerate(chunk):
            try:
                await self.ledger.record(self.owner, [outcome])
                continue
            except Exception as exc:
                if is_transient(exc) or is_disk_full(exc):
                    self._buffer[:0] = chunk[index:]  # the store is away, not the data bad
                    return False
                reason = type(exc).__name__
            try:
                await self.ledger.record(self.owner, [unstorable(outcome, reason)])
            except Exception:
                self._buffer[:0] = chunk[index:]  # the rest waits for the store
                return False
            log.error(
                "request %d: the store refused its result (%s); failed instead", outcome.id, reason
            )
        return True

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task:
            await self._task
        await self.flush()
