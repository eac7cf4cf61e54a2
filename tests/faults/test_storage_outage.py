"""The S3 endpoint goes away during an upload and during finalization: a 503 the SDK
retries, a batch that waits, nothing lost or doubled once the endpoint is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.scaleout.infra import MotoServer
from tests.support.upstream_stub import StubConfig, StubServer

from .support import TcpProxy, assert_each_once, client, lines, overnight, submit, wait


@pytest.fixture
def s3() -> Iterator[tuple[MotoServer, TcpProxy]]:
    moto = MotoServer().start()
    proxy = TcpProxy(moto.port).up()
    try:
        yield moto, proxy
    finally:
        proxy.down()
        moto.stop()


def test_uploads_and_finalization_survive_an_s3_outage(
    tmp_path: Path, s3: tuple[MotoServer, TcpProxy]
) -> None:
    moto, proxy = s3
    env = {
        **moto.env(),
        "AWS_ENDPOINT_URL": proxy.url,  # overnight reaches S3 only through the proxy
        "OVERNIGHT_STORAGE_URL": "s3://outage-test/files",
    }
    with StubServer.in_thread(StubConfig(latency=0.02)) as stub:
        config = tmp_path / "config.toml"
        config.write_text(f'[models.m]\nurl = "{stub.url}"\nmax_concurrency = 8\n')
        with overnight(tmp_path / "data", env, ["--config", str(config)]) as server:
            c = client(server)
            first = c.files.create(file=("a.jsonl", lines(5)), purpose="batch")
            proxy.down()
            with pytest.raises(openai.APIStatusError) as info:
                c.files.create(file=("b.jsonl", lines(5)), purpose="batch")
            assert info.value.status_code == 503
            assert info.value.code == "storage_unavailable"
            assert info.value.response.headers["retry-after"]
            proxy.up()
            assert [f.id for f in c.files.list().data] == [first.id]  # nothing half-made

            batch_id = submit(c, lines(200))
            wait(c, batch_id, lambda b: b.request_counts.completed >= 50)
            proxy.down()  # the results can no longer be written out
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                b = c.batches.retrieve(batch_id)
                assert b.status in ("in_progress", "finalizing"), b
                time.sleep(0.2)
            proxy.up()
            done = wait(c, batch_id)
            assert_each_once(c, done, 200)
            assert stub.stats()["received"] == 200
