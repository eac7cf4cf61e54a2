"""A full data disk: uploads refused with 507, batches paused (not failed), deletes work,
and the server starts on a full disk. The data dir is a 30 MB tmpfs mounted here."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.upstream_stub import StubConfig, StubServer

from .support import KEY, assert_each_once, client, lines, overnight, submit, wait


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk says it is full."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as fh:
        block = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):
            while True:
                fh.write(block)
        with contextlib.suppress(OSError):
            while True:  # the last few kilobytes
                fh.write(b"\0" * 4096)
    return filler


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10)


def test_a_full_disk_refuses_uploads_pauses_batches_and_recovers(
    small_disk: Path, tmp_path: Path
) -> None:
    data = small_disk / "data"
    with (
        StubServer.in_thread(StubConfig(latency=0.05)) as stub,
        overnight(data, {"OVERNIGHT_UPSTREAM_URL": stub.url}, log=tmp_path / "s.log") as server,
    ):
        c = client(server)
        # An upload that cannot fit: a clear 507, and nothing of it left behind.
        with pytest.raises(openai.APIStatusError) as info:
            c.files.create(file=("big.jsonl", b"x" * (40 << 20)), purpose="batch")
        assert info.value.status_code == 507
        assert info.value.code == "insufficient_storage"
        assert c.files.list().data == []
        assert not list(data.rglob("*.part"))

        spare = c.files.create(file=("spare.jsonl", b"y" * (4 << 20)), purpose="batch")
        batch_id = submit(c, lines(300))
        wait(c, batch_id, lambda b: b.status == "in_progress" and b.request_counts.completed > 0)
        filler = fill(small_disk)
        assert ready(server.url).status_code == 503
        assert "full" in ready(server.url).json()["checks"]["storage"]
        time.sleep(2.0)  # results cannot be written now: the batch waits, nothing fails
        paused = c.batches.retrieve(batch_id)
        assert paused.status == "in_progress" and paused.request_counts.failed == 0
        # Deleting is how an operator frees space: it works on the full disk.
        assert c.files.delete(spare.id).deleted
        filler.unlink()
        done = wait(c, batch_id)
        assert_each_once(c, done, 300)
        assert ready(server.url).status_code == 200


def test_the_server_starts_on_a_full_disk_and_says_why(small_disk: Path, tmp_path: Path) -> None:
    data = small_disk / "data"
    with overnight(data, {}) as server:
        spare = client(server).files.create(file=("spare.jsonl", b"z" * (6 << 20)), purpose="batch")
    filler = fill(small_disk)
    try:
        with overnight(data, {}, log=tmp_path / "restart.log") as server:  # starts at all
            c = client(server)
            r = ready(server.url)
            assert r.status_code == 503 and "full" in r.json()["checks"]["storage"]
            assert c.files.delete(spare.id).deleted
            assert ready(server.url).status_code == 200  # 6 MB more free
            headers = {"authorization": f"Bearer {KEY}"}
            listed = httpx.get(f"{server.url}/v1/files", headers=headers).json()["data"]
            assert listed == []
        assert "the data disk is full" in (tmp_path / "restart.log").read_text()
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()


def test_enospc_is_what_a_full_tmpfs_reports(small_disk: Path) -> None:
    """The premise of the tests above: writes past the size fail with ENOSPC."""
    fill(small_disk)
    with pytest.raises(OSError) as info, open(small_disk / "more", "wb") as fh:
        fh.write(b"x" * (1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
    assert info.value.errno == errno.ENOSPC
