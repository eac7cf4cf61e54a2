"""The store on SQLite or PostgreSQL, through one SQLAlchemy code path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.disk import disk_problem
from overnight.models import BatchStatus, RequestState
from overnight.store.base import StoreStats
from overnight.store.batches import BatchRepo
from overnight.store.database import create_engine, create_schema, is_sqlite
from overnight.store.events import EventRepo
from overnight.store.files import FileRepo
from overnight.store.idempotency import IdempotencyRepo
from overnight.store.keys import KeyRepo
from overnight.store.ledger import Ledger
from overnight.store.schema import batches, requests
from overnight.store.sql_fleet import SqlFleet


@dataclass
class SqlStore:
    engine: AsyncEngine
    files: FileRepo
    batches: BatchRepo
    ledger: Ledger
    keys: KeyRepo
    idempotency: IdempotencyRepo
    fleet: SqlFleet
    events: EventRepo

    @classmethod
    async def open(cls, url: str) -> SqlStore:
        engine = create_engine(url)
        await create_schema(engine)
        return cls(
            engine,
            FileRepo(engine),
            BatchRepo(engine),
            Ledger(engine),
            KeyRepo(engine),
            IdempotencyRepo(engine),
            SqlFleet(engine),
            EventRepo(engine),
        )

    @property
    def single_process(self) -> bool:
        """SQLite is the embedded store: one overnight process owns it."""
        return is_sqlite(self.engine)

    async def problem(self) -> str | None:
        """Why the database cannot serve now (unreachable, its disk full), or None."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
        path = self.engine.url.database
        if self.single_process and path and path != ":memory:":
            return await asyncio.to_thread(disk_problem, Path(path).parent)
        return None

    async def stats(self) -> StoreStats:
        stats = StoreStats({s.value: 0 for s in BatchStatus})
        open_states = [s.value for s in BatchStatus if not s.terminal]
        async with self.engine.connect() as conn:
            by_status = select(batches.c.status, func.count()).group_by(batches.c.status)
            for status, n in (await conn.execute(by_status)).all():
                stats.batches_by_status[status] = int(n)
            # Only open batches have unfinished rows; the (batch_seq, state) index serves this.
            open_seqs = select(batches.c.seq).where(batches.c.status.in_(open_states))
            unfinished = [RequestState.PENDING, RequestState.LEASED]
            backlog = (
                select(requests.c.state, func.count())
                .where(requests.c.batch_seq.in_(open_seqs), requests.c.state.in_(unfinished))
                .group_by(requests.c.state)
            )
            for state, n in (await conn.execute(backlog)).all():
                if state == RequestState.PENDING:
                    stats.pending = int(n)
                else:
                    stats.leased = int(n)
            tokens = select(
                func.coalesce(func.sum(batches.c.input_tokens), 0),
                func.coalesce(func.sum(batches.c.output_tokens), 0),
            )
            t_in, t_out = (await conn.execute(tokens)).one()
        stats.input_tokens, stats.output_tokens = int(t_in), int(t_out)
        return stats

    async def close(self) -> None:
        await self.engine.dispose()
