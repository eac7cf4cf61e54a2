"""`overnight results --follow`: result lines written as they finish, through overnight's
results route, with a cursor that resumes where a stopped run left off (`--after`)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from rich.console import Console

from overnight.cli.connection import sdk_http
from overnight.models import TERMINAL

PAGE = 1000  # lines per request: the route's default, well under its maximum


class Cursor:
    """Where the stream stands: after the last line written (an opaque integer)."""

    def __init__(self, after: int | None) -> None:
        self.after = after
        self.lines = 0
        self.status: str | None = None


def read_pages(
    client: Any,
    batch_id: str,
    sink: BinaryIO,
    cursor: Cursor,
    *,
    follow: bool,
    poll: float,
    outcome: str | None = None,
) -> None:
    """Write pages of finished lines to `sink` until none is ready (and, when following,
    until the batch has ended). The cursor moves only after a page is written and flushed,
    so an interrupted run resumed with its cursor neither skips nor repeats a line."""
    response_type = sdk_http().Response
    path = f"/batches/{batch_id}/results"
    while True:
        params: dict[str, Any] = {"limit": PAGE}
        if cursor.after is not None:
            params["after"] = cursor.after
        if outcome:
            params["outcome"] = outcome
        response = client.get(path, cast_to=response_type, options={"params": params})
        with _interrupt_after():  # a page and the cursor past it move together
            _write_page(sink, response, cursor)
        headers = response.headers
        cursor.status = headers.get("x-overnight-batch-status")
        if headers.get("x-overnight-has-more") == "true":
            continue
        if not follow or cursor.status in TERMINAL or cursor.status is None:
            return
        time.sleep(poll)


def _write_page(sink: BinaryIO, response: Any, cursor: Cursor) -> None:
    body: bytes = response.content
    if body.strip():
        sink.write(body if body.endswith(b"\n") else body + b"\n")
        sink.flush()
        cursor.lines += sum(1 for line in body.splitlines() if line.strip())
    nxt = response.headers.get("x-overnight-next-after")
    if nxt is not None and nxt.strip().isdigit():
        cursor.after = int(nxt)


@contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done, then raise it: stopped between a page
    written and its cursor saved, the printed cursor would repeat that page. A second
    Ctrl-C (a write stuck on a full pipe) stops at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        if caught:
            raise KeyboardInterrupt
        caught.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def resume_hint(batch_id: str, cursor: Cursor, err: Console) -> None:
    if cursor.after is not None:
        err.print(
            f"resume with: overnight results {batch_id} --follow --after {cursor.after}",
            highlight=False,
        )
