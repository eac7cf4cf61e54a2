"""Session-wide options.

`--pg-s3` runs the session against PostgreSQL + S3 instead of SQLite + a local
directory: a fresh PostgreSQL database on 127.0.0.1:5432 and moto's S3 server on a
free loopback port are started here, and their URLs are put in the environment
(OVERNIGHT_TEST_DATABASE_URL, OVERNIGHT_TEST_STORAGE_URL and the AWS_* variables),
which the acceptance suite hands to every server it starts. Both are removed at the end.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.scaleout.infra import (
    TEST_BUCKET,
    MotoServer,
    create_database,
    drop_database,
    restore_env,
    set_env,
)

_STATE: dict[str, Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg-s3",
        action="store_true",
        default=False,
        help="run against PostgreSQL (127.0.0.1:5432) and an S3 API (moto, started here)",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if not session.config.getoption("--pg-s3"):
        return
    moto = MotoServer().start()
    _STATE["moto"] = moto
    try:
        moto.create_bucket(TEST_BUCKET)
        name, url = create_database()
    except BaseException:
        _STATE.pop("moto").stop()
        raise
    _STATE["database"] = name
    _STATE["saved_env"] = set_env(
        {
            "OVERNIGHT_TEST_DATABASE_URL": url,
            "OVERNIGHT_TEST_STORAGE_URL": f"s3://{TEST_BUCKET}/files",
            **moto.env(),
        }
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "saved_env" in _STATE:
        restore_env(_STATE.pop("saved_env"))
    if "database" in _STATE:
        drop_database(_STATE.pop("database"))
    if "moto" in _STATE:
        _STATE.pop("moto").stop()


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--pg-s3"):
        return "storage: PostgreSQL + S3 (moto server)"
    return None
