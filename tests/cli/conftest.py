"""One real server and one real stub upstream for the CLI tests of this directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from overnight.server_process import OvernightProcess
from tests.live_server import API_KEY, PRICES, running_server
from tests.support.upstream_stub import StubConfig, StubServer


@pytest.fixture(scope="module")
def stub() -> Iterator[StubServer]:
    with StubServer.in_thread(StubConfig(seed=7, latency=0.02)) as server:
        yield server


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, stub: StubServer
) -> Iterator[OvernightProcess]:
    tmp: Path = tmp_path_factory.mktemp("cli-server")
    # A low concurrency ceiling keeps a slow batch running long enough to cancel it.
    config = PRICES + f'[models."gpt-test"]\nurl = "{stub.url}"\nmax_concurrency = 4\n'
    with running_server(tmp, stub.url, config=config) as process:
        yield process


@pytest.fixture
def http(server: OvernightProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {API_KEY}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def _reset_stub(stub: StubServer) -> Iterator[None]:
    yield
    stub.configure(latency=0.02, fail_rate=0.0, fail_status=500)
