"""`kill -USR1`: a running server writes where each of its asyncio tasks waits."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from overnight.server_process import OvernightProcess
from overnight.task_dump import describe_tasks


async def test_the_dump_names_each_task_and_where_it_waits() -> None:
    async def parked_on_an_event(event: asyncio.Event) -> None:
        await event.wait()

    event = asyncio.Event()
    task = asyncio.create_task(parked_on_an_event(event), name="the-parked-one")
    await asyncio.sleep(0)
    try:
        text = describe_tasks()
        assert "--- the-parked-one (pending)" in text
        assert "in parked_on_an_event" in text  # the frame it is suspended in
    finally:
        event.set()
        await task


def test_a_server_logs_its_tasks_on_sigusr1(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with OvernightProcess(tmp_path / "data", log_path=log_path) as server:
        assert server.process is not None
        server.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "asyncio tasks" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = server.log()
        assert server.process.poll() is None  # the signal does not stop it
    assert "SIGUSR1:" in text and "overnight-scheduler" in text, text[-3000:]
