"""Following a batch: a live rich bar on a terminal, plain lines otherwise; summaries."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
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


# When requests stopped finishing, for a batch that is over (or winding up).
_ENDS = ("finalizing_at", "completed_at", "failed_at", "cancelled_at", "expired_at")


def rate_of(batch: Any, now: float | None = None) -> float | None:
    """Requests finished per second since the batch started running: done / elapsed.

    An average over the whole run, not over the last polls: answers arrive in bursts
    (a window of concurrent requests ending together), and a short window turned one
    burst into a rate ten times the run's."""
    started = getattr(batch, "in_progress_at", None)
    completed, failed, _total = counts(batch)
    done = completed + failed
    if not started or not done:
        return None
    ended = next((getattr(batch, f, None) for f in _ENDS if getattr(batch, f, None)), None)
    elapsed = (ended or (time.time() if now is None else now)) - started
    return done / elapsed if elapsed >= 1.0 else None


def eta_of(batch: Any, rate: float | None) -> float | None:
    completed, failed, total = counts(batch)
    remaining = total - completed - failed
    if not rate or batch.status != "in_progress" or remaining <= 0:
        return None
    return remaining / rate


def _counting(task: Task) -> bool:
    """Whether the bar has a total: while validating there is none, only the status."""
    return task.total is not None and task.fields.get("status") != "validating"


class CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if not _counting(task):
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total or 0)}", style="progress.download")


class FailedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.fields['failed']} failed", style="red") if _counting(task) else Text("")


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if not _counting(task):
            return Text("")
        rate = task.fields.get("rate")
        return Text(f"{rate:.2f} req/s" if rate else "- req/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta")
        if not _counting(task) or eta is None:
            return Text("")
        return Text(f"ETA {duration(eta)}", style="progress.remaining")


def progress_line(batch: Any, rate: float | None) -> str:
    completed, failed, total = counts(batch)
    done = completed + failed
    if total == 0 and batch.status == "validating":
        return f"{batch.id} validating"
    parts = [f"{batch.id} {batch.status}: {done}/{total} done", f"{failed} failed"]
    if rate:
        parts.append(f"{rate:.2f} req/s")
        eta = eta_of(batch, rate)
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
    return ", ".join(parts)


def follow(client: Any, batch_id: str, poll: float, err: Console) -> Any:
    """Poll until the batch is terminal: a live bar on a terminal, plain lines otherwise."""
    batch = client.batches.retrieve(batch_id)
    if err.is_terminal:
        return _follow_bar(client, batch, poll, err)
    last_line, last_at, last_status = "", 0.0, None
    while True:
        line = progress_line(batch, rate_of(batch))
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
        CountColumn(),
        FailedColumn(),
        RateColumn(),
        EtaColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, expand=True) as bar:
        task = bar.add_task(batch.id, total=None, status=batch.status, failed=0)
        while True:
            completed, failed, total = counts(batch)
            rate = rate_of(batch)
            bar.update(
                task,
                total=total or None,
                completed=completed + failed,
                status=batch.status,
                failed=failed,
                rate=rate,
                eta=eta_of(batch, rate),
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


FAILED_REQUESTS_EXIT = 3  # --fail-on-errors: the batch completed, some of its requests failed


def exit_code(batch: Any, fail_on_errors: bool = False) -> int:
    if batch.status != "completed":
        return 1
    return FAILED_REQUESTS_EXIT if fail_on_errors and counts(batch)[1] else 0
