"""`Idempotency-Key` on the POSTs that create something (files, batches).

Semantics of the IETF httpapi draft (draft-ietf-httpapi-idempotency-key-header):
the first request with a key runs and its answer is kept for a day; a request with
the same key and the same parameters gets that answer again (the same id and
`created_at`), marked `Idempotent-Replayed: true` as Stripe does; the same key with
other parameters, or while the first request still runs, is a 409. Keys belong to
a project: two projects may use the same key. A request that fails keeps nothing,
so it can be retried with its key.

The openai SDK sends no key by itself; pass one with
`extra_headers={"Idempotency-Key": "..."}`, which its own retries send again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from overnight.errors import Conflict, InvalidRequest
from overnight.models import now
from overnight.store.base import IdempotencyStore

HEADER = "idempotency-key"
MAX_KEY = 255
REPLAYED = "idempotent-replayed"


class KeyInUse(Conflict):
    """A request with this Idempotency-Key is still being processed; retry shortly."""

    code = "idempotency_key_in_use"
    retryable = True


def key_of(request: Request) -> str | None:
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_KEY or not key.isascii() or not key.isprintable():
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY} printable ASCII characters.",
            param="Idempotency-Key",
        )
    return key


def fingerprint(operation: str, params: Any) -> str:
    """The request's identity: its operation and parameters, whatever the order of keys."""
    doc = orjson.dumps([operation, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(doc).hexdigest()


def _stored(status: int, body: str) -> Response:
    return Response(
        body, status_code=status, media_type="application/json", headers={REPLAYED: "true"}
    )


async def run_once(
    repo: IdempotencyStore,
    project: str,
    key: str | None,
    operation: str,
    params: Any,
    create: Callable[[], Awaitable[tuple[int, dict[str, Any]]]],
) -> tuple[Response, bool]:
    """Run `create` once per key; return its answer and whether it was a replay."""
    if key is None:
        status, body = await create()
        return Response(orjson.dumps(body), status, media_type="application/json"), False
    print_ = fingerprint(operation, params)
    existing = await repo.reserve(project, key, print_, now())
    if existing is not None:
        if existing.fingerprint != print_:
            raise Conflict(
                f"Idempotency-Key {key[:64]!r} was already used with other parameters: "
                "a conflict. Send a new key for a new request.",
                code="idempotency_key_conflict",
            )
        if existing.status_code is None or existing.response is None:
            raise KeyInUse()
        return _stored(existing.status_code, existing.response), True
    try:
        status, body = await create()
    except BaseException:
        await repo.forget(project, key)
        raise
    text = orjson.dumps(body)
    await repo.complete(project, key, status, text.decode())
    return Response(text, status, media_type="application/json"), False
