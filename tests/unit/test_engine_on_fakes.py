"""The engine on its fakes: a memory store, memory blobs and a mock backend, in burst mode.

No socket, no file, no database: what is left is scheduling, retries, cancel, expiry,
fairness and crash-resume, each run to its end by `Scheduler.run_until_idle()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from overnight import settings as settings_mod
from overnight.backends.base import Response, TransientError
from overnight.backends.mock import MockBackend
from overnight.backends.router import Router
from overnight.blobs.memory import MemoryBlobStore
from overnight.engine.scheduler import Scheduler
from overnight.models import Batch, BatchStatus, now
from overnight.services import Services
from overnight.store.memory import MemoryStore
from tests.integration.engine_harness import chat_lines, submit

Handler = Callable[[str, dict[str, Any]], Any]


def answer(body: dict[str, Any]) -> dict[str, Any]:
    text = body["messages"][0]["content"]
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"re: {text}"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def services(
    tmp_path: Path, backend: MockBackend, store: MemoryStore | None = None, **overrides: Any
) -> Services:
    values: dict[str, Any] = {"cancel_grace_seconds": 0.0, **overrides}
    s = settings_mod.load(
        env={},
        data_dir=tmp_path,
        upstream_url="http://127.0.0.1:9/v1",  # never dialled: the route's backend is the mock
        poll_interval=0.01,
        retry_base_delay=0.001,
        flush_interval=0.005,
        max_attempts=3,
        **values,
    )
    router = Router(s, backends={"*": backend})
    return Services(s, store or MemoryStore(), MemoryBlobStore(), router)


@asynccontextmanager
async def engine(svc: Services) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(svc)
    try:
        yield scheduler
    finally:
        await scheduler.stop()


async def lines_of(svc: Services, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    f = await svc.store.files.get(file_id)
    assert f is not None
    return [orjson.loads(x) for x in (await svc.blobs.read_all(f.blob_key)).splitlines()]


async def finished(svc: Services, batch_id: str) -> Batch:
    b = await svc.store.batches.get(batch_id)
    assert b is not None
    return b


def sent_ids(backend: MockBackend) -> list[str]:
    return [c.body["messages"][0]["content"] for c in backend.calls]


async def test_a_batch_runs_to_completion_each_request_sent_once(tmp_path: Path) -> None:
    backend = MockBackend(lambda endpoint, body: answer(body))
    svc = services(tmp_path, backend)
    batch_id = await submit(svc, chat_lines(50))
    async with engine(svc) as scheduler:
        await scheduler.run_until_idle(timeout=30)
    b = await finished(svc, batch_id)
    assert (b.status, b.total, b.completed, b.failed) == ("completed", 50, 50, 0)
    assert b.usage.input_tokens == 150 and b.usage.output_tokens == 100
    assert sorted(sent_ids(backend)) == sorted(f"q{i}" for i in range(50))
    out = await lines_of(svc, b.output_file_id)
    assert [x["custom_id"] for x in out] == [f"q{i}" for i in range(50)]  # input order
    assert out[7]["response"]["body"]["choices"][0]["message"]["content"] == "re: q7"
    assert b.error_file_id is None


async def test_transient_trouble_is_retried_then_given_up(tmp_path: Path) -> None:
    tries: dict[str, int] = {}

    def handler(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        text = body["messages"][0]["content"]
        tries[text] = tries.get(text, 0) + 1
        if text == "q1" and tries[text] < 3:  # answers on the last allowed attempt
            raise TransientError("busy", overloaded=True, code="rate_limited")
        if text == "q2":  # never answers
            raise TransientError("reset", code="upstream_unreachable")
        return answer(body)

    backend = MockBackend(handler)
    svc = services(tmp_path, backend)
    batch_id = await submit(svc, chat_lines(4))
    async with engine(svc) as scheduler:
        await scheduler.run_until_idle(timeout=30)
    b = await finished(svc, batch_id)
    assert (b.completed, b.failed) == (3, 1)
    assert tries == {"q0": 1, "q1": 3, "q2": 3, "q3": 1}
    (err,) = await lines_of(svc, b.error_file_id)
    assert err["custom_id"] == "q2" and err["error"]["code"] == "upstream_unreachable"
    assert "Gave up after 3 attempts" in err["error"]["message"]


async def test_a_model_error_is_final_and_never_resent(tmp_path: Path) -> None:
    def handler(endpoint: str, body: dict[str, Any]) -> Any:
        if body["messages"][0]["content"] == "q0":
            return Response(400, {"error": {"message": "bad prompt", "code": "invalid_prompt"}})
        return answer(body)

    backend = MockBackend(handler)
    svc = services(tmp_path, backend)
    batch_id = await submit(svc, chat_lines(3))
    async with engine(svc) as scheduler:
        await scheduler.run_until_idle(timeout=30)
    b = await finished(svc, batch_id)
    assert (b.completed, b.failed, len(backend.calls)) == (2, 1, 3)
    (err,) = await lines_of(svc, b.error_file_id)
    assert err["response"]["status_code"] == 400
    assert err["error"] == {"code": "invalid_prompt", "message": "bad prompt"}


async def test_cancel_mid_run_keeps_what_finished(tmp_path: Path) -> None:
    gate = asyncio.Event()
    started = asyncio.Event()

    async def handler(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][0]["content"] != "q0":
            started.set()
            await gate.wait()  # held until the batch is cancelled
        return answer(body)

    backend = MockBackend(handler)
    svc = services(tmp_path, backend, cancel_grace_seconds=30.0)  # in flight: let it answer
    batch_id = await submit(svc, chat_lines(200))
    async with engine(svc) as scheduler:
        run = asyncio.create_task(scheduler.run_until_idle(timeout=30))
        await started.wait()
        assert await svc.store.batches.transition(
            batch_id, [BatchStatus.IN_PROGRESS], status=BatchStatus.CANCELLING, cancelling_at=now()
        )
        gate.set()
        await run
    b = await finished(svc, batch_id)
    assert b.status == "cancelled" and b.completed + b.failed == 200
    assert b.completed == len(backend.calls) < 200  # what was not sent was not sent later
    errors = await lines_of(svc, b.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


async def test_a_batch_past_its_window_expires_with_partial_results(tmp_path: Path) -> None:
    backend = MockBackend(lambda endpoint, body: answer(body))
    svc = services(tmp_path, backend)
    batch_id = await submit(svc, chat_lines(5))
    await svc.store.batches.set_values(batch_id, expires_at=0)
    async with engine(svc) as scheduler:
        await scheduler.run_until_idle(timeout=30)
    b = await finished(svc, batch_id)
    assert b.status == "expired" and b.completed + b.failed == 5
    errors = await lines_of(svc, b.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len(errors) == 5 - len(backend.calls)


async def test_a_small_batch_is_not_stuck_behind_a_big_one(tmp_path: Path) -> None:
    backend = MockBackend(lambda endpoint, body: answer(body))
    svc = services(tmp_path, backend)
    big = await submit(svc, chat_lines(3000, tag="big"))
    small = await submit(svc, chat_lines(20, tag="small"))
    async with engine(svc) as scheduler:
        await scheduler.run_until_idle(timeout=60)
    sent = sent_ids(backend)
    last_small = max(i for i, text in enumerate(sent) if text.startswith("small"))
    assert last_small < len(sent) // 2, f"the small batch finished at call {last_small}"
    assert (await finished(svc, big)).completed == 3000
    assert (await finished(svc, small)).completed == 20


async def test_a_new_engine_on_the_same_store_finishes_what_a_dead_one_left(
    tmp_path: Path,
) -> None:
    """The first engine is dropped mid-batch with requests leased and unanswered (as
    kill -9 leaves them); a second one on the same store sends only what was not
    recorded, and every line ends in the output once."""
    store = MemoryStore()
    hold = asyncio.Event()

    async def slow(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if int(body["messages"][0]["content"][1:]) >= 30:
            await hold.wait()  # never set: these die with the first engine
        return answer(body)

    first = MockBackend(slow)
    svc1 = services(tmp_path, first, store)
    batch_id = await submit(svc1, chat_lines(100))
    dead = Scheduler(svc1)
    run = asyncio.create_task(dead.run_until_idle(timeout=30))
    while (await finished(svc1, batch_id)).completed < 30:
        await asyncio.sleep(0.01)
    run.cancel()
    await asyncio.gather(run, return_exceptions=True)
    for lane in dead.runner.lanes.values():  # kill -9: its tasks end, nothing is handed back
        for task in lane._tasks:
            task.cancel()
    leased = (await store.ledger.counts((await finished(svc1, batch_id)).seq))[0].leased
    assert leased > 0

    second = MockBackend(lambda endpoint, body: answer(body))
    svc2 = services(tmp_path, second, store)
    svc2.blobs = svc1.blobs  # the same "disk"
    async with engine(svc2) as scheduler:
        await scheduler.run_until_idle(timeout=30)
    b = await finished(svc2, batch_id)
    assert (b.status, b.completed, b.failed) == ("completed", 100, 0)
    out = await lines_of(svc2, b.output_file_id)
    assert [x["custom_id"] for x in out] == [f"q{i}" for i in range(100)]
    assert not set(sent_ids(second)) & {f"q{i}" for i in range(30)}  # recorded: not resent


class FakeClock:
    """Unix seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = float(now())

    def __call__(self) -> float:
        return self.now


async def test_the_clock_decides_expiry_and_the_grace_period(tmp_path: Path) -> None:
    """A day passes in an instant: the batch expires at its deadline with what finished,
    and the requests in flight get the grace period, counted on the same clock."""
    clock = FakeClock()
    first_done = asyncio.Event()
    release = asyncio.Event()

    async def handler(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        if body["messages"][0]["content"] == "q0":
            first_done.set()
            return answer(body)
        await release.wait()  # in flight when the deadline passes
        return answer(body)

    backend = MockBackend(handler)
    svc = services(tmp_path, backend, cancel_grace_seconds=600.0)
    svc.clock = clock
    batch_id = await submit(svc, chat_lines(100))
    async with engine(svc) as scheduler:
        run = asyncio.create_task(scheduler.run_until_idle(timeout=30))
        await first_done.wait()
        b = await finished(svc, batch_id)
        clock.now = b.expires_at + 1.0  # past the window: stop, but wait for what is in flight
        await asyncio.sleep(0.2)
        assert (await finished(svc, batch_id)).status == "in_progress"  # grace not over
        clock.now += 601.0  # past the grace period too
        await run
        release.set()
    b = await finished(svc, batch_id)
    assert b.status == "expired" and b.expired_at == int(clock.now)
    assert (b.completed, b.failed) == (1, 99)
    errors = await lines_of(svc, b.error_file_id)
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
