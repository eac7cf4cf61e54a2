"""Free space on the disks overnight writes to (the data dir, local blobs)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

# Below this much free space a local disk counts as full: uploads and results need room.
MIN_FREE_BYTES = 8 * 1024 * 1024
# Space kept back in the data dir, given up when overnight starts on a full disk, so that
# SQLite can open (it must create its -wal and -shm files) and the API can free space.
# CockroachDB keeps a "ballast" file for the same reason.
BALLAST = ".overnight-reserve"
BALLAST_BYTES = 4 * 1024 * 1024

log = logging.getLogger("overnight.disk")


def disk_problem(path: str | os.PathLike[str]) -> str | None:
    """Says "full: ..." when the file system of `path` has under MIN_FREE_BYTES free."""
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return f"unreadable: {exc}"
    if usage.free < MIN_FREE_BYTES:
        return f"full: {usage.free / 1e6:.1f} MB free of {usage.total / 1e6:.0f} MB"
    return None


def keep_reserve(data_dir: Path) -> None:
    """At start: give the reserve up if the disk is full, else make sure it exists."""
    reserve = data_dir / BALLAST
    try:
        free = shutil.disk_usage(data_dir).free
        if reserve.exists():
            if free < MIN_FREE_BYTES:
                reserve.unlink()
                log.warning(
                    "the data disk is full (%.1f MB free): released the %d MB reserve so "
                    "overnight can start; delete files to free space (GET /readyz tells)",
                    free / 1e6,
                    BALLAST_BYTES >> 20,
                )
        elif free > MIN_FREE_BYTES + 2 * BALLAST_BYTES:
            with open(reserve, "wb") as fh:
                fh.write(b"\0" * BALLAST_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
    except OSError as exc:
        log.warning("could not keep the disk reserve in %s: %s", data_dir, exc)
