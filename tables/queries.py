"""What every read shares: the `View` a read is made through (the connection and the generation), the
bucket periods of a range (`periods`), sorted-set unions, conversation states by digest, the id a client
sends resolved to the one kept, the orgs and their time zones, and how fresh an org's data is.

The reads the API makes of each aggregate are in its family's module (tables/aggregates/), each costing in
proportion to the buckets (or conversations) in its range, never to the events behind them. All reads of
an org touch only keys of its hash tag, so they work on Redis Cluster too.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from streams.schemas import format_timestamp
from tables import ids, keys
from tables.buckets import (
    Grain,
    day_index,
    days_between,
    hour_index,
    hours_between,
    local_days,
    local_hour_label,
    local_hours,
    local_today,
    pieces,
    time_zone,
)
from tables.conversations import ConversationState
from tables.scripts import Script, load


class View(NamedTuple):
    """What a read needs: the connection, and the generation it reads (every key of the answer is built for
    it; an API request reads the generation served once, api/ops.py)."""

    redis: Redis
    gen: int


def as_int(value: bytes | None) -> int:
    return 0 if value is None else int(value)


def percentages(counts: list[int]) -> list[float]:
    """Each count's share of their sum, in percent with two decimals, adding up to exactly 100.00: each share
    is its exact value rounded down to a hundredth, and the hundredths left over go one each to the largest
    remainders (ties: the earlier count), so none is off by a hundredth or more. All 0 when the sum is 0."""
    total = sum(counts)
    if not total:
        return [0.0] * len(counts)
    hundredths = [n * 10_000 // total for n in counts]
    by_remainder = sorted(range(len(counts)), key=lambda i: (-(counts[i] * 10_000 % total), i))
    for i in by_remainder[: 10_000 - sum(hundredths)]:
        hundredths[i] += 1
    return [h / 100 for h in hundredths]


def period_pieces(
    start: date, end: date, hourly: bool, zone: ZoneInfo | None
) -> list[tuple[str, list[tuple[Grain, int]]]]:
    """(label, the buckets that make it up) per hour or day from start to end, both included.

    In UTC a day is its daily bucket and an hour its hourly one. In another zone a day is the hourly
    buckets of its UTC hours (23, 24 or 25), with half-hour buckets at the edges for a zone half an hour
    off UTC, and an hour is labelled in local time with its offset."""
    if zone is None and hourly:
        return [(h.strftime("%Y-%m-%dT%H:00:00Z"), [(Grain.HOUR, hour_index(h))]) for h in hours_between(start, end)]
    if zone is None:
        return [(d.isoformat(), [(Grain.DAY, day_index(d))]) for d in days_between(start, end)]
    if hourly:
        return [(local_hour_label(h, zone), pieces(h, h + 3600))
                for _, first, end_s in local_days(start, end, zone) for h in local_hours(first, end_s)]  # fmt: skip
    return [(d.isoformat(), pieces(first, end_s)) for d, first, end_s in local_days(start, end, zone)]


async def periods(
    view: View, org: str, start: date, end: date, hourly: bool, zone: ZoneInfo | None, fields: list[str]
) -> list[tuple[str, list[int]]]:
    """(label, the fields' sums) per hour or day from start to end, both included (`period_pieces`); zeros
    included."""
    redis, gen = view
    periods = [(label, [keys.bucket(gen, org, g, i) for g, i in made_of])
               for label, made_of in period_pieces(start, end, hourly, zone)]  # fmt: skip
    replies = iter(
        await pipelined(redis, [("hmget", key, fields) for _, bucket_keys in periods for key in bucket_keys])
    )
    out = []
    for label, bucket_keys in periods:
        sums = [0] * len(fields)
        for _ in bucket_keys:
            for i, value in enumerate(next(replies)):
                sums[i] += as_int(value)
        out.append((label, sums))
    return out


ZUNION_SCORES_LUA = load("tables", "zunion_scores")  # tables/lua/zunion_scores.lua


ZUNION_SIZE_LUA = load("tables", "zunion_size")  # tables/lua/zunion_size.lua


async def union_sizes(redis: Redis, unions: list[list[str]]) -> list[int]:
    """How many members each union of sorted sets (of one org: one slot) has, counted in Redis (one script
    per union, pipelined), so no member crosses the network."""
    return [int(n) for n in await Script(redis, ZUNION_SIZE_LUA).run_many([(zkeys, []) for zkeys in unions])]


async def zunion(redis: Redis, zkeys: list[str]) -> list[tuple[bytes, float]]:
    """ZUNION of sorted sets of one org (one slot) with scores, run as a script: on a Redis Cluster the
    client would otherwise ask one fixed node which keys ZUNION names, and fail for as long as that node
    is down."""
    if not zkeys:
        return []
    flat: Any = await Script(redis, ZUNION_SCORES_LUA).run(zkeys)
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]


async def conversation_states(view: View, org: str, digests: list[int]) -> list[ConversationState]:
    """The states of conversations by their digests (an empty state where there is none)."""
    redis, gen = view
    calls = [("hget", keys.conversation_bucket(gen, org, d), keys.conversation_field(d)) for d in digests]
    return [ConversationState.unpack(raw) for raw in await pipelined(redis, calls)] if calls else []


async def resolve(view: View, org: str, kind: str, value: str) -> str:
    """The kept id behind a mentor id a client sends: a served UUID maps back to a non-UUID id
    (tables/ids.py), another UUID is kept canonical, anything else is kept as given."""
    redis, gen = view
    uid = ids.canonical(value)
    if uid is None:
        return value
    mapped: Any = await redis.hget(keys.uuids(gen, org), uid)
    if mapped is not None:
        found_kind, _, kept = str(mapped.decode()).partition("|")
        if found_kind == kind:
            return kept
    return uid


async def list_orgs(redis: Redis) -> list[str]:
    """The orgs that exist (registered, or named by an applied event), sorted."""
    members: Any = await redis.smembers(keys.orgs())
    return sorted(m.decode() for m in members)


async def register_org(redis: Redis, org: str) -> None:
    await redis.sadd(keys.orgs(), org)


async def org_time_zone(redis: Redis, org: str) -> str | None:
    """The org's default time zone (an IANA name), None when it has none (UTC)."""
    raw: Any = await redis.hget(keys.time_zones(), org)
    return None if raw is None else raw.decode()


async def set_org_time_zone(redis: Redis, org: str, name: str | None) -> None:
    """Set the org's default time zone (None: back to UTC). The name is checked by the caller."""
    if name is None:
        await redis.hdel(keys.time_zones(), org)
    else:
        await redis.hset(keys.time_zones(), org, name)


async def freshness(view: View, org: str) -> dict[str, Any]:
    """Time of the newest event applied for the org, the count applied per topic, and the org's time zone
    and what day it is there (the days its answers count in by default)."""
    redis, gen = view
    raw: Any = await redis.hgetall(keys.meta(gen, org))
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    last = int(meta.pop("last_event_ms", 0))
    zone_name = await org_time_zone(redis, org)
    return {
        "last_event_at": format_timestamp(last) if last else None,
        "events": {k.split("|", 1)[1]: int(v) for k, v in meta.items() if k.startswith("events|")},
        "time_zone": zone_name or "UTC",
        "today": local_today(None if zone_name is None else time_zone(zone_name)).isoformat(),
    }


PIPELINE_CALLS = 1000  # commands per round trip: Redis runs a pipeline's commands back to back


async def pipelined(redis: Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Each call's answer, in order; sent in round trips of at most `PIPELINE_CALLS` commands, so a long
    list (a student's thousands of conversations) never holds Redis for more than a few milliseconds."""
    result: list[Any] = []
    for i in range(0, len(calls), PIPELINE_CALLS):
        async with redis.pipeline(transaction=False) as pipe:
            for name, *args in calls[i : i + PIPELINE_CALLS]:
                getattr(pipe, name)(*args)
            result.extend(await pipe.execute())
    return result


def decimal_text(numerator: int, denominator: int, places: int) -> str:
    """numerator / denominator (denominator > 0) as a decimal string of exactly `places` places, rounded
    half to even, computed exactly (integers, then a Decimal): `decimal_text(5, 2, 0)` is `2`,
    `decimal_text(-1_500, 1_000_000, 3)` is `-0.002`."""
    q, r = divmod(abs(numerator) * 10**places, denominator)
    if 2 * r > denominator or (2 * r == denominator and q % 2):
        q += 1
    return f"{Decimal(f'{-q if numerator < 0 else q}E-{places}'):f}"  # from text: exact at any length
