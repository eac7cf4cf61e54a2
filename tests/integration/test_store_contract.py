"""One contract for every store: memory, SQLite and PostgreSQL answer alike.

The engine's unit tests run on the memory store; this suite is what lets them stand
for the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from overnight.jsonl import Line
from overnight.models import Batch, BatchError, BatchStatus, File, RequestState, Usage, new_batch_id
from overnight.settings import normalize_database_url
from overnight.store import Store, open_store
from overnight.store.base import KEY_TTL, OutboxEvent, Outcome
from overnight.store.keys import hash_key
from tests.scaleout.infra import create_database, drop_database, postgres_available

T0 = 1_800_000_000


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    name = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/contract.db"
    else:
        # The helpers run their own event loop: off this one.
        if not await asyncio.to_thread(postgres_available):
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        name, raw = await asyncio.to_thread(create_database)
        url = normalize_database_url(raw)
    s = await open_store(url)
    try:
        yield s
    finally:
        await s.close()
        if name:
            await asyncio.to_thread(drop_database, name)


def batch(project: str = "p", status: str = BatchStatus.IN_PROGRESS, **kw: object) -> Batch:
    values: dict[str, object] = {
        "id": new_batch_id(),
        "project": project,
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "created_at": T0,
        "expires_at": T0 + 86400,
        **kw,
    }
    return Batch(**values)  # type: ignore[arg-type]


def lines(n: int, start: int = 1) -> list[Line]:
    return [Line(i, f"r{i}", "m", b'{"model":"m"}') for i in range(start, start + n)]


def ok(claimed_id: int, seq: int, tokens: int = 1) -> Outcome:
    return Outcome(claimed_id, seq, True, 200, b"{}", None, None, 1, Usage(tokens, 0, tokens, 0))


async def test_files_page_delete_and_expire(store: Store) -> None:
    for i in range(5):
        f = File(f"file-{i}", "p", "batch", f"{i}.jsonl", 10, T0 + i, expires_at=T0 + 100 + i)
        await store.files.add(f)
    await store.files.add(File("file-other", "q", "batch_output", "x", 1, T0))
    page, more = await store.files.page("p", purpose=None, limit=2, order="desc", after=None)
    assert [f.id for f in page] == ["file-4", "file-3"] and more
    page, more = await store.files.page("p", purpose=None, limit=9, order="asc", after="file-1")
    assert [f.id for f in page] == ["file-2", "file-3", "file-4"] and not more
    assert (await store.files.page("p", purpose="batch_output", limit=9, order="asc", after=None))[
        0
    ] == []
    await store.files.delete("file-2")
    assert await store.files.get("file-2") is None
    assert await store.files.get("file-other", "p") is None  # another project's
    # The deleted id still works as a cursor (a client deleting while it pages).
    page, _ = await store.files.page("p", purpose=None, limit=9, order="asc", after="file-2")
    assert [f.id for f in page] == ["file-3", "file-4"]
    assert [f.id for f in await store.files.expired(T0 + 102)] == ["file-0", "file-1"]
    await store.files.purge_tombstones(T0 + 10)
    assert (await store.files.page("p", purpose=None, limit=9, order="asc", after="file-2")) == (
        [],
        False,
    )


async def test_batches_transitions_are_compare_and_set(store: Store) -> None:
    b = batch(status=BatchStatus.VALIDATING, metadata={"k": "v"})
    b.seq = await store.batches.add(b)
    assert b.seq > 0
    got = await store.batches.get(b.id, "p")
    assert got is not None and got.metadata == {"k": "v"} and got.seq == b.seq
    assert await store.batches.get(b.id, "q") is None
    assert not await store.batches.transition(b.id, [BatchStatus.IN_PROGRESS], status="failed")
    errors = [BatchError("missing_required_parameter", "Missing 'x'.", "body.x", 3)]
    assert await store.batches.transition(
        b.id, [BatchStatus.VALIDATING], status=BatchStatus.FAILED, errors=errors, failed_at=T0
    )
    got = await store.batches.get(b.id)
    assert got is not None and got.status == "failed" and got.errors == errors
    assert [x.id for x in await store.batches.active()] == []
    await store.batches.set_values(b.id, stop_reason="cancel")
    got = await store.batches.get(b.id)
    assert got is not None and got.stop_reason == "cancel"


async def test_batches_page_newest_first_and_count_open(store: Store) -> None:
    ids = []
    for status in ("validating", "in_progress", "completed"):
        b = batch(status=status)
        await store.batches.add(b)
        ids.append(b.id)
    await store.batches.add(batch(project="q"))
    page, more = await store.batches.page("p", limit=2, after=None)
    assert [x.id for x in page] == [ids[2], ids[1]] and more
    page, more = await store.batches.page("p", limit=2, after=ids[1])
    assert [x.id for x in page] == [ids[0]] and not more
    assert await store.batches.count_open("p") == 2
    assert [x.id for x in await store.batches.active()][:2] == ids[:2]


async def test_batches_using_files_newest_first_within_the_project(store: Store) -> None:
    first = batch(input_file_id="file-a")
    second = batch(input_file_id="file-a", output_file_id="file-o", error_file_id="file-e")
    third = batch(input_file_id="file-b")
    for b in (first, second, third, batch(project="q", input_file_id="file-a")):
        await store.batches.add(b)
    found = await store.batches.using_files("p", ["file-a"])
    assert [b.id for b in found] == [second.id, first.id]
    found = await store.batches.using_files("p", ["file-e", "file-b", "file-none"])
    assert [b.id for b in found] == [third.id, second.id]
    assert [b.id for b in await store.batches.using_files("p", ["file-a"], limit=1)] == [second.id]
    assert await store.batches.using_files("p", []) == []
    assert await store.batches.using_files("q", ["file-o"]) == []


async def test_finish_closes_once_with_its_files(store: Store) -> None:
    b = batch(status=BatchStatus.FINALIZING)
    await store.batches.add(b)
    out = File("file-out", "p", "batch_output", f"{b.id}_output.jsonl", 5, T0, expires_at=T0 + 9)
    args = ([BatchStatus.FINALIZING], BatchStatus.COMPLETED, T0 + 5, (3, 2, 1))
    assert await store.batches.finish(b.id, *args, Usage(7, 1, 8, 2), [("output_file_id", out)])
    got = await store.batches.get(b.id)
    assert got is not None
    assert (got.status, got.completed_at, got.output_file_id, got.error_file_id) == (
        "completed",
        T0 + 5,
        "file-out",
        None,
    )
    assert (got.total, got.completed, got.failed) == (3, 2, 1)
    assert got.usage == Usage(7, 1, 8, 2)
    assert await store.files.get("file-out", "p") == out
    assert not await store.batches.finish(b.id, *args, Usage(), [])


async def test_batch_ownership_is_one_holder_until_it_expires(store: Store) -> None:
    b = batch()
    await store.batches.add(b)
    assert await store.batches.take_ownership(b.id, "a", T0, T0 + 10)
    assert await store.batches.take_ownership(b.id, "a", T0 + 1, T0 + 11)  # renewal
    assert not await store.batches.take_ownership(b.id, "b", T0 + 5, T0 + 15)
    assert await store.batches.take_ownership(b.id, "b", T0 + 12, T0 + 22)  # a's lapsed
    await store.batches.release_ownership(b.id, "a")  # not a's any more: no effect
    assert not await store.batches.take_ownership(b.id, "a", T0 + 13, T0 + 23)
    assert await store.batches.release_all_ownership() == 1
    assert await store.batches.take_ownership(b.id, "a", T0 + 13, T0 + 23)


async def test_the_ledger_leases_and_records_once(store: Store) -> None:
    b = batch()
    seq = await store.batches.add(b)
    await store.ledger.add_lines(seq, lines(5))
    await store.ledger.add_lines(seq, lines(3, start=4))  # 4 and 5 again: nothing doubled
    assert await store.ledger.last_line(seq) == 6
    first = await store.ledger.claim(seq, "w1", 2, T0 + 10)
    assert [c.line for c in first] == [1, 2]
    second = await store.ledger.claim(seq, "w2", 10, T0 + 10)
    assert [c.line for c in second] == [3, 4, 5, 6]
    assert await store.ledger.open_count(seq) == (0, 6)
    # Only the holder's results are stored: w2 recording w1's request leaves the row alone
    # (the batch's live counters may move; the finalizer recounts from the rows).
    await store.ledger.record("w2", [ok(first[0].id, seq)])
    assert (await store.ledger.counts(seq))[0].completed == 0
    await store.ledger.record("w1", [ok(first[0].id, seq, tokens=5)])
    failed = Outcome(first[1].id, seq, False, 400, b'{"e":1}', None, None, 1, Usage())
    await store.ledger.record("w1", [failed])
    counts, usage = await store.ledger.counts(seq)
    assert (counts.completed, counts.failed, usage.input_tokens) == (1, 1, 5)
    await store.ledger.release("w2", [second[0].id])
    assert await store.ledger.open_count(seq) == (1, 3)
    await store.ledger.renew("w2", T0 + 100)
    assert await store.ledger.reclaim_expired(T0 + 50) == 0
    assert await store.ledger.reclaim_expired(T0 + 150) == 3
    again = await store.ledger.claim(seq, "w3", 10, T0 + 200)
    assert [c.line for c in again] == [3, 4, 5, 6]
    assert await store.ledger.release_owned("w2") == 0  # w3 holds them now
    assert await store.ledger.release_owned("w3") == 4
    await store.ledger.claim(seq, "w3", 10, T0 + 200)
    assert await store.ledger.release_all() == 4
    counts, usage = await store.ledger.counts(seq)
    assert (counts.total, counts.completed, counts.failed, counts.open, counts.leased) == (
        6,
        1,
        1,
        4,
        0,
    )
    assert usage.input_tokens == 5
    await store.ledger.close_open(seq, '{"code":"batch_cancelled","message":"x"}')
    rows = [r async for r in store.ledger.results(seq, page=4)]
    assert [r.line for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r.state for r in rows] == [RequestState.DONE] + [RequestState.FAILED] * 5
    assert rows[2].error == '{"code":"batch_cancelled","message":"x"}'
    sample = await store.ledger.failed_sample(seq, limit=2)
    assert [s["line"] for s in sample] == [2, 3] and sample[0]["status_code"] == 400


async def test_finished_pages_never_pass_an_open_request(store: Store) -> None:
    seq = await store.batches.add(batch())
    await store.ledger.add_lines(seq, lines(6))
    claimed = await store.ledger.claim(seq, "w", 6, T0 + 10)
    ids = [c.id for c in claimed]
    before = time.time()
    # Lines 1, 2, 4 and 6 finish; 3 and 5 are still in flight.
    failed = Outcome(ids[1], seq, False, 400, b"{}", '{"code":"c","message":"m"}', None, 1, Usage())
    await store.ledger.record("w", [ok(ids[0], seq), failed, ok(ids[3], seq), ok(ids[5], seq)])
    page = await store.ledger.finished_page(seq, 0, 10)
    assert [r.line for r in page.rows] == [1, 2] and not page.more
    assert page.cursor == ids[1]
    assert page.rows[1].state == RequestState.FAILED and page.rows[1].error
    # Paging with a limit, and filters, keep the same barrier.
    first = await store.ledger.finished_page(seq, 0, 1)
    assert [r.line for r in first.rows] == [1] and first.more and first.cursor == ids[0]
    only_failed = await store.ledger.finished_page(seq, 0, 10, state=RequestState.FAILED)
    assert [r.line for r in only_failed.rows] == [2] and only_failed.cursor == ids[1]
    picked = await store.ledger.finished_page(seq, 0, 10, custom_ids=["r1", "r6"])
    assert [r.line for r in picked.rows] == [1]
    # Line 3 finishes: the stream moves up to line 5, still open.
    await store.ledger.record("w", [ok(ids[2], seq)])
    page = await store.ledger.finished_page(seq, page.cursor, 10)
    assert [r.line for r in page.rows] == [3, 4] and page.cursor == ids[3]
    await store.ledger.close_open(seq, '{"code":"batch_cancelled","message":"x"}')
    page = await store.ledger.finished_page(seq, page.cursor, 10)
    assert [r.line for r in page.rows] == [5, 6] and page.cursor == ids[5] and not page.more
    empty = await store.ledger.finished_page(seq, page.cursor, 10)
    assert empty.rows == [] and empty.cursor == ids[5]
    assert await store.ledger.finished_since(seq, before) == 6
    assert await store.ledger.finished_since(seq, time.time() + 60) == 0
    stored = [s async for s in store.ledger.stored_lines(seq, [RequestState.FAILED], page=1)]
    assert [(s.line, s.custom_id, s.body) for s in stored] == [
        (2, "r2", b'{"model":"m"}'),
        (5, "r5", b'{"model":"m"}'),
    ]


async def test_finished_curve_counts_by_finish_time(store: Store) -> None:
    b = batch()
    seq = await store.batches.add(b)
    await store.ledger.add_lines(seq, lines(6))
    claimed = await store.ledger.claim(seq, "w", 6, time.time() + 60)
    await store.ledger.record("w", [ok(c.id, seq) for c in claimed[:3]])
    between = time.time()  # after the first three finished, before the next two
    await store.ledger.record("w", [ok(c.id, seq) for c in claimed[3:5]])
    assert await store.ledger.finished_curve(seq, between - 1000, 1000, 3) == [3, 2, 0]
    assert await store.ledger.finished_curve(seq, between, 1000, 2) == [5, 0]  # earlier: first
    assert await store.ledger.finished_curve(seq, between - 5000, 1000, 2) == [0, 5]  # later: last
    other = await store.batches.add(batch())
    assert await store.ledger.finished_curve(other, between, 1, 4) == [0, 0, 0, 0]


async def test_the_outbox_leases_each_event_to_one_sender(store: Store) -> None:
    events = store.events
    first, second = OutboxEvent("evt_1", "p", b'{"a":1}'), OutboxEvent("evt_2", "p", b"{}", 0, 5.0)
    await events.add(first)
    await events.add(OutboxEvent("evt_1", "p", b"other"))  # the same id: not doubled
    await events.add(second)
    assert await events.counts() == (2, 0)
    assert await events.next_due() == 0.0
    [got] = await events.claim_due("a", now=1.0, lease_until=11.0, limit=10)
    assert (got.id, got.body) == ("evt_1", b'{"a":1}')
    assert await events.claim_due("b", now=2.0, lease_until=12.0, limit=10) == []  # a holds it
    # a died: once its lease ends b takes the event; a's late answer changes nothing.
    assert [e.id for e in await events.claim_due("b", 12.0, 22.0, 10)] == ["evt_1", "evt_2"]
    await events.delivered("evt_1", "a")
    assert await events.counts() == (2, 0)
    await events.delivered("evt_1", "b")
    await events.retry_at("evt_2", "b", 1, 30.0, "HTTP 500")
    assert await events.counts() == (1, 0) and await events.next_due() == 30.0
    assert await events.claim_due("c", 29.0, 40.0, 10) == []
    [again] = await events.claim_due("c", 30.0, 40.0, 10)
    assert (again.attempts, again.last_error) == (1, "HTTP 500")
    assert await events.release_all() == 1
    [again] = await events.claim_due("d", 31.0, 41.0, 10)
    await events.give_up("evt_2", "d", 2, "HTTP 500")
    assert await events.counts() == (0, 1) and await events.next_due() is None
    assert await events.claim_due("e", 99.0, 109.0, 10) == []


async def test_a_batch_and_its_event_commit_together(store: Store) -> None:
    b = batch()
    await store.batches.add(b)
    event = OutboxEvent("evt_done", "p", b"{}")
    closed = await store.batches.finish(
        b.id, [BatchStatus.IN_PROGRESS], "completed", T0, (0, 0, 0), Usage(), [], event
    )
    assert closed and await store.events.counts() == (1, 0)
    late = OutboxEvent("evt_late", "p", b"{}")
    assert not await store.batches.transition(
        b.id, [BatchStatus.IN_PROGRESS], event=late, status="failed"
    )
    assert [e.id for e in await store.events.claim_due("w", 1.0, 2.0, 10)] == ["evt_done"]


async def test_counters_stop_moving_once_a_batch_is_closed(store: Store) -> None:
    b = batch()
    seq = await store.batches.add(b)
    await store.ledger.add_lines(seq, lines(2))
    claimed = await store.ledger.claim(seq, "w", 2, T0 + 10)
    await store.batches.transition(b.id, [BatchStatus.IN_PROGRESS], status="cancelled")
    await store.ledger.record("w", [ok(c.id, seq) for c in claimed])
    got = await store.batches.get(b.id)
    assert got is not None and got.completed == 0  # the finalizer's recount is the truth
    assert (await store.ledger.counts(seq))[0].completed == 2


async def test_finished_batches_rows_are_purged(store: Store) -> None:
    old, live = batch(status="completed"), batch()
    old_seq, live_seq = await store.batches.add(old), await store.batches.add(live)
    await store.ledger.add_lines(old_seq, lines(3))
    await store.ledger.add_lines(live_seq, lines(2))
    assert await store.ledger.purge_finished(T0 + 1) == 3
    assert (await store.ledger.counts(live_seq))[0].total == 2
    await store.ledger.clear(live_seq)
    assert await store.ledger.last_line(live_seq) == 0


async def test_keys_hash_and_revoke(store: Store) -> None:
    assert not await store.keys.any_configured()
    record, key = await store.keys.create("team", "ci")
    assert await store.keys.project_for_hash(hash_key(key)) == "team"
    assert [k.id for k in await store.keys.list("team")] == [record.id]
    assert await store.keys.list("other") == []
    revoked = await store.keys.revoke(record.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await store.keys.project_for_hash(hash_key(key)) is None
    assert await store.keys.any_configured()  # auth stays on once set up
    assert await store.keys.revoke("key_missing") is None


async def test_idempotency_keys_hold_the_first_answer_for_a_day(store: Store) -> None:
    repo = store.idempotency
    assert await repo.reserve("p", "k", "fp", T0) is None
    running = await repo.reserve("p", "k", "fp", T0 + 1)
    assert running is not None and running.status_code is None
    assert await repo.reserve("q", "k", "fp", T0) is None  # scoped per project
    await repo.complete("p", "k", 200, '{"id":"x"}')
    done = await repo.reserve("p", "k", "other", T0 + 2)
    assert done is not None and (done.status_code, done.response) == (200, '{"id":"x"}')
    await repo.forget("p", "k")  # a completed key is not forgotten
    assert await repo.reserve("p", "k", "fp", T0 + 3) is not None
    assert await repo.reserve("p", "k", "fp", T0 + KEY_TTL + 1) is None  # past its day
    await repo.forget("p", "k")
    assert await repo.reserve("p", "k", "fp", T0 + KEY_TTL + 2) is None
    assert await repo.purge(T0 + 3 * KEY_TTL) == 2


async def test_stats_count_batches_backlog_and_tokens(store: Store) -> None:
    b = batch()
    seq = await store.batches.add(b)
    await store.batches.add(batch(status="completed"))
    await store.ledger.add_lines(seq, lines(3))
    claimed = await store.ledger.claim(seq, "w", 1, T0 + 10)
    await store.ledger.record("w", [ok(claimed[0].id, seq, tokens=4)])
    await store.ledger.claim(seq, "w", 1, T0 + 10)
    stats = await store.stats()
    assert stats.batches_by_status["in_progress"] == 1
    assert stats.batches_by_status["completed"] == 1
    assert stats.batches_by_status["failed"] == 0
    assert (stats.pending, stats.leased) == (1, 1)
    assert (stats.input_tokens, stats.output_tokens) == (4, 4)
    assert await store.problem() is None
