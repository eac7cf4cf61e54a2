"""What the security tests share: one hardened server, its projects' keys, and HTTP helpers.

One `overnight serve` process (a real subprocess, real SQLite, real upstream stub on
127.0.0.1) serves the whole suite, with small limits so that every limit can be hit
cheaply, and several projects:

- alpha, beta, mallory, canary, flood, fuzz: keys from OVERNIGHT_API_KEYS;
- gamma: a key created with `overnight keys create` before the server started.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from overnight.server_process import OvernightProcess, clean_env
from tests.batch_lines import chat_line  # noqa: F401 - re-exported for the suites

ENV_KEYS = {
    "alpha": "sk-alpha-0123456789abcdef",
    "beta": "sk-beta-0123456789abcdef",
    "mallory": "sk-mallory-0123456789abcdef",
    "canary": "sk-canary-0123456789abcdef",
    "flood": "sk-flood-0123456789abcdef",
    "fuzz": "sk-fuzz-0123456789abcdef",
}
UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak-7f3a"
WRONG_SECRET = "sk-upstream-WRONG-do-not-leak-91c2"  # the stub refuses it: 401 upstream
AZURE_VERSION = "2024-10-21"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIMITS = {
    "OVERNIGHT_MAX_UPLOAD_BYTES": str(1024 * 1024),
    "OVERNIGHT_MAX_BATCH_FILE_BYTES": str(512 * 1024),
    "OVERNIGHT_MAX_LINE_BYTES": str(64 * 1024),
    "OVERNIGHT_MAX_REQUESTS_PER_BATCH": "50",
    "OVERNIGHT_MAX_OPEN_BATCHES": "3",
    "OVERNIGHT_CANCEL_GRACE_SECONDS": "1",
    "OVERNIGHT_KEY_CACHE_SECONDS": "0.5",
    "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
}
BLACKHOLE_MODEL = "blackhole"  # routed to a socket that never answers: batches stay open
WRONG_KEY_MODEL = "wrong-key"  # routed to the stub with a key it refuses


def store_env() -> dict[str, str]:
    """PostgreSQL + S3 under `pytest --pg-s3` (tests/conftest.py); empty: SQLite + a directory."""
    env = {}
    for test_var, var in (
        ("OVERNIGHT_TEST_DATABASE_URL", "OVERNIGHT_DATABASE_URL"),
        ("OVERNIGHT_TEST_STORAGE_URL", "OVERNIGHT_STORAGE_URL"),
    ):
        if os.environ.get(test_var):
            env[var] = os.environ[test_var]
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m overnight ARGS` with none of the developer's OVERNIGHT_* variables."""
    clean = clean_env(env)
    return subprocess.run(
        [sys.executable, "-m", "overnight", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_db_key(
    data_dir: Path, project: str, name: str | None = None, env: dict[str, str] | None = None
) -> str:
    """`overnight keys create` in its own process; `env` may name another store."""
    args = ["keys", "create", "--project", project, "--data-dir", str(data_dir)]
    if name:
        args += ["--name", name]
    done = cli(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class Blackhole:
    """A TCP listener that accepts nothing and answers nothing."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def close(self) -> None:
        self.sock.close()


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


@dataclass
class Secure:
    """The running server and a client per project."""

    process: OvernightProcess
    data_dir: Path
    keys: dict[str, str]
    store: dict[str, str]  # OVERNIGHT_DATABASE_URL / _STORAGE_URL when not the defaults
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.process.url

    def client(self, project: str) -> httpx.Client:
        if project not in self.clients:
            self.clients[project] = httpx.Client(
                base_url=self.url,
                headers={"authorization": f"Bearer {self.keys[project]}"},
                timeout=20.0,
            )
        return self.clients[project]

    def raw(self) -> httpx.Client:
        """No credentials at all."""
        if "" not in self.clients:
            self.clients[""] = httpx.Client(base_url=self.url, timeout=20.0)
        return self.clients[""]

    def upload(
        self, project: str, content: bytes, name: str = "in.jsonl", purpose: str = "batch"
    ) -> dict[str, Any]:
        r = self.client(project).post(
            "/v1/files", data={"purpose": purpose}, files={"file": (name, content)}
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def create_batch(self, project: str, file_id: str, **extra: Any) -> httpx.Response:
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **extra,
        }
        return self.client(project).post("/v1/batches", json=body)

    def batch(self, project: str, batch_id: str) -> dict[str, Any]:
        r = self.client(project).get(f"/v1/batches/{batch_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait(
        self, project: str, batch_id: str, timeout: float = 30.0, until: frozenset[str] = TERMINAL
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            b = self.batch(project, batch_id)
            if b["status"] in until:
                return b
            assert time.monotonic() < deadline, f"batch {batch_id} stuck: {b}"
            time.sleep(0.05)

    def healthy(self) -> None:
        r = self.raw().get("/healthz", timeout=5.0)
        assert r.status_code == 200, r.text
        r = self.client("canary").get("/v1/batches?limit=1", timeout=5.0)
        assert r.status_code == 200, r.text

    def close(self) -> None:
        for c in self.clients.values():
            c.close()
        self.clients.clear()
        self.process.stop(timeout=10.0)
