"""A scale-out deployment in miniature: one API process and N workers, all real child
processes, on one PostgreSQL database and one S3 bucket, against a stub upstream."""

from __future__ import annotations

import re
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import boto3

from overnight.server_process import OvernightProcess


def make_bucket(aws: dict[str, str]) -> str:
    """A fresh bucket (OvernightProcess passes no OVERNIGHT_* variable, so servers
    cannot be told OVERNIGHT_S3_CREATE_BUCKET=1)."""
    name = f"ovt-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=aws["AWS_ENDPOINT_URL"],
        region_name=aws["AWS_DEFAULT_REGION"],
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=name)
    client.close()
    return name


class Cluster:
    """`serve --no-executor` plus `workers` x `worker`, sharing PostgreSQL and S3."""

    def __init__(
        self,
        tmp: Path,
        *,
        database_url: str,
        aws: dict[str, str],
        config: str,
        workers: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.database_url = database_url
        bucket = make_bucket(aws)
        config_path = tmp / "config.toml"
        config_path.write_text(config)
        self.env = {
            **{k: v for k, v in aws.items() if k.startswith("AWS_")},
            "PYTHONUNBUFFERED": "1",
            "OVERNIGHT_DATABASE_URL": database_url,
            "OVERNIGHT_STORAGE_URL": f"s3://{bucket}/files",
            "OVERNIGHT_CONFIG": str(config_path),
            **(env or {}),
        }
        self.api = OvernightProcess(
            tmp / "api", env=self.env, args=["--no-executor"], log_path=tmp / "api.log"
        )
        self.workers = [
            OvernightProcess(
                tmp / f"worker{i}", env=self.env, command="worker", log_path=tmp / f"w{i}.log"
            )
            for i in range(workers)
        ]

    def start(self, timeout: float = 60.0) -> Cluster:
        self.api.start()
        for w in self.workers:
            w.start()
        # A worker has no port to probe: it logs "worker <name> running" once it is up.
        deadline = time.monotonic() + timeout
        for w in self.workers:
            while not re.search(r"worker \S+ running", w.log()):
                if w.process is not None and w.process.poll() is not None:
                    raise RuntimeError(f"worker exited at start:\n{w.log()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start:\n{w.log()}")
                time.sleep(0.05)
        return self

    def stop(self) -> None:
        for p in [self.api, *self.workers]:
            p.stop(timeout=10)

    def dump_logs(self) -> None:
        # Each live process logs where its asyncio tasks wait (overnight/task_dump.py).
        alive = [p for p in [self.api, *self.workers] if p.process and p.process.poll() is None]
        for p in alive:
            assert p.process is not None
            p.process.send_signal(signal.SIGUSR1)
        if alive:
            time.sleep(1.0)
        for p in [self.api, *self.workers]:
            sys.stderr.write(f"\n--- {p.command} {p.log_path} ---\n{p.log()[-40000:]}")

    async def db(self) -> Any:
        return await asyncpg.connect(self.database_url)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.dump_logs()
        self.stop()
