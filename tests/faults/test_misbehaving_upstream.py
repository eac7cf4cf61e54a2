"""Upstreams that never finish an answer: bounded memory, a responsive API, failed lines."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from tests.support.upstream_stub import StubConfig, StubProcess

from .support import KEY, client, lines, outputs, overnight, submit, wait


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _route(tmp_path: Path, url: str, **options: object) -> list[str]:
    config = tmp_path / "config.toml"
    extra = "".join(f"{k} = {v}\n" for k, v in options.items())
    config.write_text(f'[models.m]\nurl = "{url}"\n{extra}')
    return ["--config", str(config)]


def test_an_endless_body_does_not_run_the_server_out_of_memory(tmp_path: Path) -> None:
    """16 at a time, each body endless: what the answers hold is bounded per route (and
    each dead connection's buffers are freed at once, not by the garbage collector)."""
    with StubProcess(StubConfig(endless_body_rate=1.0)) as stub:
        args = _route(tmp_path, stub.url, max_concurrency=16, timeout=60)
        env = {"OVERNIGHT_MAX_ATTEMPTS": "3", "OVERNIGHT_RETRY_BASE_DELAY": "0.01"}
        with overnight(tmp_path / "data", env, args) as server:
            c = client(server)
            done = wait(c, submit(c, lines(40)), timeout=240)
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 40)
            errors = outputs(c, done.error_file_id)
            assert {e["error"]["code"] for e in errors} == {"invalid_upstream_response"}
            assert server.process is not None
            peak = _peak_rss_mb(server.process.pid)
    # 120 answers cut off at the pool's 256 MiB budget or their own 64 MiB cap: before the
    # fix the process grew by every dead connection's buffer (9.8 GiB after 131 requests).
    assert peak < 900, f"peak RSS {peak:.0f} MB"


def test_a_header_repeated_forever_is_cut_off_and_the_api_stays_up(tmp_path: Path) -> None:
    with StubProcess(StubConfig(endless_header_rate=1.0)) as stub:
        args = _route(tmp_path, stub.url, timeout=30)
        env = {"OVERNIGHT_MAX_ATTEMPTS": "2", "OVERNIGHT_RETRY_BASE_DELAY": "0.01"}
        with overnight(tmp_path / "data", env, args) as server:
            c = client(server)
            batch_id = submit(c, lines(8))
            answered: list[int] = []
            stop = threading.Event()

            def poll() -> None:  # the API keeps answering while the upstream misbehaves
                with httpx.Client(timeout=10) as http:
                    while not stop.is_set():
                        try:
                            r = http.get(
                                f"{server.url}/v1/batches/{batch_id}",
                                headers={"authorization": f"Bearer {KEY}"},
                            )
                            answered.append(r.status_code)
                        except httpx.HTTPError:
                            answered.append(-1)  # no answer within 10 s

            poller = threading.Thread(target=poll)
            poller.start()
            try:
                done = wait(c, batch_id)
            finally:
                stop.set()
                poller.join()
            assert set(answered) == {200} and answered
            assert (done.request_counts.completed, done.request_counts.failed) == (0, 8)
            errors = outputs(c, done.error_file_id)
            assert {e["error"]["code"] for e in errors} == {"invalid_upstream_response"}
            assert "answer head is over" in errors[0]["error"]["message"]
            received = httpx.get(f"{stub.base_url}/_stats").json()["received"]
            assert received == 16  # 2 attempts each: a cut-off head is one failed attempt
