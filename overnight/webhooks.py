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

Events wait in the store's outbox (table `webhook_events`) until the receiver answers
2xx, retried with exponential backoff. A batch's terminal change and its event commit in
one transaction, so an event exists exactly when its batch ended. A sender leases what it
sends: across a fleet one process sends an event at a time, and the events of a process
that died mid-delivery go to another once its lease ends (at once on a single-process
store, which frees every lease at start-up). That one may be sent again, with the same
`webhook-id`: Standard Webhooks receivers drop repeats by that id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from overnight.models import now
from overnight.settings import WebhookTarget
from overnight.store.base import EventStore, OutboxEvent

if TYPE_CHECKING:
    import aiohttp

    from overnight.store import Store

log = logging.getLogger("overnight.webhooks")

STATUS_EVENTS = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "expired": "batch.expired",
    "cancelled": "batch.cancelled",
}
MAX_DELAY = 3600.0
LEASE_MARGIN = 30.0  # a sender's lease outlives its longest POST by this much
IDLE_POLL = 5.0  # how often an idle sender looks for events other processes queued

# Delivery attempts by outcome, for /metrics.
outcomes: dict[str, int] = {"delivered": 0, "failed_attempt": 0, "gave_up": 0}


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value, `v1,<base64>`."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def event_id(batch_id: str, event_type: str) -> str:
    """One id per batch and event: queued twice (a commit whose answer was lost), it is
    still one event."""
    return "evt_" + hashlib.sha256(f"{batch_id}:{event_type}".encode()).hexdigest()[:32]


def event_body(event_type: str, batch_id: str, created_at: int) -> tuple[str, bytes]:
    eid = event_id(batch_id, event_type)
    body = {
        "id": eid,
        "object": "event",
        "type": event_type,
        "created_at": created_at,
        "data": {"id": batch_id},
    }
    return eid, orjson.dumps(body)


class Webhooks:
    """The outbox's sender; every process with webhooks configured runs one."""

    def __init__(
        self,
        targets: tuple[WebhookTarget, ...],
        events: EventStore,
        owner: str,
        *,
        single_process: bool = False,
        legacy_outbox: Path | None = None,
    ) -> None:
        self.targets = {t.project: t for t in targets}
        self.events = events
        self.owner = owner
        self.single_process = single_process
        self.legacy_outbox = legacy_outbox
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="overnight-webhooks")

    def wake(self) -> None:
        self._wake.set()

    def event_for(self, project: str, batch_id: str, status: str) -> OutboxEvent | None:
        """The event a batch reaching terminal `status` queues, if anyone listens."""
        target = self.targets.get(project)
        event_type = STATUS_EVENTS.get(status)
        if target is None or event_type is None or event_type not in target.events:
            return None
        eid, body = event_body(event_type, batch_id, now())
        return OutboxEvent(eid, project, body)

    async def emit(self, project: str, batch_id: str, status: str) -> None:
        """Queue an event on its own (the engine queues them with the batch's change)."""
        event = self.event_for(project, batch_id, status)
        if event is not None:
            await self.events.add(event)
            self.wake()

    async def _prepare(self) -> None:
        if self.single_process:
            await self.events.release_all()  # their holder was this store's last process
        if self.legacy_outbox is not None:
            await take_in_files(self.legacy_outbox, self.events)

    async def _loop(self) -> None:
        prepared = False
        while True:
            try:
                if not prepared:
                    await self._prepare()
                    prepared = True
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
        longest = max((target.timeout for target in self.targets.values()), default=10.0)
        due = await self.events.claim_due(self.owner, t, t + longest + LEASE_MARGIN, 32)
        for event in due:
            await self._deliver_one(event)
        if due:
            return 0.05  # more may be due
        next_at = await self.events.next_due()
        if next_at is None:
            return IDLE_POLL
        return min(IDLE_POLL, max(0.05, next_at - time.time()))

    async def _deliver_one(self, event: OutboxEvent) -> None:
        target = self.targets.get(event.project)
        if target is None:
            log.warning(
                "no webhook configured for project %r any more: %s", event.project, event.id
            )
            await self.events.give_up(event.id, self.owner, event.attempts, "no webhook configured")
            return
        ok, why = await self._post(target, event.id, event.body)
        attempts = event.attempts + 1
        if ok:
            outcomes["delivered"] += 1
            await self.events.delivered(event.id, self.owner)
            return
        if attempts >= target.max_attempts:
            outcomes["gave_up"] += 1
            log.warning(
                "webhook %s to %s gave up after %d attempts: %s",
                event.id,
                target.url,
                attempts,
                why,
            )
            await self.events.give_up(event.id, self.owner, attempts, why)
            return
        outcomes["failed_attempt"] += 1
        delay = min(MAX_DELAY, target.retry_base_seconds * 2 ** (attempts - 1))
        log.info(
            "webhook %s to %s failed (%s); retry %d in %.0f s",
            event.id,
            target.url,
            why,
            attempts,
            delay,
        )
        next_at = time.time() + delay * random.uniform(0.8, 1.2)
        await self.events.retry_at(event.id, self.owner, attempts, next_at, why)

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


async def take_in_files(outbox: Path, events: EventStore) -> int:
    """Events an older overnight left as files under <data_dir>/webhooks/ join the store."""
    n = 0
    for path in sorted(outbox.glob("evt_*.json")):
        try:
            entry = orjson.loads(path.read_bytes())
            event = OutboxEvent(
                path.stem,
                entry["project"],
                entry["body"].encode(),
                int(entry.get("attempts", 0)),
                float(entry.get("next_at", 0.0)),
                entry.get("last_error"),
            )
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        await events.add(event)
        path.unlink(missing_ok=True)
        n += 1
    if n:
        log.info("took %d waiting webhook events from %s into the store", n, outbox)
    return n


def open_webhooks(
    targets: tuple[WebhookTarget, ...], store: Store, owner: str, data_dir: Path
) -> Webhooks | None:
    """The running sender, or None when no project has a webhook."""
    if not targets:
        return None
    legacy = data_dir / "webhooks"
    hooks = Webhooks(
        targets,
        store.events,
        owner,
        single_process=store.single_process,
        legacy_outbox=legacy if legacy.is_dir() else None,
    )
    hooks.start()
    return hooks


def queued_event(
    hooks: Webhooks | None, project: str, batch_id: str, status: str
) -> OutboxEvent | None:
    """What a batch's terminal change carries into the store, if anyone listens."""
    return hooks.event_for(project, batch_id, status) if hooks is not None else None


def batch_ended(hooks: Webhooks | None) -> None:
    """Called right after a batch's terminal change (and its event) was committed."""
    if hooks is not None:
        hooks.wake()
