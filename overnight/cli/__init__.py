"""The `overnight` command. Each module registers its commands on `app`."""

from __future__ import annotations

import overnight.cli.client  # registers submit, batches, show, cancel, results, retry
import overnight.cli.keys  # registers keys create, list, revoke
import overnight.cli.migrate  # noqa: F401 - registers migrate
from overnight.cli import server  # noqa: F401 - registers serve, worker, demo
from overnight.cli.app import app


def main() -> None:
    app()
