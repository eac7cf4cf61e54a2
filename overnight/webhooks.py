"""Webhooks: tell a project's URL when one of its batches ends, in OpenAI's event shape.

    [webhooks.my-project]                 # the project name (API keys map to projects)
    url = "https://example.com/hooks/overnight"
    secret_env = "OVERNIGHT_WEBHOOK_SECRET"   # variable holding the signing secret
    # events = ["batch.completed", "batch.failed"]   # default: all four batch events

Each delivery is `POST url` with the body
`{"id": "evt_...", "object": "event", "type": "batch.completed", "created_at": 1700000000,
"data": {"id": "batch_..."}}` and Standard Webhooks headers: `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
A secret written `whsec_<base64>` is used base64-decoded, any other string as its bytes:
the same rule as the openai SDK's `client.webhooks.unwrap()`, which verifies these.

Events wait in an outbox (one JSON file each under `<data_dir>/webhooks/`) until the
receiver answers 2xx, retried with exponential backoff; a restart resumes them.
Several processes sharing a data dir take turns through a file lock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from overnight.models import new_id, now
from overnight.settings import WebhookTarget

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("overnight.webhooks")

STATUS_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
MAX_DELAY = 3600.0

# Delivery attempts by outcome, for /metrics.
outcomes: dict[str, int] = {"delivered": 0, "failed_attempt": 0, "gave_up": 0}


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value, `v1,<base64>`."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def event_body(event_type: str, batch_id: str, created_at: int) -> tuple[str, bytes]:
    event_id = new_id("evt_")
    body = {
        "id": event_id,
        "object": "event",
        "type": event_type,
        "created_at": created_at,
        "data": {"id": batch_id},
    }
    return event_id, orjson.dumps(body)


class Webhooks:
    """The outbox and its sender; one per process that runs batches."""

    def __init__(self, targets: tuple[WebhookTarget, ...], outbox: Path) -> None:
        self.targets = {t.project: t for t in targets}
        self.outbox = outbox
        self.outbox.mkdir(parents=True, exist_ok=True)
        (self.outbox / "dead").mkdir(exist_ok=True)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="overnight-webhooks")

    async def emit(self, project: str, batch_id: str, status: str) -> None:
        """Queue the event for a batch that just reached terminal `status` (if anyone listens)."""
        target = self.targets.get(project)
        event_type = STATUS_EVENTS.get(status)
        if target is None or event_type is None or event_type not in target.events:
            return
        event_id, body = event_body(event_type, batch_id, now())
        entry = {"project": project, "body": body.decode(), "attempts": 0, "next_at": 0.0}
        await asyncio.to_thread(_write_atomic, self.outbox / f"{event_id}.json", entry)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                wait = await self.deliver_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; trying again")
                wait = 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()

    async def deliver_due(self) -> float:
        """Send every event that is due; returns seconds until the next one is."""
        t = time.time()
        next_due = 30.0
        paths = sorted(p for p in self.outbox.glob("evt_*.json"))
        due = []
        for path in paths:
            try:
                entry = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            if entry["next_at"] <= t:
                due.append(path)
            else:
                next_due = min(next_due, entry["next_at"] - t)
        for path in due[:32]:
            await self._deliver_one(path)
        if due:
            return 0.2  # look again soon: retries were just scheduled, more may be due
        return max(0.05, next_due)

    async def _deliver_one(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return  # delivered by another process meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another process is sending it right now
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    return  # replaced or removed while we waited
            except FileNotFoundError:
                return
            entry = orjson.loads(path.read_bytes())
            if entry["next_at"] > time.time():
                return  # another process tried it meanwhile and scheduled a retry
            target = self.targets.get(entry["project"])
            if target is None:
                log.warning(
                    "no webhook configured for project %r any more; dropping %s",
                    entry["project"],
                    path.name,
                )
                path.rename(self.outbox / "dead" / path.name)
                return
            ok, why = await self._post(target, path.stem, entry["body"].encode())
            entry["attempts"] += 1
            if ok:
                outcomes["delivered"] += 1
                path.unlink()
                return
            if entry["attempts"] >= target.max_attempts:
                outcomes["gave_up"] += 1
                log.warning(
                    "webhook %s to %s gave up after %d attempts: %s",
                    path.stem,
                    target.url,
                    entry["attempts"],
                    why,
                )
                path.rename(self.outbox / "dead" / path.name)
                return
            outcomes["failed_attempt"] += 1
            delay = min(MAX_DELAY, target.retry_base_seconds * 2 ** (entry["attempts"] - 1))
            entry["next_at"] = time.time() + delay * random.uniform(0.8, 1.2)
            entry["last_error"] = why
            log.info(
                "webhook %s to %s failed (%s); retry %d in %.0f s",
                path.stem,
                target.url,
                why,
                entry["attempts"],
                delay,
            )
            _write_atomic(path, entry)
        finally:
            os.close(fd)

    async def _post(self, target: WebhookTarget, event_id: str, body: bytes) -> tuple[bool, str]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "overnight-webhooks",
            "webhook-id": event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(target.secret, event_id, timestamp, body),
        }
        try:
            async with self._session.post(
                target.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=target.timeout),
                allow_redirects=False,
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return True, ""
                return False, f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return False, type(exc).__name__

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _write_atomic(path: Path, entry: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(entry))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def open_webhooks(targets: tuple[WebhookTarget, ...], data_dir: Path) -> Webhooks | None:
    """The running sender, or None when no project has a webhook."""
    if not targets:
        return None
    hooks = Webhooks(targets, data_dir / "webhooks")
    hooks.start()
    return hooks


async def batch_ended(hooks: Webhooks | None, project: str, batch_id: str, status: str) -> None:
    """Called right after a batch's terminal transition was committed. Never raises."""
    if hooks is None:
        return
    try:
        await hooks.emit(project, batch_id, status)
    except Exception:
        log.exception("could not queue the webhook event for batch %s", batch_id)
