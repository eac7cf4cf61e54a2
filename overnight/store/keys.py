"""API keys: each belongs to a project; only a SHA-256 hash of the key is stored."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from overnight.models import ApiKey, now
from overnight.store.schema import api_keys

KEY_PREFIX = "ovn-"
SHOWN_PREFIX = 12  # "ovn-" and 8 hex digits: enough to recognise a key in a list


def hash_key(key: str) -> str:
    """SHA-256 hex. Keys are 192 random bits, so a fast hash is enough (no password KDF)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_hex(24)


def _key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.project, row.prefix, row.name, row.created_at, row.revoked_at)


class KeyRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, project: str, name: str | None = None) -> tuple[ApiKey, str]:
        """A new key for `project`; the plain key is returned here and never again."""
        key = new_key()
        record = ApiKey("key_" + secrets.token_hex(12), project, key[:SHOWN_PREFIX], name, now())
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=record.id,
                    project=record.project,
                    key_hash=hash_key(key),
                    prefix=record.prefix,
                    name=record.name,
                    created_at=record.created_at,
                )
            )
        return record, key

    async def project_for_hash(self, key_hash: str) -> str | None:
        """The project of the active key with this hash, or None."""
        query = select(api_keys.c.project).where(
            api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None)
        )
        async with self.engine.connect() as conn:
            project = (await conn.execute(query)).scalar()
        return str(project) if project is not None else None

    async def any_configured(self) -> bool:
        """Whether any key was ever created (revoked ones count: auth stays on once set up)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(select(api_keys.c.id).limit(1))).first() is not None

    async def list(self, project: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if project is not None:
            query = query.where(api_keys.c.project == project)
        async with self.engine.connect() as conn:
            return [_key(r) for r in (await conn.execute(query)).all()]

    async def get(self, key_id: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (idempotent); returns it, or None if there is no such key."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now())
            )
        return await self.get(key_id)
