"""Which generation of the aggregates is served, and which one a rebuild is building (tables/keys.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys


class GenerationsChanged(Exception):
    """A rebuild started or switched while a batch was applied: apply it again to the new generations."""


@dataclass(frozen=True)
class Generations:
    current: int
    building: int | None
    version: str | None  # the hash's `v`: what each apply is guarded on

    @classmethod
    async def read(cls, redis: Redis) -> Generations:
        values: Any = await redis.hmget(keys.generations(), ["current", "building", "v"])
        current, building, version = values
        return cls(
            int(current or 0),
            int(building) if building else None,
            None if version is None else version.decode(),
        )


async def current(redis: Redis) -> int:
    """The generation served."""
    value: Any = await redis.hget(keys.generations(), "current")
    return int(value or 0)


@dataclass
class Status:
    generation: int
    until: dict[str, int]  # `topic:partition` -> first offset the live workers apply to both generations
    done: dict[str, int]  # `topic:partition` -> last offset applied by the rebuild

    def remaining(self) -> int:
        return sum(max(0, end - (self.done.get(f, -1) + 1)) for f, end in self.until.items())


async def status(redis: Redis) -> Status | None:
    """The rebuild under way, if any (for /metrics and `ai-analytics rebuild --status`)."""
    raw: Any = await redis.hmget(keys.generations(), ["building", "until"])
    building, until = raw
    if not building:
        return None
    n = int(building)
    done: Any = await redis.hgetall(keys.rebuild_progress(n))
    return Status(
        n,
        orjson.loads(until) if until else {},
        {k.decode(): int(v) for k, v in done.items()},
    )
