"""First seen: when each student sent their first message ever (a human message), to the org and to each
mentor; and of the students who sent one in a range, how many were new in it (`new_and_returning`).

Rule: a student's first time is the earliest timestamp of their human messages (the AI's replies to them do
not count, as for `top_students`), of the org's or of those to one mentor; a sorted set per org, and per org
and mentor, of student -> that time in epoch milliseconds, written with `ZADD ... LT` (a member is added, or
lowered, never raised): the minimum of any order and any copies of the events is the same. Kept without
expiry (a first message stays the first however old it is); an erasure removes the student from every set
(`erase`). Not published on the changefeed.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, keys, queries
from tables.aggregates import top_students
from tables.aggregates.base import Batch, Counted, Erased, remove_everywhere
from tables.buckets import DAY_MS, day_index, local_days
from tables.conversations import ConversationState

# (mentor, or None for the org's set; student) -> the earliest human message of the batch (epoch ms)
Firsts = dict[tuple[str | None, str], int]


def key(gen: int, org: str, mentor: str | None = None) -> str:
    """Sorted set student -> their earliest human message (epoch ms): `:first` for the org; a mentor's set
    ends in `|m|<mentor>` (their earliest human message to that mentor)."""
    base = keys.org_key(gen, org, "first")
    return base if mentor is None else f"{base}|m|{mentor}"


class FirstSeen:
    name = "first_seen"

    def fold(self, b: Batch, counted: Counted) -> Firsts:
        firsts: Firsts = {}
        for ev, _, mentor in counted.messages:
            if ev.role != "human":
                continue
            for slot in ((None, ev.student), (mentor, ev.student)):
                held = firsts.get(slot)
                if held is None or ev.ts_ms < held:
                    firsts[slot] = ev.ts_ms
        return firsts

    def changed(self, b: Batch, sums: Firsts, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, firsts: Firsts) -> None:
        """One ZADD LT of many members per set; no expiry."""
        sets: dict[str | None, dict[str, int]] = {}
        for (mentor, student), ms in firsts.items():
            sets.setdefault(mentor, {})[student] = ms
        for mentor, members in sets.items():
            b.w.zadd_lt(key(b.gen, b.org, mentor), members)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """The student, from the org's set and every mentor's."""
        removed = await remove_everywhere(redis, keys.org_key(gen, org, "first*"), "ZREM", student)
        return Erased(audit={"first_seen_entries": sum(n for _, n in removed)})


# --- reads -----------------------------------------------------------------------------------------
def range_ms(start: date, end: date, zone: ZoneInfo | None) -> tuple[int, int]:
    """[first ms, end ms) of the days from start to end, both included, of the zone (UTC without one)."""
    if zone is None:
        return day_index(start) * DAY_MS, (day_index(end) + 1) * DAY_MS
    spans = local_days(start, end, zone)
    return spans[0][1] * 1000, spans[-1][2] * 1000


async def earliest_ms(view: queries.View, org: str) -> int | None:
    """The org's earliest human message (epoch ms), None before any."""
    first: Any = await view.redis.zrange(key(view.gen, org), 0, 0, withscores=True)
    return int(first[0][1]) if first else None


async def new_and_returning(
    view: queries.View,
    org: str,
    start: date,
    end: date,
    mentor_id: str | None = None,
    zone: ZoneInfo | None = None,
) -> dict[str, Any]:
    """The students who sent a message (a human one) from start to end (days of the zone), to the org or to
    one mentor, split into new (their first such message ever, to the org or to that mentor, is in the
    range) and returning (the others), each with its share in percent (`queries.percentages`: adding up to
    100, both 0 when nobody wrote).

    New is counted in the first-seen set, active in the union of the top-students sets of the range; the
    first is read before the second, so a batch applied in between (which only adds) cannot make new exceed
    active; an erasure in between could, by one: new is capped at active."""
    redis, gen = view
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    first_ms, end_ms = range_ms(start, end, zone)
    new = int(await redis.zcount(key(gen, org, mentor_id), first_ms, f"({end_ms}"))
    zkeys = await top_students.view_range_keys(view, org, start, end, mentor_id, zone)
    (active,) = await queries.union_sizes(redis, [zkeys])
    new = min(new, active)
    shares = queries.percentages([new, active - new])
    return {
        "new_users": {"count": new, "percentage": shares[0]},
        "returning_users": {"count": active - new, "percentage": shares[1]},
    }
