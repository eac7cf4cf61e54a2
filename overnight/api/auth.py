"""Who is calling: an API key names a project; no key is allowed only on loopback."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from overnight.errors import Unauthorized

ANONYMOUS_PROJECT = "default"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("api-key")
    return key.strip() if key and key.strip() else None


class KeyRing:
    """Maps key hashes to projects; keys themselves are never kept."""

    def __init__(self, pairs: tuple[tuple[str, str], ...] = ()) -> None:
        self._by_hash = {hash_key(key): project for project, key in pairs}

    @property
    def enabled(self) -> bool:
        return bool(self._by_hash)

    def add_hashed(self, key_hash: str, project: str) -> None:
        self._by_hash[key_hash] = project

    def project_for(self, key: str | None) -> str | None:
        if key is None:
            return None
        digest = hash_key(key)
        for known, project in self._by_hash.items():
            if hmac.compare_digest(known, digest):
                return project
        return None


async def current_project(request: Request) -> str:
    keys: KeyRing = request.app.state.keys
    if not keys.enabled:
        return ANONYMOUS_PROJECT
    project = keys.project_for(presented_key(request))
    if project is None:
        raise Unauthorized(
            "Incorrect API key provided. Send it as 'Authorization: Bearer KEY' or 'api-key: KEY'."
        )
    return project
