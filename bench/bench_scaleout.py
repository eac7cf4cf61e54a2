"""Scale-out: one vs two vs three `overnight worker` processes on PostgreSQL + S3.

    .venv/bin/python bench/bench_scaleout.py [--requests 6000] [--latency 0.05]
        [--per-worker 32] [--workers 1 2 3] [--rounds 1]

The stub upstream answers every request after a fixed latency, and the route's
`max_concurrency` caps each worker at `--per-worker` requests in flight, so one worker
cannot go faster than per_worker / latency requests a second: that is where more workers
should help. One `serve --no-executor` API process stays up; for each worker count a
fresh set of workers runs the same batch. PostgreSQL (127.0.0.1:5432, a scratch database)
and an S3 API (moto's server mode on loopback, started here) are shared by all.
Timed from batch create to `completed`, so validation and finalization are included.
With `--rounds R` the worker counts are run R times in turn and the median is kept.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import chat_lines, machine
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.scaleout.infra import MotoServer, create_database, drop_database
from tests.support.upstream_stub import StubConfig, StubProcess

MODEL = "bench-model"


def run_once(client: OpenAI, data: bytes, poll: float = 0.05) -> tuple[float, float, object]:
    """(create -> in_progress, create -> completed, batch)."""
    f = client.files.create(file=("bench.jsonl", data), purpose="batch")
    t0 = time.perf_counter()
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    started = None
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(poll)
        b = client.batches.retrieve(b.id)
        if started is None and b.status != "validating":
            started = time.perf_counter() - t0
    took = time.perf_counter() - t0
    return started or took, took, b


def run_workers(client: OpenAI, data: bytes, tmp: str, env: dict[str, str], count: int) -> float:
    """Start `count` fresh workers, run the batch on them, stop them; seconds taken."""
    workers = [
        OvernightProcess(f"{tmp}/w{count}-{i}", env=env, command="worker").start()
        for i in range(count)
    ]
    time.sleep(3.0)  # let them import and connect before the clock starts
    try:
        _started, took, batch = run_once(client, data)
    finally:
        for w in workers:
            w.stop()
    n = len(data.splitlines())
    assert batch.status == "completed", batch  # type: ignore[attr-defined]
    assert batch.request_counts.completed == n  # type: ignore[attr-defined]
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--per-worker", type=int, default=32, help="route max_concurrency")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    n = args.requests
    data = chat_lines(n, model=MODEL)
    print(f"machine: {machine()}")
    print(
        f"requests: {n}, stub latency {args.latency * 1000:.0f} ms, "
        f"max_concurrency {args.per_worker} per worker "
        f"(one worker's ceiling: {args.per_worker / args.latency:.0f} req/s)"
    )
    moto = MotoServer().start()
    db_name, db_url = create_database()
    env_aws = moto.env()
    moto.create_bucket("bench")
    times: dict[int, list[float]] = {count: [] for count in args.workers}
    try:
        with (
            StubProcess(StubConfig(latency=args.latency)) as stub,
            tempfile.TemporaryDirectory() as tmp,
        ):
            config = Path(tmp) / "config.toml"
            config.write_text(
                f'[models."{MODEL}"]\nurl = "{stub.url}"\nmax_concurrency = {args.per_worker}\n'
            )
            env = {
                **{k: v for k, v in env_aws.items() if k.startswith("AWS_")},
                "OVERNIGHT_DATABASE_URL": db_url,
                "OVERNIGHT_STORAGE_URL": "s3://bench/files",
                "OVERNIGHT_CONFIG": str(config),
                "OVERNIGHT_LOG_LEVEL": "warning",
            }
            with OvernightProcess(f"{tmp}/api", env=env, args=["--no-executor"]) as api:
                client = OpenAI(base_url=f"{api.url}/v1", api_key="bench")
                for _round in range(args.rounds):
                    for count in args.workers:
                        took = run_workers(client, data, tmp, env, count)
                        times[count].append(took)
                        print(f"  {count} worker(s): {took:.2f} s")
    finally:
        drop_database(db_name)
        moto.stop()

    results = [(count, statistics.median(t)) for count, t in times.items()]
    base = n / results[0][1]
    print()
    print("| workers | create -> completed | req/s | vs 1 worker | ideal (latency-bound) |")
    print("|---|---|---|---|---|")
    for count, took in results:
        rate = n / took
        ideal = count * args.per_worker / args.latency
        print(f"| {count} | {took:.2f} s | {rate:,.0f} | {rate / base:.2f}x | {ideal:,.0f} req/s |")


if __name__ == "__main__":
    main()
