"""API keys: created once (the secret is shown once), stored hashed, scoped to one org or all (`*`), with a role.

A key reads `aia_<id>_<secret>`; Redis keeps sha256(key) -> {id, org, role, name, created_at}, plus an
index id -> hash so keys can be listed and revoked by id without ever storing the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import asdict, dataclass

import orjson
from redis.asyncio import Redis

from tables import keys

ROLES = ("analyst", "platform_admin")
ALL_ORGS = "*"


@dataclass(frozen=True)
class ApiKey:
    id: str
    org: str
    role: str
    name: str
    created_at: int

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        return cls(**orjson.loads(raw))

    def allows_org(self, org: str) -> bool:
        return self.org == ALL_ORGS or hmac.compare_digest(self.org.encode(), org.encode())


def digest(token: str) -> str:
    """How a key is stored: the SHA-256 of its token (the token itself is shown once, never kept)."""
    return hashlib.sha256(token.encode()).hexdigest()


async def create(redis: Redis, org: str, role: str, name: str = "") -> tuple[str, ApiKey]:
    """A new key: returns (the secret token, to show once; its record)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key_id = secrets.token_hex(4)
    token = f"aia_{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKey(id=key_id, org=org, role=role, name=name, created_at=int(time.time()))
    stored = digest(token)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.api_keys(), stored, orjson.dumps(asdict(record)))
        pipe.hset(keys.api_key_ids(), key_id, stored)
        await pipe.execute()
    return token, record


async def lookup(redis: Redis, token: str) -> ApiKey | None:
    raw = await redis.hget(keys.api_keys(), digest(token))
    return None if raw is None else ApiKey.from_json(raw)


async def lookup_with_org(redis: Redis, token: str, org: str) -> tuple[ApiKey | None, bool]:
    """The key of a token and whether the org exists, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hget(keys.api_keys(), digest(token))
        pipe.sismember(keys.orgs(), org)
        raw, exists = await pipe.execute()
    return (None if raw is None else ApiKey.from_json(raw)), bool(exists)


async def list_keys(redis: Redis) -> list[ApiKey]:
    return sorted((ApiKey.from_json(v) for v in (await redis.hgetall(keys.api_keys())).values()),
                  key=lambda k: k.created_at)  # fmt: skip


async def revoke(redis: Redis, key_id: str) -> bool:
    stored = await redis.hget(keys.api_key_ids(), key_id)
    if stored is None:
        return False
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hdel(keys.api_keys(), stored)
        pipe.hdel(keys.api_key_ids(), key_id)
        await pipe.execute()
    return True
