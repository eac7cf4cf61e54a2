"""File metadata rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.models import File
from overnight.store.schema import files

_COLUMNS = (
    "id",
    "project",
    "purpose",
    "filename",
    "bytes",
    "created_at",
    "status",
    "status_details",
    "expires_at",
    "blob_key",
)


DELETED = "deleted"  # Azure's own file status for a deleted file; never listed or served


def file_values(f: File) -> dict[str, Any]:
    """The row of `f`, for an insert in another repository's transaction."""
    return {c: getattr(f, c) for c in _COLUMNS}


def _file(row: Any) -> File:
    return File(**{c: getattr(row, c) for c in _COLUMNS})


class FileRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, f: File) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(files).values(file_values(f)))

    async def get(self, file_id: str, project: str | None = None) -> File | None:
        query = select(files).where(files.c.id == file_id, files.c.status != DELETED)
        if project is not None:
            query = query.where(files.c.project == project)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _file(row) if row else None

    async def page(
        self,
        project: str,
        *,
        purpose: str | None,
        limit: int,
        order: str,
        after: str | None,
    ) -> tuple[list[File], bool]:
        query = select(files).where(files.c.project == project, files.c.status != DELETED)
        if purpose:
            query = query.where(files.c.purpose == purpose)
        desc = order == "desc"
        async with self.engine.connect() as conn:
            if after:
                cursor = (
                    await conn.execute(
                        select(files.c.seq).where(files.c.id == after, files.c.project == project)
                    )
                ).scalar()
                if cursor is None:
                    return [], False
                query = query.where(files.c.seq < cursor if desc else files.c.seq > cursor)
            query = query.order_by(files.c.seq.desc() if desc else files.c.seq.asc())
            rows = (await conn.execute(query.limit(limit + 1))).all()
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    async def delete(self, file_id: str) -> None:
        """Keep a tombstone row: a client deleting while it pages may pass this id as `after`."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(files)
                .where(files.c.id == file_id)
                .values(status=DELETED, status_details=None, bytes=0)
            )

    async def purge_tombstones(self, before: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                delete(files).where(files.c.status == DELETED, files.c.created_at < before)
            )

    async def expired(self, now: int, limit: int = 100) -> list[File]:
        query = (
            select(files)
            .where(
                files.c.expires_at.is_not(None),
                files.c.expires_at <= now,
                files.c.status != DELETED,
            )
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [_file(r) for r in (await conn.execute(query)).all()]
