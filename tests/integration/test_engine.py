"""The engine against a real stub upstream: retries, adaptive concurrency, fairness, stops."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from tests.support.upstream_stub import StubConfig, StubServer

from .engine_harness import chat_lines, result_lines, running_engine, submit, terminal, wait_for


def route(url: str, **extra: object) -> str:
    lines = [f'[models.m]\nurl = "{url}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("stub", "code", "sent"),
    [
        # A complete 200 is a billed generation: never sent again, however unusable.
        (StubConfig(garbage_rate=1.0), "invalid_upstream_response", 5),
        (StubConfig(reset_rate=1.0), "upstream_unreachable", 15),  # 3 attempts each
    ],
)
async def test_requests_that_never_get_an_answer_fail_with_a_code(
    tmp_path: Path, stub: StubConfig, code: str, sent: int
) -> None:
    async with (
        StubServer(stub) as up,
        running_engine(tmp_path, route(up.url), max_attempts=3) as (svc, _),
    ):
        batch_id = await submit(svc, chat_lines(5))
        b = await wait_for(svc, batch_id, terminal)
        assert b.status == "completed"
        assert (b.request_counts if hasattr(b, "request_counts") else None) is None
        assert (b.completed, b.failed, b.total) == (0, 5, 5)
        errors = await result_lines(svc, b.error_file_id)
        assert {e["error"]["code"] for e in errors} == {code}
        assert all(e["response"] is None for e in errors)
        assert up.stats()["received"] == sent


async def test_a_hanging_upstream_times_out_and_is_retried(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(hang_rate=1.0)) as up,
        running_engine(tmp_path, route(up.url, timeout=0.3), max_attempts=2) as (svc, _),
    ):
        b = await wait_for(svc, await submit(svc, chat_lines(3)), terminal)
        errors = await result_lines(svc, b.error_file_id)
        assert {e["error"]["code"] for e in errors} == {"request_timeout"}
        assert up.stats()["received"] == 6


async def test_5xx_is_retried_then_reported_with_the_upstream_answer(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(status_override=502)) as up,
        running_engine(tmp_path, route(up.url), max_attempts=3) as (svc, _),
    ):
        b = await wait_for(svc, await submit(svc, chat_lines(4)), terminal)
        errors = await result_lines(svc, b.error_file_id)
        assert [e["response"]["status_code"] for e in errors] == [502] * 4
        assert all("error" in e["response"]["body"] for e in errors)
        assert {e["error"]["code"] for e in errors} == {"server_error"}
        assert up.stats()["received"] == 12


async def test_transient_failures_then_success(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(fail_first_n=2)) as up,
        running_engine(tmp_path, route(up.url)) as (svc, _),
    ):
        b = await wait_for(svc, await submit(svc, chat_lines(20)), terminal)
        assert (b.completed, b.failed) == (20, 0)
        assert up.stats()["received"] == 60
        assert len(await result_lines(svc, b.output_file_id)) == 20


async def test_aimd_backs_off_when_the_upstream_is_saturated(tmp_path: Path) -> None:
    # The upstream refuses (429) whatever is beyond 6 requests at once; overnight is not told.
    async with (
        StubServer(StubConfig(max_concurrency=6, latency=0.02)) as up,
        running_engine(
            tmp_path, route(up.url, max_concurrency=64), max_attempts=20, retry_base_delay=0.5
        ) as (
            svc,
            sched,
        ),
    ):
        b = await wait_for(svc, await submit(svc, chat_lines(600)), terminal)
        assert (b.completed, b.failed) == (600, 0)
        lane = sched.runner.lanes["m"]
        assert lane.limiter.overloads > 0
        assert lane.limiter.current < 20  # settled near the upstream's real capacity
        refused = up.stats()["by_status"].get("429", 0)
        assert refused < 600 * 0.25, refused  # few wasted requests


async def test_a_small_batch_does_not_wait_behind_a_big_one(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(latency=0.01)) as up,
        running_engine(tmp_path, route(up.url, max_concurrency=4)) as (svc, _),
    ):
        big = await submit(svc, chat_lines(1200, tag="big"))
        await wait_for(svc, big, lambda b: b.completed >= 40)
        small = await submit(svc, chat_lines(60, tag="small"))
        done = await wait_for(svc, small, terminal)
        assert done.status == "completed"
        big_now = await svc.store.batches.get(big)
        assert big_now is not None and big_now.status == "in_progress"
        assert big_now.completed < 1200 - 200, "the small batch only ran once the big one ended"


async def test_cancel_keeps_results_of_requests_in_flight(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(latency=0.5)) as up,
        running_engine(tmp_path, route(up.url, max_concurrency=5), cancel_grace_seconds=10) as (
            svc,
            sched,
        ),
    ):
        batch_id = await submit(svc, chat_lines(40))
        await wait_for(svc, batch_id, lambda b: b.status == "in_progress")
        await wait_for(svc, batch_id, lambda b: up.stats()["received"] >= 5)
        assert await svc.store.batches.transition(
            batch_id, ["in_progress"], status="cancelling", cancelling_at=int(time.time())
        )
        sched.wake()
        b = await wait_for(svc, batch_id, terminal)
        assert b.status == "cancelled"
        out = await result_lines(svc, b.output_file_id)
        err = await result_lines(svc, b.error_file_id)
        assert len(out) == up.stats()["received"]  # every answer received was kept
        assert {e["error"]["code"] for e in err} == {"batch_cancelled"}
        assert len(out) + len(err) == 40
        assert (b.completed, b.failed) == (len(out), len(err))


async def test_expiry_while_requests_are_in_flight(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig(latency=0.4)) as up,
        running_engine(tmp_path, route(up.url, max_concurrency=4), completion_window_seconds=2) as (
            svc,
            _,
        ),
    ):
        b = await wait_for(svc, await submit(svc, chat_lines(60)), terminal, timeout=30)
        assert b.status == "expired" and b.expired_at is not None
        out = await result_lines(svc, b.output_file_id)
        err = await result_lines(svc, b.error_file_id)
        assert out, "results finished before the window closed are kept"
        assert {e["error"]["code"] for e in err} == {"batch_expired"}
        ids = [x["custom_id"] for x in out + err]
        assert sorted(ids) == sorted({f"q{i}" for i in range(60)})
        assert len(out) == up.stats()["received"] or len(out) <= up.stats()["received"]


async def test_requests_sharing_a_prefix_are_sent_together(tmp_path: Path) -> None:
    import orjson

    systems = [f"You are assistant {k}. " + "Context. " * 50 for k in range(3)]
    data = b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "m",
                    "messages": [
                        {"role": "system", "content": systems[i % 3]},
                        {"role": "user", "content": f"question {i}"},
                    ],
                },
            }
        )
        + b"\n"
        for i in range(300)
    )
    async with (
        StubServer(StubConfig()) as up,
        running_engine(tmp_path, route(up.url, max_concurrency=1)) as (svc, _),
    ):
        b = await wait_for(svc, await submit(svc, data), terminal)
        assert b.completed == 300
        order = [r["body"]["messages"][0]["content"] for r in up.received(300)]
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches == 2  # interleaved in the file, three runs on the wire


async def test_retention_purges_old_ledger_rows_and_tombstones(tmp_path: Path) -> None:
    async with (
        StubServer(StubConfig()) as up,
        running_engine(tmp_path, route(up.url)) as (
            svc,
            _,
        ),
    ):
        old = await wait_for(svc, await submit(svc, chat_lines(5, tag="old")), terminal)
        new = await wait_for(svc, await submit(svc, chat_lines(5, tag="new")), terminal)
        await svc.store.batches.set_values(old.id, created_at=1000)
        old_seq = (await svc.store.batches.get(old.id)).seq
        new_seq = (await svc.store.batches.get(new.id)).seq
        assert await svc.store.ledger.purge_finished(created_before=2000) == 5
        assert (await svc.store.ledger.counts(old_seq))[0].total == 0
        assert (await svc.store.ledger.counts(new_seq))[0].total == 5
        # The output files outlive the ledger rows.
        assert len(await result_lines(svc, old.output_file_id)) == 5
