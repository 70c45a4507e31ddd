"""Which generation of the aggregates is served, and which one a rebuild is building (tables/keys.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys
from tables.buckets import DAY_MS, day_at, month_index


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


# --- what a generation has whole: monthly sets from some month, the student activity from the start ----

NO_MONTHS = 1 << 30  # no month is whole: the generation's month sets are never read
_months_from: dict[int, int] = {}  # generation -> its first whole month, once known (it never changes)
_activity_whole: set[int] = set()  # generations whose student activity is known whole (it stays so)


def months_field(gen: int) -> str:
    """The field of `keys.generations()` holding the first month (a MONTH grain index) whose monthly sets of
    generation `gen` hold every event of the month: 0 when that generation was built by code that writes
    them from its first event, else the month after the one in which such code first applied to it."""
    return f"months:{gen}"


def activity_field(gen: int) -> str:
    """The field of `keys.generations()` saying whether generation `gen`'s student activity
    (tables/aggregates/student_activity.py) holds every event: 1 when code that writes it applied the
    generation's first event (or rebuilt it), 0 when the generation held events before."""
    return f"activity:{gen}"


def marks(gen: int) -> list[str]:
    """Every field of `keys.generations()` that describes generation `gen` (dropped with it)."""
    return [months_field(gen), activity_field(gen)]


def whole_marks(gen: int) -> dict[str, int]:
    """The marks of a generation built from its first event by this code (a rebuild's)."""
    return {months_field(gen): 0, activity_field(gen): 1}


async def months_from(redis: Redis, gen: int) -> int:
    """The first month whose monthly sets generation `gen` has whole (`NO_MONTHS` until a worker that
    writes them has applied to it)."""
    known = _months_from.get(gen)
    if known is not None:
        return known
    value: Any = await redis.hget(keys.generations(), months_field(gen))
    if value is None:
        return NO_MONTHS
    _months_from[gen] = int(value)
    return _months_from[gen]


async def activity_whole(redis: Redis, gen: int) -> bool:
    """Whether generation `gen`'s student activity holds every event (False until a worker that writes it
    has applied to it, and for good when the generation held events before)."""
    if gen in _activity_whole:
        return True
    value: Any = await redis.hget(keys.generations(), activity_field(gen))
    whole = bool(value == b"1")
    if whole:
        _activity_whole.add(gen)
    return whole


async def mark_generations(redis: Redis) -> None:
    """Before a worker's first apply: for each generation there is without its marks, set them (each only
    if no other worker has): when the generation holds nothing yet (no org has applied to it), whole
    (`whole_marks`); else its monthly sets from the month after this one (the months before may hold events
    applied by code that did not write the sets) and its student activity not whole."""
    gens = await Generations.read(redis)
    for gen in {gens.current, *([] if gens.building is None else [gens.building])}:
        held: Any = await redis.hmget(keys.generations(), marks(gen))
        if all(value is not None for value in held):
            continue
        orgs: Any = await redis.smembers(keys.orgs())
        stored = False
        for org in orgs:
            if await redis.exists(keys.meta(gen, org.decode())):
                stored = True
                break
        if stored:
            month = month_index(day_at(int(time.time() * 1000) // DAY_MS)) + 1
            values = {months_field(gen): month, activity_field(gen): 0}
        else:
            values = whole_marks(gen)
        for fld, value in values.items():
            await redis.hsetnx(keys.generations(), fld, value)
