"""What a database error means: the store is away for a while, or full, or the data is bad.

The engine retries what is transient (a connection dropped, a lock, a restart), the API
answers it with 503 and `retry-after`, and a full disk with 507; only a value the
store cannot hold is the data's fault.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

from overnight.backoff import jittered

log = logging.getLogger("overnight.store")

T = TypeVar("T")

_FULL_TEXT = ("database or disk is full", "no space left on device", "disk full")
_TRANSIENT_TEXT = (
    "database is locked",
    "connection",
    "terminating",
    "server closed",
    "the database system is",
    "could not connect",
    "timeout",
    "timed out",
)


def _messages(error: BaseException) -> str:
    parts = [str(error)]
    orig = getattr(error, "orig", None)
    if orig is not None:
        parts.append(str(orig))
        parts.append(type(orig).__name__)
    return " ".join(parts).lower()


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sa_exc.DBAPIError) and any(t in _messages(error) for t in _FULL_TEXT)


def is_transient(error: BaseException) -> bool:
    """The database is unreachable or busy now; the same statement may work later."""
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            return not is_disk_full(error)
        text = _messages(error)
        return "connectiondoesnotexist" in text or any(t in text for t in _TRANSIENT_TEXT)
    if isinstance(error, sa_exc.TimeoutError):  # the pool had no connection to give
        return True
    name = type(error).__name__
    if name in ("ConnectionDoesNotExistError", "InterfaceError", "CannotConnectNowError"):
        return True  # asyncpg's own, when it escapes SQLAlchemy's wrapping
    return isinstance(error, ConnectionError | TimeoutError) and not is_disk_full(error)


def log_failure(logger: logging.Logger, error: BaseException, message: str, *args: object) -> None:
    """A store that is away or full is an operating condition: one line, no traceback.
    Anything else is a bug, logged with its traceback."""
    if is_transient(error) or is_disk_full(error):
        logger.warning(message + " (%s: %s)", *args, type(error).__name__, str(error)[:300])
    else:
        logger.error(message, *args, exc_info=error)


async def retrying(
    step: Callable[[], Awaitable[T]],
    what: str,
    *,
    attempts: int = 8,
    base: float = 0.1,
    ceiling: float = 3.0,
) -> T:
    """Run one step of a longer job again when the database drops it, so that the job
    goes on from where it was instead of starting over. Other errors go to the caller."""
    for attempt in range(1, attempts + 1):
        try:
            return await step()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = jittered(attempt, base, ceiling)
            log.info("%s: database unavailable (%s), retrying in %.2f s", what, exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
