"""Deadlines: two batches sharing one upstream, one with a short completion window.

    .venv/bin/python bench/bench_deadlines.py [--window 20] [--slots 8] [--latency 0.1]
        [--fraction 0.65] [--warmup 5] [--json PATH]

The stub upstream serves `--slots` requests at once, each for `--latency` seconds (the
rest wait in its queue): capacity C = slots / latency requests a second, and the route's
`max_concurrency` is `--slots`. A long batch (24h window) runs first; after `--warmup`
seconds a short batch of fraction x C x window requests is created with a `--window`
second completion window (the operator allows it with OVERNIGHT_COMPLETION_WINDOWS).
On an equal share (C / 2) the short batch would need window x 2 x fraction seconds: past
its window for a fraction above 0.5.

The same two batches run twice, each time on a fresh stub and a fresh overnight:

    edf   deadline scheduling on (the default): the short batch gets the rate it needs
    fair  OVERNIGHT_DEADLINE_SCHEDULING=off: a plain fair share between the two batches

Reported for each: when the short batch finished against its window (timed from just
before `batches.create` to the poll that saw it terminal, so an upper bound), its status
and requests done, and how many requests of the long batch finished meanwhile.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import chat_lines, machine
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubProcess

MODEL = "bench-model"
TERMINAL = ("completed", "failed", "expired", "cancelled")
MODES = {"edf": "on", "fair": "off"}  # OVERNIGHT_DEADLINE_SCHEDULING


@dataclass
class Run:
    mode: str
    short_requests: int
    window: int
    status: str = ""
    short_done: int = 0
    seen_terminal_after: float = math.nan  # seconds from create to the poll that saw it
    server_finished_after: float | None = None  # completed_at/expired_at - created_at (whole s)
    long_done_meanwhile: int = 0  # long-batch requests finished while the short one ran


def wait_for(client: OpenAI, batch_id: str, done: Any, timeout: float, poll: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if done(batch):
            return batch
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} is {batch.status} after {timeout:.0f} s")
        time.sleep(poll)


def run(mode: str, args: argparse.Namespace, tmp: Path) -> Run:
    capacity = args.slots / args.latency
    n_short = math.ceil(args.fraction * capacity * args.window)
    # Enough to keep the long batch running through the warm-up, the window and expiry.
    n_long = math.ceil(capacity * (args.warmup + args.window) * 2)
    result = Run(mode, n_short, args.window)
    stub_config = StubConfig(slots=args.slots, latency=args.latency, seed=1, max_received=100)
    config = tmp / f"{mode}.toml"
    with StubProcess(stub_config) as stub:
        config.write_text(
            f'[models."{MODEL}"]\nurl = "{stub.url}"\nmax_concurrency = {args.slots}\n'
        )
        env = {
            "OVERNIGHT_CONFIG": str(config),
            "OVERNIGHT_COMPLETION_WINDOWS": f"24h,{args.window}s",
            "OVERNIGHT_DEADLINE_SCHEDULING": MODES[mode],
            "OVERNIGHT_CANCEL_GRACE_SECONDS": "1",
            "OVERNIGHT_SHUTDOWN_GRACE_SECONDS": "1",
        }
        with OvernightProcess(tmp / f"data-{mode}", env=env, log_path=tmp / f"{mode}.log") as srv:
            client = OpenAI(base_url=f"{srv.url}/v1", api_key="bench")
            long_file = client.files.create(
                file=("long.jsonl", chat_lines(n_long, MODEL, "long")), purpose="batch"
            )
            short_file = client.files.create(
                file=("short.jsonl", chat_lines(n_short, MODEL, "short")), purpose="batch"
            )
            long = client.batches.create(
                input_file_id=long_file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            )
            wait_for(client, long.id, lambda b: b.status != "validating", 60)
            time.sleep(args.warmup)  # the lane measures its throughput meanwhile
            long_before = client.batches.retrieve(long.id).request_counts.completed  # type: ignore[union-attr]
            started = time.perf_counter()
            short = client.batches.create(
                input_file_id=short_file.id,
                endpoint="/v1/chat/completions",
                completion_window=f"{args.window}s",  # type: ignore[arg-type]
            )
            short = wait_for(client, short.id, lambda b: b.status in TERMINAL, args.window * 3 + 30)
            result.seen_terminal_after = time.perf_counter() - started
            long_after = client.batches.retrieve(long.id).request_counts.completed  # type: ignore[union-attr]
            client.batches.cancel(long.id)
            result.status = short.status
            result.short_done = short.request_counts.completed  # type: ignore[union-attr]
            end = short.completed_at or short.expired_at or short.failed_at
            if end is not None:
                result.server_finished_after = end - short.created_at
            result.long_done_meanwhile = long_after - long_before
            stub.stop()  # what is queued goes at once; overnight then stops quickly
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=20, help="the short batch's window, s")
    parser.add_argument("--slots", type=int, default=8, help="stub requests generating at once")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds each holds a slot")
    parser.add_argument(
        "--fraction", type=float, default=0.65, help="short batch = fraction x C x window"
    )
    parser.add_argument("--warmup", type=float, default=5.0, help="long batch alone, seconds")
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["edf", "fair"])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.window < 2 or args.slots < 1 or args.latency <= 0 or not 0 < args.fraction < 1:
        parser.error("--window >= 2, --slots >= 1, --latency > 0 and 0 < --fraction < 1")
    capacity = args.slots / args.latency
    print(f"machine: {machine()}")
    n_short = math.ceil(args.fraction * capacity * args.window)
    print(
        f"stub: {args.slots} slots x {args.latency} s = capacity {capacity:.0f} req/s; "
        f"short batch: {n_short} requests in a {args.window} s window (needs "
        f"{n_short / args.window:.0f} req/s; an equal share, {capacity / 2:.0f} req/s, "
        f"takes {n_short / (capacity / 2):.1f} s)"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-deadlines-") as tmp:
        for mode in args.modes:
            r = run(mode, args, Path(tmp))
            results.append(r)
            print(
                f"  {mode}: {r.status} {r.short_done}/{r.short_requests}, seen after "
                f"{r.seen_terminal_after:.1f} s",
                flush=True,
            )
    print()
    print(
        "| scheduling | short batch status | done | finished after (window "
        f"{args.window} s) | server's end - created | long batch done meanwhile |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        label = {"edf": "deadlines (EDF, default)", "fair": "plain fair share"}[r.mode]
        inside = "inside" if r.status == "completed" else "missed"
        server = "-" if r.server_finished_after is None else f"{r.server_finished_after} s"
        print(
            f"| {label} | {r.status} | {r.short_done}/{r.short_requests} "
            f"| {r.seen_terminal_after:.1f} s ({r.seen_terminal_after / r.window:.0%}, {inside}) "
            f"| {server} | {r.long_done_meanwhile} |"
        )
    if args.json:
        doc = {"machine": machine(), "args": vars(args), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
