"""Dispatch overhead: overnight vs a bare asyncio client, same stub, same concurrency.

    .venv/bin/python bench/bench_dispatch.py [--requests 20000] [--concurrency 64]

Both sides send the same chat requests to the same zero-latency stub upstream
(a separate process on loopback). overnight's time runs from batch create to
completed, so it includes validation, ledger writes and finalization.

Two bare clients are timed: the issue's baseline, aiohttp's ClientSession, and
the same loop on overnight's own HTTP/1.1 pool (overnight.backends.http1), which
sends requests with less CPU: against it the ratio shows what validation, the
ledger and finalization cost, with the HTTP client taken out of the comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
import orjson
from common import chat_lines, machine, run_batch
from openai import OpenAI

from overnight.backends.http1 import ConnectionPool
from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubProcess


async def _timed(data: bytes, concurrency: int, send: Callable[[bytes], Awaitable[bytes]]) -> float:
    """Send every line's body with `send` (which answers the raw reply), `concurrency` at once."""
    bodies = [orjson.dumps(orjson.loads(line)["body"]) for line in data.splitlines()]
    sem = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> None:
        async with sem:
            orjson.loads(await send(body))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in bodies))
    return time.perf_counter() - t0


async def bare_client(url: str, data: bytes, concurrency: int) -> float:
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(body: bytes) -> bytes:
            async with session.post(f"{url}/chat/completions", data=body, headers=headers) as r:
                return await r.read()

        return await _timed(data, concurrency, send)


async def bare_pool_client(url: str, data: bytes, concurrency: int) -> float:
    parts = urlsplit(url)
    pool = ConnectionPool(f"{parts.scheme}://{parts.netloc}")
    target = f"{parts.path}/chat/completions"
    headers = b"Content-Type: application/json\r\n"

    async def send(body: bytes) -> bytes:
        return (await pool.post(target, headers, body, 60.0)).body

    try:
        return await _timed(data, concurrency, send)
    finally:
        await pool.close()


def server_cpu_seconds(url: str) -> float:
    """The overnight process's CPU time so far (user + system), from its /metrics: a
    figure that a busy shared machine disturbs much less than wall time."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return float(re.search(r"^process_cpu_seconds_total (\S+)$", text, re.M)[1])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="OVERNIGHT_TRACING=1, spans exported to an OTLP/HTTP receiver on loopback",
    )
    args = parser.parse_args()
    n, c = args.requests, args.concurrency
    data = chat_lines(n)
    print(f"machine: {machine()}")
    print(f"requests: {n}, concurrency: {c}, rounds: {args.rounds} (alternating, median kept)")
    bases, pools, tooks, cpus = [], [], [], []
    receiver = contextlib.nullcontext()
    if args.tracing:
        from tests.support.otlp_receiver import OTLPReceiver

        receiver = OTLPReceiver()
    with (
        StubProcess(StubConfig()) as stub,
        tempfile.TemporaryDirectory() as tmp,
        receiver as otlp,
    ):
        config = f'[models.bench-model]\nurl = "{stub.url}"\nmax_concurrency = {c}\n'
        with open(f"{tmp}/config.toml", "w") as fh:
            fh.write(config)
        env = {"OVERNIGHT_CONFIG": f"{tmp}/config.toml", "OVERNIGHT_MAX_REQUESTS_PER_BATCH": str(n)}
        if otlp is not None:
            env |= {"OVERNIGHT_TRACING": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}
        with OvernightProcess(f"{tmp}/data", env=env) as server:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="bench")
            for _ in range(args.rounds):
                bases.append(asyncio.run(bare_client(stub.url, data, c)))
                pools.append(asyncio.run(bare_pool_client(stub.url, data, c)))
                cpu = server_cpu_seconds(server.url)
                took, batch = run_batch(client, data)
                cpus.append((server_cpu_seconds(server.url) - cpu) / n * 1e6)
                assert batch.status == "completed", batch  # type: ignore[attr-defined]
                counts = batch.request_counts  # type: ignore[attr-defined]
                assert counts.completed == n, counts
                tooks.append(took)
                print(
                    f"  round: bare aiohttp {bases[-1]:.2f} s, bare http1 pool {pools[-1]:.2f} s,"
                    f" overnight {took:.2f} s ({cpus[-1]:.0f} us CPU a request)"
                )
    base, pool, took = statistics.median(bases), statistics.median(pools), statistics.median(tooks)
    print(f"bare asyncio client, aiohttp      : {base:6.2f} s  {n / base:7.0f} req/s")
    print(f"bare asyncio client, http1 pool   : {pool:6.2f} s  {n / pool:7.0f} req/s")
    print(f"overnight (create->completed)     : {took:6.2f} s  {n / took:7.0f} req/s")
    print(f"overnight CPU (server process)    : {statistics.median(cpus):6.0f} us a request")
    print(f"ratio overnight / bare aiohttp client: {base / took:.2f}")
    print(f"ratio overnight / bare client on the same HTTP pool: {pool / took:.2f}")


if __name__ == "__main__":
    main()
