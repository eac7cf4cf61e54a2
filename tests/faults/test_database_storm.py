"""PostgreSQL connections killed every 0.3 s: validation and finalization go on in steps
and finish while the storm lasts; the API answers 503 with retry-after, never 500."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.scaleout.infra import (
    _admin_connect,
    create_database,
    drop_database,
    postgres_available,
)
from tests.support.upstream_stub import StubConfig, StubServer

from .support import KEY, assert_each_once, client, lines, overnight, submit

pytestmark = pytest.mark.postgres


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name, url = create_database()
    try:
        yield name, url
    finally:
        drop_database(name)


class Storm:
    """Terminates every connection to one database, every `every` seconds, in a thread."""

    def __init__(self, database: str, every: float = 0.3) -> None:
        self.database, self.every = database, every
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        conn, _ = await _admin_connect()
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
                self.killed += len(rows)
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def __enter__(self) -> Storm:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_batches_finish_during_a_connection_storm(
    tmp_path: Path, database: tuple[str, str]
) -> None:
    name, url = database
    n = 20000  # validation and finalization each take several storm periods
    with StubServer.in_thread(StubConfig()) as stub:
        env = {"OVERNIGHT_DATABASE_URL": url, "OVERNIGHT_UPSTREAM_URL": stub.url}
        with overnight(tmp_path / "data", env, log=tmp_path / "server.log") as server:
            c = client(server, max_retries=5)  # the SDK retries 503s by itself
            statuses: Counter[int] = Counter()
            headers = {"authorization": f"Bearer {KEY}"}
            with Storm(name) as storm, httpx.Client(timeout=30) as http:
                batch_id = submit(c, lines(n))
                deadline = time.monotonic() + 240  # about 30 s alone; more on a busy machine
                while True:
                    r = http.get(f"{server.url}/v1/batches/{batch_id}", headers=headers)
                    statuses[r.status_code] += 1
                    if r.status_code == 503:
                        assert r.headers["retry-after"]
                        assert r.json()["error"]["code"] == "database_unavailable"
                    elif r.status_code == 200 and r.json()["status"] == "completed":
                        break
                    assert time.monotonic() < deadline, (statuses, r.text)
                    time.sleep(0.05)
                killed = storm.killed
            assert killed > 0, "the storm killed nothing"
            assert set(statuses) <= {200, 503}, statuses
            assert_each_once(c, c.batches.retrieve(batch_id), n)
        assert "Traceback" not in (tmp_path / "server.log").read_text()
