"""Fleet-wide limits in dicts: the memory store's `fleet`, for unit tests.

Same rules as the SQL one (store/fleet_rules.py); each method runs without awaiting in
the middle, so on one event loop each is atomic, as a locked row is in the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from overnight.store.fleet_rules import grant, held_until, lease_grant, refill


@dataclass(slots=True)
class _Bucket:
    level: float
    stamp: float


@dataclass(slots=True)
class _Lease:
    held: int
    want: int
    expires_at: float


class MemoryFleet:
    def __init__(self) -> None:
        self.buckets: dict[str, _Bucket] = {}
        self.slots: dict[str, dict[str, _Lease]] = {}  # route -> owner -> lease
        self.rates: dict[str, tuple[float, float]] = {}  # route -> (rate, learnt at)
        self.presence: dict[str, dict[str, float]] = {}  # group -> owner -> present until

    async def take(
        self, bucket: str, want: float, rate_per_s: float, burst: float, now: float
    ) -> float:
        b = self.buckets.setdefault(bucket, _Bucket(burst, now))
        level = refill(b.level, b.stamp, rate_per_s, burst, now)
        got = grant(level, want)
        b.level, b.stamp = level - got, max(b.stamp, now)
        return got

    async def reserve(
        self,
        bucket: str,
        want: int,
        rate_per_s: float,
        burst: float,
        now: float,
        not_before: float | None = None,
    ) -> float:
        b = self.buckets.setdefault(bucket, _Bucket(burst, now))
        level = refill(b.level, b.stamp, rate_per_s, burst, now)
        level = held_until(level, rate_per_s, now, not_before)
        b.level, b.stamp = level - want, max(b.stamp, now)
        return level

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
        leases = self.slots.setdefault(route, {})
        for dead in [o for o, lease in leases.items() if lease.expires_at < now]:
            del leases[dead]
        others = {o: (lease.held, lease.want) for o, lease in leases.items() if o != owner}
        held = lease_grant(owner, want, limit, others)
        if held == 0 and want <= 0 and in_use <= 0:
            leases.pop(owner, None)
        else:
            leases[owner] = _Lease(max(held, in_use), max(0, want), until)
        return held

    async def release_slots(self, owner: str) -> None:
        for leases in self.slots.values():
            leases.pop(owner, None)
        for members in self.presence.values():
            members.pop(owner, None)

    async def present(self, group: str, owner: str, now: float, until: float | None) -> int:
        members = self.presence.setdefault(group, {})
        for dead in [o for o, end in members.items() if end < now]:
            del members[dead]
        if until is None:
            members.pop(owner, None)
        else:
            members[owner] = until
        return len(members)

    async def set_learnt(self, route: str, rate_per_s: float, now: float) -> None:
        self.rates[route] = (rate_per_s, now)

    async def learnt(self, route: str, now: float, max_age: float = 600.0) -> float | None:
        found = self.rates.get(route)
        if found is None or now - found[1] > max_age:
            return None
        return found[0]
