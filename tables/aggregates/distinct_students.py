"""Distinct students, retired: earlier versions kept a set per day (and per mentor and day) of the usernames
of the students who chatted that day (`:ds:YYYYMMDD`). No endpoint reads them any more (distinct students
are counted from the top-students sets: `top_students.active_students`), so nothing writes them; the
family stays registered for its erasure, which removes a student from the sets earlier versions wrote
(kept as long as daily buckets). Dropping them at once: `ai-analytics rebuild` (a new generation holds none).
"""

from __future__ import annotations

from redis.asyncio import Redis

from tables import keys
from tables.aggregates.base import Batch, Counted, Erased, remove_everywhere
from tables.conversations import ConversationState


class DistinctStudents:
    name = "distinct_students"

    def fold(self, b: Batch, counted: Counted) -> None:
        return

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """The student, from every day's set of the org and of its mentors that an earlier version wrote."""
        removed = await remove_everywhere(redis, keys.org_key(gen, org, "ds:*"), "SREM", student)
        return Erased(audit={"distinct_students_days": len(removed)})
