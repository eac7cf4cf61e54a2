"""Creating a batch and seeing it through: upload, create, follow, summary, results.

Shared by `submit` and `retry`; also the checks of local paths, made before anything is
sent, so a mistyped -o fails in a moment rather than after the batch has run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.console import Console

from overnight.cli.connection import _err, _fail
from overnight.cli.failures import print_failures
from overnight.cli.progress import FAILED_REQUESTS_EXIT, exit_code, follow, summary
from overnight.cli.results import write_results


def upload(client: Any, name: str, data: bytes | BinaryIO, err: Console) -> Any:
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


def to_stdout(output: Path | None) -> bool:
    return output is not None and str(output) == "-"


def check_input(path: Path) -> None:
    """A one-line error now, rather than a traceback from deep inside an upload."""
    if not path.exists():
        _fail(f"cannot read {path}: no such file", 2)
    if path.is_dir():
        _fail(f"cannot read {path}: it is a directory, not a .jsonl file", 2)


def check_output(output: Path | None) -> None:
    """Checked before anything is submitted: a batch should not run for hours only for
    its results to have nowhere to go."""
    if output is None or to_stdout(output):
        return
    if output.is_dir():
        _fail(f"cannot write results to {output}: it is a directory; name a file", 2)
    parent = output.parent
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist"
        _fail(f"cannot write results to {output}: {parent} {why}", 2)


def announce(batch_id: str, output: Path | None, err: Console) -> None:
    """The batch id on stdout for scripts; on stderr when stdout carries the results."""
    if to_stdout(output):
        err.print(f"batch {batch_id}", highlight=False)
    else:
        print(batch_id, flush=True)


def start(
    client: Any,
    name: str,
    data: bytes | BinaryIO,
    endpoint: str,
    metadata: dict[str, str] | None,
    output: Path | None,
) -> Any:
    err = _err()
    f = upload(client, name, data, err)
    kwargs: dict[str, Any] = {"metadata": metadata} if metadata else {}
    batch = client.batches.create(
        input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kwargs
    )
    announce(batch.id, output, err)
    return batch


def see_through(
    client: Any,
    batch: Any,
    wait: bool,
    output: Path | None,
    poll: float,
    fail_on_errors: bool,
) -> int:
    """After a create: follow the batch if asked, then the summary, failures, results."""
    err = _err()
    if not (wait or output is not None):
        err.print(f"follow it with: overnight show {batch.id}", highlight=False)
        return 0
    batch = follow_or_detach(client, batch.id, poll, err)
    summary(batch, err)
    print_failures(client, batch.id, err)
    if output is not None and (batch.output_file_id or batch.error_file_id):
        write_results(client, batch, output, err)
    return exit_code(batch, fail_on_errors)


def follow_or_detach(client: Any, batch_id: str, poll: float, err: Console) -> Any:
    try:
        return follow(client, batch_id, poll, err)
    except KeyboardInterrupt:
        err.print(
            f"\nstopped watching; the batch keeps running. Check it: overnight show {batch_id}",
            highlight=False,
        )
        raise typer.Exit(130) from None


FailOnErrors = Annotated[
    bool,
    typer.Option(
        "--fail-on-errors",
        help=f"Exit with status {FAILED_REQUESTS_EXIT} when any request failed, even if the "
        "batch completed (it is 1 when the batch itself did not complete).",
    ),
]
