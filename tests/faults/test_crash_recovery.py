"""After kill -9 on SQLite: the one process of a data dir takes back every lease at start,
batch-level ones included, and removes the partial files the dead process left."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.support.upstream_stub import StubConfig, StubServer

from .support import assert_each_once, client, lines, overnight, submit, wait


def test_a_dead_processs_batch_lease_and_partial_files_are_taken_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with StubServer.in_thread(StubConfig()) as stub:
        env = {"OVERNIGHT_UPSTREAM_URL": stub.url}
        with overnight(data, env, ["--no-executor"]) as api:  # nobody runs it yet
            c = client(api)
            batch_id = submit(c, lines(50))
            assert c.batches.retrieve(batch_id).status == "validating"
            api.kill()
        # What kill -9 leaves behind while a batch is being validated: its lease, held
        # for lease_seconds x 5 (300 s), and a half-written file.
        db = sqlite3.connect(data / "overnight.db")
        db.execute(
            "UPDATE batches SET owner = 'dead-host:4242:abcdef', owner_until = ? WHERE id = ?",
            (time.time() + 300, batch_id),
        )
        db.commit()
        db.close()
        partial = data / "files" / ".file-0123.4242.1.part"
        partial.write_bytes(b"x" * 1000)
        with overnight(data, env, log=tmp_path / "restart.log") as server:
            c = client(server)
            done = wait(c, batch_id, timeout=60)  # not after the dead lease's 300 s
            assert_each_once(c, done, 50)
        assert not partial.exists()
        log = (tmp_path / "restart.log").read_text()
        assert "1 batches were being validated or finalized" in log
        assert "removed 1 partial files" in log
