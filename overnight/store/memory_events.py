"""The webhook outbox of the memory store (unit tests): the SQL one's rules, in a dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from overnight.store.base import OutboxEvent


@dataclass(slots=True)
class _Row:
    event: OutboxEvent
    dead: bool = False
    lease_owner: str | None = None
    lease_until: float | None = None


class MemoryEvents:
    def __init__(self) -> None:
        self.rows: dict[str, _Row] = {}

    async def add(self, event: OutboxEvent) -> None:
        self.rows.setdefault(event.id, _Row(dataclasses.replace(event)))

    async def claim_due(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[OutboxEvent]:
        free = [
            r
            for r in self.rows.values()
            if not r.dead and r.event.next_at <= now and (r.lease_until or 0.0) < now
        ]
        free.sort(key=lambda r: (r.event.next_at, r.event.id))
        for r in free[:limit]:
            r.lease_owner, r.lease_until = owner, lease_until
        return [dataclasses.replace(r.event) for r in free[:limit]]

    def _held(self, event_id: str, owner: str) -> _Row | None:
        row = self.rows.get(event_id)
        return row if row is not None and row.lease_owner == owner else None

    async def delivered(self, event_id: str, owner: str) -> None:
        if self._held(event_id, owner) is not None:
            del self.rows[event_id]

    async def retry_at(
        self, event_id: str, owner: str, attempts: int, next_at: float, error: str
    ) -> None:
        row = self._held(event_id, owner)
        if row is not None:
            row.event.attempts, row.event.next_at = attempts, next_at
            row.event.last_error = error[:500]
            row.lease_owner = row.lease_until = None

    async def give_up(self, event_id: str, owner: str, attempts: int, error: str) -> None:
        row = self._held(event_id, owner)
        if row is not None:
            row.dead, row.event.attempts, row.event.last_error = True, attempts, error[:500]
            row.lease_owner = row.lease_until = None

    async def next_due(self) -> float | None:
        due = [max(r.event.next_at, r.lease_until or 0.0) for r in self.rows.values() if not r.dead]
        return min(due, default=None)

    async def release_all(self) -> int:
        held = [r for r in self.rows.values() if r.lease_owner is not None]
        for r in held:
            r.lease_owner = r.lease_until = None
        return len(held)

    async def counts(self) -> tuple[int, int]:
        dead = sum(r.dead for r in self.rows.values())
        return len(self.rows) - dead, dead
