"""Fixtures for the scale-out tests: an S3 API (moto) and fresh PostgreSQL databases."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.scaleout.infra import (
    MotoServer,
    create_database,
    drop_database,
    postgres_available,
)


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """The AWS environment of a running S3 API: --pg-s3's own, or one started here."""
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://127.0.0.1:"):
        yield {
            k: os.environ[k]
            for k in (
                "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_DEFAULT_REGION",
                "OVERNIGHT_S3_CREATE_BUCKET",
            )
        }
        return
    moto = MotoServer().start()
    try:
        yield moto.env()
    finally:
        moto.stop()


@pytest.fixture
def aws(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment pointed at the S3 API (botocore reads it)."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env


@pytest.fixture(scope="session")
def has_postgres() -> bool:
    return postgres_available()


@pytest.fixture
def pg_url(has_postgres: bool) -> Iterator[str]:
    """A fresh PostgreSQL database for one test (postgresql:// URL), dropped afterwards."""
    if not has_postgres:
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name, url = create_database()
    try:
        yield url
    finally:
        drop_database(name)
