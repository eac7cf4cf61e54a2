"""One contract for fleet-wide limits (`Store.fleet`): memory, SQLite and PostgreSQL alike.

Three store objects on one database stand for three worker processes; on PostgreSQL
they are three engines with their own connections, so a missing row lock shows up as
more tokens or slots granted than the limit allows. Times are a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from overnight.models import BatchStatus
from overnight.settings import normalize_database_url
from overnight.store import Store, open_store
from overnight.store.database import (
    alembic_config,
    create_engine,
    current_revision,
    head_revision,
)
from overnight.store.fleet_rules import fair_shares
from overnight.store.schema import metadata
from tests.integration.test_store_contract import T0, batch
from tests.scaleout.infra import create_database, drop_database, postgres_available

LIMIT = 10


async def _database_url(kind: str, tmp_path: Path, name: str) -> tuple[str, str | None]:
    """(url, the PostgreSQL database to drop afterwards)."""
    if kind == "memory":
        return "memory://", None
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/{name}.db", None
    # The helpers run their own event loop: off this one.
    if not await asyncio.to_thread(postgres_available):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    db, raw = await asyncio.to_thread(create_database)
    return normalize_database_url(raw), db


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[list[Store]]:
    """Three stores on one database, as three workers would open it."""
    url, db = await _database_url(request.param, tmp_path, "fleet")
    opened: list[Store] = []
    try:
        if url == "memory://":
            opened = [await open_store(url)]
            yield opened * 3  # one process: the workers share the one memory store
        else:
            for _ in range(3):
                opened.append(await open_store(url))
            yield opened
    finally:
        for s in opened:
            await s.close()
        if db:
            await asyncio.to_thread(drop_database, db)


async def test_a_bucket_starts_full_refills_and_caps(stores: list[Store]) -> None:
    fleet = stores[0].fleet
    assert await fleet.take("rpm", 1, 1.0, 5, T0) == 1  # created full: 5, now 4
    assert await fleet.take("rpm", 10, 1.0, 5, T0) == 4  # what is left, not what was asked
    assert await fleet.take("rpm", 1, 1.0, 5, T0) == 0
    assert await fleet.take("rpm", 1, 1.0, 5, T0 + 0.5) == 0  # half a token is empty
    assert await fleet.take("rpm", 10, 1.0, 5, T0 + 2.5) == 2  # whole tokens: 2 of 2.5
    assert await fleet.take("rpm", 100, 1.0, 5, T0 + 1000) == 5  # refill stops at burst
    # A fractional want (a tpm remainder) is met fractionally; the bucket then holds 1.0.
    assert await fleet.take("rpm", 0.5, 1.0, 5, T0 + 1001.5) == 0.5
    assert await fleet.take("rpm", 3, 1.0, 5, T0 + 1001.5) == 1
    # A clock behind the last taker's refills nothing.
    assert await fleet.take("rpm", 1, 1.0, 5, T0 + 990) == 0
    # Another worker sees the same bucket; another name is another bucket.
    assert await stores[1].fleet.take("rpm", 5, 1.0, 5, T0 + 1003.5) == 2
    assert await stores[2].fleet.take("tpm", 3000, 50.0, 2000, T0) == 2000


async def test_the_callers_rate_and_burst_win(stores: list[Store]) -> None:
    fleet = stores[0].fleet
    assert await fleet.take("b", 100, 1.0, 100, T0) == 100
    # The limit was raised: 10/s from now on, burst 50.
    assert await fleet.take("b", 100, 10.0, 50, T0 + 3) == 30
    # Lowered: a burst of 2 caps what a long idle time refilled.
    assert await fleet.take("b", 100, 10.0, 2, T0 + 1000) == 2
    # tpm in fractions of a token per second: 600 per minute is 10/s.
    assert await fleet.take("t", 700, 600 / 60, 600, T0) == 600
    got = await fleet.take("t", 700, 600 / 60, 600, T0 + 1.55)
    assert got == 15  # 15.5 refilled, whole tokens granted


async def test_concurrent_takers_never_share_a_token(stores: list[Store]) -> None:
    async def takes(n: int, now: float) -> float:
        calls = [stores[i % 3].fleet.take("shared", 1, 10.0, 10, now) for i in range(n)]
        return sum(await asyncio.gather(*calls))

    assert await takes(50, T0) == 10  # the burst, exactly, however the 50 interleave
    assert await takes(50, T0 + 1) == 10  # one second at 10/s
    assert await takes(50, T0 + 1) == 0
    # Out of order clocks: never more than what the elapsed time refilled.
    calls = [stores[i % 3].fleet.take("shared", 1, 10.0, 10, T0 + 1 + i * 0.02) for i in range(50)]
    total = sum(await asyncio.gather(*calls))
    assert 0 < total <= 10.0 * 49 * 0.02


async def test_reservations_put_every_worker_on_one_schedule(stores: list[Store]) -> None:
    # The level before each reservation: token i of it exists at now + (i - level) / rate.
    assert await stores[0].fleet.reserve("pace", 5, 10.0, 1.0, T0) == 1.0  # created full
    assert await stores[1].fleet.reserve("pace", 5, 10.0, 1.0, T0) == -4.0  # after those
    # The refill pays the debt off and stops at the burst.
    assert await stores[2].fleet.reserve("pace", 1, 10.0, 1.0, T0 + 0.5) == -9.0 + 0.5 * 10
    assert await stores[0].fleet.reserve("pace", 1, 10.0, 1.0, T0 + 100) == 1.0
    # Concurrent reservations never get the same place on the schedule.
    calls = [stores[i % 3].fleet.reserve("many", 2, 10.0, 1.0, T0) for i in range(30)]
    levels = sorted(await asyncio.gather(*calls), reverse=True)
    assert levels == [1.0 - 2 * i for i in range(30)]


async def test_a_hold_keeps_the_whole_schedule_back_and_never_forward(stores: list[Store]) -> None:
    a, b = stores[0].fleet, stores[1].fleet
    # Full until T0 + 2: the first token of the schedule comes then (level 1 - 2 * 10).
    assert await a.reserve("pace", 5, 10.0, 1.0, T0, not_before=T0 + 2) == -19.0
    assert await b.reserve("pace", 1, 10.0, 1.0, T0) == -24.0  # after the held five
    # A hold that ends sooner than the debt moves nothing.
    assert await a.reserve("pace", 1, 10.0, 1.0, T0, not_before=T0 + 0.1) == -25.0
    assert await b.reserve("pace", 1, 10.0, 1.0, T0 + 100, not_before=T0 + 50) == 1.0


async def test_slots_share_fairly_and_never_exceed_the_limit(stores: list[Store]) -> None:
    held: dict[str, int] = {}

    async def lease(owner: str, want: int, now: float = T0, until: float = T0 + 100) -> int:
        store = stores["abc".index(owner)]
        held[owner] = await store.fleet.lease_slots("r", owner, want, LIMIT, now, until)
        assert sum(held.values()) <= LIMIT, held
        return held[owner]

    assert await lease("a", 10) == 10  # alone: everything
    assert await lease("b", 10) == 0  # a holds them all until its next call
    assert await lease("a", 10) == 5  # cut to its fair share
    assert await lease("b", 10) == 5
    assert await lease("c", 10) == 0
    # Three want 10 of 10: 3 each, and the odd slot to the first name, "a".
    assert [await lease(o, 10) for o in "abc"] == [4, 3, 3]
    assert [await lease(o, 10) for o in "abc"] == [4, 3, 3]  # settled
    # c wants one only: what it leaves goes to the others.
    assert await lease("c", 1) == 1
    assert [await lease(o, 10) for o in "ab"] == [5, 4]
    assert [await lease(o, 10) for o in "ab"] == [5, 4]
    assert await lease("a", 2) == 2  # asking for fewer is granted at once
    assert await lease("b", 10) == 7
    assert await lease("a", 0) == 0
    assert await lease("b", 10) == 9


async def test_a_dead_owners_slots_free_up_and_release_gives_back(stores: list[Store]) -> None:
    a, b, c = (s.fleet for s in stores)
    assert await a.lease_slots("r", "a", 10, LIMIT, T0, T0 + 100) == 10
    assert await c.lease_slots("r", "c", 10, LIMIT, T0, T0 + 5) == 0
    assert await a.lease_slots("r", "a", 10, LIMIT, T0 + 1, T0 + 100) == 5
    assert await c.lease_slots("r", "c", 10, LIMIT, T0 + 2, T0 + 5) == 5
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 3, T0 + 100) == 0
    # c stops renewing; after its lease ends its 5 slots count for nothing.
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 5, T0 + 100) == 0  # not yet past
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 6, T0 + 100) == 5
    # Another route is another pool.
    assert await c.lease_slots("other", "c", 3, LIMIT, T0 + 6, T0 + 100) == 3
    # a stops gracefully: every slot of a's, on every route, is free at once.
    await a.release_slots("a")
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 7, T0 + 100) == 10
    assert await a.lease_slots("r", "a", 10, LIMIT, T0 + 7, T0 + 100) == 0
    await c.release_slots("c")
    assert await c.lease_slots("other", "c2", 10, LIMIT, T0 + 7, T0 + 100) == 10
    # A lowered limit cuts a holder down to its share at its next call.
    assert await b.lease_slots("r", "b", 10, 4, T0 + 8, T0 + 100) == 2  # shares 2/2 with a
    assert await a.lease_slots("r", "a", 10, 4, T0 + 8, T0 + 100) == 2


async def test_slots_still_busy_are_not_granted_to_others(stores: list[Store]) -> None:
    a, b, _ = (s.fleet for s in stores)
    assert await a.lease_slots("r", "a", 10, LIMIT, T0, T0 + 100, in_use=0) == 10
    assert await b.lease_slots("r", "b", 10, LIMIT, T0, T0 + 100) == 0
    # a is cut to its share, but its 10 requests are still in flight: they stay held.
    assert await a.lease_slots("r", "a", 10, LIMIT, T0 + 1, T0 + 100, in_use=10) == 5
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 1, T0 + 100) == 0
    # Seven of them answered: b gets what that frees, and its share once a is down to it.
    assert await a.lease_slots("r", "a", 10, LIMIT, T0 + 2, T0 + 100, in_use=3) == 5
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 2, T0 + 100) == 5


async def test_owners_joining_at_once_never_exceed_the_limit(stores: list[Store]) -> None:
    """Six workers ask at the same moment: without the route's lock each would count the
    same free slots (a holding 2 leaves 8, which each of them would take)."""
    assert await stores[0].fleet.lease_slots("r", "a", 2, LIMIT, T0, T0 + 100) == 2
    joiners = [f"j{i}" for i in range(6)]
    wants = {"a": 2, **dict.fromkeys(joiners, 10)}
    held: dict[str, int] = {}
    for round_ in range(4):
        got = await asyncio.gather(
            *(
                stores[i % 3].fleet.lease_slots("r", o, w, LIMIT, T0 + round_, T0 + 100)
                for i, (o, w) in enumerate(wants.items())
            )
        )
        held = dict(zip(wants, got, strict=True))
        assert sum(held.values()) <= LIMIT, (round_, held)
    # Settled on the max-min fair shares: a's 2, the odd slots to the first names.
    assert held == fair_shares(LIMIT, wants)
    assert held == {"a": 2, "j0": 2, "j1": 2, "j2": 1, "j3": 1, "j4": 1, "j5": 1}


async def test_a_learnt_rate_is_shared_and_ages_out(stores: list[Store]) -> None:
    a, b = stores[0].fleet, stores[1].fleet
    assert await a.learnt("r", T0) is None
    await a.set_learnt("r", 5.5, T0)
    assert await b.learnt("r", T0 + 10) == 5.5
    assert await b.learnt("r", T0 + 600) == 5.5
    assert await b.learnt("r", T0 + 601) is None  # older than 10 minutes
    assert await b.learnt("r", T0 + 601, max_age=1000) == 5.5
    await b.set_learnt("r", 2.25, T0 + 700)  # last writer wins
    assert await a.learnt("r", T0 + 700) == 2.25
    assert await a.learnt("other", T0 + 700) is None


async def test_presence_counts_the_live_workers_of_a_route(stores: list[Store]) -> None:
    a, b, c = (s.fleet for s in stores)
    assert await a.present("r", "a", T0, T0 + 10) == 1
    assert await b.present("r", "b", T0 + 1, T0 + 11) == 2
    assert await c.present("r", "c", T0 + 2, T0 + 5) == 3
    assert await c.present("other", "c", T0 + 2, T0 + 5) == 1  # routes apart
    # Slots of the same route are not presence, nor the other way round.
    assert await a.lease_slots("r", "a", 4, LIMIT, T0 + 2, T0 + 10) == 4
    assert await a.present("r", "a", T0 + 3, T0 + 13) == 3
    # c stops renewing (killed): it counts no more once its time is past.
    assert await b.present("r", "b", T0 + 6, T0 + 16) == 2
    # a has no work left: gone at once, and says so without counting itself.
    assert await a.present("r", "a", T0 + 7, None) == 1
    assert await b.lease_slots("r", "b", 10, LIMIT, T0 + 7, T0 + 17) == 6  # a's 4 held
    await b.release_slots("b")  # a graceful stop takes its presence too
    assert await a.present("r", "a", T0 + 8, T0 + 18) == 1


async def test_a_batch_keeps_its_priority(stores: list[Store]) -> None:
    store = stores[0]
    urgent, plain = batch(priority=5), batch(status=BatchStatus.VALIDATING)
    await store.batches.add(urgent)
    await store.batches.add(plain)
    got = await stores[1].batches.get(urgent.id)
    assert got is not None and got.priority == 5
    assert {b.id: b.priority for b in await store.batches.active()} == {
        urgent.id: 5,
        plain.id: 0,
    }
    page, _ = await store.batches.page("p", limit=10, after=None)
    assert [(b.id, b.priority) for b in page] == [(plain.id, 0), (urgent.id, 5)]
    await store.batches.set_values(plain.id, priority=-3)
    got = await store.batches.get(plain.id)
    assert got is not None and got.priority == -3
    assert "priority" not in urgent.to_api()  # overnight's own, not the vendors' shape


def _upgrade_to(revision: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        command.upgrade(alembic_config(conn), revision)

    return run


def _diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), metadata))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_database_at_0003_upgrades_with_its_batches(kind: str, tmp_path: Path) -> None:
    url, db = await _database_url(kind, tmp_path, "old")
    try:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to("0003"))
            await conn.execute(
                text(
                    "INSERT INTO batches (id, project, status, endpoint, input_file_id,"
                    " completion_window, created_at, expires_at, total, completed, failed,"
                    " input_tokens, cached_tokens, output_tokens, reasoning_tokens) VALUES"
                    " ('batch_old', 'p', 'in_progress', '/v1/chat/completions', 'file-in',"
                    " '24h', 1, 2, 0, 0, 0, 0, 0, 0, 0)"
                )
            )
        await engine.dispose()
        store = await open_store(url)  # migrates on open, as every start does
        try:
            old = await store.batches.get("batch_old")
            assert old is not None and old.priority == 0
            assert await store.fleet.take("rpm", 1, 1.0, 3, T0) == 1
            assert await store.fleet.lease_slots("r", "w", 2, 4, T0, T0 + 10) == 2
        finally:
            await store.close()
        engine = create_engine(url)
        async with engine.connect() as conn:
            assert await conn.run_sync(current_revision) == head_revision()
            assert await conn.run_sync(_diff) == []  # the migrations build schema.py
        await engine.dispose()
    finally:
        if db:
            await asyncio.to_thread(drop_database, db)
