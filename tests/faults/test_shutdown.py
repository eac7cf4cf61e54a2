"""SIGTERM (a rolling update): nothing new is sent, answers in flight are waited for and
recorded, and after the restart nothing is sent twice."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.upstream_stub import StubConfig, StubServer

from .support import assert_each_once, client, lines, overnight, submit, wait


def test_sigterm_waits_for_slow_answers_and_resends_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "config.toml"
    with StubServer.in_thread(StubConfig(latency=4.0)) as stub:
        config.write_text(f'[models.m]\nurl = "{stub.url}"\nmax_concurrency = 16\n')
        env = {"OVERNIGHT_SHUTDOWN_GRACE_SECONDS": "20"}
        args = ["--config", str(config)]
        with overnight(data, env, args, log=tmp_path / "first.log") as server:
            c = client(server)
            batch_id = submit(c, lines(40))
            deadline = time.monotonic() + 30
            while stub.stats()["in_flight"] < 16:
                assert time.monotonic() < deadline, stub.stats()
                time.sleep(0.05)
            sent_before = stub.stats()["received"]
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises
            # Nothing was sent after the signal, and every answer in flight was recorded.
            assert stub.stats()["received"] == sent_before == 16
        with overnight(data, env, args) as again:
            c = client(again)
            assert c.batches.retrieve(batch_id).request_counts.completed == 16
            done = wait(c, batch_id, timeout=120)
            assert_each_once(c, done, 40)
        assert stub.stats()["received"] == 40  # not one sent twice
