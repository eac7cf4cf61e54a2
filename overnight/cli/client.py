"""Client commands: submit, batches, show, cancel, results, retry.

They speak the Batch API through the official openai SDK, so they work against
any overnight server and against other OpenAI-compatible Batch APIs. The server
and key come from --base-url / --api-key or OPENAI_BASE_URL / OPENAI_API_KEY.
What a person reads goes to stderr (progress, notes); what a script reads goes
to stdout (batch ids, tables, JSON, result lines).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, BinaryIO

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
from overnight.cli.progress import (
    ago,
    cost_text,
    counts,
    exit_code,
    follow,
    status_text,
    summary,
    tokens,
)
from overnight.cli.results import download, input_lines, parse_jsonl, succeeded, write_results
from overnight.models import TERMINAL

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


def _upload(client: Any, name: str, data: bytes | BinaryIO, err: Console) -> Any:
    f = client.files.create(file=(name, data), purpose="batch")
    deadline = time.monotonic() + 300
    while f.status not in ("processed", "error", "deleted"):
        if time.monotonic() > deadline:
            _fail(f"file {f.id} is still {f.status} after 5 minutes")
        time.sleep(0.2)
        f = client.files.retrieve(f.id)
    if f.status != "processed":
        _fail(f"file {f.id} was not accepted: {f.status_details or f.status}")
    err.print(f"uploaded {name} as {f.id} ({f.bytes} bytes)", highlight=False)
    return f


def _start(
    client: Any,
    name: str,
    data: bytes | BinaryIO,
    endpoint: str,
    metadata: dict[str, str] | None,
    wait: bool,
    output: Path | None,
    poll: float,
) -> int:
    err = _err()
    f = _upload(client, name, data, err)
    kwargs: dict[str, Any] = {"metadata": metadata} if metadata else {}
    batch = client.batches.create(
        input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kwargs
    )
    print(batch.id, flush=True)
    if not (wait or output is not None):
        err.print(f"follow it with: overnight show {batch.id}", highlight=False)
        return 0
    batch = _follow_or_detach(client, batch.id, poll, err)
    summary(batch, err)
    if output is not None and (batch.output_file_id or batch.error_file_id):
        write_results(client, batch, output, err)
    return exit_code(batch)


def _follow_or_detach(client: Any, batch_id: str, poll: float, err: Console) -> Any:
    try:
        return follow(client, batch_id, poll, err)
    except KeyboardInterrupt:
        err.print(
            f"\nstopped watching; the batch keeps running. Check it: overnight show {batch_id}",
            highlight=False,
        )
        raise typer.Exit(130) from None


# --- commands ---------------------------------------------------------------------------------


@app.command(rich_help_panel="Client")
def submit(
    file: Annotated[Path, typer.Argument(help="The .jsonl file of requests.", exists=True)],
    endpoint: Annotated[
        str | None,
        typer.Option(help="Batch endpoint (default: the url of the file's first line)."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the batch until it ends.")] = False,
    output: Output = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE, repeatable.")
    ] = None,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload FILE and create a batch; prints the batch id. --wait (or -o) follows it."""
    endpoint = endpoint or _endpoint_of(file) or "/v1/chat/completions"
    meta = _parse_metadata(metadata)
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        with file.open("rb") as fh:  # streamed by the SDK, not read into memory here
            code = _start(client, file.name, fh, endpoint, meta, wait, output, poll)
    raise typer.Exit(code)


@app.command("batches", rich_help_panel="Client")
def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=100, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON list.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """List recent batches."""
    with api_errors(base_url):
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
    with api_errors(base_url):
        b = make_client(base_url, api_key).batches.retrieve(batch_id)
    if as_json:
        print(json.dumps(b.model_dump(mode="json"), indent=2))
        return
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


@app.command(rich_help_panel="Client")
def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Cancel a batch: requests in flight finish, the rest end as batch_cancelled."""
    with api_errors(base_url):
        b = make_client(base_url, api_key).batches.cancel(batch_id)
    print(f"{b.id} {b.status}")


@app.command(rich_help_panel="Client")
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    output: Output = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the batch to end first.")] = False,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Download output and errors as one JSONL, in the input file's order."""
    err = _err()
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        b = client.batches.retrieve(batch_id)
        if b.status not in TERMINAL:
            if not wait:
                _fail(f"{b.id} is {b.status}; results come when it ends (add --wait)")
            b = _follow_or_detach(client, b.id, poll, err)
        if not (b.output_file_id or b.error_file_id):
            summary(b, err)
            _fail(f"{b.id} ended {b.status} without results")
        write_results(client, b, output, err)


@app.command(rich_help_panel="Client")
def retry(
    batch_id: Annotated[str, typer.Argument(help="The batch whose failed requests to run again.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the new batch until it ends.")
    ] = False,
    output: Output = None,
    poll: Poll = 1.0,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Create a new batch from the requests of BATCH_ID that did not succeed."""
    err = _err()
    with api_errors(base_url):
        client = make_client(base_url, api_key)
        b = client.batches.retrieve(batch_id)
        if b.status not in TERMINAL:
            _fail(f"{b.id} is still {b.status}; retry it once it has ended")
        requests = input_lines(client, b)
        if requests is None:
            _fail(
                f"the input file {b.input_file_id} cannot be downloaded, so its requests are gone"
            )
        ok = {
            line.get("custom_id")
            for line, _raw in parse_jsonl(download(client, b.output_file_id))
            if succeeded(line)
        }
        again = [raw for req, raw in requests if req.get("custom_id") not in ok]
        if not again:
            err.print(f"nothing to retry: every request of {b.id} succeeded", highlight=False)
            raise typer.Exit(0)
        err.print(f"retrying {len(again)} of {len(requests)} requests of {b.id}", highlight=False)
        data = b"".join(raw + b"\n" for raw in again)
        code = _start(
            client,
            f"retry-of-{b.id}.jsonl",
            data,
            b.endpoint,
            {"retry_of": b.id},
            wait,
            output,
            poll,
        )
    raise typer.Exit(code)
