"""The mock backend answers what its handler says and records every call."""

from __future__ import annotations

from typing import Any

import pytest

from overnight.backends.base import CHAT, Response, TransientError
from overnight.backends.mock import Call, MockBackend
from overnight.backends.router import Router
from overnight.settings import load


async def test_a_dict_is_a_200_body_and_a_response_passes_as_is() -> None:
    def handler(endpoint: str, body: dict[str, Any]) -> Response | dict[str, Any]:
        if body["model"] == "bad":
            return Response(400, {"error": {"message": "no"}})
        return {"echo": body["model"]}

    backend = MockBackend(handler)
    assert (await backend.send(CHAT, {"model": "m"})).body == {"echo": "m"}
    assert (await backend.send_raw(CHAT, b'{"model":"bad"}')).status_code == 400
    assert backend.calls == [Call(CHAT, {"model": "m"}), Call(CHAT, {"model": "bad"})]


async def test_async_handlers_and_raised_trouble() -> None:
    async def handler(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        raise TransientError("busy", overloaded=True, code="rate_limited")

    backend = MockBackend(handler)
    with pytest.raises(TransientError) as info:
        await backend.send(CHAT, {})
    assert info.value.code == "rate_limited" and len(backend.calls) == 1


async def test_the_router_serves_a_given_backend_for_its_route() -> None:
    settings = load(env={"OVERNIGHT_UPSTREAM_URL": "http://127.0.0.1:9/v1"})
    backend = MockBackend(lambda e, b: {})
    router = Router(settings, backends={"*": backend})
    assert router.key("any-model") == "*"
    assert await router.backend("any-model") is backend
    await router.close()
    assert backend.closed
