"""A model, not a measurement: what a sharing policy can reach on bench_shared_upstream's server.

    .venv/bin/python bench/sim_shared_upstream.py [--slots 4] [--latency 0.5] [--load 0.3]
        [--hours 2] [--stale 0.1] [--window 300]

A discrete-event simulation of the stub of bench_shared_upstream.py: `--slots` requests
generate at once for exactly `--latency` seconds, the rest wait in a FIFO (or priority)
queue; interactive requests arrive as a Poisson stream at `--load` x capacity. overnight
is a policy deciding, every 0.1 s and at every completion, how many requests to start,
seeing the server's load as it was `--stale` seconds ago (the age of a /metrics reading).
It prints, for each policy, the interactive p99 against the no-batch p99 and overnight's
share of the spare capacity, over `--hours` of simulated time (so p99 is exact), and how
much the no-batch p99 of a 30 s window (~70 samples) moves between seeds: the reason the
real bench needs long windows before its p99 ratios mean anything. Last, the spread of the
ratio `reserve 1` / no batch that one `--window` s window of the bench (one seeded arrival
sequence for both) would show, across 40 seeds.

Policies: `fixed N` keeps N requests in the server; `reserve R` keeps at most
slots - R - (interactive requests in the server), the rule of overnight's yield controller
(engine/yielding.py: R = max(1, 0.15 x capacity) while interactive users are seen).
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

Policy = Callable[[int, int], int]  # (interactive in the server, overnight's in flight) -> sends


@dataclass
class Server:
    slots: int
    latency: float
    priority: bool
    running: int = 0
    queue: list[tuple[str, float]] = field(default_factory=list)


def simulate(
    policy: Policy,
    *,
    slots: int,
    latency: float,
    load: float,
    seconds: float,
    stale: float,
    priority: bool = False,
    seed: int = 1,
    warmup: float = 60.0,
) -> tuple[list[float], float]:
    """Interactive latencies after the warm-up, and overnight's completions a second."""
    rnd = random.Random(seed)
    rate = load * slots / latency
    events: list[tuple[float, int, str, float]] = []
    order = 0

    def push(at: float, kind: str, arrived: float = 0.0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, arrived))

    server = Server(slots, latency, priority)
    foreign = 0
    history: list[tuple[float, int]] = [(0.0, 0)]  # (time, interactive in the server)
    own = 0
    own_done = 0
    latencies: list[float] = []

    def admit(now: float) -> None:
        while server.running < slots and server.queue:
            pick = 0
            if priority:
                pick = next((i for i, q in enumerate(server.queue) if q[0] == "i"), 0)
            who, arrived = server.queue.pop(pick)
            server.running += 1
            push(now + latency, "done-" + who, arrived)

    def seen(now: float) -> int:
        for at, n in reversed(history):
            if at <= now - stale:
                return n
        return 0

    def decide(now: float) -> None:
        nonlocal own
        for _ in range(max(0, policy(seen(now), own))):
            own += 1
            server.queue.append(("o", now))
        admit(now)

    push(rnd.expovariate(rate), "arrival")
    push(0.0, "tick")
    while events:
        now, _, kind, arrived = heapq.heappop(events)
        if now > seconds:
            break
        if kind == "arrival":
            foreign += 1
            history.append((now, foreign))
            server.queue.append(("i", now))
            admit(now)
            push(now + rnd.expovariate(rate), "arrival")
        elif kind == "tick":
            decide(now)
            push(now + 0.1, "tick")
        else:
            server.running -= 1
            if kind == "done-i":
                foreign -= 1
                history.append((now, foreign))
                if now > warmup:
                    latencies.append(now - arrived)
            else:
                own -= 1
                own_done += now > warmup
            admit(now)
            decide(now)
    return latencies, own_done / (seconds - warmup)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def fixed(n: int) -> Policy:
    return lambda foreign, own: n - own


def reserve(r: int, slots: int) -> Policy:
    return lambda foreign, own: slots - r - foreign - own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--load", type=float, default=0.3)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--stale", type=float, default=0.1, help="age of a load reading, s")
    parser.add_argument("--window", type=float, default=300.0, help="a bench window, s")
    args = parser.parse_args()
    k, d = args.slots, args.latency
    common = {"slots": k, "latency": d, "load": args.load, "seconds": args.hours * 3600}
    spare = k / d * (1 - args.load)
    policies = [("no batch", fixed(0)), ("fixed 1", fixed(1)), ("fixed 2", fixed(2))]
    policies += [("fixed 3", fixed(3)), ("reserve 1", reserve(1, k)), ("reserve 2", reserve(2, k))]
    print(
        f"server: {k} slots x {d} s, interactive {args.load:.0%} (Poisson), "
        f"load read {args.stale} s late, {args.hours} h simulated"
    )
    for scheduling in ("fifo", "priority"):
        base = None
        print(f"\n{scheduling} server | interactive p99 | vs no batch | share of spare")
        for name, policy in policies:
            latencies, own_rps = simulate(
                policy, stale=args.stale, priority=scheduling == "priority", **common
            )
            value = p99(latencies)
            base = base or value
            print(f"  {name:10s} | {value:.3f} s | {value / base:.2f}x | {own_rps / spare:.0%}")
    short = {**common, "seconds": 60.0 + 30.0}
    estimates = sorted(
        p99(simulate(fixed(0), stale=args.stale, seed=s, **short)[0]) for s in range(40)
    )
    print(
        "\nno-batch p99 of one 30 s window, 40 seeds: "
        f"min {estimates[0]:.3f}, median {estimates[20]:.3f}, max {estimates[-1]:.3f} s"
    )
    window_spread(common, args.stale, args.window)


def window_spread(common: dict[str, float], stale: float, window: float, seeds: int = 40) -> None:
    """What one bench window of `window` s can say: the ratio `reserve 1` / no batch on the
    same arrivals (one seed, as the bench runs both on one seeded client), across seeds."""
    one = {**common, "seconds": 60.0 + window}
    for scheduling in ("fifo", "priority"):
        ratios, bases = [], []
        for seed in range(seeds):
            kw = {"stale": stale, "seed": seed, "priority": scheduling == "priority", **one}
            base = p99(simulate(fixed(0), **kw)[0])
            bases.append(base)
            ratios.append(p99(simulate(reserve(1, int(common["slots"])), **kw)[0]) / base)
        ratios.sort()
        bases.sort()
        at = [0, seeds // 10, seeds // 2, seeds - 1 - seeds // 10, seeds - 1]
        spread = ", ".join(f"{ratios[i]:.2f}" for i in at)
        print(
            f"{scheduling}: reserve 1 / no batch in one {window:g} s window, {seeds} seeds "
            f"(min, p10, median, p90, max): {spread}; no-batch p99 {bases[0]:.3f} to "
            f"{bases[-1]:.3f} s"
        )


if __name__ == "__main__":
    main()
