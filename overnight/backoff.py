"""Exponential backoff with jitter, for everything that tries again later."""

from __future__ import annotations

import random


def jittered(attempt: int, base: float, ceiling: float) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): doubling from `base`,
    capped at `ceiling`, spread by +-50% so that callers failing together do not retry
    together."""
    return min(ceiling, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
