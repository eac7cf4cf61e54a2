"""Batch rows: create, read, list, and compare-and-set status transitions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from overnight.models import ENDED_AT, Batch, BatchError, BatchStatus, File, Usage
from overnight.store.base import OutboxEvent
from overnight.store.events import add_event
from overnight.store.files import file_values
from overnight.store.schema import batches, files

_PLAIN = (
    "id",
    "project",
    "endpoint",
    "endpoint_spelling",
    "dialect",
    "model",
    "input_file_id",
    "completion_window",
    "status",
    "created_at",
    "expires_at",
    "output_file_id",
    "error_file_id",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "total",
    "completed",
    "failed",
    "stop_reason",
    "priority",
)


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def to_batch(row: Any) -> Batch:
    b = Batch(**{c: getattr(row, c) for c in _PLAIN}, seq=row.seq)
    errors = _loads(row.errors)
    b.errors = [BatchError(**e) for e in errors] if errors else None
    b.usage = Usage(row.input_tokens, row.cached_tokens, row.output_tokens, row.reasoning_tokens)
    b.metadata = _loads(row.metadata)
    b.output_expires_after = _loads(row.output_expires_after)
    return b


def errors_json(errors: Iterable[BatchError]) -> str:
    return orjson.dumps([e.to_api() for e in errors]).decode()


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    """Batch fields as the table stores them (errors as JSON text)."""
    errors = values.get("errors")
    if errors is not None and not isinstance(errors, str):
        values = {**values, "errors": errors_json(errors)}
    return values


class BatchRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, b: Batch) -> int:
        values = {c: getattr(b, c) for c in _PLAIN}
        values["metadata"] = orjson.dumps(b.metadata).decode() if b.metadata is not None else None
        values["output_expires_after"] = (
            orjson.dumps(b.output_expires_after).decode() if b.output_expires_after else None
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(insert(batches).values(values))
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    async def get(self, batch_id: str, project: str | None = None) -> Batch | None:
        query = select(batches).where(batches.c.id == batch_id)
        if project is not None:
            query = query.where(batches.c.project == project)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return to_batch(row) if row else None

    async def page(
        self, project: str, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        query = select(batches).where(batches.c.project == project)
        async with self.engine.connect() as conn:
            if after:
                cursor = (
                    await conn.execute(
                        select(batches.c.seq).where(
                            batches.c.id == after, batches.c.project == project
                        )
                    )
                ).scalar()
                if cursor is None:
                    return [], False
                query = query.where(batches.c.seq < cursor)
            query = query.order_by(batches.c.seq.desc()).limit(limit + 1)
            rows = (await conn.execute(query)).all()
        return [to_batch(r) for r in rows[:limit]], len(rows) > limit

    async def count_open(self, project: str) -> int:
        open_states = [s.value for s in BatchStatus if not s.terminal]
        query = select(func.count()).where(
            batches.c.project == project, batches.c.status.in_(open_states)
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def using_files(
        self, project: str, file_ids: Sequence[str], limit: int = 500
    ) -> list[Batch]:
        if not file_ids:
            return []
        ids = list(file_ids)
        query = (
            select(batches)
            .where(
                batches.c.project == project,
                or_(
                    batches.c.input_file_id.in_(ids),
                    batches.c.output_file_id.in_(ids),
                    batches.c.error_file_id.in_(ids),
                ),
            )
            .order_by(batches.c.seq.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [to_batch(r) for r in (await conn.execute(query)).all()]

    async def active(self) -> list[Batch]:
        """Every batch the executor still has work on, oldest first."""
        open_states = [s.value for s in BatchStatus if not s.terminal]
        query = select(batches).where(batches.c.status.in_(open_states)).order_by(batches.c.seq)
        async with self.engine.connect() as conn:
            return [to_batch(r) for r in (await conn.execute(query)).all()]

    async def transition(
        self,
        batch_id: str,
        from_states: Iterable[str],
        conn: AsyncConnection | None = None,
        *,
        event: OutboxEvent | None = None,
        **values: Any,
    ) -> bool:
        """Set `values` only if the batch is still in one of `from_states`; `event` (a
        webhook) is queued in the same transaction, so it exists exactly when the change does."""
        query = (
            update(batches)
            .where(batches.c.id == batch_id, batches.c.status.in_(list(from_states)))
            .values(**_columns(values))
        )
        if conn is not None:
            changed = (await conn.execute(query)).rowcount == 1
            if changed and event is not None:
                await add_event(conn, event)
            return changed
        async with self.engine.begin() as c:
            return await self.transition(batch_id, from_states, c, event=event, **values)

    async def finish(
        self,
        batch_id: str,
        from_states: Iterable[str],
        status: str,
        at: int,
        counts: tuple[int, int, int],
        usage: Usage,
        outputs: Iterable[tuple[str, File]],
        event: OutboxEvent | None = None,
    ) -> bool:
        """Close the batch in `status` with its final counts and output files, in one
        transaction, only if it is still in `from_states`; its batch lease ends with it.

        `counts` is (total, completed, failed); `outputs` pairs a column
        (`output_file_id`, `error_file_id`) with the file row it names."""
        total, completed, failed = counts
        values: dict[str, Any] = {
            "status": status,
            ENDED_AT[BatchStatus(status)]: at,
            "total": total,
            "completed": completed,
            "failed": failed,
            "input_tokens": usage.input_tokens,
            "cached_tokens": usage.cached_tokens,
            "output_tokens": usage.output_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "owner": None,
            "owner_until": None,
        }
        rows = []
        for column, f in outputs:
            values[column] = f.id
            rows.append(file_values(f))
        async with self.engine.begin() as conn:
            if not await self.transition(batch_id, from_states, conn, event=event, **values):
                return False
            if rows:
                await conn.execute(insert(files), rows)
            return True

    async def take_ownership(self, batch_id: str, owner: str, now: float, until: float) -> bool:
        """A batch-level lease, so one process validates or finalizes a batch at a time."""
        query = (
            update(batches)
            .where(
                batches.c.id == batch_id,
                or_(
                    batches.c.owner.is_(None),
                    batches.c.owner == owner,
                    and_(batches.c.owner_until.is_not(None), batches.c.owner_until < now),
                ),
            )
            .values(owner=owner, owner_until=until)
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def release_all_ownership(self) -> int:
        """At start-up of a single-process store: every batch lease was a dead process's."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(batches)
                .where(batches.c.owner.is_not(None))
                .values(owner=None, owner_until=None)
            )
            return int(result.rowcount or 0)

    async def release_ownership(self, batch_id: str, owner: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(batches)
                .where(batches.c.id == batch_id, batches.c.owner == owner)
                .values(owner=None, owner_until=None)
            )

    async def set_values(self, batch_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            query = update(batches).where(batches.c.id == batch_id).values(**_columns(values))
            await conn.execute(query)
