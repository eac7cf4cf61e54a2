"""An upstream that goes away and comes back: requests wait for it, none fails."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.upstream_stub import StubConfig, StubProcess

from .support import assert_each_once, client, lines, overnight, submit, wait


def test_a_short_outage_fails_nothing(tmp_path: Path) -> None:
    """The stub is killed at 30% and started again on the same port 6 s later: every
    request completes, none twice, and the batch does not end while the upstream is down."""
    n = 400
    stub = StubProcess(StubConfig(latency=0.1))
    stub.start()
    port = int(stub.url.rsplit(":", 1)[1].split("/")[0])
    config = tmp_path / "config.toml"  # 16 at a time: about 4 s of work
    config.write_text(f'[models.m]\nurl = "{stub.url}"\nmax_concurrency = 16\n')
    env = {"OVERNIGHT_RETRY_BASE_DELAY": "0.05"}
    args = ["--config", str(config)]
    try:
        with overnight(tmp_path / "data", env, args, log=tmp_path / "server.log") as server:
            c = client(server)
            batch_id = submit(c, lines(n))
            wait(c, batch_id, lambda b: b.request_counts.completed >= n * 0.3)
            assert stub.process is not None
            stub.process.kill()  # kill -9: connections reset, then refused
            stub.process.wait()
            down_at = time.monotonic()
            while time.monotonic() - down_at < 6.0:
                b = c.batches.retrieve(batch_id)
                assert b.status == "in_progress", b  # waiting, not finishing with failures
                assert b.request_counts.failed == 0, b
                time.sleep(0.2)
            stub = StubProcess(StubConfig(latency=0.1, port=port))
            stub.start()
            done = wait(c, batch_id)
            assert_each_once(c, done, n)
        log = (tmp_path / "server.log").read_text()
        assert "unreachable: pausing" in log and "reachable again" in log
    finally:
        stub.stop()


def test_a_dead_replica_is_avoided_while_the_other_serves(tmp_path: Path) -> None:
    """Two replicas, one never up: the route is not down, and nothing fails."""
    with StubProcess(StubConfig()) as live:
        dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
        config = tmp_path / "config.toml"
        config.write_text(f'[models.m]\nurls = ["{dead}", "{live.url}"]\n')
        with overnight(tmp_path / "data", {}, ["--config", str(config)]) as server:
            c = client(server)
            done = wait(c, submit(c, lines(60)))
            assert_each_once(c, done, 60)
