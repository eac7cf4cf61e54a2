"""OpenTelemetry traces, exported over OTLP/HTTP: the `otel` extra, on with OVERNIGHT_TRACING=1.

A batch is one trace, whichever processes work on it: its trace id is derived from
the batch id, so the spans that API and worker processes export for it line up
without passing a context through the database. Spans:

- `batch.validate`, `batch.finalize`: the scheduler's jobs, as long as they run;
- `batch.run`: from when this process starts sending the batch's requests until the
  batch stops running here;
- `upstream.attempt` (a child of `batch.run`): one attempt to send one request, with
  the batch id, custom_id, model, attempt number, outcome and HTTP status. The
  upstream gets the attempt's W3C `traceparent`, so a vLLM started with
  `--otlp-traces-endpoint` puts its own spans under it.

Off (the default), `enabled` is False and the engine's hot path checks only that.
The OpenTelemetry SDK is imported only when tracing is turned on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from overnight import __version__, logs
from overnight.errors import ConfigError
from overnight.settings import Settings

enabled = False

_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_runs: dict[str, Any] = {}  # batch id -> its open `batch.run` span in this process
_next_trace_id: int | None = None  # read by the id generator while a batch's span starts


def batch_trace_id(batch_id: str) -> int:
    """The trace id of every span of `batch_id` (128 bits, never the invalid 0)."""
    return int.from_bytes(hashlib.sha256(batch_id.encode()).digest()[:16], "big") or 1


def configure(settings: Settings) -> None:
    """Start exporting spans if the settings turn tracing on."""
    global enabled, _tracer, _provider, _propagator
    if not settings.tracing or enabled:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError(
            "OVERNIGHT_TRACING is on but OpenTelemetry is not installed: "
            "pip install 'overnight[otel]'"
        ) from None

    class BatchIds(RandomIdGenerator):
        """Random ids, except the trace id of a span that starts a batch's part."""

        def generate_trace_id(self) -> int:
            return _next_trace_id if _next_trace_id is not None else super().generate_trace_id()

    resource = Resource.create(
        {"service.name": settings.service_name, "service.version": __version__}
    )
    _provider = TracerProvider(resource=resource, id_generator=BatchIds())
    exporter = OTLPSpanExporter(endpoint=settings.otlp_traces_endpoint)
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = _provider.get_tracer("overnight", __version__)
    _propagator = TraceContextTextMapPropagator()

    def current_ids() -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    logs.current_trace = current_ids
    enabled = True


def shutdown() -> None:
    """End the open spans and send what is left (at the process's end)."""
    global enabled
    if not enabled:
        return
    for batch_id in list(_runs):
        run_ended(batch_id)
    enabled = False
    logs.current_trace = None
    _provider.shutdown()


def _start(name: str, batch_id: str, parent: Any = None, **kwargs: Any) -> Any:
    """A span of `batch_id`'s trace: under `parent`, or a root in that trace."""
    global _next_trace_id
    from opentelemetry import trace
    from opentelemetry.context import Context

    if parent is not None:
        return _tracer.start_span(name, context=trace.set_span_in_context(parent), **kwargs)
    _next_trace_id = batch_trace_id(batch_id)
    try:
        return _tracer.start_span(name, context=Context(), **kwargs)
    finally:
        _next_trace_id = None


@contextmanager
def phase(name: str, batch_id: str) -> Iterator[None]:
    """`with phase("validate", batch.id):` one span for one job on a batch."""
    if not enabled:
        yield
        return
    from opentelemetry import trace

    span = _start(f"batch.{name}", batch_id, attributes={"overnight.batch.id": batch_id})
    with trace.use_span(span, end_on_exit=True):
        yield


def run_started(batch_id: str, model: str) -> None:
    if batch_id not in _runs:
        attributes = {"overnight.batch.id": batch_id, "gen_ai.request.model": model}
        _runs[batch_id] = _start("batch.run", batch_id, attributes=attributes)


def run_ended(batch_id: str) -> None:
    span = _runs.pop(batch_id, None)
    if span is not None:
        span.end()


def runs_now(batches: dict[str, str]) -> None:
    """The batches (id -> model) this process is running now: open and end `batch.run`."""
    for batch_id in [b for b in _runs if b not in batches]:
        run_ended(batch_id)
    for batch_id, model in batches.items():
        run_started(batch_id, model)


@contextmanager
def attempt(batch_id: str, model: str, custom_id: str, number: int) -> Iterator[Any]:
    """The span of one upstream attempt, current while it runs (for `traceparent`)."""
    from opentelemetry import trace

    attributes = {
        "overnight.batch.id": batch_id,
        "overnight.request.custom_id": custom_id,
        "overnight.attempt": number,
        "gen_ai.request.model": model,
    }
    span = _start(
        "upstream.attempt",
        batch_id,
        _runs.get(batch_id),
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
    )
    with trace.use_span(span, end_on_exit=True, record_exception=True):
        yield span


def attempt_outcome(span: Any, outcome: str) -> None:
    """What became of the attempt (overnight.metrics.OUTCOMES); all but "ok" are errors."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("overnight.outcome", outcome)
    if outcome != "ok":
        span.set_status(Status(StatusCode.ERROR, outcome))


def upstream_status(status: int) -> None:
    """The HTTP status the upstream answered the current attempt with."""
    from opentelemetry import trace

    trace.get_current_span().set_attribute("http.response.status_code", status)


def trace_headers() -> bytes:
    """`traceparent` (and `tracestate`) of the current span, as HTTP/1.1 header lines."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return "".join(f"{name}: {value}\r\n" for name, value in carrier.items()).encode("latin-1")
