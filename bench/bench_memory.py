"""Memory: peak RSS of the server for a 10,000 and a 100,000-request batch (~200 MB input).

    .venv/bin/python bench/bench_memory.py [--sizes 10000 100000] [--line-bytes 2000]

Each size runs in a fresh server process; peak RSS is the kernel's high-water mark
(VmHWM) of that process, read once the batch has completed.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import orjson
from common import machine, run_batch
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubProcess


def big_lines(n: int, line_bytes: int) -> bytes:
    filler = "x" * max(0, line_bytes - 200)
    return b"".join(
        orjson.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "bench-model",
                    "messages": [
                        {"role": "system", "content": filler},
                        {"role": "user", "content": f"item {i}"},
                    ],
                },
            }
        )
        + b"\n"
        for i in range(n)
    )


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--line-bytes", type=int, default=2000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'requests':>9} {'input MB':>9} {'seconds':>8} {'peak RSS MB':>12}")
    with StubProcess(StubConfig()) as stub:
        for n in args.sizes:
            data = big_lines(n, args.line_bytes)
            with tempfile.TemporaryDirectory() as tmp:
                env = {
                    "OVERNIGHT_UPSTREAM_URL": stub.url,
                    "OVERNIGHT_MAX_REQUESTS_PER_BATCH": str(max(n, 50_000)),
                }
                with OvernightProcess(f"{tmp}/data", env=env) as server:
                    client = OpenAI(base_url=f"{server.url}/v1", api_key="bench", timeout=600)
                    t0 = time.perf_counter()
                    _, batch = run_batch(client, data, poll=0.5)
                    took = time.perf_counter() - t0
                    assert batch.status == "completed", batch  # type: ignore[attr-defined]
                    assert batch.request_counts.completed == n  # type: ignore[attr-defined]
                    assert server.process is not None
                    rss = peak_rss_mb(server.process.pid)
            print(f"{n:>9} {len(data) / 1e6:>9.1f} {took:>8.1f} {rss:>12.1f}")


if __name__ == "__main__":
    main()
