"""Rate limits: a stub that allows --rpm requests per --window seconds (sliding), with
OpenAI's x-ratelimit-* headers; overnight is not told the limit.

    .venv/bin/python bench/bench_ratelimit.py [--requests 1000] [--rpm 600] [--window 60]
    .venv/bin/python bench/bench_ratelimit.py --rpm 50 --window 1   # 50 requests a second
    .venv/bin/python bench/bench_ratelimit.py --rpm 50 --window 1 --workers 3

Reports the time from batch create to completed against the ideal N / limit, and
how many requests the upstream refused with 429 on the way.

`--workers N` runs the batch on a fleet instead of one process: `serve --no-executor`
and N `overnight worker` processes on PostgreSQL (127.0.0.1:5432, a scratch database,
dropped afterwards) and S3 (moto's server on loopback), all sending to the one stub, so
the N workers share one limit none of them is told (tests/scaleout/cluster.py). The
clock starts once every worker has logged that it runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

from common import chat_lines, machine, run_batch
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.scaleout.cluster import Cluster
from tests.scaleout.infra import MotoServer, create_database, drop_database
from tests.support.upstream_stub import StubConfig, StubProcess


def run_on_fleet(stub_url: str, data: bytes, workers: int) -> tuple[float, object]:
    """The batch on `serve --no-executor` + `workers` workers, on PostgreSQL and S3."""
    moto = MotoServer().start()
    db_name, db_url = create_database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = f'[models."*"]\nurl = "{stub_url}"\n'  # the limit is not in it
            cluster = Cluster(
                Path(tmp),
                database_url=db_url,
                aws=moto.env(),
                config=config,
                workers=workers,
            )
            try:  # not `with`: a worker that fails to start must not leave the rest running
                cluster.start()
                client = OpenAI(base_url=f"{cluster.api.url}/v1", api_key="bench")
                return run_batch(client, data, poll=0.5)
            finally:
                cluster.stop()
    finally:
        drop_database(db_name)
        moto.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument(
        "--workers", type=int, default=0, help="N workers on PostgreSQL + S3 (0: one process)"
    )
    args = parser.parse_args()
    n = args.requests
    print(f"machine: {machine()}")
    stub_config = StubConfig(rpm=args.rpm, rate_window=args.window, latency=args.latency)
    with StubProcess(stub_config) as stub:
        if args.workers > 0:
            took, batch = run_on_fleet(stub.url, chat_lines(n), args.workers)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                env = {"OVERNIGHT_UPSTREAM_URL": stub.url}
                with OvernightProcess(f"{tmp}/data", env=env) as server:
                    client = OpenAI(base_url=f"{server.url}/v1", api_key="bench")
                    took, batch = run_batch(client, chat_lines(n), poll=0.5)
        with urllib.request.urlopen(f"{stub.base_url}/_stats") as resp:
            stats = json.load(resp)
    assert batch.status == "completed" and batch.request_counts.completed == n, batch  # type: ignore[attr-defined]
    ideal = n / args.rpm * args.window
    refused = stats["by_status"].get("429", 0)
    where = f"{args.workers} workers on PostgreSQL + S3" if args.workers > 0 else "one process"
    print(
        f"requests: {n}, upstream limit: {args.rpm} per {args.window:g} s (sliding window), "
        f"latency {args.latency}s; overnight: {where}"
    )
    print(f"ideal N/limit: {ideal:.1f} s; overnight: {took:.1f} s; ratio {took / ideal:.2f}")
    print(f"throughput: {n / took:.1f} req/s = {ideal / took:.2f} of the limit")
    print(f"429s received: {refused} ({refused / n:.1%} of requests)")
    if refused:
        # When they came, from the first one: at the start, or spread over the run.
        times = stats["refused_at"]
        spans = [(0.5, "first 0.5 s"), (2.0, "first 2 s")]
        print(
            "429s in the "
            + ", ".join(f"{label}: {sum(t - times[0] <= s for t in times)}" for s, label in spans)
        )


if __name__ == "__main__":
    main()
