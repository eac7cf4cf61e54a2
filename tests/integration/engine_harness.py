"""Run the engine in-process against a real SQLite file and a real stub upstream on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

from overnight import settings as settings_mod
from overnight.engine.scheduler import Scheduler
from overnight.models import Batch, BatchStatus, File, new_batch_id, new_file_id, now
from overnight.services import Services
from tests import batch_lines


def chat_lines(n: int, model: str = "m", tag: str = "q") -> bytes:
    return batch_lines.chat_lines(batch_lines.numbered(n, tag), model)


@asynccontextmanager
async def running_engine(
    tmp_path: Path, config: str, **overrides: Any
) -> AsyncIterator[tuple[Services, Scheduler]]:
    cfg = tmp_path / "config.toml"
    cfg.write_text(config)
    values: dict[str, Any] = {"poll_interval": 0.05, "retry_base_delay": 0.01}
    values.update(overrides)
    s = settings_mod.load(config_file=cfg, env={}, data_dir=tmp_path / "data", **values)
    svc = await Services.open(s)
    scheduler = Scheduler(svc)
    await scheduler.start()
    try:
        yield svc, scheduler
    finally:
        await scheduler.stop()
        await svc.close()


async def submit(svc: Services, data: bytes, endpoint: str = "/v1/chat/completions") -> str:
    file_id = new_file_id()
    key = f"files/{file_id}"
    size = await svc.blobs.put(key, data)
    t = now()
    await svc.store.files.add(File(file_id, "default", "batch", "in.jsonl", size, t, blob_key=key))
    batch = Batch(
        id=new_batch_id(),
        project="default",
        endpoint=endpoint,
        input_file_id=file_id,
        completion_window="24h",
        status=BatchStatus.VALIDATING,
        created_at=t,
        expires_at=t + svc.settings.completion_window_seconds,
    )
    await svc.store.batches.add(batch)
    return batch.id


async def wait_for(svc: Services, batch_id: str, until: Any, timeout: float = 60.0) -> Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = await svc.store.batches.get(batch_id)
        assert b is not None
        if until(b):
            return b
        await asyncio.sleep(0.02)
    raise AssertionError(f"{batch_id} did not reach the expected state: {b}")


def terminal(b: Batch) -> bool:
    return BatchStatus(b.status).terminal


async def result_lines(svc: Services, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    f = await svc.store.files.get(file_id)
    assert f is not None
    return [orjson.loads(x) for x in (await svc.blobs.read_all(f.blob_key)).splitlines()]
