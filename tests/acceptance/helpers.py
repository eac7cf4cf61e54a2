"""What the acceptance tests share: the server process handle, clients, polling, JSONL."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from openai import AzureOpenAI, OpenAI

from overnight.server_process import OvernightProcess
from tests.batch_lines import chat_line  # noqa: F401 - re-exported for the suites
from tests.support.upstream_stub import StubServer

API_KEY = "test"
AZURE_API_VERSION = "2024-10-21"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STARTUP_TIMEOUT = 30.0
POLL = 0.1  # never sleep more than 0.2 s between polls
BATCH_TIMEOUT = 60.0
TIMESTAMP_FIELDS = (
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


# --- the server process ---------------------------------------------------------------


@dataclass
class Server:
    """One running `overnight serve` child process, and the clients a test opened on it."""

    process: OvernightProcess
    project: str
    clients: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT, no path."""
        return self.process.url

    def log(self) -> str:
        return self.process.log()

    def openai(self, **kwargs: Any) -> OpenAI:
        options: dict[str, Any] = {
            "base_url": f"{self.url}/v1",
            "api_key": API_KEY,
            "max_retries": 0,
            "timeout": 30.0,
        }
        options.update(kwargs)
        client = OpenAI(**options)
        self.clients.append(client)
        return client

    def azure(self, **kwargs: Any) -> AzureOpenAI:
        options: dict[str, Any] = {
            "azure_endpoint": self.url,
            "api_version": AZURE_API_VERSION,
            "api_key": API_KEY,
            "max_retries": 0,
            "timeout": 30.0,
        }
        options.update(kwargs)
        client = AzureOpenAI(**options)
        self.clients.append(client)
        return client

    def http(self) -> httpx.Client:
        """A plain HTTP client that authenticates like the SDK does (for exact-wire checks)."""
        client = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30.0
        )
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.process.stop(timeout=5.0)  # SIGTERM, then SIGKILL after 5 s


StartServer = Callable[..., Server]


def server_env(
    upstream_url: str | None, extra: dict[str, str] | None, project: str
) -> dict[str, str]:
    """The server's OVERNIGHT_* variables (OvernightProcess drops the developer's own)."""
    env = {
        "PYTHONUNBUFFERED": "1",
        "OVERNIGHT_RETRY_BASE_DELAY": "0.05",
        # Each server is its own project: tests sharing one database never see each other.
        "OVERNIGHT_API_KEYS": f"{project}:{API_KEY}",
    }
    if upstream_url:
        env["OVERNIGHT_UPSTREAM_URL"] = upstream_url
    for test_var, var in (
        ("OVERNIGHT_TEST_DATABASE_URL", "OVERNIGHT_DATABASE_URL"),
        ("OVERNIGHT_TEST_STORAGE_URL", "OVERNIGHT_STORAGE_URL"),
    ):
        if os.environ.get(test_var):
            env[var] = os.environ[test_var]
    env.update(extra or {})
    return env


# --- helpers --------------------------------------------------------------------------


def jsonl(lines: list[Any]) -> bytes:
    """Lines (dicts are JSON-encoded, strings taken as they are) joined by newlines."""
    out = []
    for line in lines:
        out.append(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False))
    return ("\n".join(out) + "\n").encode()


def upload(client: openai.OpenAI, content: bytes, name: str = "batch.jsonl") -> Any:
    return client.files.create(file=(name, content), purpose="batch")


def wait_file_processed(client: openai.OpenAI, file_id: str) -> Any:
    deadline = time.monotonic() + BATCH_TIMEOUT
    f = client.files.retrieve(file_id)
    while f.status != "processed":
        assert f.status not in ("error", "deleted"), f
        assert time.monotonic() < deadline, f"file {file_id} never processed: {f}"
        time.sleep(POLL)
        f = client.files.retrieve(file_id)
    return f


@dataclass
class Polled:
    batch: Any
    statuses: list[str]  # every distinct status seen, in order


def wait_batch(
    client: openai.OpenAI,
    batch_id: str,
    until: Callable[[Any], bool] | None = None,
    timeout: float = BATCH_TIMEOUT,
    interval: float = POLL,
) -> Polled:
    """Poll until terminal (or `until(batch)`); fail the test if that takes over `timeout`."""
    until = until or (lambda b: b.status in TERMINAL)
    deadline = time.monotonic() + timeout
    statuses: list[str] = []
    while True:
        batch = client.batches.retrieve(batch_id)
        if not statuses or statuses[-1] != batch.status:
            statuses.append(batch.status)
        if until(batch):
            return Polled(batch, statuses)
        assert batch.status not in TERMINAL, f"batch ended {batch.status} first: {batch}"
        assert time.monotonic() < deadline, f"batch {batch_id} stuck: {statuses} {batch}"
        time.sleep(min(interval, 0.2))


def run_batch(
    client: openai.OpenAI, lines: list[Any], endpoint: str = "/v1/chat/completions", **kw: Any
) -> Any:
    f = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        **kw,
    )
    return wait_batch(client, batch.id).batch


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        assert line["custom_id"] not in out, f"custom_id twice: {line['custom_id']}"
        out[line["custom_id"]] = line
    return out


def raw_batch(client: openai.OpenAI, batch_id: str) -> dict[str, Any]:
    """The batch exactly as sent on the wire (to check JSON types, not the SDK's view)."""
    response = client.batches.with_raw_response.retrieve(batch_id)
    data: dict[str, Any] = response.http_response.json()
    return data


def assert_timestamps_int(raw: dict[str, Any]) -> None:
    for name in TIMESTAMP_FIELDS:
        value = raw[name]
        assert value is None or (type(value) is int), f"{name}={value!r} is not an int"
    assert type(raw["created_at"]) is int
    assert type(raw["expires_at"]) is int


def config_routes(stub: StubServer, routes: dict[str, dict[str, Any]]) -> str:
    """A TOML config routing each model name (`"*"`: every other model) to the stub."""
    parts = []
    for name, options in routes.items():
        parts.append(f'[models."{name}"]')
        parts.append(f'url = "{stub.url}"')
        for key, value in options.items():
            parts.append(f"{key} = {json.dumps(value)}")
    return "\n".join(parts) + "\n"
