"""The dashboard's numbers: throughput, ETA, the progress chart, failure messages."""

from __future__ import annotations

from overnight.models import Batch
from overnight.web import views


def running(done: int, total: int = 100, started: int = 1000) -> Batch:
    return Batch(
        "batch_1",
        "p",
        "/v1/chat/completions",
        "file-1",
        "24h",
        "in_progress",
        started,
        started + 86400,
        model="m",
        in_progress_at=started,
        total=total,
        completed=done,
    )


def test_rate_from_recent_samples_and_eta() -> None:
    history = views.ProgressHistory()
    history.record(running(10), t=1010.0)
    history.record(running(10), t=1010.5)  # too soon after the last sample: skipped
    history.record(running(30), t=1020.0)
    assert history.samples("batch_1") == [(1010.0, 10), (1020.0, 30)]
    assert history.rate(running(30), t=1020.0) == 2.0
    # Without recent samples: the average since the batch started.
    assert views.ProgressHistory().rate(running(30), t=1030.0) == 1.0
    view = views.batch_view(running(30), history, ())
    assert view["percent"] == 30.0 and view["done"] == 30


def test_chart_points_span_the_run() -> None:
    history = views.ProgressHistory()
    history.record(running(50), t=1005.0)
    b = running(100)
    b.status, b.finalizing_at, b.completed_at = "completed", 1010, 1010
    points = views.progress_points(b, history)
    assert points == [(1000.0, 0), (1005.0, 50), (1010.0, 100)]
    chart = views.chart(points, 100, width=104, height=104)
    assert chart["polyline"] == "4.0,100.0 52.0,52.0 100.0,4.0"
    assert views.chart([(1000.0, 0), (1001.0, 100)], 100)["polyline"] == ""  # too quick


def test_failed_request_messages() -> None:
    answered = {
        "line": 3,
        "custom_id": "a",
        "status_code": 400,
        "response": b'{"error": {"message": "bad", "type": "invalid_request_error"}}',
    }
    assert views.failed_view(answered)["message"] == "bad"
    unanswered = {
        "line": 4,
        "custom_id": "b",
        "status_code": None,
        "response": None,
        "error": '{"code": "batch_expired", "message": "too late"}',
    }
    assert views.failed_view(unanswered)["code"] == "batch_expired"


def test_formats() -> None:
    assert views.fmt_duration(75) == "1m 15s" and views.fmt_duration(None) == "—"
    assert views.fmt_bytes(2048) == "2.0 KB"
    assert views.fmt_cost({"currency": "USD", "amount": 0.00123}) == "$0.0012"
    assert views.fmt_cost({"currency": "EUR", "amount": 12.5}) == "EUR 12.50"
