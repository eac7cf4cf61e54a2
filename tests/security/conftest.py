"""One hardened `overnight serve` for the whole security suite (see helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight.server_process import OvernightProcess
from tests.support.upstream_stub import StubConfig, StubServer

from .helpers import (
    BLACKHOLE_MODEL,
    ENV_KEYS,
    LIMITS,
    UPSTREAM_SECRET,
    WRONG_KEY_MODEL,
    WRONG_SECRET,
    Blackhole,
    Secure,
    create_db_key,
    store_env,
)


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    # The stub insists on the upstream key: a batch that completes proves it was sent.
    config = StubConfig(seed=1, latency=0.02, require_api_key=UPSTREAM_SECRET)
    with StubServer.in_thread(config) as server:
        yield server


@pytest.fixture(scope="session")
def secure(tmp_path_factory: pytest.TempPathFactory, stub: StubServer) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("secure")
    data_dir = root / "data"
    keys = dict(ENV_KEYS)
    store = store_env()
    keys["gamma"] = create_db_key(data_dir, "gamma", name="made before start", env=store)
    hole = Blackhole()
    config = root / "config.toml"
    config.write_text(
        f'[models."*"]\nurl = "{stub.url}"\napi_key_env = "UPSTREAM_SECRET"\n\n'
        f'[models."{BLACKHOLE_MODEL}"]\nurl = "{hole.url}"\nmax_concurrency = 1\n\n'
        f'[models."{WRONG_KEY_MODEL}"]\nurl = "{stub.url}"\napi_key_env = "WRONG_SECRET"\n'
    )
    env = {
        "PYTHONUNBUFFERED": "1",
        "UPSTREAM_SECRET": UPSTREAM_SECRET,
        "WRONG_SECRET": WRONG_SECRET,
        "OVERNIGHT_API_KEYS": ",".join(f"{p}:{k}" for p, k in ENV_KEYS.items()),
        "OVERNIGHT_LOG_LEVEL": "debug",
        **LIMITS,
        **store,
    }
    process = OvernightProcess(
        data_dir, env=env, args=["--config", str(config)], log_path=root / "server.log"
    )
    process.start(timeout=60)
    server = Secure(process, data_dir, keys, store)
    try:
        yield server
    finally:
        hole.close()  # first: requests stuck on it fail at once, so the server stops quickly
        server.close()


@pytest.fixture(scope="session")
def server_log(secure: Secure) -> Path:
    assert secure.process.log_path is not None
    return Path(secure.process.log_path)
