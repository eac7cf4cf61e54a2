"""The store's interface, in model objects: what the API and the engine may ask of it.

Two implementations keep it: `SqlStore` (SQLite or PostgreSQL, through SQLAlchemy) and
`MemoryStore` (dicts, for unit tests and throwaway servers). One contract suite runs on
each (tests/integration/test_store_contract.py). Every method owns its transaction:
callers never hold a connection, so what must change together is one method.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import orjson

from overnight.jsonl import Line
from overnight.models import ApiKey, Batch, File, Usage


@dataclass(slots=True)
class Claimed:
    """A request leased to one worker, to be sent."""

    id: int
    line: int
    custom_id: str
    body: bytes
    attempts: int


@dataclass(slots=True)
class Outcome:
    """What became of one claimed request."""

    id: int
    batch_seq: int
    ok: bool
    status_code: int | None
    response: bytes | None  # compact JSON of the answer body
    error: str | None  # JSON of {code, message} when there was no answer
    upstream_request_id: str | None
    attempts: int
    usage: Usage


def bucketed(counts: Iterable[tuple[Any, int]], buckets: int) -> list[int]:
    """(bucket index, count) pairs as a list of `buckets` counts, out-of-range ones clamped."""
    out = [0] * buckets
    for index, n in counts:
        out[min(max(int(index), 0), buckets - 1)] += int(n)
    return out


def error_json(code: str, message: str) -> str:
    """What the ledger stores for a request that ended without an answer."""
    return orjson.dumps({"code": code, "message": message}).decode()


@dataclass(slots=True)
class Counts:
    total: int = 0
    completed: int = 0
    failed: int = 0
    open: int = 0
    leased: int = 0


class ResultRow(NamedTuple):
    line: int
    custom_id: str
    state: int
    status_code: int | None
    response: bytes | None
    error: str | None
    upstream_request_id: str | None


class FinishedRow(NamedTuple):
    """A finished request as the results route shows it; `id` orders the stream."""

    id: int
    line: int
    custom_id: str
    state: int
    status_code: int | None
    response: bytes | None
    error: str | None
    upstream_request_id: str | None


class FinishedPage(NamedTuple):
    rows: list[FinishedRow]
    cursor: int  # pass back as `after`: every finished row up to it has been examined
    more: bool  # more finished rows are ready past `cursor`


class StoredLine(NamedTuple):
    """A request as the user sent it, with where it stands."""

    line: int
    custom_id: str
    body: bytes
    state: int
    error: str | None


@dataclass(slots=True)
class OutboxEvent:
    """A webhook event waiting for its receiver's 2xx."""

    id: str
    project: str
    body: bytes
    attempts: int = 0
    next_at: float = 0.0  # unix time of the next attempt
    last_error: str | None = None


@dataclass(slots=True)
class Remembered:
    """What an idempotency key holds."""

    fingerprint: str
    status_code: int | None  # None: the first request is still running
    response: str | None  # the JSON answer, as sent
    created_at: int

    def outlived(self, now: int) -> bool:
        """Past its day, or a reservation whose request died with its process."""
        if self.status_code is None:
            return now - self.created_at > STALE_RESERVATION
        return now - self.created_at > KEY_TTL


KEY_TTL = 86_400
# A reservation whose request never finished (its process died) is free again after this.
STALE_RESERVATION = 120


@dataclass(slots=True)
class StoreStats:
    """What /metrics reports about the store."""

    batches_by_status: dict[str, int] = field(default_factory=dict)
    pending: int = 0  # requests of open batches waiting to be sent
    leased: int = 0  # requests of open batches claimed by a worker
    input_tokens: int = 0  # over every batch kept
    output_tokens: int = 0


class FileStore(Protocol):
    async def add(self, f: File) -> None: ...
    async def get(self, file_id: str, project: str | None = None) -> File | None: ...
    async def page(
        self, project: str, *, purpose: str | None, limit: int, order: str, after: str | None
    ) -> tuple[list[File], bool]: ...
    async def delete(self, file_id: str) -> None:
        """Keep a tombstone: a client deleting while it pages may pass this id as `after`."""

    async def purge_tombstones(self, before: int) -> None: ...
    async def expired(self, now: int, limit: int = 100) -> list[File]: ...


class BatchStore(Protocol):
    async def add(self, b: Batch) -> int:
        """Insert `b`; returns its seq."""

    async def get(self, batch_id: str, project: str | None = None) -> Batch | None: ...
    async def page(
        self, project: str, *, limit: int, after: str | None
    ) -> tuple[list[Batch], bool]: ...
    async def count_open(self, project: str) -> int: ...
    async def using_files(
        self, project: str, file_ids: Sequence[str], limit: int = 500
    ) -> list[Batch]:
        """The project's batches that name any of `file_ids` as input, output or error file,
        newest first, at most `limit`."""

    async def active(self) -> list[Batch]:
        """Every batch the executor still has work on, oldest first."""

    async def transition(
        self,
        batch_id: str,
        from_states: Iterable[str],
        *,
        event: OutboxEvent | None = None,
        **values: Any,
    ) -> bool:
        """Set `values` (Batch fields) only if the batch is still in one of `from_states`;
        `event` is queued with the change, all or nothing."""

    async def set_values(self, batch_id: str, **values: Any) -> None: ...
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
        """Close the batch with its final counts, output files and webhook event, all or
        nothing."""

    async def take_ownership(self, batch_id: str, owner: str, now: float, until: float) -> bool:
        """A batch-level lease, so one process validates or finalizes a batch at a time."""

    async def release_ownership(self, batch_id: str, owner: str) -> None: ...
    async def release_all_ownership(self) -> int: ...


class LedgerStore(Protocol):
    async def add_lines(self, batch_seq: int, lines: Sequence[Line]) -> None:
        """Insert requests; a line already there is left as it is."""

    async def last_line(self, batch_seq: int) -> int: ...
    async def clear(self, batch_seq: int) -> None: ...
    async def claim(
        self, batch_seq: int, owner: str, limit: int, lease_until: float
    ) -> list[Claimed]:
        """Lease up to `limit` pending requests of a batch, in ledger order."""

    async def record(self, owner: str, outcomes: Sequence[Outcome]) -> None:
        """Store results still leased to `owner` and bump their live batches' counters."""

    async def release(self, owner: str, ids: Sequence[int]) -> None: ...
    async def release_owned(self, owner: str) -> int:
        """Every lease `owner` still holds goes back to pending (its last act at shutdown)."""

    async def renew(self, owner: str, lease_until: float) -> None: ...
    async def reclaim_expired(self, now: float) -> int: ...
    async def release_all(self) -> int: ...
    async def close_open(self, batch_seq: int, error_json: str) -> None: ...
    async def counts(self, batch_seq: int) -> tuple[Counts, Usage]: ...
    async def open_count(self, batch_seq: int) -> tuple[int, int]:
        """(pending, leased)."""

    def results(self, batch_seq: int, page: int = 5000) -> AsyncIterator[ResultRow]:
        """Every row of a batch in line order."""

    async def finished_page(
        self,
        batch_seq: int,
        after: int,
        limit: int,
        *,
        state: int | None = None,
        custom_ids: Sequence[str] = (),
    ) -> FinishedPage:
        """Finished rows past the cursor `after`, in ledger (dispatch) order, optionally of one
        state and some custom_ids. The page stops before the first request still open, so a
        cursor never passes a request that finishes later."""

    def stored_lines(
        self, batch_seq: int, states: Sequence[int], page: int = 5000
    ) -> AsyncIterator[StoredLine]:
        """The requests of a batch in these states, in line order, as the user sent them."""

    async def finished_since(self, batch_seq: int, since: float) -> int:
        """How many requests of the batch finished at or after unix time `since`."""

    async def finished_curve(
        self, batch_seq: int, start: float, step: float, buckets: int
    ) -> list[int]:
        """How many requests of the batch finished in each of `buckets` spans of `step`
        seconds from unix time `start` (earlier ones count in the first, later ones in
        the last; rows without a finish time, from before it was recorded, in none)."""

    async def purge_finished(self, created_before: int) -> int: ...
    async def failed_sample(self, batch_seq: int, limit: int = 20) -> list[dict[str, Any]]: ...


class EventStore(Protocol):
    """The webhook outbox: events leased to one sender at a time, kept until delivered."""

    async def add(self, event: OutboxEvent) -> None:
        """Queue an event; an id already queued is not doubled."""

    async def claim_due(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[OutboxEvent]:
        """Lease events due by `now` that nobody holds (or whose holder's lease ran out)."""

    async def delivered(self, event_id: str, owner: str) -> None:
        """The receiver took it: the event goes, if `owner` still holds it."""

    async def retry_at(
        self, event_id: str, owner: str, attempts: int, next_at: float, error: str
    ) -> None: ...
    async def give_up(self, event_id: str, owner: str, attempts: int, error: str) -> None:
        """Kept, as dead, for an operator to look at; never sent again."""

    async def next_due(self) -> float | None:
        """When the earliest waiting event is due (its lease's end, if held)."""

    async def release_all(self) -> int:
        """At start-up of a single-process store: every lease belonged to a dead process."""

    async def counts(self) -> tuple[int, int]:
        """(waiting, dead)."""


class KeyStore(Protocol):
    async def create(self, project: str, name: str | None = None) -> tuple[ApiKey, str]: ...
    async def project_for_hash(self, key_hash: str) -> str | None: ...
    async def any_configured(self) -> bool: ...
    async def list(self, project: str | None = None) -> list[ApiKey]: ...
    async def get(self, key_id: str) -> ApiKey | None: ...
    async def revoke(self, key_id: str) -> ApiKey | None: ...


class IdempotencyStore(Protocol):
    async def reserve(
        self, project: str, key: str, fingerprint: str, now: int
    ) -> Remembered | None:
        """Claim `key` for a new request (None), or return what the key already holds."""

    async def complete(self, project: str, key: str, status_code: int, response: str) -> None: ...
    async def forget(self, project: str, key: str) -> None: ...
    async def purge(self, now: int) -> int: ...


class FleetStore(Protocol):
    """Limits that hold for every worker sharing the store: a route's rpm, tpm and
    max_concurrency, and the rate an upstream's headers taught one of them.

    Times are unix seconds passed in by the caller (tests use a fake clock); each
    method is one transaction, safe against other processes on the same database."""

    async def take(
        self, bucket: str, want: float, rate_per_s: float, burst: float, now: float
    ) -> float:
        """Take up to `want` tokens from a shared token bucket; returns what was granted
        (0 when it is empty). The bucket starts full; `rate_per_s` and `burst` of this
        call replace the stored ones (a route's limit may change, a learnt one moves)."""

    async def reserve(
        self,
        bucket: str,
        want: int,
        rate_per_s: float,
        burst: float,
        now: float,
        not_before: float | None = None,
    ) -> float:
        """Take `want` tokens of the same kind of bucket whether it holds them or not:
        the level may go below zero, a debt the refill pays off. Returns the level
        before (refilled to `now`): token i of the `want` exists at
        now + max(0, i - level) / rate_per_s, so every worker's reservations share one
        schedule and the fleet sends at the rate, never faster. `not_before`: the
        schedule holds no token before then (the upstream said it is full until then),
        for this reservation and every later one; it never moves the schedule earlier."""

    async def lease_slots(
        self,
        route: str,
        owner: str,
        want: int,
        limit: int,
        now: float,
        until: float,
        in_use: int = 0,
    ) -> int:
        """Hold up to `want` of a route's `limit` concurrency slots until `until`; returns
        how many `owner` holds now, which may be fewer than before: a fair share when
        others want slots too. Slots of owners whose lease ended before `now` are freed.
        `in_use`: requests `owner` still has in flight; a grant cut below them is recorded
        as `in_use` until they answer, so nobody is granted slots that are still busy."""

    async def release_slots(self, owner: str) -> None:
        """Give back every slot `owner` holds (a graceful stop), and its presence."""

    async def present(self, group: str, owner: str, now: float, until: float | None) -> int:
        """Mark `owner` present in `group` until `until` (None: gone now) and return how
        many owners are present at `now`, `owner` included when present. An owner that
        dies stops renewing and counts for nothing once its `until` has passed."""

    async def set_learnt(self, route: str, rate_per_s: float, now: float) -> None:
        """Share a request rate learnt from the upstream's headers (last writer wins)."""

    async def learnt(self, route: str, now: float, max_age: float = 600.0) -> float | None:
        """The route's learnt rate, or None when none was set in the last `max_age` s."""


class Store(Protocol):
    @property
    def files(self) -> FileStore: ...
    @property
    def batches(self) -> BatchStore: ...
    @property
    def ledger(self) -> LedgerStore: ...
    @property
    def keys(self) -> KeyStore: ...
    @property
    def idempotency(self) -> IdempotencyStore: ...
    @property
    def fleet(self) -> FleetStore: ...
    @property
    def events(self) -> EventStore: ...

    @property
    def single_process(self) -> bool:
        """One overnight process owns the store: at start every lease is its own."""

    async def problem(self) -> str | None:
        """Why the store cannot serve now, or None."""

    async def stats(self) -> StoreStats: ...
    async def close(self) -> None: ...
