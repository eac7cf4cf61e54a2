"""The webhook outbox on SQLite or PostgreSQL: leased rows, so a fleet sends each event
from one process at a time, and a dead sender's events go to another once its lease ends."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from overnight.store.base import OutboxEvent
from overnight.store.schema import webhook_events as events

WAITING, DEAD = 0, 1


def event_values(event: OutboxEvent) -> dict[str, object]:
    return {
        "id": event.id,
        "project": event.project,
        "body": event.body,
        "state": WAITING,
        "attempts": event.attempts,
        "next_at": event.next_at,
        "last_error": event.last_error,
    }


async def add_event(conn: AsyncConnection, event: OutboxEvent) -> None:
    """Insert in the caller's transaction (a batch's close and its event commit together);
    an id already there is kept, in one statement, so two inserts cannot race."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    query = dialect.insert(events).values(**event_values(event))
    await conn.execute(query.on_conflict_do_nothing(index_elements=[events.c.id]))


class EventRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._skip_locked = engine.dialect.name == "postgresql"

    async def add(self, event: OutboxEvent) -> None:
        async with self.engine.begin() as conn:
            await add_event(conn, event)

    async def claim_due(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[OutboxEvent]:
        due = (
            select(events.c.id)
            .where(
                events.c.state == WAITING,
                events.c.next_at <= now,
                or_(events.c.lease_until.is_(None), events.c.lease_until < now),
            )
            .order_by(events.c.next_at)
            .limit(limit)
        )
        if self._skip_locked:
            due = due.with_for_update(skip_locked=True)
        query = (
            update(events)
            .where(events.c.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_until=lease_until)
            .returning(
                events.c.id,
                events.c.project,
                events.c.body,
                events.c.attempts,
                events.c.next_at,
                events.c.last_error,
            )
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(query)).all()
        claimed = [OutboxEvent(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]
        return sorted(claimed, key=lambda e: (e.next_at, e.id))

    def _held(self, event_id: str, owner: str) -> ColumnElement[bool]:
        return and_(events.c.id == event_id, events.c.lease_owner == owner)

    async def delivered(self, event_id: str, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(events).where(self._held(event_id, owner)))

    async def retry_at(
        self, event_id: str, owner: str, attempts: int, next_at: float, error: str
    ) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(events)
                .where(self._held(event_id, owner))
                .values(
                    attempts=attempts,
                    next_at=next_at,
                    last_error=error[:500],
                    lease_owner=None,
                    lease_until=None,
                )
            )

    async def give_up(self, event_id: str, owner: str, attempts: int, error: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(events)
                .where(self._held(event_id, owner))
                .values(
                    state=DEAD,
                    attempts=attempts,
                    last_error=error[:500],
                    lease_owner=None,
                    lease_until=None,
                )
            )

    async def next_due(self) -> float | None:
        held_until = func.coalesce(events.c.lease_until, 0.0)
        # The larger of the two: SQLite's two-argument max(), PostgreSQL's greatest().
        due: ColumnElement[float] = func.max(events.c.next_at, held_until)
        if self.engine.dialect.name == "postgresql":
            due = func.greatest(events.c.next_at, held_until)
        query = select(func.min(due)).where(events.c.state == WAITING)
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return float(value) if value is not None else None

    async def release_all(self) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(events)
                .where(events.c.lease_owner.is_not(None))
                .values(lease_owner=None, lease_until=None)
            )
            return int(result.rowcount or 0)

    async def counts(self) -> tuple[int, int]:
        query = select(events.c.state, func.count()).group_by(events.c.state)
        async with self.engine.connect() as conn:
            by_state = {int(s): int(n) for s, n in (await conn.execute(query)).all()}
        return by_state.get(WAITING, 0), by_state.get(DEAD, 0)
