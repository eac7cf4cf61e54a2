import asyncio
import time

from overnight.backends.openai_http import parse_retry_after
from overnight.engine.limits import Limiter, TokenBucket, parse_reset


def test_parse_reset_durations() -> None:
    assert parse_reset("1s") == 1.0
    assert parse_reset("6m0s") == 360.0
    assert parse_reset("20ms") == 0.02
    assert parse_reset("1h2m3.5s") == 3723.5
    assert parse_reset("2.5") == 2.5
    assert parse_reset("soon") is None
    assert parse_reset(None) is None


def test_parse_retry_after_prefers_ms() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_slow_start_grows_until_the_first_overload() -> None:
    lim = Limiter(initial=4, ceiling=100)
    for _ in range(10):
        lim.on_success()
    assert lim.current == 14
    lim.on_overload()
    assert lim.current == 9  # 14 * 0.7
    for _ in range(9):
        lim.on_success()
    assert lim.current == 10  # now +1 per window of successes


def test_one_decrease_per_window() -> None:
    lim = Limiter(initial=50, ceiling=100)
    epoch = lim.epoch
    for _ in range(20):  # twenty requests in flight all see the same 429
        lim.on_overload(sent_epoch=epoch)
    assert lim.current == 35
    lim.on_overload(sent_epoch=lim.epoch)
    assert lim.current == 24


def test_floor_and_ceiling() -> None:
    lim = Limiter(initial=2, ceiling=3)
    for _ in range(10):
        lim.on_success()
    assert lim.current == 3
    for _ in range(10):
        lim.on_overload()
    assert lim.current == 1


def test_exhausted_remaining_header_pauses() -> None:
    lim = Limiter()
    lim.on_success({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    assert 1.5 < lim.paused_until - time.monotonic() <= 2.0


async def test_remaining_requests_are_an_allowance_until_the_reset() -> None:
    lim = Limiter()
    lim.on_success({"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "300ms"})
    assert lim.gated
    t0 = time.monotonic()
    await lim.gate()
    await lim.gate()
    assert time.monotonic() - t0 < 0.1  # the two the upstream still accepts go at once
    await lim.gate()  # the third waits for the window to reset
    assert time.monotonic() - t0 >= 0.25
    await asyncio.sleep(0.05)
    assert not lim.gated  # past the reset, nothing is known: back to the fast path


async def test_gate_waits_out_a_pause() -> None:
    lim = Limiter()
    lim.pause(0.2)
    t0 = time.monotonic()
    await lim.gate()
    assert time.monotonic() - t0 >= 0.19


async def test_token_bucket_paces() -> None:
    bucket = TokenBucket(per_minute=600, burst=1)  # 10 per second
    t0 = time.monotonic()
    for _ in range(4):
        await bucket.take()
    assert time.monotonic() - t0 >= 0.29
    await asyncio.sleep(0)
