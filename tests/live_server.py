"""A real `overnight serve` child process next to a real stub upstream, for the tools' tests.

Used by tests/cli, tests/browser and tests/integration/test_metrics.py: nothing is
mocked; the server is the installed command and the upstream a real HTTP server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from overnight.server_process import OvernightProcess
from tests.batch_lines import chat_line  # noqa: F401 - re-exported for the suites

API_KEY = "sk-tools-test"
PROJECT = "tools"
PRICES = """
[prices."gpt-test"]
input_per_million = 2.0
output_per_million = 8.0
batch_discount = 0.5
"""


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@contextmanager
def running_server(
    tmp_path: Path,
    upstream: str,
    *,
    keys: bool = True,
    config: str = PRICES,
    env: dict[str, str] | None = None,
) -> Iterator[OvernightProcess]:
    server_env = {
        "PYTHONUNBUFFERED": "1",
        "OVERNIGHT_UPSTREAM_URL": upstream,
        "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
    }
    if keys:
        server_env["OVERNIGHT_API_KEYS"] = f"{PROJECT}:{API_KEY}"
    server_env.update(env or {})
    config_path = tmp_path / "overnight.toml"
    config_path.write_text(config)
    data_dir = tmp_path / "data"
    for attempt in range(3):  # a probed free port can be taken before the server binds it
        process = OvernightProcess(
            data_dir,
            env=server_env,
            args=["--config", str(config_path)],
            log_path=tmp_path / f"server-{attempt}.log",
        )
        try:
            process.start(timeout=30)
        except RuntimeError:
            process.stop()
            if "address already in use" in process.log().lower() and attempt < 2:
                continue
            raise
        break
    try:
        yield process
    finally:
        process.stop()


def wait_status(
    http: httpx.Client, batch_id: str, statuses: set[str], timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch: dict[str, Any] = http.get(f"/v1/batches/{batch_id}").json()
        if batch["status"] in statuses:
            return batch
        assert time.monotonic() < deadline, f"{batch_id} stuck in {batch['status']}"
        time.sleep(0.1)
