"""Metadata and the request ledger, on SQLite or PostgreSQL through one code path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.disk import disk_problem
from overnight.store.batches import BatchRepo
from overnight.store.database import create_engine, create_schema, is_sqlite
from overnight.store.files import FileRepo
from overnight.store.idempotency import IdempotencyRepo
from overnight.store.keys import KeyRepo
from overnight.store.ledger import Ledger


@dataclass
class Store:
    engine: AsyncEngine
    files: FileRepo
    batches: BatchRepo
    ledger: Ledger
    keys: KeyRepo
    idempotency: IdempotencyRepo

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

    async def close(self) -> None:
        await self.engine.dispose()


async def open_store(url: str) -> Store:
    engine = create_engine(url)
    await create_schema(engine)
    return Store(
        engine,
        FileRepo(engine),
        BatchRepo(engine),
        Ledger(engine),
        KeyRepo(engine),
        IdempotencyRepo(engine),
    )
