"""Sharing a live model fleet: interactive users and an overnight batch on one upstream.

    .venv/bin/python bench/bench_shared_upstream.py [--slots 4] [--latency 0.5]
        [--window 60] [--load 0.3] [--seed 1] [--scenarios a b c d e]
        [--no-route-options] [--json PATH] [--plot PATH.svg]
    .venv/bin/python bench/bench_shared_upstream.py --replot RUN.json --plot PATH.svg

The stub upstream is a model server of finite capacity: `--slots` requests generate at
once, each for `--latency` seconds, and the rest wait in its queue, so its capacity is
C = slots / latency requests a second. An interactive client (asyncio + httpx, straight
to the stub, one small chat each, `"user": "interactive"` in the body) sends Poisson
arrivals at `--load` x C during a measuring window and records each request's latency.
Scenarios, each on a fresh stub (and a fresh overnight):

    a  no batch: the interactive latency on its own
    b  overnight runs a batch, route option yield = "off"
    c  yield = "auto"
    d  yield = "auto", the stub's /metrics hidden (overnight sees latency only)
    e  the stub schedules by priority; route options priority = 1, yield = "auto"

The batch holds enough requests to outlast the window (4 x C x window). The window opens
`--warmup` seconds after the batch is in_progress; it closes after `--window` seconds,
when the stub's counters are read; the interactive requests still in flight are then
awaited (the batch keeps running meanwhile, so they meet the same queue) and only then
is the batch cancelled. overnight's throughput is the number of its requests the stub
completed in the window (the stub counts 200 answers by the body's `user` field; the
batch's bodies have none) over the window; the spare capacity is C minus the interactive
arrival rate measured in the window, and share = overnight throughput / spare. A share
above 100% means overnight was served ahead of interactive requests that arrived in the
window: they completed after it (`interactive_served_rps` in the JSON says how many did
within it).

`--no-route-options` leaves `yield` and `priority` out of overnight's config (for an
overnight that does not know them; one that does then uses its defaults): scenario e
then puts `"priority": 1` in the batch's own bodies instead, which overnight forwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from common import machine
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubProcess

MODEL = "bench-model"
INTERACTIVE = "interactive"  # the `user` field that marks the interactive client's requests
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class Scenario:
    key: str
    label: str
    batch: bool = True
    yield_mode: str | None = None  # the route's `yield` option
    priority: int | None = None  # the route's `priority` option
    metrics: bool = True  # the stub answers /metrics
    scheduling: str = "fifo"


SCENARIOS = {
    s.key: s
    for s in (
        Scenario("a", "no batch", batch=False),
        Scenario("b", 'yield "off"', yield_mode="off"),
        Scenario("c", 'yield "auto"', yield_mode="auto"),
        Scenario("d", 'yield "auto", no /metrics', yield_mode="auto", metrics=False),
        Scenario(
            "e",
            'priority 1, yield "auto"',
            yield_mode="auto",
            priority=1,
            scheduling="priority",
        ),
    )
}


@dataclass
class Result:
    scenario: str
    label: str
    interactive_sent: int = 0
    interactive_ok: int = 0
    interactive_errors: int = 0
    interactive_rate: float = 0.0  # arrivals a second in the window
    interactive_served_rps: float = 0.0  # interactive requests the stub completed in it
    p50: float = math.nan
    p90: float = math.nan
    p99: float = math.nan
    p99_ratio: float = math.nan  # p99 / the no-batch scenario's p99
    p99_low: float = math.nan  # a 90% bootstrap interval of p99
    p99_high: float = math.nan
    overnight_completed: int = 0  # batch requests the stub completed in the window
    overnight_rps: float = 0.0
    spare_rps: float = 0.0
    share: float = math.nan
    peak_running: int = 0
    peak_waiting: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # overnight's route table
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def p99_interval(values: list[float], rounds: int = 2000, seed: int = 7) -> tuple[float, float]:
    """A 90% bootstrap interval for p99: with the few hundred samples of a short window the
    99th percentile is one of the few slowest requests, and moves a lot between runs."""
    if len(values) < 20:
        return math.nan, math.nan
    rnd = random.Random(seed)
    estimates = sorted(percentile(rnd.choices(values, k=len(values)), 0.99) for _ in range(rounds))
    return estimates[int(0.05 * rounds)], estimates[int(0.95 * rounds)]


def batch_lines(n: int, priority: int | None = None) -> bytes:
    """n small chats, as an overnight user would send them (no `user` field)."""
    out = bytearray()
    for i in range(n):
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Summarise document {i}."}],
            "max_tokens": 16,
        }
        if priority is not None:
            body["priority"] = priority
        line = {"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions"}
        out += orjson.dumps({**line, "body": body}) + b"\n"
    return bytes(out)


def route_table(scenario: Scenario, stub_url: str, route_options: bool) -> dict[str, Any]:
    table: dict[str, Any] = {"url": stub_url}
    if route_options:
        if scenario.yield_mode is not None:
            table["yield"] = scenario.yield_mode
        if scenario.priority is not None:
            table["priority"] = scenario.priority
    return table


def toml_text(table: dict[str, Any]) -> str:
    lines = [f'[models."{MODEL}"]']
    for key, value in table.items():
        lines.append(f"{key} = {json.dumps(value)}")  # strings and ints: TOML = JSON here
    return "\n".join(lines) + "\n"


def stub_get(stub: StubProcess, path: str) -> Any:
    with urllib.request.urlopen(stub.base_url + path, timeout=10) as resp:
        return json.load(resp)


def stub_post(stub: StubProcess, path: str) -> Any:
    request = urllib.request.Request(stub.base_url + path, data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


async def interactive(
    url: str, rate: float, window: float, seed: int, drain: float, closed: asyncio.Event
) -> tuple[list[float], int, int]:
    """Poisson arrivals at `rate` for `window` seconds; each POST waits at most `drain`.

    Returns (latencies of the 200s, requests sent, errors). `closed` is set when the
    window ends, so the caller can read the stub's counters then; the requests still in
    flight are awaited after it.
    """
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "What time is it in Lisbon?"}],
        "max_tokens": 16,
        "user": INTERACTIVE,
    }
    payload = orjson.dumps(body)
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(limits=limits, timeout=drain) as client:

        async def one() -> None:
            nonlocal errors
            started = time.perf_counter()
            try:
                response = await client.post(url, content=payload, headers=headers)
            except httpx.HTTPError:
                errors += 1
                return
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

        tasks = []
        start = time.perf_counter()
        due = start + rng.expovariate(rate)
        end = start + window
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.ensure_future(one()))
            due += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        closed.set()
        await asyncio.gather(*tasks)
    return latencies, len(tasks), errors


async def measure(
    stub: StubProcess, rate: float, window: float, seed: int, drain: float
) -> tuple[list[float], int, int, dict[str, Any]]:
    """Run the interactive client; read the stub's counters the moment the window ends."""
    closed = asyncio.Event()
    stub_post(stub, "/_reset")  # counters and peaks from here
    url = stub.url + "/chat/completions"
    job = asyncio.ensure_future(interactive(url, rate, window, seed, drain, closed))
    await closed.wait()
    stats = await asyncio.to_thread(stub_get, stub, "/_stats")
    latencies, sent, errors = await job
    return latencies, sent, errors, stats


def wait_status(client: OpenAI, batch_id: str, wanted: tuple[str, ...], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in wanted or batch.status in TERMINAL:
            return batch
        if time.monotonic() > deadline:
            raise RuntimeError(f"batch {batch_id} still {batch.status} after {timeout}s")
        time.sleep(0.1)


def run_scenario(scenario: Scenario, args: argparse.Namespace, tmp: Path) -> Result:
    capacity = args.slots / args.latency
    rate = args.load * capacity
    result = Result(scenario.key, scenario.label)
    config = StubConfig(
        slots=args.slots,
        latency=args.latency,
        scheduling=scenario.scheduling,
        metrics=scenario.metrics,
        seed=args.seed,
        max_received=100,
    )
    drain = max(120.0, 2 * args.window)
    with StubProcess(config) as stub:
        server = None
        batch_id = None
        client = None
        try:
            if scenario.batch:
                table = route_table(scenario, stub.url, not args.no_route_options)
                result.config = table
                body_priority = None
                if args.no_route_options and scenario.priority is not None:
                    body_priority = scenario.priority
                    result.notes.append(f"priority {body_priority} in the batch's bodies")
                config_path = tmp / f"overnight-{scenario.key}.toml"
                config_path.write_text(toml_text(table))
                env = {
                    "OVERNIGHT_CONFIG": str(config_path),
                    "OVERNIGHT_CANCEL_GRACE_SECONDS": "1",
                    "OVERNIGHT_SHUTDOWN_GRACE_SECONDS": "1",
                }
                server = OvernightProcess(
                    tmp / f"data-{scenario.key}",
                    env=env,
                    log_path=tmp / f"overnight-{scenario.key}.log",
                )
                try:
                    server.start()
                except RuntimeError as exc:
                    hint = (
                        "\n(overnight refused the route options; run with "
                        "--no-route-options until it knows them)"
                        if "unknown keys" in str(exc)
                        else ""
                    )
                    raise SystemExit(f"scenario {scenario.key}: {exc}{hint}") from None
                client = OpenAI(base_url=f"{server.url}/v1", api_key="bench")
                n = min(50_000, math.ceil(4 * capacity * (args.window + args.warmup)))
                f = client.files.create(
                    file=("shared.jsonl", batch_lines(n, body_priority)), purpose="batch"
                )
                batch = client.batches.create(
                    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                batch_id = batch.id
                batch = wait_status(client, batch_id, ("in_progress",), 120)
                if batch.status != "in_progress":
                    raise RuntimeError(f"scenario {scenario.key}: the batch is {batch.status}")
                time.sleep(args.warmup)
            latencies, sent, errors, stats = asyncio.run(
                measure(stub, rate, args.window, args.seed, drain)
            )
            if client is not None and batch_id is not None:
                batch = client.batches.retrieve(batch_id)
                if batch.status in TERMINAL:
                    result.notes.append(f"the batch ended ({batch.status}) before the window")
        finally:
            if client is not None and batch_id is not None:
                try:
                    client.batches.cancel(batch_id)
                except Exception as exc:  # reported; the run goes on
                    result.notes.append(f"cancel failed: {exc}")
            if server is not None:
                stub.stop()  # the queued requests go at once; overnight then stops quickly
                server.stop()
    done = stats.get("completed_by_user", {})
    result.interactive_sent = sent
    result.interactive_ok = len(latencies)
    result.interactive_errors = errors
    result.interactive_rate = sent / args.window
    result.p50 = percentile(latencies, 0.50)
    result.p90 = percentile(latencies, 0.90)
    result.p99 = percentile(latencies, 0.99)
    result.p99_low, result.p99_high = p99_interval(latencies)
    result.interactive_served_rps = done.get(INTERACTIVE, 0) / args.window
    result.overnight_completed = sum(v for k, v in done.items() if k != INTERACTIVE)
    result.overnight_rps = result.overnight_completed / args.window
    result.spare_rps = max(capacity - result.interactive_rate, 0.0)
    if scenario.batch and result.spare_rps > 0:
        result.share = result.overnight_rps / result.spare_rps
    result.peak_running = stats.get("max_running", 0)
    result.peak_waiting = stats.get("max_waiting", 0)
    refused = {k: v for k, v in stats.get("by_status", {}).items() if k != "200"}
    if refused:
        result.notes.append(f"stub answered {refused}")
    return result


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def table(results: list[Result]) -> str:
    head = (
        "| scenario | interactive n | p50 | p90 | p99 [90% interval] | p99 vs no batch "
        "| overnight req/s | share of spare | peak running / waiting |"
    )
    rows = [head, "|" + "---|" * 9]
    for r in results:
        rows.append(
            f"| {r.scenario}: {r.label} | {r.interactive_ok} | {fmt(r.p50, '.3f')} s "
            f"| {fmt(r.p90, '.3f')} s "
            f"| {fmt(r.p99, '.3f')} s [{fmt(r.p99_low, '.3f')}, {fmt(r.p99_high, '.3f')}] "
            f"| {fmt(r.p99_ratio, '.2f')}x "
            f"| {r.overnight_rps:.2f} | {fmt(r.share, '.0%')} "
            f"| {r.peak_running} / {r.peak_waiting} |"
        )
    return "\n".join(rows)


def _svg_text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    safe = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<text x="{x:.0f}" y="{y:.0f}" text-anchor="{anchor}"{extra}>{safe}</text>'


# The p99 axis stops here: yield "off" is tens of times the rest and would flatten them.
RATIO_AXIS_MAX = 4.0


def svg_chart(results: list[Result], title: str) -> str:
    """Two horizontal bar panels: interactive p99 / no-batch p99, and share of spare.

    A bar past its panel's axis (`RATIO_AXIS_MAX` for p99) is cut at the edge, marked
    with a white break, and labelled with its value."""
    label_w, bar_w, gap, row_h, top = 210, 260, 60, 26, 58
    width = label_w + 2 * bar_w + gap + 80
    height = top + row_h * len(results) + 12
    panels = [
        (
            f"interactive p99 / no batch (axis to {RATIO_AXIS_MAX:g}x)",
            [r.p99_ratio for r in results],
            "{:.2f}x",
            1.0,
            RATIO_AXIS_MAX,
        ),
        ("overnight share of spare capacity", [r.share for r in results], "{:.0%}", 1.0, None),
    ]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        _svg_text(10, 20, title, extra=' font-size="14" font-weight="bold"'),
    ]
    for i, r in enumerate(results):
        y = top + i * row_h + row_h * 0.65
        out.append(_svg_text(label_w - 8, y, f"{r.scenario}: {r.label}", "end"))
    for p, (name, values, spec, mark, axis_max) in enumerate(panels):
        x0 = label_w + p * (bar_w + gap)
        finite = [v for v in values if not math.isnan(v)]
        scale_max = max([mark, *finite]) * 1.05
        if axis_max is not None:
            scale_max = min(scale_max, axis_max)
        out.append(_svg_text(x0, top - 14, name, extra=' font-weight="bold"'))
        mark_x = x0 + bar_w * mark / scale_max
        bottom = top + row_h * len(results)
        out.append(
            f'<line x1="{mark_x:.0f}" y1="{top - 6}" x2="{mark_x:.0f}" y2="{bottom}" '
            'stroke="#999" stroke-dasharray="3,3"/>'
        )
        out.append(f'<line x1="{x0}" y1="{top - 6}" x2="{x0}" y2="{bottom}" stroke="#333"/>')
        color = ("#d95f02", "#1b9e77")[p]
        for i, value in enumerate(values):
            y = top + i * row_h + 4
            if math.isnan(value):
                out.append(_svg_text(x0 + 4, y + row_h * 0.55, "n/a", extra=' fill="#777"'))
                continue
            w = max(bar_w * min(value, scale_max) / scale_max, 1.0)
            out.append(
                f'<rect x="{x0}" y="{y}" width="{w:.1f}" height="{row_h - 8}" fill="{color}"/>'
            )
            if value > scale_max:
                out.append(
                    f'<path d="M{x0 + w - 14:.1f},{y + row_h - 6} l6,{-(row_h - 4)} '
                    f'M{x0 + w - 8:.1f},{y + row_h - 6} l6,{-(row_h - 4)}" '
                    'stroke="white" stroke-width="2.5"/>'
                )
            out.append(_svg_text(x0 + w + 4, y + row_h * 0.55, spec.format(value)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def chart_title(args: dict[str, Any]) -> str:
    return (
        f"Shared upstream: {args['slots']} slots x {args['latency']} s, interactive load "
        f"{args['load']:.0%}, {args['window']:.0f} s window"
    )


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """NaN (not measured) as null: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=4, help="stub requests generating at once")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds each holds a slot")
    parser.add_argument("--window", type=float, default=60.0, help="measuring window, seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after in_progress")
    parser.add_argument("--load", type=float, default=0.3, help="interactive load, x capacity")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scenarios", nargs="+", choices=sorted(SCENARIOS), default=sorted(SCENARIOS)
    )
    parser.add_argument(
        "--no-route-options",
        action="store_true",
        help="leave yield and priority out of overnight's config (priority goes in the bodies)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write an SVG bar chart here")
    parser.add_argument(
        "--replot", type=Path, help="draw --plot from a --json file of an earlier run; run nothing"
    )
    args = parser.parse_args()
    if args.replot:
        if not args.plot:
            parser.error("--replot needs --plot")
        doc = json.loads(args.replot.read_text())
        # NaN (not measured) was written as null.
        rows = [{k: math.nan if v is None else v for k, v in r.items()} for r in doc["results"]]
        args.plot.write_text(svg_chart([Result(**r) for r in rows], chart_title(doc["args"])))
        print(f"chart: {args.plot} (from {args.replot})")
        return
    if args.slots < 1 or args.latency <= 0 or args.window <= 0 or not 0 < args.load < 1:
        parser.error("--slots >= 1, --latency > 0, --window > 0 and 0 < --load < 1")
    capacity = args.slots / args.latency
    print(f"machine: {machine()}")
    print(
        f"stub: {args.slots} slots x {args.latency} s = capacity {capacity:.2f} req/s; "
        f"interactive load {args.load:.0%} = {args.load * capacity:.2f} req/s (Poisson); "
        f"window {args.window:.0f} s after {args.warmup:.0f} s of warm-up"
        + ("; route options left out" if args.no_route_options else "")
    )
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-shared-") as tmp:
        for key in args.scenarios:
            scenario = SCENARIOS[key]
            started = time.monotonic()
            result = run_scenario(scenario, args, Path(tmp))
            results.append(result)
            print(
                f"  {key}: {result.label}: p99 {fmt(result.p99, '.3f')} s, overnight "
                f"{result.overnight_rps:.2f} req/s, {result.interactive_sent} interactive "
                f"({result.interactive_errors} errors) [{time.monotonic() - started:.0f} s]"
                + (f"; {'; '.join(result.notes)}" if result.notes else ""),
                flush=True,
            )
    base = next((r.p99 for r in results if r.scenario == "a"), math.nan)
    for r in results:
        r.p99_ratio = r.p99 / base if base and not math.isnan(base) else math.nan
    print()
    print(table(results))
    if args.json:
        doc = {
            "machine": machine(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "capacity_rps": capacity,
            "results": [_finite(asdict(r)) for r in results],
        }
        args.json.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"results: {args.json}")
    if args.plot:
        args.plot.write_text(svg_chart(results, chart_title(vars(args))))
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
