"""What the progress display computes: the rate as done/elapsed, and a validating batch
shown as just that (no "0/?", no "ETA 0:00:00")."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from rich.console import Console

from overnight.cli.progress import _follow_bar, eta_of, progress_line, rate_of


def batch(status: str, completed: int, failed: int, total: int, **times: int) -> Any:
    counts = SimpleNamespace(completed=completed, failed=failed, total=total)
    fields = dict.fromkeys(
        ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "cancelled_at"), None
    )
    fields["expired_at"] = None
    fields.update(times)
    return SimpleNamespace(id="batch_1", status=status, request_counts=counts, **fields)


def test_rate_is_done_over_elapsed_since_the_batch_started() -> None:
    # The run the issue saw: 83 requests in 100 s is 0.83 req/s, whatever the last poll saw.
    running = batch("in_progress", 80, 3, 200, in_progress_at=1_000)
    assert rate_of(running, now=1_100) == 0.83
    assert eta_of(running, 0.83) == (200 - 83) / 0.83
    assert progress_line(running, 0.83) == (
        "batch_1 in_progress: 83/200 done, 3 failed, 0.83 req/s, ETA 2m21s"
    )
    # Once it is over, the time after the last answer does not count.
    done = batch("completed", 100, 0, 100, in_progress_at=1_000, finalizing_at=1_050)
    assert rate_of(done, now=9_999) == 2.0 and eta_of(done, 2.0) is None
    assert rate_of(batch("validating", 0, 0, 0), now=5) is None
    assert rate_of(batch("in_progress", 0, 0, 10, in_progress_at=1_000), now=1_100) is None


class OneBatch:
    """batches.retrieve() for _follow_bar: the batches given, one per poll."""

    def __init__(self, *seen: Any) -> None:
        self.seen = list(seen)
        self.batches = self

    def retrieve(self, _id: str) -> Any:
        return self.seen.pop(0)


def test_bar_shows_validating_without_counts_or_eta() -> None:
    console = Console(record=True, force_terminal=True, width=120)
    validating = batch("validating", 0, 0, 0)
    _follow_bar(OneBatch(batch("completed", 4, 0, 4)), validating, 0.0, console)
    text = console.export_text()
    # Frames are redrawn in place: split where each begins, at its status.
    frames = [f for f in re.split(r"(?=validating|completed)", text) if "validating" in f]
    assert frames, text
    for frame in frames:
        assert "/?" not in frame and "ETA" not in frame and "req/s" not in frame, frame
        assert "failed" not in frame, frame
    assert "4/4" in text and "0 failed" in text
