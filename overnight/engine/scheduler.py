"""Drive every batch through its lifecycle: validate, run, stop, finalize.

The scheduler reads the batches table every `poll_interval` (or sooner when
woken by the API in the same process) and decides what each open batch needs.
All decisions are re-derived from the store, so any process can take over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from overnight import logs, metrics, tracing
from overnight.engine.deps import EngineDeps
from overnight.engine.finalize import finalize_batch
from overnight.engine.lane import ActiveBatch
from overnight.engine.runner import Runner
from overnight.engine.validate import validate_batch
from overnight.models import Batch, BatchStatus
from overnight.store.faults import log_failure

log = logging.getLogger("overnight.scheduler")

HOUSEKEEPING_EVERY = 5.0
PURGE_EVERY = 3600.0
# In a fleet, a partial upload older than this has no live writer (uploads take minutes).
PARTIAL_MAX_AGE = 86400.0


def _still_needed(status: str, what: str, reason: str | None) -> bool:
    """Whether a batch in `status` still needs the job (`what`, `reason`) planned for it."""
    if what == "validate":
        return status == BatchStatus.VALIDATING
    if reason == "cancel":
        return status == BatchStatus.CANCELLING
    return status in (BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)


class Scheduler:
    def __init__(self, svc: EngineDeps) -> None:
        self.svc = svc
        self.runner = Runner(svc)
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_housekeeping = 0.0
        self._last_purge = 0.0
        self._recovered = False
        self._drain_started: float | None = None
        self._started = False

    async def _begin(self) -> None:
        """What both ways of running need once: leases taken back, the result sink on."""
        if self._started:
            return
        self._started = True
        await self._recover()
        self.runner.sink.on_flush = self._after_flush
        self.runner.start()

    async def start(self) -> None:
        await self._begin()
        self._task = asyncio.create_task(self._loop(), name="overnight-scheduler")

    async def run_until_idle(self, timeout: float = 300.0) -> None:
        """Burst mode (as arq's `Worker(burst=True)`): drive every open batch to its end,
        then return, leaving the engine started (call `stop()` after). For unit tests on
        the in-memory fakes and one-shot runs; raises TimeoutError if work remains."""
        await self._begin()
        deadline = time.monotonic() + timeout
        while True:
            still_open = await self.tick()
            if self._jobs:
                await asyncio.gather(*self._jobs.values(), return_exceptions=True)
                continue
            if not still_open:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"batches still open after {timeout:.0f} s")
            await self._nap()

    async def _recover(self) -> None:
        """Take back what a process that died held. Never fatal: on a full disk or with the
        database away, the process starts anyway (so space can be freed through the API)
        and housekeeping tries again."""
        svc = self.svc
        single = svc.store.single_process
        try:
            if single:
                # One process owns a SQLite store: every lease in it was a dead process's.
                released = await svc.store.ledger.release_all()
                owned = await svc.store.batches.release_all_ownership()
                if released or owned:
                    log.info(
                        "resumed: %d requests in flight at the last stop will be sent again; "
                        "%d batches were being validated or finalized",
                        released,
                        owned,
                    )
            cutoff = time.time() - (0 if single else PARTIAL_MAX_AGE)
            removed = await svc.blobs.remove_partial(cutoff)
            if removed:
                log.info("removed %d partial files left by a process that died", removed)
            self._recovered = True
        except Exception as exc:
            self._recovered = False
            log.error("could not take back the last run's leases yet (%s); will retry", exc)

    def route_concurrency(self) -> dict[str, int]:
        """Each open route's adaptive concurrency limit right now (for /metrics)."""
        return {key: lane.limiter.current for key, lane in self.runner.lanes.items()}

    def wake(self) -> None:
        self._wake.set()

    def _after_flush(self) -> None:
        # The last results of a batch just landed: finalize now, not at the next poll.
        if self.runner.idle:
            self.wake()

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_failure(log, exc, "scheduler tick failed; trying again")
            await self._nap()

    async def _nap(self) -> None:
        """Until woken (the API, the last results of a batch) or the next poll."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.svc.settings.poll_interval)
        self._wake.clear()

    async def tick(self) -> bool:
        """One look at every open batch; True while any batch is still open."""
        svc = self.svc
        t = self.svc.clock()
        # Renew leases well before they run out, however short they are configured.
        every = min(HOUSEKEEPING_EVERY, svc.settings.lease_seconds / 3)
        if t - self._last_housekeeping > every:
            self._last_housekeeping = t
            await self._housekeeping(t)
        rows = await svc.store.batches.active()
        runnable: list[ActiveBatch] = []
        for batch in rows:
            status = batch.status
            if status == BatchStatus.VALIDATING:
                self._start_job(batch, "validate")
            elif status == BatchStatus.FINALIZING:
                self._start_job(batch, "finalize")
            elif status == BatchStatus.CANCELLING:
                await self._stop_when_quiet(batch, "cancel", batch.cancelling_at)
            elif status == BatchStatus.IN_PROGRESS:
                if batch.stop_reason is None and t >= batch.expires_at:
                    await svc.store.batches.set_values(batch.id, stop_reason="expire")
                    log.info("batch %s passed its completion window", batch.id)
                    continue
                if batch.stop_reason == "expire":
                    await self._stop_when_quiet(batch, "expire", batch.expires_at)
                    continue
                if batch.model is not None:
                    runnable.append(
                        ActiveBatch(
                            batch.seq,
                            batch.id,
                            batch.endpoint,
                            batch.model,
                            remaining=batch.total - batch.completed - batch.failed,
                            expires_at=batch.expires_at,
                            priority=batch.priority,
                        )
                    )
                if batch.completed + batch.failed >= batch.total:
                    pending, leased = await svc.store.ledger.open_count(batch.seq)
                    if pending == 0 and leased == 0:
                        self._start_job(batch, "finalize")
        await self.runner.set_active(runnable)
        return bool(rows)

    async def _stop_when_quiet(self, batch: Batch, reason: str, since: int | None) -> None:
        """Let requests in flight finish, up to the grace period, then finalize."""
        _pending, leased = await self.svc.store.ledger.open_count(batch.seq)
        grace = self.svc.settings.cancel_grace_seconds
        if leased == 0 or since is None or self.svc.clock() - since >= grace:
            self._start_job(batch, "finalize", reason)

    def _start_job(self, batch: Batch, what: str, reason: str | None = None) -> None:
        """Validate or finalize `batch` in the background, once, under the batch's lease."""
        if batch.id in self._jobs:
            return

        async def run() -> None:
            svc = self.svc
            owned = False
            logs.current_batch.set(batch.id)  # this task's own context: its log lines
            try:
                t = svc.clock()
                until = t + svc.settings.lease_seconds * 5
                owned = await svc.store.batches.take_ownership(batch.id, svc.owner, t, until)
                if not owned:
                    return  # another process is on it; the next tick looks again
                # `batch` was read before the lease was taken: another process may have
                # validated or finalized the batch since. Act on what is true now.
                fresh = await svc.store.batches.get(batch.id)
                if fresh is None or not _still_needed(fresh.status, what, reason):
                    return
                started = time.perf_counter()
                with tracing.phase(what, batch.id):
                    if what == "validate":
                        await validate_batch(svc, fresh)
                    else:
                        await finalize_batch(svc, fresh, reason)
                took = time.perf_counter() - started
                metrics.batch_phase(what, took)
                log.debug("%s %s took %.3f s", what, batch.id, took)
            except Exception as exc:
                log_failure(log, exc, "could not %s batch %s; will try again", what, batch.id)
                await asyncio.sleep(1.0)
            finally:
                if owned:
                    await svc.store.batches.release_ownership(batch.id, svc.owner)
                self._jobs.pop(batch.id, None)
                if owned:
                    self.wake()

        self._jobs[batch.id] = asyncio.create_task(run(), name=f"{what}:{batch.id}")

    async def _housekeeping(self, t: float) -> None:
        svc = self.svc
        ledger = svc.store.ledger
        if not self._recovered:
            await self._recover()
        await ledger.renew(svc.owner, t + svc.settings.lease_seconds)
        for batch_id in list(self._jobs):
            await svc.store.batches.take_ownership(
                batch_id, svc.owner, t, t + svc.settings.lease_seconds * 5
            )
        if await ledger.reclaim_expired(t):
            self.runner.poke()
        for f in await svc.store.files.expired(int(t)):
            await svc.blobs.delete(f.blob_key)
            await svc.store.files.delete(f.id)
        if t - self._last_purge > PURGE_EVERY:
            self._last_purge = t
            cutoff = int(t) - svc.settings.retention_days * 86400
            purged = await ledger.purge_finished(cutoff)
            await svc.store.files.purge_tombstones(cutoff)
            await svc.store.idempotency.purge(int(t))
            if purged:
                log.info("removed %d ledger rows of batches finished long ago", purged)

    def begin_drain(self) -> None:
        """Shutdown begins (SIGTERM): stop claiming and sending now; `stop` waits for the
        requests in flight, up to the grace period counted from here."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            log.info(
                "shutting down: nothing new is sent; waiting up to %.0f s for answers in flight",
                self.svc.settings.shutdown_grace_seconds,
            )
        if self._task:
            self._task.cancel()
        self.runner.begin_drain()

    async def stop(self) -> None:
        self.begin_drain()
        assert self._drain_started is not None
        deadline = self._drain_started + self.svc.settings.shutdown_grace_seconds
        if self._task:
            await asyncio.gather(self._task, return_exceptions=True)
        for job in list(self._jobs.values()):
            job.cancel()
        await asyncio.gather(*self._jobs.values(), return_exceptions=True)
        await self.runner.stop(deadline)
