"""Several overnight processes on PostgreSQL + S3: a worker killed mid-batch, cancel and
expiry received by the API process, finalization exactly once.

Each test starts real processes: `overnight serve --no-executor` and `overnight worker`s.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.batch_lines import chat_lines
from tests.scaleout.cluster import Cluster
from tests.support.upstream_stub import StubConfig, StubProcess

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

DONE, FAILED = 2, 3


def _config(stub_url: str, max_concurrency: int | None = None) -> str:
    text = f'[models."*"]\nurl = "{stub_url}"\n'
    if max_concurrency:
        text += f"max_concurrency = {max_concurrency}\n"
    return text


async def _wait(client: openai.AsyncOpenAI, batch_id: str, until: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = await client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch did not get there in {timeout} s: {batch}")
        await asyncio.sleep(0.1)


async def _lines(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, Any]:
    if file_id is None:
        return {}
    data = (await client.files.content(file_id)).content
    lines = [orjson.loads(x) for x in data.splitlines()]
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id appears twice in one file"
    return by_id


async def _output_file_rows(conn: Any, batch_id: str) -> list[Any]:
    return await conn.fetch(
        "SELECT id, filename FROM files WHERE purpose = 'batch_output' AND filename LIKE $1",
        f"{batch_id}_%",
    )


def _terminal(b: Any) -> bool:
    return b.status in ("completed", "failed", "expired", "cancelled")


async def test_worker_killed_mid_batch(tmp_path: Path, pg_url: str, s3_env: dict[str, str]) -> None:
    n = 20_000
    ids = [f"k{i:05d}" for i in range(n)]
    with StubProcess(StubConfig(latency=0.005)) as stub:
        cluster = Cluster(
            tmp_path,
            database_url=pg_url,
            aws=s3_env,
            config=_config(stub.url),
            workers=3,
            env={"OVERNIGHT_LEASE_SECONDS": "5"},
        )
        with cluster:
            client = openai.AsyncOpenAI(base_url=f"{cluster.api.url}/v1", api_key="x")
            conn = await cluster.db()
            try:
                f = await client.files.create(file=("in.jsonl", chat_lines(ids)), purpose="batch")
                batch = await client.batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                # Kill one worker once ~30% of the requests are finished.
                victim = cluster.workers[0]
                assert victim.process is not None
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    finished = await conn.fetchval(
                        "SELECT count(*) FROM requests WHERE state IN (2, 3)"
                    )
                    if finished >= n * 0.3:
                        break
                    await asyncio.sleep(0.02)
                victim_tag = f":{victim.process.pid}:"
                victim.kill()
                # What the ledger holds at the moment of the kill.
                rows = await conn.fetch("SELECT custom_id, state, lease_owner FROM requests")
                finished_at_kill = {r["custom_id"] for r in rows if r["state"] in (DONE, FAILED)}
                held_by_victim = {
                    r["custom_id"]
                    for r in rows
                    if r["state"] == 1 and victim_tag in (r["lease_owner"] or "")
                }
                assert held_by_victim, "the killed worker held no leases: nothing was tested"
                assert len(finished_at_kill) < n

                try:
                    done = await _wait(client, batch.id, _terminal, timeout=150)
                except AssertionError as stalled:
                    # Where the rest stands: which states and owners, and the stub's view.
                    states = await conn.fetch(
                        "SELECT state, lease_owner, count(*) AS n, min(lease_until) AS until"
                        " FROM requests WHERE state IN (0, 1) GROUP BY state, lease_owner"
                    )
                    stats = httpx.get(f"{stub.base_url}/_stats").json()
                    raise AssertionError(
                        f"{stalled}\nopen requests: {[dict(r) for r in states]}\n"
                        f"now {time.time():.1f}; stub: {stats}"
                    ) from None
                assert done.status == "completed", done
                assert done.request_counts.total == n
                assert done.request_counts.completed == n
                assert done.request_counts.failed == 0

                outputs = await _lines(client, done.output_file_id)
                assert sorted(outputs) == ids  # every custom_id exactly once
                assert done.error_file_id is None
                assert [r["filename"] for r in await _output_file_rows(conn, batch.id)] == [
                    f"{batch.id}_output.jsonl"
                ]  # finalized once

                counts = httpx.get(f"{stub.base_url}/_counts").json()
                assert set(counts) == set(ids)
                again = {cid for cid, c in counts.items() if c > 1}
                # Nothing finished before the kill went upstream again; only what the
                # dead worker held (in flight or claimed) could be sent a second time.
                assert not again & finished_at_kill
                assert again <= held_by_victim
                assert all(c <= 2 for c in counts.values())
                print(
                    f"\nkill at {len(finished_at_kill)} finished; victim held "
                    f"{len(held_by_victim)}; sent twice: {len(again)}"
                )
            finally:
                await conn.close()
                await client.close()


async def test_cancel_and_expiry_sent_to_the_api_stop_the_workers(
    tmp_path: Path, pg_url: str, s3_env: dict[str, str]
) -> None:
    # Each worker sends at most 4 requests at a time, 0.25 s each; both batches share them.
    with StubProcess(StubConfig(latency=0.25)) as stub:
        cluster = Cluster(
            tmp_path,
            database_url=pg_url,
            aws=s3_env,
            config=_config(stub.url, max_concurrency=4),
            workers=2,
            env={
                "OVERNIGHT_COMPLETION_WINDOW_SECONDS": "6",
                "OVERNIGHT_CANCEL_GRACE_SECONDS": "10",
            },
        )
        with cluster:
            client = openai.AsyncOpenAI(base_url=f"{cluster.api.url}/v1", api_key="x")
            conn = await cluster.db()
            try:
                cancel_ids = [f"c{i:03d}" for i in range(200)]
                # 2 workers x 4 x 4/s = 32 requests/s at best: 400 need 12 s, the window is 6.
                expire_ids = [f"e{i:03d}" for i in range(400)]
                batches = []
                for ids in (cancel_ids, expire_ids):
                    f = await client.files.create(
                        file=("in.jsonl", chat_lines(ids)), purpose="batch"
                    )
                    batches.append(
                        await client.batches.create(
                            input_file_id=f.id,
                            endpoint="/v1/chat/completions",
                            completion_window="24h",
                        )
                    )
                to_cancel, to_expire = batches
                await _wait(
                    client, to_cancel.id, lambda b: b.request_counts.completed >= 4, timeout=60
                )
                cancelling = await client.batches.cancel(to_cancel.id)
                assert cancelling.status == "cancelling"

                cancelled = await _wait(client, to_cancel.id, _terminal, timeout=60)
                expired = await _wait(client, to_expire.id, _terminal, timeout=60)
                assert cancelled.status == "cancelled", cancelled
                assert expired.status == "expired", expired

                counts = httpx.get(f"{stub.base_url}/_counts").json()
                for b, ids, code in (
                    (cancelled, cancel_ids, "batch_cancelled"),
                    (expired, expire_ids, "batch_expired"),
                ):
                    outputs = await _lines(client, b.output_file_id)
                    errors = await _lines(client, b.error_file_id)
                    assert not set(outputs) & set(errors)
                    assert sorted(set(outputs) | set(errors)) == ids
                    assert outputs and errors
                    assert {e["error"]["code"] for e in errors.values()} == {code}
                    # Work stopped: only what finished was ever sent, and sent once.
                    sent = {cid for cid in ids if cid in counts}
                    assert sent == set(outputs)
                    assert all(counts[cid] == 1 for cid in sent)
                    assert b.request_counts.completed == len(outputs)
                    rows = await _output_file_rows(conn, b.id)
                    assert sorted(r["filename"] for r in rows) == [
                        f"{b.id}_error.jsonl",
                        f"{b.id}_output.jsonl",
                    ]  # finalized once
                # Nothing is sent after both are terminal.
                settled = sum(httpx.get(f"{stub.base_url}/_counts").json().values())
                await asyncio.sleep(1.0)
                assert sum(httpx.get(f"{stub.base_url}/_counts").json().values()) == settled
            finally:
                await conn.close()
                await client.close()


async def test_rolling_update_sigterm_resends_nothing(
    tmp_path: Path, pg_url: str, s3_env: dict[str, str]
) -> None:
    """SIGTERM to one of two workers mid-batch (what a rolling update sends): it waits for
    its answers, records them and gives back its leases, so the other worker goes on at
    once and no request reaches the upstream twice."""
    n = 60
    ids = [f"t{i:03d}" for i in range(n)]
    with StubProcess(StubConfig(latency=1.0)) as stub:
        cluster = Cluster(
            tmp_path,
            database_url=pg_url,
            aws=s3_env,
            config=_config(stub.url, max_concurrency=8),
            workers=2,
            env={"OVERNIGHT_SHUTDOWN_GRACE_SECONDS": "20"},
        )
        with cluster:
            client = openai.AsyncOpenAI(base_url=f"{cluster.api.url}/v1", api_key="x")
            conn = await cluster.db()
            try:
                f = await client.files.create(file=("in.jsonl", chat_lines(ids)), purpose="batch")
                batch = await client.batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                victim = cluster.workers[0]
                assert victim.process is not None
                tag = f"%:{victim.process.pid}:%"
                held = "SELECT count(*) FROM requests WHERE state = 1 AND lease_owner LIKE $1"
                deadline = time.monotonic() + 60
                while await conn.fetchval(held, tag) == 0:
                    assert time.monotonic() < deadline, "the worker never took any request"
                    await asyncio.sleep(0.02)
                victim.process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(victim.process.wait, 30) in (0, -signal.SIGTERM)
                assert await conn.fetchval(held, tag) == 0  # its leases came back
                assert "shutting down" in victim.log()

                done = await _wait(client, batch.id, _terminal, timeout=120)
                assert done.status == "completed", done
                assert (done.request_counts.completed, done.request_counts.failed) == (n, 0)
                assert sorted(await _lines(client, done.output_file_id)) == ids
                counts = httpx.get(f"{stub.base_url}/_counts").json()
                assert set(counts) == set(ids)
                assert {cid: c for cid, c in counts.items() if c != 1} == {}  # none sent twice
            finally:
                await conn.close()
                await client.close()
