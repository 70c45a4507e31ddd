"""Ratings: how many conversations' chat-history records hold a rating, per hour, half hour and day of the
record's `inserted_at` (what `rating-summary/` serves).

Rule (docs/semantics.md): a conversation counts once, in the half hour of its newest record's
`inserted_at`, when that record's rating (as served: an integer, 0 for none) is not 0 and the
conversation is not deleted. Its newest record is a function of the set of its records, so what it adds is
derived from its state before and after each batch: a newer record that moves, removes or adds the rating
takes the old count back.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import HALF_MS, Grain
from tables.conversations import ConversationState

RATINGS = "ratings"  # bucket field: rated conversations
GRAINS = (Grain.HOUR, Grain.HALF, Grain.DAY)

# half hour of a rating -> conversations the batch adds there
Deltas = dict[int, int]


class Ratings:
    name = "ratings"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        return {}  # the newest record is the conversation's (`ConversationState.add_record`)

    def changed(self, b: Batch, deltas: Deltas, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The rating leaves where it counted before and counts where it counts after."""
        if before.record_version == after.record_version and before.deleted == after.deleted:
            return
        old, new = before.rating_slot(), after.rating_slot()
        if old == new:
            return
        for ms, sign in ((old, -1), (new, 1)):
            if ms is not None:
                half = ms // HALF_MS
                deltas[half] = deltas.get(half, 0) + sign

    def flush(self, b: Batch, deltas: Deltas) -> None:
        for half, n in deltas.items():
            b.add(GRAINS, half * HALF_MS, (RATINGS,), n)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


# --- reads -----------------------------------------------------------------------------------------
async def rating_summary(
    view: queries.View, org: str, start: date, end: date, hourly: bool, zone: ZoneInfo | None = None
) -> list[dict[str, Any]]:
    """Rated conversations per hour or day (the zone's) from start to end, zeros included."""
    rows = await queries.periods(view, org, start, end, hourly, zone, [RATINGS])
    return [{"time": label, "total_ratings": n} for label, (n,) in rows]
