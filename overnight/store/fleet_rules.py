"""The arithmetic of fleet-wide limits, kept apart from where the numbers are stored.

`SqlStore` and `MemoryStore` both call these pure functions while they hold their row
(or their event loop), so the two stores cannot drift apart on what a token bucket
grants or how concurrency slots are shared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def refill(level: float, stamp: float, rate_per_s: float, burst: float, now: float) -> float:
    """The bucket's level at `now`: refilled since `stamp`, never above `burst`.

    A caller whose clock runs behind the last writer's (several hosts) refills nothing
    rather than draining the bucket."""
    return min(burst, level + max(0.0, now - stamp) * rate_per_s)


def held_until(level: float, rate_per_s: float, now: float, not_before: float | None) -> float:
    """A level that yields no token before `not_before`: a schedule in debt until then,
    or further, as it was. (Token i of a level exists at now + (i - level) / rate, so
    the first one, i = 1, comes at `not_before`.)"""
    if not_before is None or not_before <= now:
        return level
    return min(level, 1.0 - (not_before - now) * rate_per_s)


def grant(level: float, want: float) -> float:
    """What a take of `want` gets from a bucket at `level` (0 when it is empty).

    Below one token the bucket counts as empty. A caller asking for whole things
    (`want >= 1`: requests, or tokens of a prompt) gets whole tokens; a smaller,
    fractional want (a tpm remainder) may be met fractionally."""
    if level < 1 or want <= 0:
        return 0.0
    if want >= 1:
        return float(min(want, math.floor(level)))
    return float(want)


def fair_shares(limit: int, wants: Mapping[str, int]) -> dict[str, int]:
    """Max-min fair integer shares of `limit` slots among owners wanting `wants`.

    Everyone gets up to `limit // n` of those still wanting; what the satisfied ones
    leave goes round again to the others. The last few slots that do not divide evenly
    go to owners in name order, so every caller computes the same answer and the
    fleet settles instead of the fastest caller keeping the remainder."""
    shares = dict.fromkeys(wants, 0)
    remaining = max(0, limit)
    active = sorted(o for o, w in wants.items() if w > 0)
    while active and remaining > 0:
        each = remaining // len(active)
        if each == 0:
            for owner in active[:remaining]:
                shares[owner] += 1
            break
        still: list[str] = []
        for owner in active:
            got = min(each, wants[owner] - shares[owner])
            shares[owner] += got
            remaining -= got
            if shares[owner] < wants[owner]:
                still.append(owner)
        active = still
    return shares


def lease_grant(owner: str, want: int, limit: int, others: Mapping[str, tuple[int, int]]) -> int:
    """How many slots `owner` may hold now, given the live others' (held, want).

    Never more than its fair share, and never more than the others leave free: the
    others keep what they hold until their own next call cuts them down, so the sum
    of held slots stays within `limit` at every moment."""
    wants = {o: w for o, (_held, w) in others.items()}
    wants[owner] = max(0, want)
    share = fair_shares(limit, wants)[owner]
    free = limit - sum(held for held, _want in others.values())
    return max(0, min(want, share, free))
