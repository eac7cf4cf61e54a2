"""The upstream stub, driven over loopback by a real aiohttp client."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.upstream_stub import (
    StubConfig,
    StubProcess,
    StubServer,
    _duration,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    async with StubServer(StubConfig(seed=7)) as server:
        yield server


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, **kwargs: Any
) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    async with http.post(url, data=data, headers=headers, **kwargs) as response:
        raw = await response.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return response.status, response.headers, parsed


async def test_chat_completions_shape_on_every_spelling(
    http: aiohttp.ClientSession, stub: StubServer
) -> None:
    urls = [
        stub.url + "/chat/completions",
        stub.base_url + "/chat/completions",
        stub.base_url + "/openai/deployments/my-gpt/chat/completions?api-version=2024-10-21",
    ]
    for url in urls:
        status, headers, body = await post(http, url, CHAT)
        assert status == 200
        assert headers["x-request-id"].startswith("req_")
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-")
        assert body["model"] == "gpt-4o-mini"
        choice = body["choices"][0]
        assert choice["message"] == {
            "role": "assistant",
            "content": "echo: Say hello",
            "refusal": None,
            "annotations": [],
        }
        assert choice["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["prompt_tokens"] == len("Say hello") // 4 + 1
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Azure: the deployment name stands in for a missing model.
    no_model = {"messages": CHAT["messages"]}
    _, _, body = await post(http, urls[2], no_model)
    assert body["model"] == "my-gpt"


async def test_image_parts_arrive_unchanged(http: aiohttp.ClientSession, stub: StubServer) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}],
        "metadata": {"marker": "img-1"},
    }
    status, _, answer = await post(http, stub.url + "/chat/completions", body)
    assert status == 200
    assert answer["choices"][0]["message"]["content"] == "echo: What is it?"
    assert answer["usage"]["prompt_tokens"] == len("What is it?") // 4 + 1 + 85
    async with http.get(stub.base_url + "/_received?limit=1") as response:
        received = (await response.json())["data"]
    assert received[0]["body"] == body
    assert received[0]["path"] == "/v1/chat/completions"
    assert received[0]["headers"]["content-type"] == "application/json"


async def test_completions_embeddings_and_responses_shapes(
    http: aiohttp.ClientSession, stub: StubServer
) -> None:
    _, headers, body = await post(
        http, stub.url + "/completions", {"model": "m", "prompt": "abcdefgh" * 20, "max_tokens": 2}
    )
    assert "x-request-id" in headers
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 41, "completion_tokens": 2, "total_tokens": 43}

    _, _, body = await post(
        http, stub.url + "/embeddings", {"model": "e", "input": ["a", "b"], "dimensions": 8}
    )
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 8
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    _, _, again = await post(http, stub.url + "/embeddings", {"model": "e", "input": "a"})
    assert len(again["data"][0]["embedding"]) == 16  # the configured default
    _, _, b64 = await post(
        http, stub.url + "/embeddings", {"model": "e", "input": "a", "encoding_format": "base64"}
    )
    assert isinstance(b64["data"][0]["embedding"], str)

    request = {"model": "o4-mini", "input": [{"role": "user", "content": "Hi there"}]}
    _, _, body = await post(http, stub.base_url + "/responses", request)
    assert body["object"] == "response"
    assert body["status"] == "completed"
    assert body["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "echo: Hi there",
        "annotations": [],
        "logprobs": [],
    }
    usage = body["usage"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_bad_requests_get_openai_envelopes(
    http: aiohttp.ClientSession, stub: StubServer
) -> None:
    status, headers, body = await post(http, stub.url + "/chat/completions", b"{not json")
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "x-request-id" in headers
    status, _, body = await post(http, stub.url + "/chat/completions", {"model": "m"})
    assert (status, body["error"]["param"]) == (400, "messages")
    status, _, body = await post(http, stub.url + "/nope", CHAT)
    assert status == 404
    assert stub.stats()["by_status"] == {"400": 2}


async def test_rpm_limit_answers_429_with_retry_after(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(rpm=2)) as stub:
        url = stub.url + "/chat/completions"
        first = await post(http, url, CHAT)
        assert first[0] == 200
        assert first[1]["x-ratelimit-limit-requests"] == "2"
        assert first[1]["x-ratelimit-remaining-requests"] == "1"
        assert (await post(http, url, CHAT))[0] == 200
        status, headers, body = await post(http, url, CHAT)
        assert status == 429
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert 59 <= int(headers["retry-after"]) <= 60
        assert 58_000 < int(headers["retry-after-ms"]) <= 60_000
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in headers


async def test_tpm_limit_and_window_recovery(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(tpm=20, rate_window=0.3)) as stub:
        url = stub.url + "/chat/completions"
        body = {**CHAT, "max_tokens": 10}  # costs 3 prompt + 10 max tokens
        status, headers, _ = await post(http, url, body)
        assert status == 200
        assert headers["x-ratelimit-remaining-tokens"] == "7"
        status, headers, answer = await post(http, url, body)
        assert status == 429
        assert answer["error"]["type"] == "tokens"
        assert headers["retry-after"] == "1"
        assert 0 < int(headers["retry-after-ms"]) <= 300
        await asyncio.sleep(int(headers["retry-after-ms"]) / 1000 + 0.02)
        assert (await post(http, url, body))[0] == 200


async def test_fail_first_n_is_per_distinct_body(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(fail_first_n=2)) as stub:
        url = stub.url + "/chat/completions"
        other = {**CHAT, "messages": [{"role": "user", "content": "other"}]}
        assert [(await post(http, url, CHAT))[0] for _ in range(3)] == [500, 500, 200]
        assert (await post(http, url, other))[0] == 500
        stats = stub.stats()
        assert stats["bodies_seen"] == 2
        assert stats["by_status"] == {"200": 1, "500": 3}


async def test_garbage_reset_and_hang(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(garbage_rate=1.0)) as stub:
        url = stub.url + "/chat/completions"
        async with http.post(url, json=CHAT) as response:
            assert response.status == 200
            with pytest.raises(ValueError):
                json.loads(await response.read())

        stub.configure(garbage_rate=0.0, reset_rate=1.0)
        with pytest.raises(aiohttp.ClientError):
            await post(http, url, CHAT)

        stub.configure(reset_rate=0.0, hang_rate=1.0)
        with pytest.raises(asyncio.TimeoutError):
            await post(http, url, CHAT, timeout=aiohttp.ClientTimeout(total=0.2))
        # A request still hanging when the stub stops is cut off, not left waiting.
        pending = asyncio.ensure_future(post(http, url, CHAT))
        await asyncio.sleep(0.05)
        stats = stub.stats()
        assert (stats["garbage"], stats["resets"], stats["hangs"]) == (1, 1, 2)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(pending, 2)


async def test_counts_by_marker_or_last_user_text(
    http: aiohttp.ClientSession, stub: StubServer
) -> None:
    url = stub.url + "/chat/completions"
    marked = {**CHAT, "metadata": {"marker": "line-7"}}
    for body in (marked, marked, CHAT):
        await post(http, url, body)
    await post(http, stub.url + "/responses", {"model": "m", "input": "Say hello"})
    async with http.get(stub.base_url + "/_counts") as response:
        assert await response.json() == {"line-7": 2, "Say hello": 2}
    async with http.post(stub.base_url + "/_reset") as response:
        assert (await response.json())["received"] == 0
    assert stub.counts() == {}


async def test_runtime_config(http: aiohttp.ClientSession, stub: StubServer) -> None:
    url = stub.url + "/chat/completions"
    async with http.post(stub.base_url + "/_config", json={"status_override": 400}) as response:
        assert (await response.json())["status_override"] == 400
    status, _, body = await post(http, url, CHAT)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"

    changes = {"status_override": None, "require_api_key": "sk-test"}
    async with http.post(stub.base_url + "/_config", json=changes) as response:
        assert response.status == 200
    status, _, body = await post(http, url, CHAT)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert (await post(http, url, CHAT, headers={"Authorization": "Bearer sk-test"}))[0] == 200
    assert (await post(http, url, CHAT, headers={"api-key": "sk-test"}))[0] == 200

    for bad in ({"no_such": 1}, {"fail_rate": 2}, {"rpm": "many"}, {"port": 1}):
        async with http.post(stub.base_url + "/_config", json=bad) as response:
            assert response.status == 400
    async with http.get(stub.base_url + "/_stats") as response:
        stats = await response.json()
    assert stats["received"] == 4
    assert stats["by_status"] == {"200": 2, "400": 1, "401": 1}


async def test_max_concurrency_and_latency(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(latency=0.1, max_concurrency=2)) as stub:
        url = stub.url + "/chat/completions"
        started = time.monotonic()
        results = await asyncio.gather(*(post(http, url, CHAT) for _ in range(4)))
        assert time.monotonic() - started >= 0.1
        assert sorted(status for status, _, _ in results) == [200, 200, 429, 429]
        assert stub.stats()["max_in_flight"] >= 3


async def test_fail_rate_is_reproducible_with_a_seed(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with StubServer(StubConfig(fail_rate=0.5, seed=42)) as stub:
            url = stub.url + "/chat/completions"
            outcomes.append([(await post(http, url, CHAT))[0] for _ in range(20)])
    assert outcomes[0] == outcomes[1]
    assert {200, 500} == set(outcomes[0])


def test_in_thread_for_synchronous_callers() -> None:
    with StubServer.in_thread(StubConfig(rpm=100)) as stub:
        request = urllib.request.Request(
            stub.url + "/chat/completions",
            data=json.dumps(CHAT).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["x-ratelimit-remaining-requests"] == "99"
            assert json.load(response)["choices"][0]["message"]["content"] == "echo: Say hello"
        assert stub.stats()["received"] == 1
        assert stub.configure(latency=0.01).latency == 0.01


def test_subprocess_entry_point_stops_on_sigterm_and_after_max_lifetime() -> None:
    with StubProcess(StubConfig(latency=0.001, rpm=600)) as stub:
        assert stub.url.startswith("http://127.0.0.1:") and stub.url.endswith("/v1")
        with urllib.request.urlopen(stub.base_url + "/_stats", timeout=5) as response:
            assert json.load(response)["received"] == 0
        assert stub.process is not None
        process = stub.process
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0

    with StubProcess(StubConfig(max_lifetime=0.3)) as stub:
        assert stub.process is not None
        assert stub.process.wait(5) == 0


def test_config_round_trips_through_cli_flags() -> None:
    config = StubConfig(latency=0.05, rpm=600, require_api_key="k", seed=3, max_lifetime=9.5)
    assert "--rpm" in config.to_argv()
    assert StubConfig.from_argv(config.to_argv()) == config
    with pytest.raises(SystemExit):
        StubConfig.from_argv(["--fail-rate", "1.5"])


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [(0, "0s"), (0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_durations_are_spelled_like_openai(seconds: float, spelled: str) -> None:
    assert _duration(seconds) == spelled


def test_reset_header_is_the_time_until_the_window_is_empty() -> None:
    """OpenAI: x-ratelimit-reset-requests is the time until `remaining` is back to the
    full limit, i.e. until the newest counted request leaves the window."""
    with StubServer.in_thread(StubConfig(rpm=5, rate_window=2.0)) as stub:
        request = urllib.request.Request(
            stub.url + "/chat/completions",
            data=json.dumps(CHAT).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5):
            pass
        time.sleep(0.5)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["x-ratelimit-remaining-requests"] == "3"
            reset = response.headers["x-ratelimit-reset-requests"]
        # The oldest leaves in ~1.5 s; the window is empty in ~2 s.
        assert reset.endswith("s") and not reset.endswith("ms")
        assert 1.9 <= float(reset[:-1]) <= 2.0


def _gauges(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{")[0]] = float(value)
    return out


async def test_slots_queue_the_excess_and_metrics_show_it(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(slots=2, latency=0.2)) as stub:
        url = stub.url + "/chat/completions"
        started = time.monotonic()
        pending = [asyncio.ensure_future(post(http, url, CHAT)) for _ in range(6)]
        await asyncio.sleep(0.1)
        async with http.get(stub.base_url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        assert "# TYPE vllm:num_requests_waiting gauge" in text
        assert 'vllm:num_requests_running{engine="0",model_name="gpt-4o-mini"} 2.0' in text
        assert _gauges(text) == {
            "vllm:num_requests_running": 2.0,
            "vllm:num_requests_waiting": 4.0,
            "vllm:kv_cache_usage_perc": 1.0,
        }
        results = await asyncio.gather(*pending)
        took = time.monotonic() - started
        assert [status for status, _, _ in results] == [200] * 6
        assert 0.6 <= took < 1.0  # three rounds of two, none refused
        stats = stub.stats()
        assert (stats["running"], stats["waiting"]) == (0, 0)
        assert (stats["max_running"], stats["max_waiting"]) == (2, 4)
        assert stats["completed_by_user"] == {"-": 6}
        stub.reset()
        assert (stub.stats()["max_running"], stub.stats()["max_waiting"]) == (0, 0)


async def _finish_order(stub: StubServer, http: aiohttp.ClientSession) -> list[str]:
    url = stub.url + "/chat/completions"
    done: list[str] = []

    async def one(name: str, priority: int | None) -> None:
        body = {**CHAT, "user": name}
        if priority is not None:
            body["priority"] = priority
        assert (await post(http, url, body))[0] == 200
        done.append(name)

    tasks = [asyncio.ensure_future(one("first", 0))]
    await asyncio.sleep(0.03)  # it holds the only slot; the rest queue up in this order
    for name, priority in (("late", 5), ("default", None), ("urgent", -1), ("zero", 0)):
        tasks.append(asyncio.ensure_future(one(name, priority)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    return done


async def test_priority_scheduling_runs_lower_values_first(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(slots=1, latency=0.08, scheduling="priority")) as stub:
        order = await _finish_order(stub, http)
        assert order == ["first", "urgent", "default", "zero", "late"]  # ties by arrival
        assert stub.stats()["completed_by_user"] == dict.fromkeys(order, 1)
    async with StubServer(StubConfig(slots=1, latency=0.08)) as stub:  # fifo ignores it
        assert await _finish_order(stub, http) == ["first", "late", "default", "urgent", "zero"]


async def test_a_client_leaving_the_queue_frees_its_place(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(slots=1, latency=0.2)) as stub:
        url = stub.url + "/chat/completions"
        first = asyncio.ensure_future(post(http, url, CHAT))
        await asyncio.sleep(0.03)
        with pytest.raises(asyncio.TimeoutError):
            await post(http, url, CHAT, timeout=aiohttp.ClientTimeout(total=0.05))
        await asyncio.sleep(0.03)
        assert (stub.stats()["waiting"], stub.stats()["abandoned"]) == (0, 1)
        assert (await first)[0] == 200
        assert (await post(http, url, CHAT))[0] == 200
        assert stub.stats()["running"] == 0


async def test_slots_change_live(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(slots=1, latency=0.2)) as stub:
        url = stub.url + "/chat/completions"
        started = time.monotonic()
        pending = [asyncio.ensure_future(post(http, url, CHAT)) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert stub.stats()["waiting"] == 3
        stub.configure(slots=4)  # the three waiting start at once
        await asyncio.sleep(0.01)
        assert (stub.stats()["running"], stub.stats()["waiting"]) == (4, 0)
        await asyncio.gather(*pending)
        assert time.monotonic() - started < 0.4
        pending = [asyncio.ensure_future(post(http, url, CHAT)) for _ in range(2)]
        await asyncio.sleep(0.05)
        stub.configure(slots=None)  # back to no limit: metrics count requests in flight
        async with http.get(stub.base_url + "/metrics") as response:
            gauges = _gauges(await response.text())
        assert gauges["vllm:num_requests_running"] == 2.0
        assert gauges["vllm:kv_cache_usage_perc"] == 0.0
        await asyncio.gather(*pending)


async def test_metrics_can_be_hidden(http: aiohttp.ClientSession) -> None:
    async with StubServer(StubConfig(metrics=False)) as stub:
        async with http.get(stub.base_url + "/metrics") as response:
            assert response.status == 404
        stub.configure(metrics=True)
        async with http.get(stub.base_url + "/metrics") as response:
            gauges = _gauges(await response.text())
        assert gauges == dict.fromkeys(
            ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"),
            0.0,
        )


def test_new_settings_round_trip_and_validate() -> None:
    config = StubConfig(slots=8, scheduling="priority", metrics=False, latency=0.5)
    argv = config.to_argv()
    assert argv[argv.index("--metrics") + 1] == "False"
    assert StubConfig.from_argv(argv) == config
    assert StubConfig.from_argv(["--metrics", "no"]).metrics is False
    assert StubConfig().merged({"metrics": False, "slots": 3}).slots == 3
    for bad in ({"metrics": 1}, {"slots": 0}, {"scheduling": "lifo"}):
        with pytest.raises(ValueError):
            StubConfig().merged(bad)
    with pytest.raises(SystemExit):
        StubConfig.from_argv(["--metrics", "maybe"])


async def test_stopping_lets_the_queue_go_quietly(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    stub = await StubServer(StubConfig(slots=1, latency=0.3)).start()
    url = stub.url + "/chat/completions"
    pending = [asyncio.ensure_future(post(http, url, CHAT)) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert stub.stats()["waiting"] == 3
    started = time.monotonic()
    await stub.stop()
    assert time.monotonic() - started < 0.9  # the waiters left at once, the runner finished
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert sum(isinstance(o, aiohttp.ClientError) for o in outcomes) == 3
    assert "Exception in ASGI application" not in caplog.text
