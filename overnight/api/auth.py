"""Who is calling: an API key names a project; without any key configured, loopback only.

Keys come from two places: OVERNIGHT_API_KEYS (project:key pairs, for simple
deployments) and the `api_keys` table (`overnight keys create`). The table is
read per request through a short cache, so a key created or revoked by another
process takes effect within `key_cache_seconds`, without a restart. Any
configured key, in either place, turns authentication on for every route.

Keys are compared as SHA-256 digests: the process never keeps a plain key
after hashing it, never logs one, and never echoes one in an error.
"""

from __future__ import annotations

import hmac
import time

from fastapi import Request

from overnight.errors import ConfigError, Unauthorized
from overnight.loopback import is_loopback
from overnight.store.base import KeyStore
from overnight.store.keys import hash_key

ANONYMOUS_PROJECT = "default"
MAX_KEY_CHARS = 512  # longer "keys" are not ours: refused without hashing or a lookup
MAX_CACHED = 10_000
# While no key is configured, look again this often (a key may be created meanwhile).
UNCONFIGURED_RECHECK = 1.0


def presented_key(request: Request) -> str | None:
    """The key from `Authorization: Bearer KEY` (OpenAI) or `api-key: KEY` (Azure)."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key = request.headers.get("api-key")
    return key.strip() if key and key.strip() else None


class KeyRing:
    """Resolves a presented key to its project; keeps only hashes, never keys."""

    def __init__(
        self,
        pairs: tuple[tuple[str, str], ...] = (),
        repo: KeyStore | None = None,
        cache_seconds: float = 5.0,
    ) -> None:
        self._static: dict[str, str] = {}
        for project, key in pairs:
            digest = hash_key(key)
            if self._static.get(digest, project) != project:
                raise ConfigError("OVERNIGHT_API_KEYS gives the same key to two projects")
            self._static[digest] = project
        self._repo = repo
        self._ttl = max(0.0, cache_seconds)
        self._cache: dict[str, tuple[str, float]] = {}  # digest -> (project, valid until)
        self._db_configured = False
        self._db_checked = -float("inf")

    async def enabled(self) -> bool:
        """Whether any key is configured (then every call must present a valid one)."""
        if self._static or self._db_configured:
            return True
        if self._repo is None:
            return False
        t = time.monotonic()
        if t - self._db_checked >= min(self._ttl, UNCONFIGURED_RECHECK):
            self._db_configured = await self._repo.any_configured()
            self._db_checked = t
        return self._db_configured

    def _static_project(self, digest: str) -> str | None:
        found = None
        for known, project in self._static.items():  # no early exit: same work for any key
            if hmac.compare_digest(known, digest):
                found = project
        return found

    async def project_for(self, key: str | None) -> str | None:
        if key is None or len(key) > MAX_KEY_CHARS:
            return None
        digest = hash_key(key)
        project = self._static_project(digest)
        if project is not None or self._repo is None:
            return project
        t = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > t:
            return cached[0]
        # Looked up by digest: timing can at most reveal digest bits, which do not help
        # anyone find a key (192 random bits).
        project = await self._repo.project_for_hash(digest)
        if project is None:
            self._cache.pop(digest, None)
            return None
        self._db_configured = True
        if self._ttl > 0:
            if len(self._cache) >= MAX_CACHED:
                self._cache = {d: v for d, v in self._cache.items() if v[1] > t}
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()
            self._cache[digest] = (project, t + self._ttl)
        return project


async def current_project(request: Request) -> str:
    """The FastAPI dependency every API route uses: the caller's project, or 401."""
    keys: KeyRing = request.app.state.keys
    key = presented_key(request)
    if key is not None:
        project = await keys.project_for(key)
        if project is not None:
            return project
    if await keys.enabled():
        if key is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' "
                "(OpenAI clients) or 'api-key: KEY' (Azure clients)."
            )
        raise Unauthorized(
            "Incorrect API key provided. Send it as 'Authorization: Bearer KEY' or 'api-key: KEY'."
        )
    client = request.client
    if not is_loopback(client.host if client else None):
        raise Unauthorized(
            "No API keys are configured, so overnight only answers calls from this machine. "
            "Create a key with `overnight keys create --project NAME` (or set "
            "OVERNIGHT_API_KEYS=project:key) and send it as 'Authorization: Bearer KEY'."
        )
    return ANONYMOUS_PROJECT
