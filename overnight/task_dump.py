"""`kill -USR1 <pid>`: a running process writes where each of its asyncio tasks waits.

A worker that stops making progress without an error has some task waiting on
something that will not come (a lock, an event, a connection); the stacks say
which, without attaching a debugger to a production process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal

log = logging.getLogger("overnight.tasks")


def describe_tasks(limit: int = 12) -> str:
    """Every task of the running loop, each with the frames it is suspended in."""
    out = io.StringIO()
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"{len(tasks)} asyncio tasks\n")
    for task in tasks:
        out.write(f"--- {task.get_name()} ({'done' if task.done() else 'pending'})\n")
        task.print_stack(limit=limit, file=out)
    return out.getvalue()


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Log the tasks' stacks at WARNING on SIGUSR1 (where the platform has it)."""
    sig = getattr(signal, "SIGUSR1", None)
    if sig is None:
        return
    # Not in the main thread (an app served inside a test's thread): no signals there.
    with contextlib.suppress(ValueError, RuntimeError):
        loop.add_signal_handler(sig, lambda: log.warning("SIGUSR1: %s", describe_tasks()))
