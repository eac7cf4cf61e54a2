"""What the engine needs from the process it runs in, and nothing more.

`services.Services` provides it at the entry point; a unit test builds one from fakes
(a memory store, memory blobs, a router over mock backends) and may pass its own
clock, so that expiry and grace periods can be driven without waiting for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from overnight.backends.router import Router
from overnight.blobs import BlobStore
from overnight.settings import Settings
from overnight.store import Store
from overnight.webhooks import Webhooks


class EngineDeps(Protocol):
    settings: Settings
    store: Store
    blobs: BlobStore
    router: Router
    owner: str  # who holds the leases this process takes
    webhooks: Webhooks | None

    @property
    def clock(self) -> Callable[[], float]:
        """Unix seconds now: time.time, or a test's own."""
