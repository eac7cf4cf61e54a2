"""Client commands: submit, batches, show, cancel, results, retry.

They speak the Batch API through the official openai SDK, so they work against
any overnight server and against other OpenAI-compatible Batch APIs. The server
and key come from --base-url / --api-key or OPENAI_BASE_URL / OPENAI_API_KEY.
What a person reads goes to stderr (progress, notes); what a script reads goes
to stdout (batch ids, tables, JSON, result lines).
"""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from overnight.cli.app import app
from overnight.cli.connection import (  # noqa: F401 - DEFAULT_BASE_URL is part of the CLI
    DEFAULT_BASE_URL,
    ApiKey,
    BaseUrl,
    Output,
    Poll,
    _err,
    _fail,
    _message,
    _out,
    api_errors,
    base_url_of,
    make_client,
)
from overnight.cli.failures import failures_table, fetch_summary
from overnight.cli.progress import (
    ago,
    cost_text,
    counts,
    status_text,
    summary,
    tokens,
)
from overnight.cli.results import write_results
from overnight.cli.running import (
    FailOnErrors,
    announce,
    check_input,
    check_output,
    follow_or_detach,
    see_through,
    start,
    to_stdout,
)
from overnight.cli.stream import Cursor, read_pages, resume_hint
from overnight.models import TERMINAL


class Outcome(StrEnum):
    succeeded = "succeeded"
    failed = "failed"


# --- creating batches ------------------------------------------------------------------------


def _endpoint_of(path: Path) -> str | None:
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    return None
                return url if isinstance(url, str) else None
    return None


def _parse_metadata(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--metadata takes KEY=VALUE, got {pair!r}", 2)
        out[key] = value
    return out


# --- commands ---------------------------------------------------------------------------------


@app.command(rich_help_panel="Client")
def submit(
    file: Annotated[Path, typer.Argument(help="The .jsonl file of requests.")],
    endpoint: Annotated[
        str | None,
        typer.Option(help="Batch endpoint (default: the url of the file's first line)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the batch until it ends.")] = False,
    output: Output = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE, repeatable.")
    ] = None,
    fail_on_errors: FailOnErrors = False,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload FILE and create a batch; prints the batch id. --wait (or -o) follows it."""
    check_input(file)
    check_output(output)
    meta = _parse_metadata(metadata)
    with api_errors(base_url, api_key):
        endpoint = endpoint or _endpoint_of(file) or "/v1/chat/completions"
        client = make_client(base_url, api_key)
        with file.open("rb") as fh:  # streamed by the SDK, not read into memory here
            batch = start(client, file.name, fh, endpoint, meta, output)
        code = see_through(client, batch, wait, output, poll, fail_on_errors)
    raise typer.Exit(code)


@app.command("batches", rich_help_panel="Client")
def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON list.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List recent batches."""
    with api_errors(base_url, api_key):
        page = make_client(base_url, api_key).batches.list(limit=limit)
        items = list(page.data)
    if as_json:
        print(json.dumps([b.model_dump(mode="json") for b in items], indent=2))
        return
    if not items:
        _err().print("no batches yet")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (
        ("ID", "left"),
        ("STATUS", "left"),
        ("MODEL", "left"),
        ("DONE", "right"),
        ("FAILED", "right"),
        ("TOTAL", "right"),
        ("TOKENS", "right"),
        ("COST", "right"),
        ("CREATED", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for b in items:
        completed, failed, total = counts(b)
        table.add_row(
            b.id,
            status_text(b.status),
            getattr(b, "model", None) or "—",
            str(completed),
            Text(str(failed), style="red" if failed else ""),
            str(total),
            str(tokens(b) or 0),
            cost_text(b),
            ago(b.created_at),
        )
    _out().print(table)


@app.command(rich_help_panel="Client")
def show(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw Batch object.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Show one batch: status, counts, tokens, cost, timeline, errors, files."""
    with api_errors(base_url, api_key):
        client = make_client(base_url, api_key)
        b = client.batches.retrieve(batch_id)
        if as_json:
            print(json.dumps(b.model_dump(mode="json"), indent=2))
            return
        failures = fetch_summary(client, b.id) if counts(b)[1] else None
    out = _out()
    completed, failed, total = counts(b)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("batch", b.id)
    grid.add_row("status", status_text(b.status))
    grid.add_row("endpoint", b.endpoint)
    grid.add_row("model", getattr(b, "model", None) or "—")
    done = completed + failed
    pct = f" ({100 * done / total:.0f} %)" if total else ""
    grid.add_row("requests", f"{completed} completed, {failed} failed, {total} total{pct}")
    usage = getattr(b, "usage", None)
    if usage is not None:
        grid.add_row(
            "tokens",
            f"{usage.input_tokens} in, {usage.output_tokens} out, {usage.total_tokens} total",
        )
    grid.add_row("estimated cost", cost_text(b))
    grid.add_row("input file", b.input_file_id)
    grid.add_row("output file", b.output_file_id or "—")
    grid.add_row("error file", b.error_file_id or "—")
    for name in (
        "created_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "expires_at",
    ):
        ts = getattr(b, name, None)
        if ts:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            grid.add_row(name.removesuffix("_at").replace("_", " "), f"{when}  ({ago(ts)})")
    for key, value in (b.metadata or {}).items():
        grid.add_row(f"metadata.{key}", value)
    out.print(grid)
    if b.errors and b.errors.data:
        table = Table("LINE", "CODE", "MESSAGE", box=box.SIMPLE_HEAD, title="errors")
        for e in b.errors.data:
            table.add_row(str(e.line or "—"), e.code or "", Text(e.message or ""))
        out.print(table)
    by_code = failures_table(failures) if failures else None
    if by_code is not None:
        out.print(by_code)


@app.command(rich_help_panel="Client")
def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a batch: requests in flight finish, the rest end as batch_cancelled."""
    with api_errors(base_url, api_key):
        b = make_client(base_url, api_key).batches.cancel(batch_id)
    print(f"{b.id} {b.status}")


@app.command(rich_help_panel="Client")
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    output: Output = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the batch to end first.")] = False,
    follow_lines: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Write lines as they finish, while the batch runs, in the order overnight "
            "ran them; ends when the batch does.",
        ),
    ] = False,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            help="Resume a stream from this cursor (printed by an earlier --follow); "
            "with -o FILE the lines are appended.",
            show_default=False,
        ),
    ] = None,
    outcome: Annotated[
        Outcome | None, typer.Option("--outcome", help="Only these lines (with --follow/--after).")
    ] = None,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Output and errors as one JSONL: in input order once it ends, or as they finish (-f)."""
    err = _err()
    check_output(output)
    with api_errors(base_url, api_key):
        client = make_client(base_url, api_key)
        if follow_lines or after is not None or outcome is not None:
            _stream(client, batch_id, output, after, outcome, follow_lines, poll, err)
            return
        b = client.batches.retrieve(batch_id)
        if b.status not in TERMINAL:
            if not wait:
                _fail(
                    f"{b.id} is {b.status}; results come when it ends (add --wait), "
                    "or as they finish with --follow"
                )
            b = follow_or_detach(client, b.id, poll, err)
        if not (b.output_file_id or b.error_file_id):
            summary(b, err)
            _fail(f"{b.id} ended {b.status} without results")
        write_results(client, b, output, err)


def _stream(
    client: Any,
    batch_id: str,
    output: Path | None,
    after: int | None,
    outcome: Outcome | None,
    follow_lines: bool,
    poll: float,
    err: Console,
) -> None:
    cursor = Cursor(after)
    file = None if output is None or to_stdout(output) else output
    # Resuming appends: the lines before the cursor are already in the file.
    sink = file.open("ab" if after is not None else "wb") if file else sys.stdout.buffer
    try:
        read_pages(
            client,
            batch_id,
            sink,
            cursor,
            follow=follow_lines,
            poll=poll,
            outcome=outcome.value if outcome else None,
        )
    except KeyboardInterrupt:
        err.print(f"\nstopped after {cursor.lines} lines", highlight=False)
        resume_hint(batch_id, cursor, err)
        raise typer.Exit(130) from None
    finally:
        if file:
            sink.close()
    where = f" to {file}" if file else ""
    err.print(f"wrote {cursor.lines} lines{where}; {batch_id} is {cursor.status}", highlight=False)
    if cursor.status not in TERMINAL:
        resume_hint(batch_id, cursor, err)


@app.command(rich_help_panel="Client")
def retry(
    batch_id: Annotated[
        str, typer.Argument(help="The ended batch whose failed or unfinished requests to rerun.")
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the new batch until it ends.")
    ] = False,
    output: Output = None,
    fail_on_errors: FailOnErrors = False,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A new batch of the requests of BATCH_ID that did not succeed (cancelled, expired too)."""
    import openai
    from openai.types import Batch

    err = _err()
    check_output(output)
    with api_errors(base_url, api_key):
        client = make_client(base_url, api_key)
        try:
            new = client.post(f"/batches/{batch_id}/retry", cast_to=Batch, body={})
        except openai.APIStatusError as exc:
            code = _error_code(exc)
            if code == "nothing_to_retry":
                err.print(f"nothing to retry: {_message(exc)}", highlight=False, markup=False)
                raise typer.Exit(0) from None
            if code == "batch_not_finished":
                _fail(_message(exc))
            raise
        announce(new.id, output, err)
        old = client.batches.retrieve(batch_id)
        completed, _failed, total = counts(old)
        err.print(
            f"retrying {total - completed} of {total} requests of {batch_id} as {new.id}",
            highlight=False,
        )
        status = see_through(client, new, wait, output, poll, fail_on_errors)
    raise typer.Exit(status)


def _error_code(exc: Any) -> str | None:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    return str(inner.get("code")) if isinstance(inner, dict) and inner.get("code") else None
