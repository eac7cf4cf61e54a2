"""A route's rpm and max_concurrency hold for three workers together on PostgreSQL, and a
dead worker's slots come back to the others (real processes, a real stub upstream)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.batch_lines import chat_lines
from tests.scaleout.cluster import Cluster
from tests.scaleout.test_cluster import _terminal, _wait
from tests.support.upstream_stub import StubConfig, StubProcess

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]


async def _run(cluster: Cluster, n: int) -> tuple[openai.AsyncOpenAI, str]:
    client = openai.AsyncOpenAI(base_url=f"{cluster.api.url}/v1", api_key="x")
    f = await client.files.create(
        file=("in.jsonl", chat_lines([f"r{i:04d}" for i in range(n)])), purpose="batch"
    )
    batch = await client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return client, batch.id


async def test_three_workers_keep_one_rpm_between_them(
    tmp_path: Path, pg_url: str, s3_env: dict[str, str]
) -> None:
    # The upstream refuses past 120 requests in any 10 s; the route allows 600 a minute
    # (10 a second, bursts of 10: at most 110 in any 10 s). Each worker on its own would
    # send 10 a second, 30 together, and be refused from the fifth second on.
    n = 160
    with StubProcess(StubConfig(rpm=120, rate_window=10.0, latency=0.01)) as stub:
        config = f'[models."*"]\nurl = "{stub.url}"\nrpm = 600\n'
        with Cluster(tmp_path, database_url=pg_url, aws=s3_env, config=config, workers=3) as c:
            client, batch_id = await _run(c, n)
            started = time.monotonic()
            done = await _wait(client, batch_id, _terminal, timeout=120)
            took = time.monotonic() - started
            await client.close()
            stats = httpx.get(f"{stub.base_url}/_stats").json()
    assert done.status == "completed" and done.request_counts.completed == n, done
    assert stats["by_status"].get("429", 0) == 0, stats["by_status"]
    # Paced to the one shared limit: (n - burst) / rate seconds at least.
    assert took >= (n - 10) / 10 * 0.9, took


async def test_max_concurrency_is_shared_and_a_dead_workers_slots_return(
    tmp_path: Path, pg_url: str, s3_env: dict[str, str]
) -> None:
    # The upstream refuses whatever is beyond 4 requests at once; the route says 4. Three
    # workers on their own would have 12 in flight.
    n = 240
    with StubProcess(StubConfig(max_concurrency=4, latency=0.25)) as stub:
        config = f'[models."*"]\nurl = "{stub.url}"\nmax_concurrency = 4\n'
        cluster = Cluster(
            tmp_path,
            database_url=pg_url,
            aws=s3_env,
            config=config,
            workers=3,
            env={"OVERNIGHT_LEASE_SECONDS": "5"},
        )
        with cluster:
            client, batch_id = await _run(cluster, n)
            conn = await cluster.db()
            try:
                victim = cluster.workers[0]
                assert victim.process is not None
                tag = f":{victim.process.pid}:"
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # until the victim holds slots
                    held = await conn.fetchval(
                        "SELECT coalesce(sum(held), 0) FROM fleet_slots WHERE owner LIKE $1",
                        f"%{tag}%",
                    )
                    if held:
                        break
                    await asyncio.sleep(0.05)
                assert held, "the victim never held a slot: nothing was tested"
                victim.kill()
                killed = time.monotonic()
                # Its slots stop counting when their lease ends; the survivors take them.
                survivors_held = 0
                while time.monotonic() - killed < 30 and survivors_held < 4:
                    survivors_held = await conn.fetchval(
                        "SELECT coalesce(sum(held), 0) FROM fleet_slots "
                        "WHERE owner NOT LIKE $1 AND expires_at > extract(epoch from now())",
                        f"%{tag}%",
                    )
                    await asyncio.sleep(0.2)
                assert survivors_held == 4, survivors_held
                done = await _wait(client, batch_id, _terminal, timeout=150)
            finally:
                await conn.close()
                await client.close()
            stats = httpx.get(f"{stub.base_url}/_stats").json()
    assert done.status == "completed" and done.request_counts.completed == n, done
    # Never more than 4 in flight at the upstream, from all workers together.
    assert stats["by_status"].get("429", 0) == 0, stats["by_status"]
