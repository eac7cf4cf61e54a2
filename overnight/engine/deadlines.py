"""Which batch of a lane gets the next requests: deadlines first, no batch starved.

Each batch's share of the upstream is a weight; the feeder claims from the batch
whose `pass` is least and advances it by claimed / weight (stride scheduling), so
over any stretch each batch gets requests in proportion to its weight.

Weights: every batch has a floor (FLOOR of an equal share, so nothing starves).
A batch that would not finish before `expires_at` at an equal share is at risk:
at risk batches, earliest deadline first, get the rate they need from what is
left; the rest is shared by every batch in proportion to its priority (2 ** p).
Without a measured throughput yet, priorities alone decide. With `deadlines`
off (the operator's OVERNIGHT_DEADLINE_SCHEDULING=off), no batch is at risk: every
batch gets a plain share weighed by its priority, equal when priorities are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

FLOOR = 0.2  # of an equal share: what every batch keeps, whatever the deadlines
SLACK = 0.9  # aim to finish by this fraction of the time left (finalizing takes time)


@dataclass(frozen=True, slots=True)
class Demand:
    seq: int
    remaining: int  # requests not finished yet
    expires_at: float
    priority: int = 0


def weights(
    batches: Sequence[Demand], rate: float, now: float, deadlines: bool = True
) -> dict[int, float]:
    """Each batch's share of `rate` (requests a second the lane is finishing now)."""
    if not batches:
        return {}
    bias = {b.seq: 2.0**b.priority for b in batches}
    if rate <= 0:
        return bias
    n = len(batches)
    equal = rate / n
    share = dict.fromkeys((b.seq for b in batches), FLOOR * equal)
    left = rate - FLOOR * equal * n
    for b in sorted(batches, key=lambda b: b.expires_at) if deadlines else ():
        need = b.remaining / max(1e-3, (b.expires_at - now) * SLACK)
        if need <= equal:
            continue  # it finishes in time on an equal share
        extra = min(need - share[b.seq], left)
        if extra > 0:
            share[b.seq] += extra
            left -= extra
    total_bias = sum(bias.values())
    for b in batches:
        share[b.seq] += left * bias[b.seq] / total_bias
    return share


class Stride:
    """Stride scheduling over the lane's batches: `pick` the next, `charge` what it got."""

    def __init__(self) -> None:
        self.passes: dict[int, float] = {}

    def pick(self, shares: dict[int, float]) -> int:
        if not shares:
            raise ValueError("no batch to pick from")
        for seq in [s for s in self.passes if s not in shares]:
            del self.passes[seq]
        # A batch that joins (or comes back with work) starts level with the others:
        # what it did not get while away is not owed to it.
        floor = min(self.passes.values(), default=0.0)
        for seq in shares:
            self.passes.setdefault(seq, floor)
        return min(shares, key=lambda s: (self.passes[s], s))

    def charge(self, seq: int, claimed: int, share: float) -> None:
        if seq in self.passes and share > 0:
            self.passes[seq] += max(1, claimed) / share
