"""Why requests failed, by error code: overnight's results summary route, as a table.

One row per code with its count, the model the user wrote in the request and one sample
message, so a run of 10,000 lines that failed for two reasons reads as two lines.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from overnight.cli.connection import sdk_http

MAX_MESSAGE = 160


def fetch_summary(client: Any, batch_id: str) -> dict[str, Any] | None:
    """The summary, or None where the server has no such route (another Batch API)."""
    import openai

    try:
        path = f"/batches/{batch_id}/results/summary"
        response = client.get(path, cast_to=sdk_http().Response)
        body = response.json()
    except (openai.APIStatusError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def failures_table(summary: dict[str, Any]) -> Table | None:
    rows = [f for f in summary.get("failures") or [] if isinstance(f, dict)]
    if not rows:
        return None
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, title="failures by code", title_justify="left"
    )
    table.add_column("COUNT", justify="right", no_wrap=True)
    table.add_column("CODE", no_wrap=True)
    table.add_column("MODEL", no_wrap=True)
    table.add_column("SAMPLE MESSAGE")
    for f in rows:
        message = str(f.get("message") or "")
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        table.add_row(
            str(f.get("count", "")),
            Text(str(f.get("code") or "—"), style="red"),
            str(f.get("model") or "—"),
            Text(message),
        )
    return table


def print_failures(client: Any, batch_id: str, console: Console) -> None:
    summary = fetch_summary(client, batch_id)
    table = failures_table(summary) if summary else None
    if table is not None:
        console.print(table)
