"""Metadata and the request ledger behind one interface (`store.base.Store`)."""

from __future__ import annotations

from overnight.store.base import Store


async def open_store(url: str) -> Store:
    """`sqlite+aiosqlite:///...`, `postgresql://...`, or `memory://` (nothing kept)."""
    if url.startswith("memory://"):
        from overnight.store.memory import MemoryStore

        return MemoryStore()
    from overnight.store.sql import SqlStore

    return await SqlStore.open(url)


__all__ = ["Store", "open_store"]
