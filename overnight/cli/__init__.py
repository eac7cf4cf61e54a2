"""The `overnight` command. Each module registers its commands on `app`."""

from __future__ import annotations

from overnight.cli import server  # noqa: F401 - registers serve, worker, demo
from overnight.cli.app import app


def main() -> None:
    app()
