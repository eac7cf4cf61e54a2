"""Run `overnight serve` or `overnight worker` as a real child process (tests, benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any OVERNIGHT_* variable, plus `extra`: a child
    started from a developer's shell gets only the settings it is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")}
    env.update(extra or {})
    return env


def wait_ready(
    process: subprocess.Popen[bytes],
    probe_url: str,
    timeout: float,
    log: Callable[[], str],
    name: str,
) -> None:
    """Until `probe_url` answers 200; raises with the child's log if it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early ({process.returncode}):\n{log()}")
        try:
            with urllib.request.urlopen(probe_url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not become ready:\n{log()}")


class OvernightProcess:
    """`with OvernightProcess(data_dir, env={...}) as p: p.url` -> http://127.0.0.1:PORT."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        command: str = "serve",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_env = env or {}
        self.args = args or []
        self.command = command
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> OvernightProcess:
        env = clean_env(self.extra_env)
        argv = [sys.executable, "-m", "overnight", self.command, "--data-dir", str(self.data_dir)]
        if self.command == "serve":
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        argv += self.args
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="overnight-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if self.command == "serve":
            self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        wait_ready(self.process, f"{self.url}/healthz", timeout, self.log, "overnight")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """kill -9: no cleanup of any kind, as a crash would be."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self) -> OvernightProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
