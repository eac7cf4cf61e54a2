"""Fleet-wide limits in the database, so that every worker on it keeps them together.

A route's rpm/tpm bucket is one row, locked while it is refilled and taken from
(`SELECT ... FOR UPDATE` on PostgreSQL; SQLite has one writer at a time, and each
transaction here starts with a write so it holds that lock throughout). Concurrency
slots are leased per (route, owner) under a per-route transaction-scoped advisory lock
on PostgreSQL, so two workers never both count the same free slot. No extra service:
the database the fleet already shares is the coordinator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from overnight.store.fleet_rules import grant, held_until, lease_grant, refill
from overnight.store.schema import fleet_buckets, fleet_routes, fleet_slots

# The first key of the two-key advisory locks that guard a route's slots (the second is
# hashtext(route)); the two-key space is apart from the migration's one-key lock.
FLEET_LOCK = 0x666C_6574  # "flet"
PRESENCE = "presence:"  # fleet_slots rows that say which workers are on a route


class SqlFleet:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._pg = engine.dialect.name == "postgresql"

    def _insert(self, table: Any) -> Any:
        """INSERT with ON CONFLICT, in the engine's dialect (both spell it alike)."""
        return postgresql.insert(table) if self._pg else sqlite.insert(table)

    async def take(
        self, bucket: str, want: float, rate_per_s: float, burst: float, now: float
    ) -> float:
        _level, got = await self._draw(bucket, rate_per_s, burst, now, lambda lv: grant(lv, want))
        return got

    async def reserve(
        self,
        bucket: str,
        want: int,
        rate_per_s: float,
        burst: float,
        now: float,
        not_before: float | None = None,
    ) -> float:
        level, _got = await self._draw(
            bucket, rate_per_s, burst, now, lambda _lv: float(want), not_before
        )
        return level

    async def _draw(
        self,
        bucket: str,
        rate_per_s: float,
        burst: float,
        now: float,
        amount: Callable[[float], float],
        not_before: float | None = None,
    ) -> tuple[float, float]:
        """(the level refilled to `now`, what was taken: `amount(level)`), in one
        transaction holding the bucket's row."""
        full = {"level": burst, "stamp": now, "rate_per_s": rate_per_s, "burst": burst}
        async with self.engine.begin() as conn:
            # First use creates the bucket full; the insert is also SQLite's write lock.
            await conn.execute(
                self._insert(fleet_buckets)
                .values(bucket=bucket, **full)
                .on_conflict_do_nothing(index_elements=["bucket"])
            )
            row = (
                await conn.execute(
                    select(fleet_buckets.c.level, fleet_buckets.c.stamp)
                    .where(fleet_buckets.c.bucket == bucket)
                    .with_for_update()
                )
            ).one()
            level = refill(row.level, row.stamp, rate_per_s, burst, now)
            level = held_until(level, rate_per_s, now, not_before)
            got = amount(level)
            await conn.execute(
                update(fleet_buckets)
                .where(fleet_buckets.c.bucket == bucket)
                .values(
                    level=level - got,
                    stamp=max(row.stamp, now),
                    rate_per_s=rate_per_s,
                    burst=burst,
                )
            )
        return level, got

    async def _lock_route(self, conn: AsyncConnection, route: str) -> None:
        if self._pg:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:ns, hashtext(:route))"),
                {"ns": FLEET_LOCK, "route": route},
            )

    async def lease_slots(
        self,
        route: str,
        owner: str,
        want: int,
        limit: int,
        now: float,
        until: float,
        in_use: int = 0,
    ) -> int:
        slots = fleet_slots.c
        async with self.engine.begin() as conn:
            await self._lock_route(conn, route)
            # Dead workers' slots count for nothing (on SQLite, this write takes the lock).
            await conn.execute(
                delete(fleet_slots).where(slots.route == route, slots.expires_at < now)
            )
            rows = await conn.execute(
                select(slots.owner, slots.held, slots.want).where(
                    slots.route == route, slots.owner != owner
                )
            )
            others = {r.owner: (int(r.held), int(r.want)) for r in rows}
            held = lease_grant(owner, want, limit, others)
            mine = (slots.route == route) & (slots.owner == owner)
            if held == 0 and want <= 0 and in_use <= 0:
                await conn.execute(delete(fleet_slots).where(mine))
                return 0
            values = {"held": max(held, in_use), "want": max(0, want), "expires_at": until}
            await conn.execute(
                self._insert(fleet_slots)
                .values(route=route, owner=owner, **values)
                .on_conflict_do_update(index_elements=["route", "owner"], set_=values)
            )
        return held

    async def release_slots(self, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(fleet_slots).where(fleet_slots.c.owner == owner))

    async def present(self, group: str, owner: str, now: float, until: float | None) -> int:
        # Rows of the slots' table that hold no slot; their own key space by the prefix.
        key = PRESENCE + group
        slots = fleet_slots.c
        async with self.engine.begin() as conn:
            await self._lock_route(conn, key)
            await conn.execute(
                delete(fleet_slots).where(slots.route == key, slots.expires_at < now)
            )
            mine = (slots.route == key) & (slots.owner == owner)
            if until is None:
                await conn.execute(delete(fleet_slots).where(mine))
            else:
                values = {"held": 0, "want": 0, "expires_at": until}
                await conn.execute(
                    self._insert(fleet_slots)
                    .values(route=key, owner=owner, **values)
                    .on_conflict_do_update(index_elements=["route", "owner"], set_=values)
                )
            count = await conn.execute(
                select(func.count()).select_from(fleet_slots).where(slots.route == key)
            )
            return int(count.scalar() or 0)

    async def set_learnt(self, route: str, rate_per_s: float, now: float) -> None:
        values = {"learnt_rate": rate_per_s, "learnt_at": now}
        async with self.engine.begin() as conn:
            await conn.execute(
                self._insert(fleet_routes)
                .values(route=route, **values)
                .on_conflict_do_update(index_elements=["route"], set_=values)
            )

    async def learnt(self, route: str, now: float, max_age: float = 600.0) -> float | None:
        query = select(fleet_routes.c.learnt_rate, fleet_routes.c.learnt_at).where(
            fleet_routes.c.route == route
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or now - row.learnt_at > max_age:
            return None
        return float(row.learnt_rate)
