"""Top students: human messages per student, in sorted sets per half hour, hour, day, ISO week and calendar
month, and of all time, for the org and for each mentor; and human messages per day (a bucket field). The
same sets say how many students sent a message in each hour or day (`active_students`).

Each human message counts once for its student in the sets of its own time (a sum: any order gives the
same sets). A long range unions months and weeks, not days (90 days: ~8 sets, not 90; a month's students
are one set's size); a time zone's days take the half hours and hours at their edges.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, keys, queries
from tables.aggregates.base import Batch, Counted, Erased, remove_everywhere
from tables.buckets import DAY_MS, HALF_MS, Grain, cover, day_at, day_index, local_days, split_months, split_weeks
from tables.conversations import ConversationState
from tables.generations import months_from

HUMAN = "human"  # daily bucket field: human messages
GRAINS = (Grain.HALF, Grain.HOUR, Grain.DAY, Grain.WEEK, Grain.MONTH)


def key(gen: int, org: str, grain: Grain, index: int, mentor: str | None = None) -> str:
    """Sorted set student -> human messages, for an hour (`:top:YYYYMMDDHH`) or a half hour
    (`:top:YYYYMMDDHHMM`), kept as long as hourly buckets (the edges of a time zone's days), a day
    (`:top:YYYYMMDD`), an ISO week (`:top:wYYYYMMDD`, its Monday) or a calendar month (`:top:mYYYYMM`);
    a mentor's set ends in `|m|<mentor>`. The daily and weekly sets are published (keys.describe_counter)."""
    base = keys.org_key(gen, org, f"top:{grain.label(index)}")
    return base if mentor is None else f"{base}|m|{mentor}"


def alltime_key(gen: int, org: str, mentor: str | None = None) -> str:
    """Sorted set student -> human messages of all time (never expires); a mentor's ends in `|m|<mentor>`."""
    base = keys.org_key(gen, org, "top:all")
    return base if mentor is None else f"{base}|m|{mentor}"


def is_metric(metric: str) -> bool:
    """A top-students set's changefeed record (the org's, or a mentor's), whose value maps students to counts."""
    return metric == keys.TOP_STUDENTS or metric.startswith(f"{keys.TOP_STUDENTS}|m|")


# (half hour, mentor or None for the org's sets, student) -> human messages the batch adds
Deltas = dict[tuple[int, str | None, str], int]


class TopStudents:
    name = "top_students"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        humans = [(ev.ts_ms // HALF_MS, ev.student, mentor) for ev, _, mentor in counted.messages if ev.role == "human"]
        deltas: Deltas = {}
        for (half, student, mentor), n in Counter(humans).items():
            b.add_at(Grain.DAY, half * HALF_MS // DAY_MS, HUMAN, n)
            for slot in ((half, None, student), (half, mentor, student)):
                deltas[slot] = deltas.get(slot, 0) + n
        return deltas

    def changed(self, b: Batch, sums: Deltas, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, deltas: Deltas) -> None:
        """Summed per set and student first: one ZINCRBY each."""
        w, gen, org = b.w, b.gen, b.org
        sums: dict[tuple[Grain, int, str | None], dict[str, int]] = {}
        alltime: dict[str | None, dict[str, int]] = {}
        sets_of_half: dict[int, list[tuple[Grain, int]]] = {}
        for (half, mentor, student), n in deltas.items():
            sets = sets_of_half.get(half)
            if sets is None:
                start_ms = half * HALF_MS
                sets = sets_of_half[half] = [(grain, grain.index(start_ms)) for grain in GRAINS]
            for grain, index in sets:
                members = sums.get((grain, index, mentor))
                if members is None:
                    members = sums[(grain, index, mentor)] = {}
                members[student] = members.get(student, 0) + n
            members = alltime.setdefault(mentor, {})
            members[student] = members.get(student, 0) + n
        for (grain, index, mentor), members in sums.items():
            zkey = key(gen, org, grain, index, mentor)
            w.expire_at(zkey, b.retention.expire_at_s(grain, index))
            w.zincr_members(zkey, members)
        for mentor, members in alltime.items():
            w.zincr_members(alltime_key(gen, org, mentor), members)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """The student's entry in every set (half-hourly, hourly, daily, weekly, all time, per mentor)."""
        removed = await remove_everywhere(redis, keys.org_key(gen, org, "top:*"), "ZREM", student)
        return Erased(sets=[key for key, _ in removed], audit={"top_students_entries": sum(n for _, n in removed)})


# --- reads -----------------------------------------------------------------------------------------
TOP_N = 20


def range_keys(
    gen: int, org: str, start: date, end: date, mentor: str | None, zone: ZoneInfo | None, *, first_month: int
) -> list[str]:
    """The sets whose union is the range's (days from start to end of the zone, UTC without one; the org's
    or a mentor's, as kept): whole calendar months inside it from monthly sets (from `first_month` on:
    `generations.months_from`), whole ISO weeks of what is left from weekly sets, the days around them from
    daily ones; in a zone other than UTC, the UTC hours (and half hours) at either edge of its days from
    hourly (and half-hourly) ones."""
    edges: list[tuple[Grain, int]] = []
    if zone is not None:
        spans = local_days(start, end, zone)
        utc_days, edges = cover(spans[0][1], spans[-1][2])
        if not utc_days:
            start, end = date.max, date.min  # no whole UTC day inside: hours only
        else:
            start, end = day_at(utc_days[0]), day_at(utc_days[-1])
    months, rest = split_months(start, end, first_month) if start <= end else ([], [])
    zkeys = [key(gen, org, Grain.MONTH, m, mentor) for m in months]
    for a, b in rest:
        mondays, days = split_weeks(a, b)
        zkeys += [key(gen, org, Grain.WEEK, day_index(m), mentor) for m in mondays]
        zkeys += [key(gen, org, Grain.DAY, day_index(d), mentor) for d in days]
    zkeys += [key(gen, org, grain, i, mentor) for grain, i in edges]
    return zkeys


async def view_range_keys(
    view: queries.View, org: str, start: date, end: date, mentor: str | None, zone: ZoneInfo | None
) -> list[str]:
    """`range_keys` of the generation served, its monthly sets read from the month they are whole."""
    redis, gen = view
    return range_keys(gen, org, start, end, mentor, zone, first_month=await months_from(redis, gen))


async def top_students(
    view: queries.View,
    org: str,
    start: date | None,
    end: date | None,
    mentor_id: str | None = None,
    limit: int | None = TOP_N,
    zone: ZoneInfo | None = None,
) -> list[dict[str, Any]]:
    """Human messages per student over the range (all time without one), most first, ties by username: the
    union of the sets of the range (`range_keys`)."""
    redis, gen = view
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    if start is None or end is None:
        zkeys = [alltime_key(gen, org, mentor_id)]
    else:
        zkeys = await view_range_keys(view, org, start, end, mentor_id, zone)
    merged = await queries.zunion(redis, zkeys)
    counts = [(member.decode(), int(score)) for member, score in merged]
    counts.sort(key=lambda kv: (-kv[1], kv[0]))
    return [{"username": u, "chat_message_count": n} for u, n in counts[:limit]]


async def active_students(
    view: queries.View,
    org: str,
    start: date,
    end: date,
    hourly: bool,
    mentor_id: str | None = None,
    zone: ZoneInfo | None = None,
) -> list[dict[str, Any]]:
    """Students who sent a message (a human message: the AI's replies to them do not count) in each hour
    or day from start to end (the zone's; zeros included), to the org or to one mentor: exact, the size of
    the union of the sets of the hours (and half hours) or the day that make up each period."""
    redis, gen = view
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    periods = queries.period_pieces(start, end, hourly, zone)
    sizes = await queries.union_sizes(
        redis, [[key(gen, org, g, i, mentor_id) for g, i in made_of] for _, made_of in periods]
    )
    return [{"period": label, "user_count": n} for (label, _), n in zip(periods, sizes, strict=True)]
