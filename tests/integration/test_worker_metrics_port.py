"""`overnight worker --metrics-port`: a port it cannot have stops it with a clear message."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from overnight.server_process import clean_env


def worker(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "overnight", "worker", "--data-dir", str(tmp_path), *args]
    env = clean_env({"OVERNIGHT_UPSTREAM_URL": "http://127.0.0.1:9/v1"})
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_a_taken_port_stops_the_worker_before_it_claims_work(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = worker(tmp_path, "--metrics-port", str(port))
    assert done.returncode == 2, done.stderr
    assert f"overnight: cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_out_of_range_is_refused(tmp_path: Path) -> None:
    done = worker(tmp_path, "--metrics-port", "70000")
    assert done.returncode == 2
    assert "--metrics-port" in done.stderr
