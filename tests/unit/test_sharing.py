"""Sharing an upstream: load gauges, the yield controller, queueing read from answer times,
timeouts, and a pace learnt from rate-limit headers; all on a fake clock."""

from __future__ import annotations

import pytest

from overnight.backends.load import Load, add, parse_metrics, parse_slots
from overnight.backends.openai_http import OpenAIHTTPBackend
from overnight.engine.latency import LatencyGauge
from overnight.engine.limits import Limiter
from overnight.engine.pacing import MARGIN, RateLearner, told_rate
from overnight.engine.spacing import SendSpacing
from overnight.engine.yielding import YieldController


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="m"} 12345.0
"""


def test_vllm_gauges_are_summed_over_engines() -> None:
    load = parse_metrics(VLLM)
    assert load == Load("vllm", 5.0, 4.0, 0.75)


def test_older_vllm_cache_gauge_sglang_and_llamacpp() -> None:
    old = (
        'vllm:num_requests_running{model_name="m"} 1\nvllm:num_requests_waiting{model_name="m"} 0\n'
    )
    old += 'vllm:gpu_cache_usage_perc{model_name="m"} 0.9\n'
    assert parse_metrics(old) == Load("vllm", 1.0, 0.0, 0.9)
    sglang = (
        'sglang:num_running_reqs{model_name="m",engine_type="unified",tp_rank="0"} 7\n'
        'sglang:num_queue_reqs{model_name="m",engine_type="unified",tp_rank="0"} 2\n'
        'sglang:token_usage{model_name="m",engine_type="unified",tp_rank="0"} 0.4\n'
    )
    assert parse_metrics(sglang) == Load("sglang", 7.0, 2.0, 0.4)
    llamacpp = "llamacpp:requests_processing 1\nllamacpp:requests_deferred 3\n"
    assert parse_metrics(llamacpp) == Load("llamacpp", 1.0, 3.0, None)


def test_no_known_gauges_is_no_signal() -> None:
    assert parse_metrics("process_cpu_seconds_total 12.5\nhttp_requests_total 4\n") is None
    assert parse_metrics("<html>404</html>") is None
    assert parse_slots([]) is None
    assert parse_slots({"error": "x"}) is None


def test_llamacpp_slots() -> None:
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
    assert parse_slots(slots) == Load("llamacpp", 1.0, 0.0, 0.5)


def test_replicas_add_up() -> None:
    a, b = Load("vllm", 2, 1, 0.5, ours=1), Load("vllm", 3, 0, 0.3, ours=2)
    total = add(a, b)
    assert total == Load("vllm", 5, 1, 0.4, ours=3)
    assert add(None, b) == b and add(a, None) == a
    assert total is not None and total.foreign == 3


def test_yield_grows_freely_until_the_server_has_shown_its_capacity() -> None:
    y = YieldController(clock=Clock())
    assert y.cap(Load("vllm", running=3, waiting=0, ours=3)) is None
    assert y.capacity is None


def test_yield_fills_what_is_spare_and_keeps_a_reserve_for_interactive_users() -> None:
    clock = Clock()
    y = YieldController(clock=clock)
    # Saturated by overnight alone: capacity 4 learnt; no one else, so no reserve.
    assert y.cap(Load("vllm", running=4, waiting=2, ours=6)) == 4
    # An interactive request arrives and waits behind overnight's four: room for it and
    # for a free slot, so overnight sends nothing until two of its own have answered.
    assert y.cap(Load("vllm", running=4, waiting=1, ours=4)) == 4 - 1 - 1
    # Two wait: room for both and the reserve.
    assert y.cap(Load("vllm", running=4, waiting=2, ours=4)) == 4 - 2 - 1
    # It runs; one slot stays free for the next arrival while users are around.
    assert y.cap(Load("vllm", running=4, waiting=0, ours=3)) == 2
    assert y.cap(Load("vllm", running=2, waiting=0, ours=2)) == 3
    clock.t += 31  # nobody else for a while: the reserve goes
    assert y.cap(Load("vllm", running=3, waiting=0, ours=3)) == 4


def test_yield_never_goes_past_max_share_and_can_hold_everything_back() -> None:
    y = YieldController(max_share=0.5, clock=Clock())
    assert y.cap(Load("vllm", running=8, waiting=3, ours=11)) == 4
    # Interactive users fill the server and queue: overnight sends nothing more.
    assert y.cap(Load("vllm", running=8, waiting=5, ours=2)) == 0


def test_a_full_cache_is_saturation_too() -> None:
    y = YieldController(clock=Clock())
    assert y.cap(Load("vllm", running=20, waiting=0, cache_usage=0.97, ours=20)) == 20


def test_latency_gauge_reads_a_queue_from_answer_times() -> None:
    clock = Clock()
    g = LatencyGauge(clock)
    g.add(1.0, 1, 1)  # alone: 1 s a request
    clock.t += 1.0
    v = g.verdict()
    assert v is not None and v.ratio == 1.0 and not v.queued
    for _ in range(8):  # eight at once at a one-at-a-time server: each waits for the rest
        g.add(8.0, 1, 8)
    clock.t += 8.0
    v = g.verdict()
    assert v is not None and v.ratio == 8.0 and v.queued
    assert v.target() == 2.0  # the concurrency at which answers take twice the least


def test_latency_gauge_counts_time_per_token_and_ignores_small_noise() -> None:
    clock = Clock()
    g = LatencyGauge(clock)
    g.add(0.5, 10, 1)
    g.add(5.0, 100, 1)  # ten times longer, for ten times the tokens: no queue
    clock.t += 3
    v = g.verdict()
    assert v is not None and v.ratio == 1.0
    g.add(0.02, 1, 1)
    g.add(0.05, 1, 4)  # 2.5x, but 30 ms is scheduling noise, not a queue
    clock.t += 1
    v = g.verdict()
    assert v is not None and v.ratio == 1.0


def test_limiter_in_latency_mode_comes_down_to_where_answers_stop_queueing() -> None:
    clock = Clock()
    lim = Limiter(initial=16, ceiling=64, clock=clock)
    lim.use_latency = True
    first = lim.ticket()
    clock.t += 1.0
    lim.finished()
    lim.on_success(None, first)  # one alone: 1 s
    # Then 16 at a one-at-a-time server: the i-th answer takes i seconds.
    tickets = [lim.ticket() for _ in range(16)]
    for i, t in enumerate(tickets, start=1):
        clock.t = t.started + i
        lim.finished()
        lim.on_success(None, t)
    assert lim.current <= 8
    assert not lim.slow_start


def test_limiter_ignores_latency_unless_asked() -> None:
    clock = Clock()
    lim = Limiter(initial=4, ceiling=64, clock=clock)
    for i in range(1, 9):
        t = lim.ticket()
        clock.t += i * 10.0
        lim.finished()
        lim.on_success(None, t)
    assert lim.current == 12  # slow start went on


def test_a_timeout_halves_what_was_in_flight() -> None:
    clock = Clock()
    lim = Limiter(initial=40, ceiling=64, clock=clock)
    tickets = [lim.ticket() for _ in range(10)]  # only 10 of the allowed 40 were out
    lim.finished()
    lim.on_overload(ticket=tickets[0], timed_out=True)
    assert lim.current == 5
    assert lim.timeouts == 1
    lim.finished()
    lim.on_overload(ticket=tickets[1], timed_out=True)  # the same window: once
    assert lim.current == 5


def test_allowance_counts_what_was_sent_after_the_answer_that_told_it() -> None:
    clock = Clock()
    lim = Limiter(initial=16, ceiling=64, clock=clock)
    first = lim.ticket()
    later = [lim.ticket() for _ in range(5)]  # five more sent before the first answers
    headers = {  # no limit header: the remaining count is an allowance until the reset
        "x-ratelimit-remaining-requests": "8",
        "x-ratelimit-reset-requests": "1s",
    }
    lim.on_success(headers, first)
    assert lim.allowance == 8 - 5
    stale = dict(headers, **{"x-ratelimit-remaining-requests": "30"})
    lim.on_success(stale, first)  # an older answer than the newest told: ignored
    lim.on_success(dict(headers, **{"x-ratelimit-remaining-requests": "2"}), later[-1])
    assert lim.allowance == 2


def test_a_fleet_splits_a_told_allowance_between_its_workers() -> None:
    clock = Clock()
    lim = Limiter(initial=16, ceiling=64, clock=clock)
    lim.fleet_size = 3  # three workers send to this upstream; each sees the same count
    first = lim.ticket()
    lim.ticket()  # one more of this worker's own since
    headers = {"x-ratelimit-remaining-requests": "31", "x-ratelimit-reset-requests": "1s"}
    lim.on_success(headers, first)
    assert lim.allowance == 31 // 3 - 1


def test_told_rate_follows_openais_reset_meaning() -> None:
    h = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
    }
    assert told_rate(h) == 1.0  # 1 request refilled in 1 s: 60 a minute
    h["x-ratelimit-remaining-requests"] = "0"
    h["x-ratelimit-reset-requests"] = "1m0s"
    assert told_rate(h) == 1.0
    assert told_rate({"x-ratelimit-limit-requests": "-1"}) is None  # Azure: not known
    assert told_rate({}) is None


def test_headers_keep_a_budget_that_refills_at_the_told_rate_and_expires() -> None:
    clock = Clock()
    learner = RateLearner(clock)
    assert not learner.told({"retry-after": "1"})  # no x-ratelimit headers: nothing learnt
    assert not learner.told({"x-ratelimit-limit-requests": "-1"})  # Azure: not known
    assert learner.pace() is None
    told = {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }
    assert learner.told(told, sent_since=3)  # three more went out after that answer
    pace = learner.pace()
    assert pace is not None and pace.rate == pytest.approx(50 * MARGIN)
    assert pace.wait_for() == pytest.approx(4 / (50 * MARGIN))  # back to one token
    # The pace keeps its own count from then on: it refills at the pace, up to a burst
    # within the margin (at least 1.5).
    clock.t += 1.0
    learner.told(dict(told, **{"x-ratelimit-remaining-requests": "20"}))
    assert pace.wait_for() == 0 and pace.level == 1.5
    clock.t += 121
    assert learner.pace() is None


async def test_the_limiter_paces_once_the_upstream_has_said_its_limit() -> None:
    clock = Clock()
    lim = Limiter(clock=clock)
    told = {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1s",
    }
    first = lim.ticket()
    lim.finished()
    lim.on_success(told, first)
    # Not exhausted yet: a sliding window's headers say nothing of its rate here, so
    # the remaining count is an allowance until the reset.
    assert lim.learner.pace() is None and lim.allowance == 4
    second = lim.ticket()
    lim.finished()
    lim.on_success(dict(told, **{"x-ratelimit-remaining-requests": "0"}), second)
    pace = lim.learner.pace()
    assert pace is not None and pace.rate == pytest.approx(10 * MARGIN)
    assert lim.gated
    assert pace.wait_for() == pytest.approx(1 / (10 * MARGIN))  # none left: the refill
    clock.t += 1 / (10 * MARGIN)
    await lim.gate()  # due now: no wait


def test_priority_goes_first_in_the_body_so_a_line_of_its_own_wins() -> None:
    b = OpenAIHTTPBackend(["http://127.0.0.1:9/v1"], priority=5)
    assert b._with_priority(b'{"model":"m"}') == b'{"priority":5,"model":"m"}'
    assert b._with_priority(b"{}") == b'{"priority":5}'
    assert b._with_priority(b' { "a": 1}') == b' {"priority":5, "a": 1}'


def test_sends_to_a_shared_server_are_spread_over_its_completion_gap() -> None:
    now = [100.0]
    spacing = SendSpacing(lambda: now[0])
    assert spacing.wait(4) == 0.0  # no answer time known yet: nothing to spread by
    spacing.answered(0.5)
    # Three sends at once: turns one completion gap apart (answer time / capacity).
    assert [spacing.wait(4) for _ in range(3)] == [0.0, 0.125, 0.25]
    now[0] += 1.0  # later on, a send takes its turn at once
    assert spacing.wait(4) == 0.0
    spacing.answered(1.5)  # slower answers widen the gap, smoothed
    assert spacing.answer_time == 0.7
    assert spacing.wait(4) == 0.125 and spacing.wait(None) == 0.0
