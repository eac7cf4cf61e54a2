"""Idempotency keys: the first answer to a create, kept so that a retry gets it again.

A row is reserved (no answer yet) before the create runs and completed with the
answer after it; a second request with the same key finds the row and either gets
the stored answer or learns that the first is still running. Rows live for a day
(the IETF httpapi draft leaves the window to the server; Stripe keeps 24 hours).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.store.base import KEY_TTL, STALE_RESERVATION, Remembered
from overnight.store.schema import idempotency_keys


class IdempotencyRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def reserve(
        self, project: str, key: str, fingerprint: str, now: int
    ) -> Remembered | None:
        """Claim `key` for a new request (None), or return what the key already holds."""
        existing: Remembered | None = None
        for _ in range(3):
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(idempotency_keys).values(
                            project=project, key=key, fingerprint=fingerprint, created_at=now
                        )
                    )
                return None
            except IntegrityError:
                pass
            existing = await self._get(project, key)
            if existing is None:
                continue  # removed between our insert and our read
            if not existing.outlived(now):
                return existing
            async with self.engine.begin() as conn:
                await conn.execute(
                    delete(idempotency_keys).where(
                        idempotency_keys.c.project == project,
                        idempotency_keys.c.key == key,
                        idempotency_keys.c.created_at == existing.created_at,
                    )
                )
        return existing

    async def _get(self, project: str, key: str) -> Remembered | None:
        query = select(
            idempotency_keys.c.fingerprint,
            idempotency_keys.c.status_code,
            idempotency_keys.c.response,
            idempotency_keys.c.created_at,
        ).where(idempotency_keys.c.project == project, idempotency_keys.c.key == key)
        async with self.engine.connect() as conn:
            row: Any = (await conn.execute(query)).first()
        if row is None:
            return None
        return Remembered(row.fingerprint, row.status_code, row.response, row.created_at)

    async def complete(self, project: str, key: str, status_code: int, response: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(idempotency_keys)
                .where(idempotency_keys.c.project == project, idempotency_keys.c.key == key)
                .values(status_code=status_code, response=response)
            )

    async def forget(self, project: str, key: str) -> None:
        """The request failed: a retry with the same key runs it afresh."""
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.project == project,
                    idempotency_keys.c.key == key,
                    idempotency_keys.c.status_code.is_(None),
                )
            )

    async def purge(self, now: int) -> int:
        """Drop keys past their day, and reservations whose request died with its process."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(
                    or_(
                        idempotency_keys.c.created_at < now - KEY_TTL,
                        (idempotency_keys.c.status_code.is_(None))
                        & (idempotency_keys.c.created_at < now - STALE_RESERVATION),
                    )
                )
            )
            return int(result.rowcount or 0)
