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


def test_rate_from_the_ledgers_last_minute_and_eta() -> None:
    # 30 done in the 600 s since it started (0.05/s on average), 12 of them in the last
    # minute: the current rate is 12/60, whoever watched before or not.
    b = running(30, started=1000)
    assert views.rate(b, recent=12, t=1600.0) == 0.2
    view = views.batch_view(b, (), recent=12, t=1600.0)
    assert view["rate"] == 0.2 and view["eta_seconds"] == 350.0  # 70 left at 0.2/s
    assert view["percent"] == 30.0 and view["done"] == 30
    # Younger than a minute: over the time it has run.
    assert views.rate(running(10), recent=10, t=1005.0) == 2.0
    # Nothing finished lately: no throughput, no ETA (not a guess from the average).
    stalled = views.batch_view(b, (), recent=0, t=1600.0)
    assert stalled["rate"] == 0.0 and stalled["eta_seconds"] is None
    # Once it has ended: the average over its run.
    b.status, b.completed, b.completed_at = "completed", 100, 1050
    assert views.rate(b, recent=None, t=9999.0) == 2.0


def test_a_ledger_count_serves_a_few_seconds() -> None:
    counts = views.RecentCounts(max_batches=2)
    counts.put("a", 100.0, 7)
    assert counts.get("a", 104.9) == (100.0, 7)
    assert counts.get("a", 100.0 + views.RATE_REUSE) is None  # counted again
    counts.put("b", 100.0, 1)
    counts.put("c", 100.0, 2)  # the oldest batch goes
    assert counts.get("a", 101.0) is None and counts.get("c", 101.0) == (100.0, 2)


def test_samples_are_kept_a_second_apart() -> None:
    history = views.ProgressHistory()
    history.record(running(10), t=1010.0)
    history.record(running(10), t=1010.5)  # too soon after the last sample: skipped
    history.record(running(30), t=1020.0)
    assert history.samples("batch_1") == [(1010.0, 10), (1020.0, 30)]


def test_the_ledgers_curve_goes_before_the_samples() -> None:
    b = running(40, started=1000)
    b.status, b.completed, b.completed_at = "completed", 100, 1120
    start, step, buckets = views.curve_span(b, t=5000.0) or (0.0, 0.0, 0)
    assert (start, step, buckets) == (1000.0, 2.0, 60)  # 120 s in 60 points
    assert views.curve_span(running(1), t=1000.5) == (1000.0, 1.0, 1)
    assert views.curve_points(1000.0, 10.0, [5, 0, 7], t=1025.0) == [
        (1010.0, 5),
        (1020.0, 5),
        (1025.0, 12),  # the last bucket ends now, not in the future
    ]
    history = views.ProgressHistory()
    history.record(running(30), t=1030.0)
    assert not history.seeded("batch_1")
    history.seed("batch_1", [(1010.0, 10), (1020.0, 20), (1030.0, 30), (1040.0, 40)])
    assert history.seeded("batch_1")
    assert history.samples("batch_1") == [(1010.0, 10), (1020.0, 20), (1030.0, 30)]
    small = views.ProgressHistory(max_batches=1)
    small.seed("a", [(1.0, 1)])
    small.record(running(1), t=1001.0)  # batch_1 takes the only place
    assert not small.seeded("a") and small.samples("a") == []


def test_an_all_failed_batch_wears_no_green() -> None:
    b = running(0)
    b.status, b.failed = "completed", 100
    assert views.badge(b) == ("s-all_failed", "completed · all failed")
    b.completed, b.failed = 60, 40
    assert views.badge(b) == ("s-some_failed", "completed · some failed")
    b.failed = 0
    assert views.badge(b) == ("s-completed", "completed")
    assert views.badge(running(5)) == ("s-in_progress", "in progress")


def test_chart_points_span_the_run() -> None:
    history = views.ProgressHistory()
    history.record(running(50), t=1005.0)
    b = running(100)
    b.status, b.finalizing_at, b.completed_at = "completed", 1010, 1010
    points = views.progress_points(b, history)
    assert points == [(1000.0, 0), (1005.0, 50), (1010.0, 100)]
    late = views.ProgressHistory()
    late.record(running(90), t=1010.6)  # after the whole second the batch says it ended
    assert views.progress_points(b, late)[-1] == (1010.6, 100)  # never back in time
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
