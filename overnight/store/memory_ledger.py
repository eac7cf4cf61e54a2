"""The request ledger of the memory store: rows that move pending -> leased -> done | failed.

As the SQL ledger: a result counts only while its lease is its sender's, and a batch's
live counters move only while the batch is live (the finalizer recounts from the rows).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from overnight.jsonl import Line
from overnight.models import OPEN, BatchStatus, RequestState, Usage
from overnight.store.base import (
    Claimed,
    Counts,
    FinishedPage,
    FinishedRow,
    Outcome,
    ResultRow,
    StoredLine,
    bucketed,
)

if TYPE_CHECKING:
    from overnight.store.memory import MemoryBatches

PENDING, LEASED = int(RequestState.PENDING), int(RequestState.LEASED)
DONE, FAILED = int(RequestState.DONE), int(RequestState.FAILED)


@dataclass
class _Request:
    id: int
    batch_seq: int
    line: int
    custom_id: str
    body: bytes
    state: int = PENDING
    attempts: int = 0
    status_code: int | None = None
    response: bytes | None = None
    error: str | None = None
    upstream_request_id: str | None = None
    usage: Usage = field(default_factory=Usage)
    lease_owner: str | None = None
    lease_until: float | None = None
    finished_at: float | None = None

    def outcome(self) -> tuple[str, int, int | None, bytes | None, str | None, str | None]:
        """What a results row shows after its line number: custom_id ... upstream id."""
        return (
            self.custom_id,
            self.state,
            self.status_code,
            self.response,
            self.error,
            self.upstream_request_id,
        )

    def free(self, state: int = PENDING) -> None:
        self.state, self.lease_owner, self.lease_until = state, None, None
        if state in (DONE, FAILED):
            self.finished_at = time.time()


class MemoryLedger:
    def __init__(self, batches: MemoryBatches) -> None:
        self.batches = batches
        self.rows: dict[int, _Request] = {}
        self.by_batch: dict[int, dict[int, _Request]] = {}  # batch seq -> line -> row
        self._id = 0

    def _of(self, batch_seq: int) -> Iterable[_Request]:
        return self.by_batch.get(batch_seq, {}).values()

    async def add_lines(self, batch_seq: int, lines: Sequence[Line]) -> None:
        mine = self.by_batch.setdefault(batch_seq, {})
        for ln in lines:
            if ln.number in mine:
                continue
            self._id += 1
            row = _Request(self._id, batch_seq, ln.number, ln.custom_id, ln.body)
            self.rows[row.id] = mine[ln.number] = row

    async def last_line(self, batch_seq: int) -> int:
        return max(self.by_batch.get(batch_seq, {}), default=0)

    async def clear(self, batch_seq: int) -> None:
        for row in self.by_batch.pop(batch_seq, {}).values():
            del self.rows[row.id]

    async def claim(
        self, batch_seq: int, owner: str, limit: int, lease_until: float
    ) -> list[Claimed]:
        pending = sorted((r for r in self._of(batch_seq) if r.state == PENDING), key=_by_id)
        claimed = []
        for r in pending[:limit]:
            r.state, r.lease_owner, r.lease_until = LEASED, owner, lease_until
            claimed.append(Claimed(r.id, r.line, r.custom_id, r.body, r.attempts))
        return claimed

    async def record(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        for o in outcomes:
            r = self.rows.get(o.id)
            if r is None or r.state != LEASED or r.lease_owner != owner:
                continue  # the lease was lost: not the ledger's result
            r.free(DONE if o.ok else FAILED)
            r.status_code, r.response, r.error = o.status_code, o.response, o.error
            r.upstream_request_id, r.attempts, r.usage = o.upstream_request_id, o.attempts, o.usage
            batch = self.batches.by_seq.get(o.batch_seq)
            if batch is not None and batch.batch.status in OPEN:
                b = batch.batch
                b.completed, b.failed = b.completed + o.ok, b.failed + (not o.ok)
                b.usage.add(o.usage)

    def _release(self, rows: Iterable[_Request], owner: str | None = None) -> int:
        n = 0
        for r in rows:
            if r.state == LEASED and (owner is None or r.lease_owner == owner):
                r.free()
                n += 1
        return n

    async def release(self, owner: str, ids: Sequence[int]) -> None:
        self._release((self.rows[i] for i in ids if i in self.rows), owner)

    async def release_owned(self, owner: str) -> int:
        return self._release(self.rows.values(), owner)

    async def renew(self, owner: str, lease_until: float) -> None:
        for r in self.rows.values():
            if r.state == LEASED and r.lease_owner == owner:
                r.lease_until = lease_until

    async def reclaim_expired(self, now: float) -> int:
        return self._release(r for r in self.rows.values() if (r.lease_until or 0) < now)

    async def release_all(self) -> int:
        return self._release(self.rows.values())

    async def close_open(self, batch_seq: int, error_json: str) -> None:
        for r in self._of(batch_seq):
            if r.state in (PENDING, LEASED):
                r.free(FAILED)
                r.error = error_json

    async def counts(self, batch_seq: int) -> tuple[Counts, Usage]:
        counts, usage = Counts(), Usage()
        for r in self._of(batch_seq):
            counts.total += 1
            if r.state == DONE:
                counts.completed += 1
            elif r.state == FAILED:
                counts.failed += 1
            else:
                counts.open += 1
                counts.leased += r.state == LEASED
            usage.add(r.usage)
        return counts, usage

    async def open_count(self, batch_seq: int) -> tuple[int, int]:
        states = [r.state for r in self._of(batch_seq)]
        return states.count(PENDING), states.count(LEASED)

    async def results(self, batch_seq: int, page: int = 5000) -> AsyncIterator[ResultRow]:
        for r in sorted(self._of(batch_seq), key=lambda r: r.line):
            yield ResultRow(r.line, *r.outcome())

    async def finished_page(
        self,
        batch_seq: int,
        after: int,
        limit: int,
        *,
        state: int | None = None,
        custom_ids: Sequence[str] = (),
    ) -> FinishedPage:
        rows = sorted(self._of(batch_seq), key=_by_id)
        barrier = next((r.id for r in rows if r.state in (PENDING, LEASED)), None)
        if barrier is None:
            barrier = (rows[-1].id if rows else after) + 1
        wanted = {state} if state is not None else {DONE, FAILED}
        ids = set(custom_ids)
        page = [
            FinishedRow(r.id, r.line, *r.outcome())
            for r in rows
            if after < r.id < barrier and r.state in wanted and (not ids or r.custom_id in ids)
        ]
        if len(page) > limit:
            return FinishedPage(page[:limit], page[limit - 1].id, True)
        return FinishedPage(page, max(after, barrier - 1), False)

    async def stored_lines(
        self, batch_seq: int, states: Sequence[int], page: int = 5000
    ) -> AsyncIterator[StoredLine]:
        wanted = set(states)
        for r in sorted(self._of(batch_seq), key=_by_line):
            if r.state in wanted:
                yield StoredLine(r.line, r.custom_id, r.body, r.state, r.error)

    async def finished_since(self, batch_seq: int, since: float) -> int:
        return sum(
            1
            for r in self._of(batch_seq)
            if r.state in (DONE, FAILED) and (r.finished_at or 0.0) >= since
        )

    async def finished_curve(
        self, batch_seq: int, start: float, step: float, buckets: int
    ) -> list[int]:
        indexes = Counter(
            math.floor((r.finished_at - start) / step)
            for r in self._of(batch_seq)
            if r.state in (DONE, FAILED) and r.finished_at is not None
        )
        return bucketed(indexes.items(), buckets)

    async def purge_finished(self, created_before: int) -> int:
        n = 0
        for seq, row in list(self.batches.by_seq.items()):
            b = row.batch
            if BatchStatus(b.status).terminal and b.created_at < created_before:
                n += len(self.by_batch.get(seq, {}))
                await self.clear(seq)
        return n

    async def failed_sample(self, batch_seq: int, limit: int = 20) -> list[dict[str, Any]]:
        failed = sorted((r for r in self._of(batch_seq) if r.state == FAILED), key=_by_line)
        return [
            {
                "line": r.line,
                "custom_id": r.custom_id,
                "status_code": r.status_code,
                "response": r.response,
                "error": r.error,
            }
            for r in failed[:limit]
        ]


def _by_id(r: _Request) -> int:
    return r.id


def _by_line(r: _Request) -> int:
    return r.line
