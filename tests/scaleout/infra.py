"""Shared infrastructure for the scale-out tests: a scratch PostgreSQL database and a
real S3 API (moto's server mode as a child process), both on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

from overnight.server_process import free_port

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USERS = ("postgres", "root")
TEST_BUCKET = "overnight-test"


async def _admin_connect() -> Any:
    import asyncpg

    last: Exception | None = None
    for user in PG_USERS:
        try:
            conn = await asyncpg.connect(
                host=PG_HOST, port=PG_PORT, user=user, database="test", timeout=5
            )
            return conn, user
        except Exception as exc:  # try the next user name
            last = exc
    raise RuntimeError(f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable: {last}")


async def _create(name: str) -> str:
    conn, user = await _admin_connect()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"


async def _drop(name: str) -> None:
    conn, _user = await _admin_connect()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def postgres_available() -> bool:
    async def probe() -> bool:
        try:
            conn, _ = await _admin_connect()
        except Exception:
            return False
        await conn.close()
        return True

    return asyncio.run(probe())


def create_database() -> tuple[str, str]:
    """A fresh database: (name, postgresql:// URL). Drop it with `drop_database`."""
    name = f"overnight_t_{uuid.uuid4().hex[:12]}"
    return name, asyncio.run(_create(name))


def drop_database(name: str) -> None:
    asyncio.run(_drop(name))


class MotoServer:
    """moto's S3 server as a child process on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> MotoServer:
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("moto_server exited at start")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not start")

    def create_bucket(self, name: str) -> None:
        """Made here because OvernightProcess passes no OVERNIGHT_* variable to servers."""
        import boto3

        env = self.env()
        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)
        client.close()

    def env(self) -> dict[str, str]:
        """The AWS environment an S3 client (overnight's included) needs to use it."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "OVERNIGHT_S3_CREATE_BUCKET": "1",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def set_env(values: dict[str, str]) -> dict[str, str | None]:
    """Set environment variables; returns what to restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return saved


def restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
