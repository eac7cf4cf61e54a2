"""kill -9 the server mid-batch; the restarted server finishes it without losing or redoing work."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI

from overnight.server_process import OvernightProcess
from tests.acceptance.helpers import wait_batch
from tests.batch_lines import chat_lines, numbered
from tests.support.upstream_stub import StubConfig, StubProcess

N = 1500
CONCURRENCY = 32


def _lines(n: int) -> bytes:
    return chat_lines(numbered(n, "c"), texts=numbered(n, "q"))


def _finished_in_ledger(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute("SELECT custom_id FROM requests WHERE state IN (2, 3)")}


def _wait(client: OpenAI, batch_id: str, until: Any, timeout: float = 60.0) -> Any:
    return wait_batch(client, batch_id, until, timeout, interval=0.05).batch


@pytest.mark.parametrize("kill_at", [0.2, 0.6])
def test_kill_9_mid_batch_resumes_without_redoing_finished_work(
    tmp_path: Path, kill_at: float
) -> None:
    with StubProcess(StubConfig(latency=0.03)) as stub:
        config = tmp_path / "config.toml"
        config.write_text(f'[models.m]\nurl = "{stub.url}"\nmax_concurrency = {CONCURRENCY}\n')
        env = {"OVERNIGHT_CONFIG": str(config)}
        data_dir = tmp_path / "data"
        server = OvernightProcess(data_dir, env=env).start()
        try:
            client = OpenAI(base_url=f"{server.url}/v1", api_key="t", max_retries=0)
            f = client.files.create(file=("in.jsonl", _lines(N)), purpose="batch")
            batch = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            _wait(client, batch.id, lambda b: b.request_counts.completed >= N * kill_at)
            server.kill()
        finally:
            server.stop()
        finished_before = _finished_in_ledger(data_dir / "overnight.db")
        assert 0 < len(finished_before) < N

        with OvernightProcess(data_dir, env=env, port=server.port) as again:
            client = OpenAI(base_url=f"{again.url}/v1", api_key="t", max_retries=0)
            done = _wait(client, batch.id, lambda b: b.status == "completed")
            output = client.files.content(done.output_file_id).text

        ids = [orjson.loads(line)["custom_id"] for line in output.splitlines()]
        assert sorted(ids) == sorted(f"c{i}" for i in range(N))  # every custom_id exactly once
        assert done.error_file_id is None
        assert (done.request_counts.total, done.request_counts.completed) == (N, N)
        assert done.request_counts.failed == 0

        counts = orjson.loads(_get(f"{stub.base_url}/_counts"))
        for cid in finished_before:
            assert counts[f"q{cid[1:]}"] == 1, f"{cid} finished before the crash but was sent again"
        resent = sum(n - 1 for n in counts.values())
        # Only requests in flight at the crash (plus results not yet committed) go again.
        assert resent <= CONCURRENCY * 3, resent
        assert sum(counts.values()) == N + resent


def _get(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return bytes(resp.read())
