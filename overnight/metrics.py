"""Prometheus metrics, served at GET /metrics (the route is in overnight/web/routes.py).

The engine's hot path only bumps plain integers on a per-route `RouteStats`
(no labels looked up, no locks: everything runs on one event loop); they are
turned into metric families when Prometheus scrapes. Gauges that describe the
store (batches by status, ledger backlog) are read from the database at
scrape time, so any process, API-only included, reports the same numbers.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from overnight.models import Usage
from overnight.webhooks import outcomes as webhook_outcomes

# Upstream latency buckets (seconds): from a fast local server to a long generation.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# What became of one attempt to send a request upstream.
OUTCOMES = ("ok", "error_response", "retried", "gave_up", "internal_error", "unreachable")
OK, ERROR_RESPONSE, RETRIED, GAVE_UP, INTERNAL_ERROR, UNREACHABLE = range(len(OUTCOMES))


class RouteStats:
    """Counters for one route (model server); the runner keeps a reference per lane."""

    __slots__ = ("buckets", "in_flight", "input_tokens", "latency_sum", "outcomes", "output_tokens")

    def __init__(self) -> None:
        self.outcomes = [0] * len(OUTCOMES)
        self.buckets = [0] * (len(BOUNDS) + 1)
        self.latency_sum = 0.0
        self.in_flight = 0
        self.input_tokens = 0
        self.output_tokens = 0

    def sent(self) -> float:
        self.in_flight += 1
        return time.perf_counter()

    def done(self, started: float, outcome: int, usage: Usage | None = None) -> None:
        seconds = time.perf_counter() - started
        self.in_flight -= 1
        self.buckets[bisect_left(BOUNDS, seconds)] += 1
        self.latency_sum += seconds
        self.outcomes[outcome] += 1
        if usage is not None:
            self.input_tokens += usage.input_tokens
            self.output_tokens += usage.output_tokens


_routes: dict[str, RouteStats] = {}


def route_stats(route: str) -> RouteStats:
    stats = _routes.get(route)
    if stats is None:
        stats = _routes[route] = RouteStats()
    return stats


def _engine_families() -> Iterator[Metric]:
    requests_total = CounterMetricFamily(
        "overnight_upstream_requests",
        "Attempts to send a batch request upstream, by route and outcome "
        "(ok: 2xx; error_response: final non-2xx answer; retried: transient, sent again later; "
        "gave_up: transient and out of attempts; internal_error: a bug in overnight; "
        "unreachable: no connection could be made, sent again without spending an attempt).",
        labels=["route", "outcome"],
    )
    latency = HistogramMetricFamily(
        "overnight_upstream_latency_seconds",
        "Time from sending a request upstream to its answer (or failure).",
        labels=["route"],
    )
    in_flight = GaugeMetricFamily(
        "overnight_upstream_in_flight",
        "Requests sent upstream and not answered yet.",
        labels=["route"],
    )
    tokens = CounterMetricFamily(
        "overnight_tokens",
        "Tokens in successful answers, as reported by the upstream's usage.",
        labels=["route", "kind"],
    )
    for route, s in sorted(_routes.items()):
        for name, value in zip(OUTCOMES, s.outcomes, strict=True):
            requests_total.add_metric([route, name], value)
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BOUNDS), "+Inf"), s.buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency.add_metric([route], buckets, sum_value=s.latency_sum)
        in_flight.add_metric([route], s.in_flight)
        tokens.add_metric([route, "input"], s.input_tokens)
        tokens.add_metric([route, "output"], s.output_tokens)
    webhooks = CounterMetricFamily(
        "overnight_webhook_deliveries",
        "Webhook delivery attempts by outcome.",
        labels=["outcome"],
    )
    for name, value in webhook_outcomes.items():
        webhooks.add_metric([name], value)
    yield from (requests_total, latency, in_flight, tokens, webhooks)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _store_families(app: Any) -> list[Metric]:
    svc = getattr(app.state, "services", None)
    if svc is None:
        return []
    stats = await svc.store.stats()
    status_family = GaugeMetricFamily(
        "overnight_batches", "Batches in the store by status.", labels=["status"]
    )
    for status, n in stats.batches_by_status.items():
        status_family.add_metric([status], n)
    backlog_family = GaugeMetricFamily(
        "overnight_ledger_backlog",
        "Requests of open batches not finished yet (pending: waiting to be sent; "
        "leased: claimed by a worker).",
        labels=["state"],
    )
    backlog_family.add_metric(["pending"], stats.pending)
    backlog_family.add_metric(["leased"], stats.leased)
    stored_tokens = GaugeMetricFamily(
        "overnight_batch_tokens",
        "Tokens used by every batch in the store (from the batches' usage).",
        labels=["kind"],
    )
    stored_tokens.add_metric(["input"], stats.input_tokens)
    stored_tokens.add_metric(["output"], stats.output_tokens)
    families: list[Metric] = [status_family, backlog_family, stored_tokens]
    scheduler = getattr(app.state, "scheduler", None)
    if scheduler is not None:
        concurrency = GaugeMetricFamily(
            "overnight_route_concurrency",
            "The adaptive concurrency limit of each route, right now.",
            labels=["route"],
        )
        for key, current in sorted(scheduler.route_concurrency().items()):
            concurrency.add_metric([key], current)
        families.append(concurrency)
    return families


async def render(app: Any) -> tuple[bytes, str]:
    """The exposition text for one scrape, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*_engine_families(), *await _store_families(app)]))
    # The default registry adds process_* and python_* metrics of this process.
    return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
