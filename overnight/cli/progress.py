"""Following a batch: a live rich bar on a terminal, plain lines otherwise; summaries."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from overnight.models import TERMINAL

PLAIN_EVERY = 2.0  # seconds between progress lines when stderr is not a terminal
STATUS_STYLE = {
    "validating": "cyan",
    "in_progress": "blue",
    "finalizing": "magenta",
    "completed": "green",
    "failed": "red",
    "expired": "yellow",
    "cancelling": "dim",
    "cancelled": "dim",
}


def extra(obj: Any, name: str) -> Any:
    """A field the SDK's model does not declare (such as overnight's estimated_cost)."""
    fields = getattr(obj, "model_extra", None) or {}
    return fields.get(name)


def cost_text(batch: Any) -> str:
    cost = extra(batch, "estimated_cost")
    if not isinstance(cost, dict) or cost.get("amount") is None:
        return "—"
    amount = float(cost["amount"])
    currency = cost.get("currency") or "USD"
    symbol = "$" if currency == "USD" else f"{currency} "
    return f"{symbol}{amount:,.2f}" if amount >= 1 else f"{symbol}{amount:.4f}"


def counts(batch: Any) -> tuple[int, int, int]:
    rc = batch.request_counts
    if rc is None:
        return 0, 0, 0
    return rc.completed or 0, rc.failed or 0, rc.total or 0


def tokens(batch: Any) -> int | None:
    usage = getattr(batch, "usage", None)
    return getattr(usage, "total_tokens", None) if usage is not None else None


def ago(ts: int | None) -> str:
    if not ts:
        return "—"
    seconds = int(time.time()) - int(ts)
    ahead, seconds = seconds < 0, abs(seconds)
    text = f"{seconds}s"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    return f"in {text}" if ahead else f"{text} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} req/s" if speed else "- req/s", style="progress.data.speed")


class _Rate:
    """Requests finished per second over the last 30 s of polls (plain output)."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, done: int) -> float | None:
        t = time.monotonic()
        self.samples.append((t, done))
        while len(self.samples) > 2 and t - self.samples[0][0] > 30:
            self.samples.popleft()
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 1.0 and d1 > d0 else None


def progress_line(batch: Any, rate: float | None) -> str:
    completed, failed, total = counts(batch)
    done = completed + failed
    if total == 0 and batch.status == "validating":
        return f"{batch.id} validating"
    parts = [f"{batch.id} {batch.status}: {done}/{total} done", f"{failed} failed"]
    if rate:
        parts.append(f"{rate:.1f} req/s")
        if batch.status == "in_progress" and total > done:
            parts.append(f"ETA {duration((total - done) / rate)}")
    return ", ".join(parts)


def follow(client: Any, batch_id: str, poll: float, err: Console) -> Any:
    """Poll until the batch is terminal: a live bar on a terminal, plain lines otherwise."""
    batch = client.batches.retrieve(batch_id)
    if err.is_terminal:
        return _follow_bar(client, batch, poll, err)
    rate = _Rate()
    last_line, last_at, last_status = "", 0.0, None
    while True:
        r = rate.add(sum(counts(batch)[:2]))
        line = progress_line(batch, r)
        now = time.monotonic()
        if batch.status != last_status or (line != last_line and now - last_at >= PLAIN_EVERY):
            err.print(line, highlight=False, soft_wrap=True)
            last_line, last_at, last_status = line, now, batch.status
        if batch.status in TERMINAL:
            return batch
        time.sleep(poll)
        batch = client.batches.retrieve(batch_id)


def _follow_bar(client: Any, batch: Any, poll: float, err: Console) -> Any:
    columns = (
        TextColumn("[bold]{task.fields[status]:<11}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("[red]{task.fields[failed]} failed"),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, expand=True) as bar:
        task = bar.add_task(batch.id, total=None, status=batch.status, failed=0)
        while True:
            completed, failed, total = counts(batch)
            bar.update(
                task,
                total=total or None,
                completed=completed + failed,
                status=batch.status,
                failed=failed,
            )
            if batch.status in TERMINAL:
                return batch
            time.sleep(poll)
            batch = client.batches.retrieve(batch.id)


def summary(batch: Any, err: Console) -> None:
    completed, failed, total = counts(batch)
    style = STATUS_STYLE.get(batch.status, "")
    line = (
        f"[{style}]{batch.status}[/{style}]: {completed} completed, {failed} failed of {total}"
        f"; tokens {tokens(batch) or 0}; estimated cost {cost_text(batch)}"
    )
    err.print(line, highlight=False)
    if batch.errors and batch.errors.data:
        for e in batch.errors.data[:10]:
            where = f"line {e.line}: " if e.line else ""
            err.print(f"  {where}{e.code}: {e.message}", highlight=False, markup=False)
    if failed and batch.status in TERMINAL:
        err.print(f"retry the failed requests: overnight retry {batch.id}", highlight=False)


def exit_code(batch: Any) -> int:
    return 0 if batch.status == "completed" else 1
