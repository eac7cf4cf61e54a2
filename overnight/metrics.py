"""Prometheus metrics, served at GET /metrics (overnight/web/routes.py) and, for a
worker, on its own port (overnight/metrics_server.py). Names: docs/observability.md.

The engine's hot path only bumps plain integers on a per-route `RouteStats`
(no labels looked up, no locks: everything runs on one event loop); they are
turned into metric families when Prometheus scrapes. Gauges that describe the
store (batches by status, ledger backlog) are read from the database at
scrape time, so any process, API-only included, reports the same numbers.
Counters are named without `_total`: prometheus-client adds it to the samples.
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
from overnight.settings import DEFAULT_ROUTE
from overnight.webhooks import outcomes as webhook_outcomes

# Upstream latency buckets (seconds): from a fast local server to a long generation.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# API requests (seconds): most answer in milliseconds; uploads and downloads take longer.
API_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Batches and their phases (seconds): from a one-line test batch to the longest window.
BATCH_BOUNDS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, 14400.0, 28800.0, 43200.0, 86400.0, 172800.0, 604800.0,
)  # fmt: skip
# The catch-all route (`[models."*"]`, OVERNIGHT_UPSTREAM_URL or the embedded model)
# serves every model name, so no model name fits it: its label is this word.
DEFAULT_ROUTE_LABEL = "default"

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


class Histogram:
    """Observations counted into fixed buckets, for the families built at scrape time."""

    __slots__ = ("bounds", "buckets", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


def _cumulative(bounds: tuple[float, ...], buckets: list[int]) -> list[tuple[str, float]]:
    total, out = 0, []  # type: tuple[int, list[tuple[str, float]]]
    for bound, count in zip((*map(str, bounds), "+Inf"), buckets, strict=True):
        total += count
        out.append((bound, total))
    return out


def route_label(key: str) -> str:
    """A route's name as /metrics shows it: the catch-all "*" reads "default"."""
    return DEFAULT_ROUTE_LABEL if key == DEFAULT_ROUTE else key


_routes: dict[str, RouteStats] = {}
# (method, path template, status) -> durations of the API's answers.
_api: dict[tuple[str, str, str], Histogram] = {}
_batches: dict[str, Histogram] = {}  # final status -> created..closed
_phases: dict[str, Histogram] = {}  # validate, run, finalize


def api_request(method: str, handler: str, status: int, seconds: float) -> None:
    key = (method, handler, str(status))
    histogram = _api.get(key)
    if histogram is None:
        histogram = _api[key] = Histogram(API_BOUNDS)
    histogram.observe(seconds)


def _observe(table: dict[str, Histogram], key: str, seconds: float) -> None:
    histogram = table.get(key)
    if histogram is None:
        histogram = table[key] = Histogram(BATCH_BOUNDS)
    histogram.observe(max(0.0, seconds))


def batch_ended(status: str, seconds: float) -> None:
    """A batch this process closed: `seconds` from its creation to its final status."""
    _observe(_batches, status, seconds)


def batch_phase(phase: str, seconds: float) -> None:
    """One phase of a batch: validate and finalize as this process ran them; run from
    in_progress to finalizing, measured when the batch is finalized."""
    _observe(_phases, phase, seconds)


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
    for key, s in sorted(_routes.items()):
        route = route_label(key)
        for name, value in zip(OUTCOMES, s.outcomes, strict=True):
            requests_total.add_metric([route, name], value)
        latency.add_metric([route], _cumulative(BOUNDS, s.buckets), sum_value=s.latency_sum)
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
    yield from _duration_families()


def _histogram_family(
    name: str, documentation: str, labels: list[str], series: dict[Any, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, h in sorted(series.items()):
        values = list(key) if isinstance(key, tuple) else [key]
        family.add_metric(values, _cumulative(h.bounds, h.buckets), h.sum)
    return family


def _duration_families() -> Iterator[Metric]:
    yield _histogram_family(
        "overnight_api_request_duration_seconds",
        "Time the HTTP API took to answer, by method, path template and status code "
        "(a download: until its last byte was handed to the server).",
        ["method", "handler", "status"],
        _api,
    )
    yield _histogram_family(
        "overnight_batch_duration_seconds",
        "Time from a batch's creation to its final status, for the batches this process "
        "closed (completed, failed, expired, cancelled).",
        ["status"],
        _batches,
    )
    yield _histogram_family(
        "overnight_batch_phase_duration_seconds",
        "Time a batch spent in one phase: validate and finalize (as this process ran them), "
        "run (from in_progress to finalizing).",
        ["phase"],
        _phases,
    )


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


async def _store_families(svc: Any, scheduler: Any) -> list[Metric]:
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
    # Batches are never deleted and their usage only grows: a counter (read from the store).
    stored_tokens = CounterMetricFamily(
        "overnight_batch_tokens",
        "Tokens used by every batch in the store (from the batches' usage).",
        labels=["kind"],
    )
    stored_tokens.add_metric(["input"], stats.input_tokens)
    stored_tokens.add_metric(["output"], stats.output_tokens)
    families: list[Metric] = [status_family, backlog_family, stored_tokens]
    if scheduler is not None:
        concurrency = GaugeMetricFamily(
            "overnight_route_concurrency",
            "The adaptive concurrency limit of each route, right now.",
            labels=["route"],
        )
        for key, current in sorted(scheduler.route_concurrency().items()):
            concurrency.add_metric([route_label(key)], current)
        families.append(concurrency)
    return families


async def render(services: Any, scheduler: Any = None) -> tuple[bytes, str]:
    """The exposition text for one scrape, and its content type. `services`: the process's
    `Services` (None while starting); `scheduler`: its executor, if it runs one."""
    registry = CollectorRegistry(auto_describe=False)
    store = await _store_families(services, scheduler)
    registry.register(_Families([*_engine_families(), *store]))
    # The default registry adds process_* and python_* metrics of this process.
    return generate_latest(REGISTRY) + generate_latest(registry), CONTENT_TYPE_LATEST
