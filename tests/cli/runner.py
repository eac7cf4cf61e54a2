"""The CLI as a user runs it: `python -m overnight ...` in its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from overnight.server_process import OvernightProcess
from tests.live_server import API_KEY


def cli_env(server: OvernightProcess | None, key: str | None = API_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OVERNIGHT_"))}
    if server is not None:
        env["OPENAI_BASE_URL"] = server.url  # a bare address: the CLI adds /v1
    if key is not None:
        env["OPENAI_API_KEY"] = key
    env["COLUMNS"] = "120"
    return env


def cli(
    server: OvernightProcess | None,
    *args: str,
    key: str | None = API_KEY,
    timeout: float = 90,
    base_url: str | None = None,
) -> subprocess.CompletedProcess[str]:
    env = cli_env(server, key)
    if base_url is not None:
        env["OPENAI_BASE_URL"] = base_url
    return subprocess.run(
        [sys.executable, "-m", "overnight", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
