"""Metadata and the request ledger, on SQLite or PostgreSQL through one code path."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

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
