"""The request ledger: one row per request, the heart of durability.

Rows move pending -> leased (owner, deadline) -> done | failed. Results are
written in batched transactions together with the batch's live counters, so a
crash loses at most the requests that were in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy import Integer, case, cast, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.jsonl import Line
from overnight.models import MAX_TOTAL_TOKENS, OPEN, TERMINAL, RequestState, Usage
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
from overnight.store.faults import retrying
from overnight.store.schema import batches, requests

log = logging.getLogger("overnight.ledger")


# The two statements run once per request are sent as plain driver SQL with
# positional rows: SQLAlchemy's per-row parameter processing cost more than
# the database work itself (profiled in bench/README.md).
# ON CONFLICT: a window inserted again after a commit whose answer was lost adds nothing.
_INSERT_SQL = (
    "INSERT INTO requests (batch_seq, line, custom_id, body, state, attempts, input_tokens,"
    " cached_tokens, output_tokens, reasoning_tokens) VALUES (?, ?, ?, ?, 0, 0, 0, 0, 0, 0)"
    " ON CONFLICT (batch_seq, line) DO NOTHING"
)
_RECORD_SQL = (
    "UPDATE requests SET state = ?, status_code = ?, response = ?, error = ?,"
    " upstream_request_id = ?, attempts = ?, input_tokens = ?, cached_tokens = ?,"
    " output_tokens = ?, reasoning_tokens = ?, finished_at = ?, lease_owner = NULL,"
    " lease_until = NULL"
    f" WHERE id = ? AND lease_owner = ? AND state = {int(RequestState.LEASED)}"
)

_CLAIM_SQL = (
    f"UPDATE requests SET state = {int(RequestState.LEASED)}, lease_owner = ?, lease_until = ?"
    " WHERE id IN (SELECT id FROM requests WHERE batch_seq = ?"
    f" AND state = {int(RequestState.PENDING)} ORDER BY id LIMIT ?{{lock}})"
    " RETURNING id, line, custom_id, body, attempts"
)

# Finalization reads every row once; plain tuples skip SQLAlchemy's row processing.
_RESULTS_SQL = (
    "SELECT line, custom_id, state, status_code, response, error, upstream_request_id"
    " FROM requests WHERE batch_seq = ? AND line > ? ORDER BY line LIMIT ?"
)


def _placeholders(sql: str, paramstyle: str) -> str:
    """Write qmark SQL in the driver's own style ($1, $2... for asyncpg)."""
    if paramstyle == "qmark":
        return sql
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        out.append(f"${i}" if paramstyle == "numeric_dollar" else "%s")
        out.append(part)
    return "".join(out)


def _saturating(column: Any, amount: int) -> Any:
    """`column + amount`, stopping at MAX_TOTAL_TOKENS instead of overflowing 64 bits."""
    amount = min(amount, MAX_TOTAL_TOKENS)
    return case((column > MAX_TOTAL_TOKENS - amount, MAX_TOTAL_TOKENS), else_=column + amount)


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        style = engine.dialect.paramstyle
        self._insert_sql = _placeholders(_INSERT_SQL, style)
        self._record_sql = _placeholders(_RECORD_SQL, style)
        self._results_sql = _placeholders(_RESULTS_SQL, style)
        # Several processes claim from one PostgreSQL ledger; SQLite has one writer.
        lock = " FOR UPDATE SKIP LOCKED" if engine.dialect.name == "postgresql" else ""
        self._claim_sql = _placeholders(_CLAIM_SQL.format(lock=lock), style)

    async def add_lines(self, batch_seq: int, lines: Sequence[Line]) -> None:
        if not lines:
            return
        rows = [(batch_seq, ln.number, ln.custom_id, ln.body) for ln in lines]
        async with self.engine.begin() as conn:
            await conn.exec_driver_sql(self._insert_sql, rows)

    async def last_line(self, batch_seq: int) -> int:
        """The highest input line already in the ledger (0: none): where validation resumes."""
        query = select(func.coalesce(func.max(requests.c.line), 0)).where(
            requests.c.batch_seq == batch_seq
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def clear(self, batch_seq: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(requests).where(requests.c.batch_seq == batch_seq))

    async def claim(
        self, batch_seq: int, owner: str, limit: int, lease_until: float
    ) -> list[Claimed]:
        """Lease up to `limit` pending requests of a batch, in file order."""
        params = (owner, lease_until, batch_seq, limit)
        async with self.engine.begin() as conn:
            result = await conn.exec_driver_sql(self._claim_sql, params)
            rows: list[Any] = sorted(result.fetchall(), key=lambda r: r[0])
        return [Claimed(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

    async def record(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """Store results and bump the batches' live counters in one transaction."""
        if not outcomes:
            return
        done, failed = int(RequestState.DONE), int(RequestState.FAILED)
        finished_at = time.time()
        params = [
            (
                done if o.ok else failed,
                o.status_code,
                o.response,
                o.error,
                o.upstream_request_id,
                o.attempts,
                o.usage.input_tokens,
                o.usage.cached_tokens,
                o.usage.output_tokens,
                o.usage.reasoning_tokens,
                finished_at,
                o.id,
                owner,
            )
            for o in outcomes
        ]
        per_batch: dict[int, list[int]] = {}
        for o in outcomes:
            acc = per_batch.setdefault(o.batch_seq, [0, 0, 0, 0, 0, 0])
            acc[0 if o.ok else 1] += 1
            acc[2] += o.usage.input_tokens
            acc[3] += o.usage.cached_tokens
            acc[4] += o.usage.output_tokens
            acc[5] += o.usage.reasoning_tokens
        async with self.engine.begin() as conn:
            result = await conn.exec_driver_sql(self._record_sql, params)
            matched = result.rowcount
            if matched is not None and 0 <= matched < len(params):
                # Lease lost (taken over after expiry, or the batch was stopped): those
                # results are not the ledger's; the finalizer's recount keeps totals exact.
                log.warning(
                    "%d of %d results arrived after their lease was lost",
                    len(params) - matched,
                    len(params),
                )
            # Batch rows in one order everywhere, so two workers recording results for the
            # same batches cannot deadlock on PostgreSQL.
            for seq, (ok, bad, t_in, t_cached, t_out, t_reason) in sorted(per_batch.items()):
                await conn.execute(
                    update(batches)
                    # A closed batch's counts were recomputed from the rows; late
                    # results (lease lost, batch stopped) must not move them.
                    .where(batches.c.seq == seq, batches.c.status.in_(list(OPEN)))
                    .values(
                        completed=batches.c.completed + ok,
                        failed=batches.c.failed + bad,
                        input_tokens=_saturating(batches.c.input_tokens, t_in),
                        cached_tokens=_saturating(batches.c.cached_tokens, t_cached),
                        output_tokens=_saturating(batches.c.output_tokens, t_out),
                        reasoning_tokens=_saturating(batches.c.reasoning_tokens, t_reason),
                    )
                )

    async def release(self, owner: str, ids: Sequence[int]) -> None:
        """Give leased requests back to the pool (a batch stopped before they were sent)."""
        if not ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                update(requests)
                .where(
                    requests.c.id.in_(list(ids)),
                    requests.c.lease_owner == owner,
                    requests.c.state == RequestState.LEASED,
                )
                .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
            )

    async def release_owned(self, owner: str) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(requests)
                .where(requests.c.state == RequestState.LEASED, requests.c.lease_owner == owner)
                .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
            )
            return int(result.rowcount or 0)

    async def renew(self, owner: str, lease_until: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(requests)
                .where(requests.c.lease_owner == owner, requests.c.state == RequestState.LEASED)
                .values(lease_until=lease_until)
            )

    async def reclaim_expired(self, now: float) -> int:
        """Leases whose holder stopped renewing them go back to pending."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(requests)
                .where(requests.c.state == RequestState.LEASED, requests.c.lease_until < now)
                .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
            )
            return int(result.rowcount or 0)

    async def release_all(self) -> int:
        """At start-up of a single-process store: every lease belonged to a dead process."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(requests)
                .where(requests.c.state == RequestState.LEASED)
                .values(state=RequestState.PENDING, lease_owner=None, lease_until=None)
            )
            return int(result.rowcount or 0)

    async def close_open(self, batch_seq: int, error_json: str) -> None:
        """Mark every request that never got an answer as failed with `error_json`."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(requests)
                .where(
                    requests.c.batch_seq == batch_seq,
                    requests.c.state.in_([RequestState.PENDING, RequestState.LEASED]),
                )
                .values(
                    state=RequestState.FAILED,
                    error=error_json,
                    finished_at=time.time(),
                    lease_owner=None,
                    lease_until=None,
                )
            )

    async def counts(self, batch_seq: int) -> tuple[Counts, Usage]:
        """Exact counts and token sums, recomputed from the rows."""
        query = (
            select(
                requests.c.state,
                func.count(),
                func.coalesce(func.sum(requests.c.input_tokens), 0),
                func.coalesce(func.sum(requests.c.cached_tokens), 0),
                func.coalesce(func.sum(requests.c.output_tokens), 0),
                func.coalesce(func.sum(requests.c.reasoning_tokens), 0),
            )
            .where(requests.c.batch_seq == batch_seq)
            .group_by(requests.c.state)
        )
        counts, usage = Counts(), Usage()
        async with self.engine.connect() as conn:
            for state, n, t_in, t_cached, t_out, t_reason in (await conn.execute(query)).all():
                counts.total += n
                if state == RequestState.DONE:
                    counts.completed += n
                elif state == RequestState.FAILED:
                    counts.failed += n
                else:
                    counts.open += n
                    if state == RequestState.LEASED:
                        counts.leased += n
                usage.add(Usage(int(t_in), int(t_cached), int(t_out), int(t_reason)))
        return counts, usage

    async def open_count(self, batch_seq: int) -> tuple[int, int]:
        """(pending, leased) for one batch, cheaply, for the scheduler's checks."""
        query = select(
            func.coalesce(
                func.sum(case((requests.c.state == RequestState.PENDING, 1), else_=0)), 0
            ),
            func.coalesce(func.sum(case((requests.c.state == RequestState.LEASED, 1), else_=0)), 0),
        ).where(
            requests.c.batch_seq == batch_seq,
            requests.c.state.in_([RequestState.PENDING, RequestState.LEASED]),
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).one()
        return int(row[0]), int(row[1])

    async def results(self, batch_seq: int, page: int = 5000) -> AsyncIterator[ResultRow]:
        """Every row of a batch in file order, a page at a time (keyset on `line`); a page
        the database drops is read again, so a long finalization does not start over."""
        last = 0
        while True:

            async def read_page(after: int = last) -> list[ResultRow]:
                async with self.engine.connect() as conn:
                    result = await conn.exec_driver_sql(self._results_sql, (batch_seq, after, page))
                    return [ResultRow._make(r) for r in result.fetchall()]

            rows = await retrying(read_page, f"reading results of batch {batch_seq}")
            for row in rows:
                yield row
            if len(rows) < page:
                return
            last = rows[-1].line

    async def finished_page(
        self,
        batch_seq: int,
        after: int,
        limit: int,
        *,
        state: int | None = None,
        custom_ids: Sequence[str] = (),
    ) -> FinishedPage:
        of_batch = requests.c.batch_seq == batch_seq
        open_states = [RequestState.PENDING, RequestState.LEASED]
        first_open = select(func.min(requests.c.id)).where(
            of_batch, requests.c.state.in_(open_states)
        )
        last = select(func.max(requests.c.id)).where(of_batch)
        wanted = [state] if state is not None else [RequestState.DONE, RequestState.FAILED]
        query = select(
            requests.c.id,
            requests.c.line,
            requests.c.custom_id,
            requests.c.state,
            requests.c.status_code,
            requests.c.response,
            requests.c.error,
            requests.c.upstream_request_id,
        ).where(of_batch, requests.c.id > after, requests.c.state.in_(wanted))
        if custom_ids:
            query = query.where(requests.c.custom_id.in_(list(custom_ids)))
        async with self.engine.connect() as conn:
            # One snapshot on PostgreSQL would need REPEATABLE READ; reading the barrier
            # first is enough: a row open then can only be past it, never before it.
            barrier = (await conn.execute(first_open)).scalar()
            if barrier is not None:
                query = query.where(requests.c.id < barrier)
            else:
                top = (await conn.execute(last)).scalar()
                barrier = (top or after) + 1
            query = query.order_by(requests.c.id).limit(limit + 1)
            rows = [FinishedRow._make(r) for r in (await conn.execute(query)).all()]
        if len(rows) > limit:
            return FinishedPage(rows[:limit], rows[limit - 1].id, True)
        return FinishedPage(rows, max(after, int(barrier) - 1), False)

    async def stored_lines(
        self, batch_seq: int, states: Sequence[int], page: int = 5000
    ) -> AsyncIterator[StoredLine]:
        last = 0
        while True:
            query = (
                select(
                    requests.c.line,
                    requests.c.custom_id,
                    requests.c.body,
                    requests.c.state,
                    requests.c.error,
                )
                .where(
                    requests.c.batch_seq == batch_seq,
                    requests.c.line > last,
                    requests.c.state.in_(list(states)),
                )
                .order_by(requests.c.line)
                .limit(page)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for r in rows:
                yield StoredLine(r[0], r[1], bytes(r[2]), r[3], r[4])
            if len(rows) < page:
                return
            last = rows[-1][0]

    async def finished_since(self, batch_seq: int, since: float) -> int:
        query = select(func.count()).where(
            requests.c.batch_seq == batch_seq,
            requests.c.state.in_([RequestState.DONE, RequestState.FAILED]),
            requests.c.finished_at >= since,
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def finished_curve(
        self, batch_seq: int, start: float, step: float, buckets: int
    ) -> list[int]:
        span = (requests.c.finished_at - start) / step
        # floor() on PostgreSQL; SQLite may lack it, and its CAST truncates, which is the
        # floor for the spans that matter (the negative ones all go to the first bucket).
        index = (
            func.floor(span) if self.engine.dialect.name == "postgresql" else cast(span, Integer)
        )
        query = (
            select(index, func.count())
            .where(
                requests.c.batch_seq == batch_seq,
                requests.c.state.in_([RequestState.DONE, RequestState.FAILED]),
                requests.c.finished_at.is_not(None),
            )
            .group_by(index)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return bucketed(rows, buckets)

    async def purge_finished(self, created_before: int) -> int:
        """Drop the rows of terminal batches created before `created_before` (unix s)."""
        old = select(batches.c.seq).where(
            batches.c.status.in_(list(TERMINAL)), batches.c.created_at < created_before
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(requests).where(requests.c.batch_seq.in_(old)))
            return int(result.rowcount or 0)

    async def failed_sample(self, batch_seq: int, limit: int = 20) -> list[dict[str, Any]]:
        query = (
            select(
                requests.c.line,
                requests.c.custom_id,
                requests.c.status_code,
                requests.c.response,
                requests.c.error,
            )
            .where(requests.c.batch_seq == batch_seq, requests.c.state == RequestState.FAILED)
            .order_by(requests.c.line)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(query)).all()]
