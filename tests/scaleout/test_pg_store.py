"""The store on PostgreSQL: migrations, and claims that several processes can share."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select

from overnight.jsonl import Line
from overnight.models import Batch, BatchStatus, RequestState, Usage, new_batch_id, now
from overnight.settings import normalize_database_url
from overnight.store import Store, open_store
from overnight.store.base import Outcome
from overnight.store.database import create_engine, create_schema, current_revision, head_revision
from overnight.store.schema import api_keys, files, metadata, requests

pytestmark = pytest.mark.postgres


def _diff(conn: Any) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


async def _add_batch(store: Store, n: int) -> int:
    t = now()
    b = Batch(
        id=new_batch_id(),
        project="p",
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        completion_window="24h",
        status=BatchStatus.IN_PROGRESS,
        created_at=t,
        expires_at=t + 86400,
        model="m",
        total=n,
    )
    seq = await store.batches.add(b)
    lines = [Line(i + 1, f"r{i}", "m", b'{"model":"m"}') for i in range(n)]
    await store.ledger.add_lines(seq, lines)
    return seq


async def test_concurrent_starts_migrate_once(pg_url: str) -> None:
    url = normalize_database_url(pg_url)
    engines = [create_engine(url) for _ in range(4)]
    try:
        await asyncio.gather(*(create_schema(e) for e in engines))
        async with engines[0].connect() as conn:
            assert await conn.run_sync(current_revision) == head_revision()
            assert await conn.run_sync(_diff) == []  # the migrations build exactly schema.py
    finally:
        for e in engines:
            await e.dispose()


async def test_sqlite_migrations_match_schema_and_adopt_old_data_dirs(tmp_path: Path) -> None:
    fresh = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    await create_schema(fresh)
    async with fresh.connect() as conn:
        assert await conn.run_sync(_diff) == []
    await fresh.dispose()

    # A data dir from before migrations: made by create_all, without api_keys.
    old = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    async with old.begin() as conn:
        old_tables = {"files", "batches", "requests"}  # 0001's, without api_keys
        tables = [t for t in metadata.sorted_tables if t.name in old_tables]
        await conn.run_sync(lambda c: metadata.create_all(c, tables=tables))
        await conn.exec_driver_sql("DROP INDEX ix_requests_leased")
        await conn.execute(
            insert(files).values(
                id="file-1",
                project="p",
                purpose="batch",
                filename="a.jsonl",
                bytes=1,
                created_at=1,
                status="processed",
                blob_key="files/file-1",
            )
        )
    await create_schema(old)
    async with old.connect() as conn:
        assert await conn.run_sync(current_revision) == head_revision()
        assert await conn.run_sync(_diff) == []
        assert (await conn.execute(select(files.c.id))).scalars().all() == ["file-1"]
        assert await conn.run_sync(lambda c: inspect(c).has_table(api_keys.name))
    await old.dispose()


async def test_two_processes_claiming_never_share_a_request(pg_url: str) -> None:
    url = normalize_database_url(pg_url)
    a, b = await open_store(url), await open_store(url)
    try:
        n = 3000
        seq = await _add_batch(a, n)
        claimed: dict[str, list[int]] = {}

        async def claimer(store: Store, owner: str) -> None:
            got = claimed.setdefault(owner, [])
            while True:
                rows = await store.ledger.claim(seq, owner, 7, time.time() + 60)
                if not rows:
                    return
                got.extend(r.id for r in rows)

        await asyncio.gather(
            *(
                claimer(store, f"{name}{i}")
                for name, store in (("a", a), ("b", b))
                for i in range(3)
            )
        )
        every = [i for ids in claimed.values() for i in ids]
        assert len(every) == n and len(set(every)) == n  # each request claimed exactly once
        assert all(claimed.values())  # every claimer got a share
        async with a.engine.connect() as conn:
            owners = dict((await conn.execute(select(requests.c.id, requests.c.lease_owner))).all())
        for owner, ids in claimed.items():
            assert {owners[i] for i in ids} == {owner}
    finally:
        await a.close()
        await b.close()


async def test_expired_lease_is_taken_over_and_a_late_result_is_dropped(pg_url: str) -> None:
    url = normalize_database_url(pg_url)
    a, b = await open_store(url), await open_store(url)
    try:
        seq = await _add_batch(a, 10)
        dead = await a.ledger.claim(seq, "dead", 10, time.time() - 1)  # already expired
        assert len(dead) == 10
        assert await b.ledger.reclaim_expired(time.time()) == 10
        taken = await b.ledger.claim(seq, "alive", 10, time.time() + 60)
        assert sorted(r.id for r in taken) == sorted(r.id for r in dead)

        def outcome(req_id: int) -> Outcome:
            return Outcome(req_id, seq, True, 200, b"{}", None, "rid", 1, Usage(1, 0, 1, 0))

        await a.ledger.record("dead", [outcome(dead[0].id)])  # the old holder answers late
        _counts, _usage = await a.ledger.counts(seq)
        pending, leased = await a.ledger.open_count(seq)
        assert (pending, leased) == (0, 10)  # ignored: the row is still the new holder's
        await b.ledger.record("alive", [outcome(r.id) for r in taken])
        counts, usage = await b.ledger.counts(seq)
        assert (counts.completed, counts.open) == (10, 0)
        assert usage.input_tokens == 10
        async with a.engine.connect() as conn:
            states = (await conn.execute(select(requests.c.state))).scalars().all()
        assert set(states) == {RequestState.DONE}
    finally:
        await a.close()
        await b.close()


async def test_idempotency_keys_expire_and_stale_reservations_free_up(tmp_path: Path) -> None:
    from overnight.store.base import KEY_TTL, STALE_RESERVATION

    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        repo, t = store.idempotency, 1_000_000
        assert await repo.reserve("p", "k", "fp1", t) is None
        held = await repo.reserve("p", "k", "fp1", t + 1)
        assert held is not None and held.status_code is None  # still running
        # The process that reserved it died: after a while the key is free again.
        assert await repo.reserve("p", "k", "fp2", t + STALE_RESERVATION + 1) is None
        await repo.complete("p", "k", 200, '{"id": "x"}')
        kept = await repo.reserve("p", "k", "fp2", t + KEY_TTL)
        assert kept is not None and kept.response == '{"id": "x"}'
        assert await repo.reserve("other", "k", "fp2", t) is None  # per project
        # "p"'s key is past its day; "other"'s reservation never completed.
        assert await repo.purge(t + STALE_RESERVATION + KEY_TTL + 2) == 2
        assert await repo.reserve("p", "k", "fp3", t + STALE_RESERVATION + KEY_TTL + 2) is None
    finally:
        await store.close()
