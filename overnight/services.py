"""The parts a running overnight process is made of, built once at the entry point."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from overnight.backends.router import Router
from overnight.blobs import BlobStore, open_blobs
from overnight.disk import keep_reserve
from overnight.settings import Settings
from overnight.store import Store, open_store
from overnight.webhooks import Webhooks, open_webhooks


def process_name() -> str:
    """Who holds a lease: unique per process, readable in the ledger."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass
class Services:
    settings: Settings
    store: Store
    blobs: BlobStore
    router: Router
    owner: str = field(default_factory=process_name)
    webhooks: Webhooks | None = None  # the outbox sender, when a project has a webhook
    clock: Callable[[], float] = time.time

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        keep_reserve(settings.data_dir)
        store = await open_store(settings.resolved_database_url)
        blobs = open_blobs(settings.resolved_storage_url, create_bucket=settings.s3_create_bucket)
        svc = cls(settings, store, blobs, Router(settings))
        svc.webhooks = open_webhooks(settings.webhooks, store, svc.owner, settings.data_dir)
        return svc

    async def close(self) -> None:
        if self.webhooks is not None:
            await self.webhooks.close()
        await self.router.close()
        await self.blobs.close()
        await self.store.close()
