"""Top students: human messages per student, in sorted sets per half hour, hour, day and ISO week, and of
all time, for the org and for each mentor; and human messages per day (a bucket field).

Each human message counts once for its student in the sets of its own time (a sum: any order gives the
same sets). A long range unions weeks, not days (90 days: ~25 sets, not 90); a time zone's days take the
half hours and hours at their edges.
"""

from __future__ import annotations

from collections import Counter

from tables import keys
from tables.aggregates.base import Batch, Counted
from tables.buckets import DAY_MS, HALF_MS, Grain
from tables.conversations import ConversationState

HUMAN = "human"  # daily bucket field: human messages
GRAINS = (Grain.HALF, Grain.HOUR, Grain.DAY, Grain.WEEK)

# (half hour, mentor or None for the org's sets, student) -> human messages the batch adds
Deltas = dict[tuple[int, str | None, str], int]


class TopStudents:
    name = "top_students"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        humans = [
            (ev.ts_ms // HALF_MS, ev.student, b.mentor(ev.mentor_id))
            for ev, _ in counted.messages
            if ev.role == "human"
        ]
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
            key = keys.top_students(gen, org, grain, index, mentor)
            w.expire_at(key, b.retention.expire_at_s(grain, index))
            w.zincr_members(key, members)
        for mentor, members in alltime.items():
            w.zincr_members(keys.top_students_all(gen, org, mentor), members)
