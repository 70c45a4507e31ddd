"""Distinct students: which students chatted on each day (UTC), for the org and for each mentor, and how
many that is over any range of days.

Rule: a student counts on a day when any chat message of theirs (either role) is stamped that day; a set
per day (and per mentor and day) of the students' usernames. Adding to a set is idempotent and commutative,
so any order and any number of copies give the same sets. The sets are kept as long as daily buckets; an
erasure removes the student from every one of them (`erase`). Not published on the changefeed.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from redis.asyncio import Redis

from tables import ids, keys, queries
from tables.aggregates.base import Batch, Counted, Erased, remove_everywhere
from tables.buckets import DAY_MS, Grain, day_index, days_between
from tables.conversations import ConversationState

# (day index, mentor, student): who the batch saw chat that day, with which mentor
Seen = set[tuple[int, str, str]]


def key(gen: int, org: str, day: int, mentor: str | None = None) -> str:
    """Set of the usernames of the students who chatted on a day (`:ds:YYYYMMDD`); a mentor's set ends in
    `|m|<mentor>`."""
    base = keys.org_key(gen, org, f"ds:{Grain.DAY.label(day)}")
    return base if mentor is None else f"{base}|m|{mentor}"


class DistinctStudents:
    name = "distinct_students"

    def fold(self, b: Batch, counted: Counted) -> Seen:
        return {(ev.ts_ms // DAY_MS, mentor, ev.student) for ev, _, mentor in counted.messages}

    def changed(self, b: Batch, seen: Seen, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, seen: Seen) -> None:
        """Each student into the day's set of the org and of the mentor: one SADD of many members per set."""
        sets: dict[tuple[int, str | None], list[str]] = {}
        for day, mentor, student in seen:
            members = sets.get((day, mentor))
            if members is None:
                members = sets[(day, mentor)] = []
            members.append(student)
        for (day, _), students in list(sets.items()):
            org_day = sets.get((day, None))
            if org_day is None:
                org_day = sets[(day, None)] = []
            org_day.extend(students)
        w, gen, org, retention = b.w, b.gen, b.org, b.retention
        for (day, whose), students in sets.items():
            skey = key(gen, org, day, whose)
            w.expire_at(skey, retention.expire_at_s(Grain.DAY, day))
            w.sadd_members(skey, students)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """The student, from every day's set of the org and of its mentors."""
        removed = await remove_everywhere(redis, keys.org_key(gen, org, "ds:*"), "SREM", student)
        return Erased(audit={"distinct_students_days": len(removed)})


# --- reads -----------------------------------------------------------------------------------------
async def distinct_students(
    view: queries.View, org: str, start: date, end: date, mentor_id: str | None = None
) -> dict[str, Any]:
    """Per UTC day from start to end (both included, zeros included) the number of students who chatted,
    and how many distinct students that is over the whole range; with `mentor_id`, with that mentor."""
    redis, gen = view
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    days = days_between(start, end)
    members = await queries.pipelined(redis, [("smembers", key(gen, org, day_index(d), mentor_id)) for d in days])
    everyone: set[bytes] = set().union(*members) if members else set()
    return {
        "days": [{"date": d.isoformat(), "students": len(m)} for d, m in zip(days, members, strict=True)],
        "total": len(everyone),
    }
