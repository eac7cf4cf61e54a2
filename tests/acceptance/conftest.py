"""Acceptance fixtures: the real `overnight serve` process, a real upstream stub, the real SDK.

Nothing here is mocked. Every test gets its own stub upstream (an HTTP server on
127.0.0.1 in a background thread) and starts `python -m overnight serve` as a child
process pointed at it, then drives it with `openai.OpenAI` / `openai.AzureOpenAI`.

Set OVERNIGHT_TEST_DATABASE_URL / OVERNIGHT_TEST_STORAGE_URL to run the same suite on
another store (PostgreSQL, S3). Each server then gets its own project (a unique API key
mapping), so tests sharing one database never see each other's files and batches.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubServer

from .helpers import STARTUP_TIMEOUT, Server, StartServer, server_env

# --- reporting: show the server's stderr when a test fails ---------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


@pytest.fixture
def start_server(
    request: pytest.FixtureRequest, tmp_path: Path, stub: StubServer
) -> Iterator[StartServer]:
    """Factory: `start_server(env={...}, config="toml text", upstream=True)` -> Server.

    `upstream=False` leaves OVERNIGHT_UPSTREAM_URL unset (routes come from `config` only).
    """
    started: list[Server] = []

    def start(
        env: dict[str, str] | None = None,
        config: str | None = None,
        upstream: bool = True,
    ) -> Server:
        n = len(started)
        data_dir = tmp_path / f"data-{n}"
        data_dir.mkdir()
        args: list[str] = []
        if config is not None:
            config_path = tmp_path / f"config-{n}.toml"
            config_path.write_text(config)
            args += ["--config", str(config_path)]
        project = f"acc-{uuid.uuid4().hex[:12]}"
        server_vars = server_env(stub.url if upstream else None, env, project)
        for attempt in range(3):  # a free port can be taken between probe and bind
            process = OvernightProcess(
                data_dir,
                env=server_vars,
                args=args,
                log_path=tmp_path / f"server-{n}-{attempt}.log",
            )
            server = Server(process, project)
            started.append(server)
            try:
                process.start(timeout=STARTUP_TIMEOUT)
            except RuntimeError:
                server.stop()
                if "address already in use" in server.log().lower():
                    continue
                raise
            return server
        raise RuntimeError(f"overnight serve did not start:\n{started[-1].log()}")

    yield start
    failed = _failed(request)
    for server in started:
        server.stop()
        if failed:
            sys.stderr.write(f"\n--- overnight serve log ({server.url}) ---\n")
            sys.stderr.write(server.log()[-20000:])


@pytest.fixture
def stub() -> Iterator[StubServer]:
    """A real OpenAI-compatible upstream on 127.0.0.1; reconfigure with stub.configure()."""
    with StubServer.in_thread(StubConfig(seed=1)) as server:
        yield server


@pytest.fixture
def server(start_server: StartServer) -> Server:
    return start_server()


@pytest.fixture
def openai_client(server: Server) -> openai.OpenAI:
    return server.openai()


@pytest.fixture
def azure_client(server: Server) -> openai.AzureOpenAI:
    return server.azure()
