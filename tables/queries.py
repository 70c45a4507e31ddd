"""Reading the aggregates back: one function per view, each costing in proportion to the buckets (or
conversations) in its range, never to the events behind them. All reads of an org touch only keys of its
hash tag, so they work on Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from redis.asyncio import Redis

from streams.schemas import SENTIMENTS, format_timestamp
from tables import ids, keys
from tables.buckets import (
    Grain,
    cover,
    day_at,
    day_index,
    days_between,
    hour_index,
    hours_between,
    local_days,
    local_hour_label,
    local_hours,
    local_today,
    pieces,
    split_weeks,
    time_zone,
)
from tables.conversations import ConversationState, addressed_digest, conversation_digest
from tables.scripts import Script, load

TOP_N = 20
NANOS = Decimal(1_000_000_000)
AGGREGATIONS = ("hourly", "daily", "weekly")


def _int(value: bytes | None) -> int:
    return 0 if value is None else int(value)


def _ratio(messages: int, sessions: int) -> tuple[int, float]:
    if sessions == 0:
        return 0, 0.0
    exact = Decimal(messages) / Decimal(sessions)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)), float(exact)


async def _periods(
    redis: Redis, org: str, start: date, end: date, hourly: bool, zone: ZoneInfo | None, fields: list[str]
) -> list[tuple[str, list[int]]]:
    """(label, the fields' sums) per hour or day from start to end, both included; zeros included.

    In UTC a day is its daily bucket. In another zone a day is the hourly buckets of its UTC hours (23, 24
    or 25), with half-hour buckets at the edges for a zone half an hour off UTC, and an hour is labelled in
    local time with its offset."""
    periods: list[tuple[str, list[str]]]
    if zone is None and hourly:
        periods = [(h.strftime("%Y-%m-%dT%H:00:00Z"), [keys.bucket(org, Grain.HOUR, hour_index(h))])
                   for h in hours_between(start, end)]  # fmt: skip
    elif zone is None:
        periods = [(d.isoformat(), [keys.bucket(org, Grain.DAY, day_index(d))]) for d in days_between(start, end)]
    elif hourly:
        periods = [(local_hour_label(h, zone), [keys.bucket(org, g, i) for g, i in pieces(h, h + 3600)])
                   for _, first, end_s in local_days(start, end, zone) for h in local_hours(first, end_s)]  # fmt: skip
    else:
        periods = [(d.isoformat(), [keys.bucket(org, g, i) for g, i in pieces(first, end_s)])
                   for d, first, end_s in local_days(start, end, zone)]  # fmt: skip
    replies = iter(
        await _pipeline(redis, [("hmget", key, fields) for _, bucket_keys in periods for key in bucket_keys])
    )
    out = []
    for label, bucket_keys in periods:
        sums = [0] * len(fields)
        for _ in bucket_keys:
            for i, value in enumerate(next(replies)):
                sums[i] += _int(value)
        out.append((label, sums))
    return out


async def average_messages_per_session(
    redis: Redis,
    org: str,
    start: date,
    end: date,
    aggregation: str = "daily",
    mentor_id: str | None = None,
    zone: ZoneInfo | None = None,
) -> list[dict[str, Any]]:
    """Rows of sessions started per period and their messages; periods with no session included. Days and
    weeks are the zone's (UTC without one)."""
    s_field, m_field = keys.SESSIONS, keys.MESSAGES
    if mentor_id is not None:
        mentor_id = await resolve(redis, org, ids.MENTOR, mentor_id)
        s_field, m_field = keys.mentor_field(s_field, mentor_id), keys.mentor_field(m_field, mentor_id)
    periods = [
        (t, s, m)
        for t, (s, m) in await _periods(redis, org, start, end, aggregation == "hourly", zone, [s_field, m_field])
    ]
    if aggregation == "weekly":
        weeks: dict[str, list[int]] = {}
        for t, s, m in periods:
            d = date.fromisoformat(t)
            monday = (d - timedelta(days=d.weekday())).isoformat()
            acc = weeks.setdefault(monday, [0, 0])
            acc[0] += s
            acc[1] += m
        periods = [(t, s, m) for t, (s, m) in weeks.items()]
    rows = []
    for t, sessions, messages in periods:
        avg, exact = _ratio(messages, sessions)
        rows.append(
            {
                "time": t,
                "avg_messages": avg,
                "total_sessions": sessions,
                "total_messages": messages,
                "avg_messages_exact": exact,
            }
        )
    return rows


async def top_students(
    redis: Redis,
    org: str,
    start: date | None,
    end: date | None,
    mentor_id: str | None = None,
    limit: int = TOP_N,
    zone: ZoneInfo | None = None,
) -> list[dict[str, Any]]:
    """Human messages per student over the range (all time without one), most first, ties by username.

    Whole weeks inside the range are read from weekly sets, the days around them from daily ones; in a
    zone other than UTC, the UTC hours (and half hours) at either edge of its days from hourly (and
    half-hourly) ones."""
    if mentor_id is not None:
        mentor_id = await resolve(redis, org, ids.MENTOR, mentor_id)
    if start is None or end is None:
        zkeys = [keys.top_students_all(org, mentor_id)]
    else:
        edges: list[tuple[Grain, int]] = []
        if zone is not None:
            spans = local_days(start, end, zone)
            utc_days, edges = cover(spans[0][1], spans[-1][2])
            if not utc_days:
                start, end = date.max, date.min  # no whole UTC day inside: hours only
            else:
                start, end = day_at(utc_days[0]), day_at(utc_days[-1])
        mondays, days = split_weeks(start, end) if start <= end else ([], [])
        zkeys = [keys.top_students(org, Grain.WEEK, day_index(m), mentor_id) for m in mondays]
        zkeys += [keys.top_students(org, Grain.DAY, day_index(d), mentor_id) for d in days]
        zkeys += [keys.top_students(org, grain, i, mentor_id) for grain, i in edges]
    merged = await zunion(redis, zkeys)
    counts = [(member.decode(), int(score)) for member, score in merged]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    return [{"username": u, "chat_message_count": n} for u, n in counts[:limit]]


async def sentiment_counts(
    redis: Redis, org: str, start: date, end: date, zone: ZoneInfo | None = None
) -> list[dict[str, Any]]:
    """One row per day of the zone (UTC without one), zeros included: all sentiment events, and the count
    of each label."""
    fields = [keys.SENTIMENT, *(keys.sentiment_field(s) for s in SENTIMENTS)]
    return [
        {"date": d, "sentiment_count": total, **dict(zip(SENTIMENTS, labels, strict=True))}
        for d, (total, *labels) in await _periods(redis, org, start, end, False, zone, fields)
    ]


def cost_buckets(org: str, start: datetime, end: datetime) -> list[str]:
    """Bucket keys that exactly cover [start, end): whole days as daily buckets, the edges as hours.

    Both ends are rounded down to the hour (the finest grain kept).
    """
    start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out = []
    t = start
    while t < end:
        if t.hour == 0 and t + timedelta(days=1) <= end:
            out.append(keys.bucket(org, Grain.DAY, day_index(t.date())))
            t += timedelta(days=1)
        else:
            out.append(keys.bucket(org, Grain.HOUR, hour_index(t)))
            t += timedelta(hours=1)
    return out


async def tenant_cost(redis: Redis, org: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Exact LLM cost of the org in [start, end), in USD (and nano-dollars, tokens, observations)."""
    fields = [keys.COST, keys.TOKENS_IN, keys.TOKENS_OUT, keys.OBSERVATIONS, keys.UNPRICED]
    async with redis.pipeline(transaction=False) as pipe:
        for key in cost_buckets(org, start, end):
            pipe.hmget(key, fields)
        replies = await pipe.execute()
    totals = [sum(_int(r[i]) for r in replies) for i in range(len(fields))]
    nanos = totals[0]
    return {
        "total_cost": usd(nanos),
        "total_cost_exact": str(Decimal(nanos) / NANOS),
        "cost_nanos": nanos,
        "input_tokens": totals[1],
        "output_tokens": totals[2],
        "observations": totals[3],
        "unpriced_observations": totals[4],
    }


def usd(nanos: int) -> float:
    """Nano-dollars as the float the platform's clients read (sums are kept exact in nano-dollars)."""
    return float(Decimal(nanos) / NANOS)


async def cost_fields(redis: Redis, org: str, start: datetime, end: datetime, prefix: str) -> dict[str, int]:
    """Sum over [start, end) of every bucket field starting with `prefix` (e.g. `cost|model|`), by the rest
    of the field's name; whole days from daily buckets, the edges from hourly ones."""
    buckets = cost_buckets(org, start, end)
    rows = await _pipeline(redis, [("hgetall", key) for key in buckets])
    out: dict[str, int] = {}
    for row in rows:
        for fld, value in row.items():
            name = fld.decode()
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                out[rest] = out.get(rest, 0) + int(value)
    return out


async def cost_of(redis: Redis, org: str, start: datetime, end: datetime, fld: str) -> int:
    """Exact nano-dollars of one cost field (keys.cost_field) over [start, end)."""
    replies = await _pipeline(redis, [("hget", key, fld) for key in cost_buckets(org, start, end)])
    return sum(_int(r) for r in replies)


async def session_costs(redis: Redis, org: str, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
    """(mentor, session) -> cost of the session's observations in [start, end), exact to the hour like
    every cost: the sessions come from the per-day sets of the days the range touches, their cost from
    each session's cost by hour."""
    first = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    if last < first:
        return {}
    merged = await zunion(redis, [keys.session_costs(org, day_index(d)) for d in days_between(first, last)])
    candidates = [
        pair for member, score in merged if int(score) and (pair := keys.parse_session_cost_member(member.decode()))
    ]
    states = await conversation_states(redis, org, [conversation_digest(org, s) for _, s in candidates])
    lo, hi = hour_index(start.astimezone(UTC)), hour_index(end.astimezone(UTC))
    out: dict[tuple[str, str], int] = {}
    for (mentor, session), state in zip(candidates, states, strict=True):
        nanos = sum(n for h, n in state.costs.items() if lo <= h < hi)
        if nanos:
            out[(mentor, session)] = nanos
    return out


async def latest_trace(redis: Redis, org: str, student: str, start: datetime, end: datetime) -> tuple[str, int] | None:
    """(trace_id, time in ms) of the latest LLM trace in [start, end) of the student's sessions."""
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    members: Any = await redis.smembers(keys.conversations_by(org, "student", student))
    best: tuple[int, str] | None = None
    for state in await conversation_states(redis, org, [int(m) for m in members]):
        for trace_id, ts in state.traces.items():
            if lo <= ts < hi and (best is None or (ts, trace_id) > best):
                best = (ts, trace_id)
    return None if best is None else (best[1], best[0])


ZUNION_SCORES_LUA = load("tables", "zunion_scores")  # tables/lua/zunion_scores.lua


async def zunion(redis: Redis, zkeys: list[str]) -> list[tuple[bytes, float]]:
    """ZUNION of sorted sets of one org (one slot) with scores, run as a script: on a Redis Cluster the
    client would otherwise ask one fixed node which keys ZUNION names, and fail for as long as that node
    is down."""
    if not zkeys:
        return []
    flat: Any = await Script(redis, ZUNION_SCORES_LUA).run(zkeys)
    return [(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]


async def conversation_states(redis: Redis, org: str, digests: list[int]) -> list[ConversationState]:
    """The states of conversations by their digests (an empty state where there is none)."""
    calls = [("hget", keys.conversation_bucket(org, d), keys.conversation_field(d)) for d in digests]
    return [ConversationState.unpack(raw) for raw in await _pipeline(redis, calls)] if calls else []


async def resolve(redis: Redis, org: str, kind: str, value: str) -> str:
    """The kept id behind a mentor id a client sends: a served UUID maps back to a non-UUID id
    (tables/ids.py), another UUID is kept canonical, anything else is kept as given."""
    uid = ids.canonical(value)
    if uid is None:
        return value
    mapped: Any = await redis.hget(keys.uuids(org), uid)
    if mapped is not None:
        found_kind, _, kept = str(mapped.decode()).partition("|")
        if found_kind == kind:
            return kept
    return uid


async def list_orgs(redis: Redis) -> list[str]:
    """The orgs that exist (registered, or named by an applied event), sorted."""
    members: Any = await redis.smembers(keys.orgs())
    return sorted(m.decode() for m in members)


async def org_exists(redis: Redis, org: str) -> bool:
    return bool(await redis.sismember(keys.orgs(), org))


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


async def freshness(redis: Redis, org: str) -> dict[str, Any]:
    """Time of the newest event applied for the org, the count applied per topic, and the org's time zone
    and what day it is there (the days its answers count in by default)."""
    raw: Any = await redis.hgetall(keys.meta(org))
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    last = int(meta.pop("last_event_ms", 0))
    zone_name = await org_time_zone(redis, org)
    return {
        "last_event_at": format_timestamp(last) if last else None,
        "events": {k.split("|", 1)[1]: int(v) for k, v in meta.items() if k.startswith("events|")},
        "time_zone": zone_name or "UTC",
        "today": local_today(None if zone_name is None else time_zone(zone_name)).isoformat(),
    }


@dataclass(frozen=True)
class HistoryFilter:
    start: date | None = None
    end: date | None = None
    student: str | None = None
    mentor: str | None = None
    sentiment: str | None = None
    topics: tuple[str, ...] = ()


async def chat_history(
    redis: Redis, org: str, flt: HistoryFilter, page: int, page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """(count, the page's conversations), newest first by inserted_at."""
    if flt.mentor:
        flt = replace(flt, mentor=await resolve(redis, org, ids.MENTOR, flt.mentor))
    lo = "-inf" if flt.start is None else _ms(flt.start)
    hi = "+inf" if flt.end is None else _ms(flt.end + timedelta(days=1)) - 1
    index = keys.conversations(org)
    filters: list[tuple[str, str]] = []
    if flt.student:
        filters.append(("student", flt.student))
    if flt.mentor:
        filters.append(("mentor", flt.mentor))
    if flt.sentiment:
        filters.append(("sentiment", flt.sentiment))
    filters.extend(("topic", t) for t in flt.topics)
    if not filters:
        count = int(await redis.zcount(index, lo, hi))
        start = (page - 1) * page_size
        members: Any = await redis.zrevrangebyscore(index, hi, lo, start=start, num=page_size)
        digests = [int(m) for m in members]
    else:
        # Walk the smallest filter's sets, then check the others and the date range against it.
        shards = [keys.filter_shards(org, kind, value) for kind, value in filters]
        sizes = await _pipeline(redis, [("scard", k) for keys_ in shards for k in keys_])
        totals, i = [], 0
        for keys_ in shards:
            totals.append(sum(int(n) for n in sizes[i : i + len(keys_)]))
            i += len(keys_)
        smallest = totals.index(min(totals))
        found = await _pipeline(redis, [("smembers", k) for k in shards[smallest]])
        candidates = [m for ms in found for m in ms]
        if not candidates:
            return 0, []
        scores = await redis.zmscore(index, candidates)
        keep = [s is not None for s in scores]
        for n, (kind, value) in enumerate(filters):
            if n == smallest:
                continue
            member_of = await _pipeline(
                redis, [("sismember", keys.conversations_by(org, kind, value, int(m)), m) for m in candidates]
            )
            keep = [k and bool(hit) for k, hit in zip(keep, member_of, strict=True)]
        lo_f = float("-inf") if lo == "-inf" else float(lo)
        hi_f = float("inf") if hi == "+inf" else float(hi)
        matched = sorted(
            ((score, int(m)) for m, score, ok in zip(candidates, scores, keep, strict=True)
             if ok and score is not None and lo_f <= score <= hi_f),
            key=lambda sd: (-sd[0], str(sd[1])),
        )  # fmt: skip
        count = len(matched)
        digests = [d for _, d in matched[(page - 1) * page_size : page * page_size]]
    return count, await _conversations(redis, org, digests)


async def conversation(redis: Redis, org: str, conv_id: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(the kept id, the stored record, the served conversation) of a conversation by the id a client
    sends (a served UUID or a kept id), or None when there is none (or it was deleted)."""
    (conv,) = await conversation_states(redis, org, [addressed_digest(org, conv_id)])
    if conv.deleted or (conv.record_version is None and conv.started_ms is None) or conv.cid is None:
        return None
    stored: dict[str, Any] = orjson.loads(conv.record_json) if conv.record_json else {}
    return conv.cid, stored, served_conversation(org, conv.cid, stored, conv)


async def _conversations(redis: Redis, org: str, digests: list[int]) -> list[dict[str, Any]]:
    out = []
    for conv in await conversation_states(redis, org, digests):
        cid = conv.cid or ""
        out.append(served_conversation(org, cid, orjson.loads(conv.record_json) if conv.record_json else {}, conv))
    return out


# Optional fields of the platform's record, served when the record holds a value of the right type.
_BOOLS = ("has_document", "memory_tracked", "enable_artifacts", "is_shared", "is_authenticated")
_SHORT_TEXTS = ("llm_name", "llm_provider", "title")  # at most 255 characters on the platform
_TEXTS = ("email", "model", "platform", "lti_email", "lti_username")  # required: "" when unknown


def served_conversation(org: str, cid: str, record: dict[str, Any], conv: ConversationState) -> dict[str, Any]:
    """A conversation in the platform's `Conversations` shape, readable by its SDK whatever the events held.

    The newest chat-history record supplies the platform's fields; the messages supply the student and
    mentor where no record names them, the per-role counts and further topics; sentiment is the latest
    judgement ("" when none). Ids are UUIDs (tables/ids.py; the kept ids are in `session_id` and
    `mentor_name`). Message contents are not kept, so `messages` is an empty list ("[]")."""
    has_record = conv.record_version is not None
    mentor = (conv.mentor if has_record else conv.first_mentor) or ""
    student = (conv.student if has_record else conv.first_student) or ""
    inserted_ms = conv.inserted_ms if has_record and conv.inserted_ms else conv.started_ms
    topics = list(dict.fromkeys([*conv.topics, *sorted(conv.msg_topics)]))
    out: dict[str, Any] = {
        "id": ids.served(org, ids.CONVERSATION, cid),
        "session_id": cid,
        "messages": "[]",
        "topics": [{"name": t[:255]} for t in topics],
        "sentiment": conv.sentiment or "",
        "mentor": ids.served(org, ids.MENTOR, mentor),
        "mentor_name": mentor,
        "student": student,
        "rating": r if isinstance(r := record.get("rating"), int) and not isinstance(r, bool) else 0,
        "inserted_at": format_timestamp(inserted_ms or 0),
        "is_conversation": conv.human > 0 and conv.ai > 0,
        "message_count_human": conv.human,
        "message_count_ai": conv.ai,
        "message_count": conv.human + conv.ai,
    }
    for name in _TEXTS:
        value = record.get(name)
        out[name] = value if isinstance(value, str) else ""
    for name in _BOOLS:
        if isinstance(record.get(name), bool):
            out[name] = record[name]
    for name in _SHORT_TEXTS:
        if isinstance(record.get(name), str):
            out[name] = record[name][:255]
    if "metadata" in record:
        out["metadata"] = record["metadata"]
    tools = record.get("tools")
    if isinstance(tools, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tools):
        out["tools"] = tools
    return out


async def _pipeline(redis: Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for name, *args in calls:
            getattr(pipe, name)(*args)
        result: list[Any] = await pipe.execute()
        return result


def _ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
