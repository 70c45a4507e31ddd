"""Reading the aggregates back: one function per view, each costing in proportion to the buckets (or
conversations) in its range, never to the events behind them. All reads of an org touch only keys of its
hash tag, so they work on Redis Cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.schemas import SENTIMENTS, format_timestamp
from tables import keys
from tables.buckets import Grain, day_index, days_between, hour_index, hours_between, split_weeks
from tables.conversations import ConversationState

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


async def average_messages_per_session(
    redis: Redis, org: str, start: date, end: date, aggregation: str = "daily", mentor_id: str | None = None
) -> list[dict[str, Any]]:
    """Rows of sessions started per period and their messages; periods with no session included."""
    s_field, m_field = keys.SESSIONS, keys.MESSAGES
    if mentor_id is not None:
        s_field, m_field = keys.mentor_field(s_field, mentor_id), keys.mentor_field(m_field, mentor_id)
    if aggregation == "hourly":
        hours = hours_between(start, end)
        labels = [(h.strftime("%Y-%m-%dT%H:00:00Z"), keys.bucket(org, Grain.HOUR, hour_index(h))) for h in hours]
    else:
        labels = [(d.isoformat(), keys.bucket(org, Grain.DAY, day_index(d))) for d in days_between(start, end)]
    async with redis.pipeline(transaction=False) as pipe:
        for _, key in labels:
            pipe.hmget(key, [s_field, m_field])
        replies = await pipe.execute()
    periods: list[tuple[str, int, int]] = [
        (t, _int(s), _int(m)) for (t, _), (s, m) in zip(labels, replies, strict=True)
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
    redis: Redis, org: str, start: date, end: date, mentor_id: str | None = None, limit: int = TOP_N
) -> list[dict[str, Any]]:
    """Human messages per student over the range, most first, ties by username ascending.

    Whole weeks inside the range are read from weekly sets, the days around them from daily ones."""
    mondays, days = split_weeks(start, end)
    zkeys = [keys.top_students(org, Grain.WEEK, day_index(m), mentor_id) for m in mondays]
    zkeys += [keys.top_students(org, Grain.DAY, day_index(d), mentor_id) for d in days]
    merged: Any = await redis.zunion(zkeys, withscores=True)
    counts = [(member.decode(), int(score)) for member, score in merged]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    return [{"username": u, "chat_message_count": n} for u, n in counts[:limit]]


async def sentiment_counts(redis: Redis, org: str, start: date, end: date) -> list[dict[str, Any]]:
    """One row per day (zeros included): all sentiment events, and the count of each label."""
    fields = [keys.SENTIMENT, *(keys.sentiment_field(s) for s in SENTIMENTS)]
    days = days_between(start, end)
    async with redis.pipeline(transaction=False) as pipe:
        for d in days:
            pipe.hmget(keys.bucket(org, Grain.DAY, day_index(d)), fields)
        replies = await pipe.execute()
    return [
        {"date": d.isoformat(), "sentiment_count": _int(total), **dict(zip(SENTIMENTS, map(_int, labels), strict=True))}
        for d, (total, *labels) in zip(days, replies, strict=True)
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
        "total_cost": float(Decimal(nanos) / NANOS),
        "total_cost_exact": str(Decimal(nanos) / NANOS),
        "cost_nanos": nanos,
        "input_tokens": totals[1],
        "output_tokens": totals[2],
        "observations": totals[3],
        "unpriced_observations": totals[4],
    }


async def list_orgs(redis: Redis) -> list[str]:
    """The orgs that exist (registered, or named by an applied event), sorted."""
    members: Any = await redis.smembers(keys.orgs())
    return sorted(m.decode() for m in members)


async def org_exists(redis: Redis, org: str) -> bool:
    return bool(await redis.sismember(keys.orgs(), org))


async def register_org(redis: Redis, org: str) -> None:
    await redis.sadd(keys.orgs(), org)


async def freshness(redis: Redis, org: str) -> dict[str, Any]:
    """Time of the newest event applied for the org, and the count applied per topic."""
    raw: Any = await redis.hgetall(keys.meta(org))
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    last = int(meta.pop("last_event_ms", 0))
    return {
        "last_event_at": format_timestamp(last) if last else None,
        "events": {k.split("|", 1)[1]: int(v) for k, v in meta.items() if k.startswith("events|")},
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
    lo = "-inf" if flt.start is None else _ms(flt.start)
    hi = "+inf" if flt.end is None else _ms(flt.end + timedelta(days=1)) - 1
    index = keys.conversations(org)
    filters = []
    if flt.student:
        filters.append(keys.conversations_by(org, "student", flt.student))
    if flt.mentor:
        filters.append(keys.conversations_by(org, "mentor", flt.mentor))
    if flt.sentiment:
        filters.append(keys.conversations_by(org, "sentiment", flt.sentiment))
    filters.extend(keys.conversations_by(org, "topic", t) for t in flt.topics)
    if not filters:
        count = int(await redis.zcount(index, lo, hi))
        start = (page - 1) * page_size
        ids: Any = await redis.zrevrangebyscore(index, hi, lo, start=start, num=page_size)
    else:
        # Walk the smallest filter set, then check the others and the date range against it.
        sizes = [int(n) for n in await _pipeline(redis, [("zcard", k) for k in filters])]
        smallest = filters[sizes.index(min(sizes))]
        candidates: Any = await redis.zrange(smallest, 0, -1)
        if not candidates:
            return 0, []
        scores = await redis.zmscore(index, candidates)
        rest = [k for k in filters if k != smallest]
        memberships = await _pipeline(redis, [("zmscore", k, candidates) for k in rest])
        lo_f = float("-inf") if lo == "-inf" else float(lo)
        hi_f = float("inf") if hi == "+inf" else float(hi)
        matched = []
        for i, (cid, score) in enumerate(zip(candidates, scores, strict=True)):
            if score is None or not lo_f <= score <= hi_f:
                continue
            if all(m[i] is not None for m in memberships):
                matched.append((score, cid))
        matched.sort(key=lambda sc: (-sc[0], sc[1]))
        count = len(matched)
        ids = [cid for _, cid in matched[(page - 1) * page_size : page * page_size]]
    return count, await _conversations(redis, org, [i.decode() for i in ids])


async def _conversations(redis: Redis, org: str, ids: list[str]) -> list[dict[str, Any]]:
    """The served records: the newest chat-history record's fields, completed from the messages (the
    earliest message's student and mentor where no record names them, per-role counts, every topic) and
    the latest sentiment."""
    fields = [keys.RECORD, *keys.CONV_STATE]
    rows = await _pipeline(redis, [("hmget", keys.conversation(org, cid), fields) for cid in ids])
    out = []
    for cid, (record, *values) in zip(ids, rows, strict=True):
        conv = ConversationState.from_fields(
            {f: None if v is None else v.decode() for f, v in zip(keys.CONV_STATE, values, strict=True)}
        )
        rec: dict[str, Any] = orjson.loads(record) if record else {"id": cid}
        rec.setdefault("id", cid)
        if conv.first_student is not None:
            rec.setdefault("student", conv.first_student)
        if conv.first_mentor is not None:
            rec.setdefault("mentor", conv.first_mentor)
        if "inserted_at" not in rec and conv.started_ms is not None:
            rec["inserted_at"] = format_timestamp(conv.started_ms)
        topics = list(dict.fromkeys([*conv.topics, *sorted(conv.msg_topics)]))
        rec["topics"] = [{"name": t} for t in topics]
        rec["messages_human"] = conv.human
        rec["messages_ai"] = conv.ai
        rec["message_count"] = conv.human + conv.ai
        rec["sentiment"] = conv.sentiment
        out.append(rec)
    return out


async def _pipeline(redis: Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for name, *args in calls:
            getattr(pipe, name)(*args)
        result: list[Any] = await pipe.execute()
        return result


def _ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
