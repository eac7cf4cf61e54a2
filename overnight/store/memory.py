"""The store in dicts: for unit tests of the engine and the API, and throwaway servers.

It keeps the contract of `SqlStore` (the same suite runs on both): compare-and-set
transitions, leases that only their owner may record against, counters bumped only
while a batch is live, tombstones for deleted files. Nothing survives the process;
"crash-resume" tests drop the engine and start a new one on the same MemoryStore.
Every method runs without awaiting in the middle, so each is atomic on one event loop.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from overnight.models import ENDED_AT, ApiKey, Batch, BatchStatus, File, Usage, now
from overnight.store.base import (
    OutboxEvent,
    Remembered,
    StoreStats,
)
from overnight.store.keys import SHOWN_PREFIX, hash_key, new_key
from overnight.store.memory_events import MemoryEvents
from overnight.store.memory_fleet import MemoryFleet
from overnight.store.memory_ledger import MemoryLedger

DELETED = "deleted"


T = TypeVar("T", File, ApiKey, Remembered, Usage)


def _copy(obj: T) -> T:
    """Callers get copies: changing what they hold must not change the store."""
    return dataclasses.replace(obj)


def _batch(b: Batch) -> Batch:
    return dataclasses.replace(b, usage=_copy(b.usage))


class MemoryFiles:
    def __init__(self) -> None:
        self.rows: dict[str, File] = {}  # in insertion order, which is seq order

    async def add(self, f: File) -> None:
        if f.id in self.rows:
            raise ValueError(f"file {f.id} exists")
        self.rows[f.id] = _copy(f)

    async def get(self, file_id: str, project: str | None = None) -> File | None:
        f = self.rows.get(file_id)
        if f is None or f.status == DELETED or (project is not None and f.project != project):
            return None
        return _copy(f)

    async def page(
        self, project: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> tuple[list[File], bool]:
        ids = [i for i, f in self.rows.items() if f.project == project]
        if order == "desc":
            ids.reverse()
        if after:
            if after not in ids:
                return [], False
            ids = ids[ids.index(after) + 1 :]
        chosen = [
            self.rows[i]
            for i in ids
            if self.rows[i].status != DELETED and (not purpose or self.rows[i].purpose == purpose)
        ]
        return [_copy(f) for f in chosen[:limit]], len(chosen) > limit

    async def delete(self, file_id: str) -> None:
        f = self.rows.get(file_id)
        if f is not None:
            f.status, f.status_details, f.bytes = DELETED, None, 0

    async def purge_tombstones(self, before: int) -> None:
        for i in [i for i, f in self.rows.items() if f.status == DELETED and f.created_at < before]:
            del self.rows[i]

    async def expired(self, now: int, limit: int = 100) -> list[File]:
        found = [
            f
            for f in self.rows.values()
            if f.expires_at is not None and f.expires_at <= now and f.status != DELETED
        ]
        return [_copy(f) for f in found[:limit]]


@dataclass
class _BatchRow:
    batch: Batch
    owner: str | None = None
    owner_until: float | None = None


class MemoryBatches:
    def __init__(self, files: MemoryFiles) -> None:
        self.events = MemoryEvents()  # a batch's close queues its event in one step
        self.files = files
        self.rows: dict[str, _BatchRow] = {}
        self.by_seq: dict[int, _BatchRow] = {}
        self._seq = 0

    async def add(self, b: Batch) -> int:
        if b.id in self.rows:
            raise ValueError(f"batch {b.id} exists")
        self._seq += 1
        row = _BatchRow(dataclasses.replace(b, seq=self._seq, usage=_copy(b.usage)))
        self.rows[b.id] = self.by_seq[self._seq] = row
        return self._seq

    async def get(self, batch_id: str, project: str | None = None) -> Batch | None:
        row = self.rows.get(batch_id)
        if row is None or (project is not None and row.batch.project != project):
            return None
        return _batch(row.batch)

    async def page(
        self, project: str, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]:
        mine = [r.batch for r in reversed(self.by_seq.values()) if r.batch.project == project]
        if after:
            ids = [b.id for b in mine]
            if after not in ids:
                return [], False
            mine = mine[ids.index(after) + 1 :]
        return [_batch(b) for b in mine[:limit]], len(mine) > limit

    async def count_open(self, project: str) -> int:
        return sum(
            1
            for r in self.rows.values()
            if r.batch.project == project and not BatchStatus(r.batch.status).terminal
        )

    async def using_files(
        self, project: str, file_ids: Sequence[str], limit: int = 500
    ) -> list[Batch]:
        wanted = set(file_ids)
        found = [
            _batch(r.batch)
            for r in reversed(self.by_seq.values())
            if r.batch.project == project
            and wanted & {r.batch.input_file_id, r.batch.output_file_id, r.batch.error_file_id}
        ]
        return found[:limit]

    async def active(self) -> list[Batch]:
        return [
            _batch(r.batch)
            for r in self.by_seq.values()
            if not BatchStatus(r.batch.status).terminal
        ]

    def _set(self, row: _BatchRow, values: dict[str, Any]) -> None:
        b = row.batch
        for name, value in values.items():
            if name in ("owner", "owner_until"):
                setattr(row, name, value)
            elif name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens"):
                setattr(b.usage, name, value)
            elif name in Batch.__dataclass_fields__:
                setattr(b, name, value)
            else:
                raise TypeError(f"a batch has no field {name!r}")

    async def transition(
        self,
        batch_id: str,
        from_states: Iterable[str],
        *,
        event: OutboxEvent | None = None,
        **values: Any,
    ) -> bool:
        row = self.rows.get(batch_id)
        if row is None or row.batch.status not in set(from_states):
            return False
        self._set(row, values)
        if event is not None:
            await self.events.add(event)
        return True

    async def set_values(self, batch_id: str, **values: Any) -> None:
        row = self.rows.get(batch_id)
        if row is not None:
            self._set(row, values)

    async def finish(
        self,
        batch_id: str,
        from_states: Iterable[str],
        status: str,
        at: int,
        counts: tuple[int, int, int],
        usage: Usage,
        outputs: Iterable[tuple[str, File]],
        event: OutboxEvent | None = None,
    ) -> bool:
        row = self.rows.get(batch_id)
        outputs = list(outputs)
        if row is None or row.batch.status not in set(from_states):
            return False
        if any(f.id in self.files.rows for _, f in outputs):
            raise ValueError("an output file exists already")
        total, completed, failed = counts
        values: dict[str, Any] = {"status": status, ENDED_AT[BatchStatus(status)]: at}
        values.update(total=total, completed=completed, failed=failed, usage=_copy(usage))
        values.update(owner=None, owner_until=None)
        values.update({column: f.id for column, f in outputs})
        self._set(row, values)
        for _, f in outputs:
            self.files.rows[f.id] = _copy(f)
        if event is not None:
            await self.events.add(event)
        return True

    async def take_ownership(self, batch_id: str, owner: str, now: float, until: float) -> bool:
        row = self.rows.get(batch_id)
        if row is None:
            return False
        expired = row.owner_until is not None and row.owner_until < now
        if row.owner is None or row.owner == owner or expired:
            row.owner, row.owner_until = owner, until
            return True
        return False

    async def release_ownership(self, batch_id: str, owner: str) -> None:
        row = self.rows.get(batch_id)
        if row is not None and row.owner == owner:
            row.owner = row.owner_until = None

    async def release_all_ownership(self) -> int:
        held = [r for r in self.rows.values() if r.owner is not None]
        for r in held:
            r.owner = r.owner_until = None
        return len(held)


class MemoryKeys:
    def __init__(self) -> None:
        self.rows: dict[str, tuple[ApiKey, str]] = {}  # id -> (key, its hash)

    async def create(self, project: str, name: str | None = None) -> tuple[ApiKey, str]:
        key = new_key()
        record = ApiKey("key_" + secrets.token_hex(12), project, key[:SHOWN_PREFIX], name, now())
        self.rows[record.id] = (record, hash_key(key))
        return _copy(record), key

    async def project_for_hash(self, key_hash: str) -> str | None:
        for record, digest in self.rows.values():
            if digest == key_hash and record.revoked_at is None:
                return record.project
        return None

    async def any_configured(self) -> bool:
        return bool(self.rows)

    async def list(self, project: str | None = None) -> list[ApiKey]:
        keys = [k for k, _ in self.rows.values() if project is None or k.project == project]
        return [_copy(k) for k in sorted(keys, key=lambda k: (k.created_at, k.id))]

    async def get(self, key_id: str) -> ApiKey | None:
        found = self.rows.get(key_id)
        return _copy(found[0]) if found else None

    async def revoke(self, key_id: str) -> ApiKey | None:
        found = self.rows.get(key_id)
        if found is not None and found[0].revoked_at is None:
            found[0].revoked_at = now()
        return await self.get(key_id)


class MemoryIdempotency:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Remembered] = {}

    async def reserve(
        self, project: str, key: str, fingerprint: str, now: int
    ) -> Remembered | None:
        existing = self.rows.get((project, key))
        if existing is not None and not existing.outlived(now):
            return _copy(existing)
        self.rows[(project, key)] = Remembered(fingerprint, None, None, now)
        return None

    async def complete(self, project: str, key: str, status_code: int, response: str) -> None:
        row = self.rows.get((project, key))
        if row is not None:
            row.status_code, row.response = status_code, response

    async def forget(self, project: str, key: str) -> None:
        row = self.rows.get((project, key))
        if row is not None and row.status_code is None:
            del self.rows[(project, key)]

    async def purge(self, now: int) -> int:
        gone = [k for k, r in self.rows.items() if r.outlived(now)]
        for k in gone:
            del self.rows[k]
        return len(gone)


class MemoryStore:
    def __init__(self) -> None:
        self.files = MemoryFiles()
        self.batches = MemoryBatches(self.files)
        self.ledger = MemoryLedger(self.batches)
        self.keys = MemoryKeys()
        self.idempotency = MemoryIdempotency()
        self.fleet = MemoryFleet()
        self.events = self.batches.events

    @property
    def single_process(self) -> bool:
        return True

    async def problem(self) -> str | None:
        return None

    async def stats(self) -> StoreStats:
        stats = StoreStats({s.value: 0 for s in BatchStatus})
        for row in self.batches.rows.values():
            b = row.batch
            stats.batches_by_status[b.status] += 1
            stats.input_tokens += b.usage.input_tokens
            stats.output_tokens += b.usage.output_tokens
            if not BatchStatus(b.status).terminal:
                pending, leased = await self.ledger.open_count(b.seq)
                stats.pending += pending
                stats.leased += leased
        return stats

    async def close(self) -> None:
        return None
