"""Ratings: how many conversations' chat-history records hold a rating, per hour, half hour and day of the
record's `inserted_at` (what `rating-summary/` serves), and the sum of those ratings, for the org and per
mentor (the mean ratings of `/api/analytics/ratings/` and the sessions' headline).

Rule (docs/semantics.md): a conversation counts once, in the half hour of its newest record's
`inserted_at`, when that record's rating (as served: an integer, 0 for none) is not 0 and the
conversation is not deleted. Its newest record is a function of the set of its records, so what it adds is
derived from its state before and after each batch: a newer record that moves, changes or removes the
rating takes the old count and sum back.

A rating is any 64-bit integer, so a sum of them could pass what a Redis counter holds: each is summed as
its high and low 32 bits (`split`), two counters that stay exact up to 2^31 ratings in one bucket.
"""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.aggregates.sessions import mentor_field
from tables.buckets import HALF_MS, Grain
from tables.conversations import ConversationState

RATINGS = "ratings"  # bucket field: rated conversations
# Bucket fields of the mean: conversations summed, and the sum of their ratings' high and low 32 bits; a
# mentor's end in `|m|<mentor>` (the newest record's mentor).
SUMMED, HIGH, LOW = "rated", "rating_hi", "rating_lo"
GRAINS = (Grain.HOUR, Grain.HALF, Grain.DAY)


def split(rating: int) -> tuple[int, int]:
    """(high, low) with rating == high * 2**32 + low and 0 <= low < 2**32: each fits a Redis counter's
    increment for any 64-bit rating."""
    return rating >> 32, rating & 0xFFFFFFFF


def mean(summed: int, high: int, low: int) -> float:
    """The mean rating of `summed` conversations, correctly rounded from the exact sum."""
    return float(Fraction((high << 32) + low, summed))


# (half hour, mentor or None for the org's fields) -> [rated, summed, high, low] the batch adds there
Deltas = dict[tuple[int, str | None], list[int]]


class Ratings:
    name = "ratings"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        return {}  # the newest record is the conversation's (`ConversationState.add_record`)

    def changed(self, b: Batch, deltas: Deltas, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The rating leaves where it counted before and counts where it counts after."""
        if before.record_version == after.record_version and before.deleted == after.deleted:
            return
        old, new = before.rating_slot(), after.rating_slot()
        if old != new:
            for ms, sign in ((old, -1), (new, 1)):
                if ms is not None:
                    _add(deltas, ms // HALF_MS, None, (sign, 0, 0, 0))
        old_sum, new_sum = before.rating_sum(), after.rating_sum()
        if old_sum != new_sum:
            for summed, sign in ((old_sum, -1), (new_sum, 1)):
                if summed is not None:
                    ms, mentor, rating = summed
                    high, low = split(rating)
                    add = (0, sign, sign * high, sign * low)
                    _add(deltas, ms // HALF_MS, None, add)
                    if mentor:
                        _add(deltas, ms // HALF_MS, mentor, add)

    def flush(self, b: Batch, deltas: Deltas) -> None:
        for (half, mentor), (rated, summed, high, low) in deltas.items():
            ms, sums = half * HALF_MS, ((SUMMED, summed), (HIGH, high), (LOW, low))
            if mentor is None:
                b.add(GRAINS, ms, (RATINGS,), rated)
            for name, n in sums:
                b.add(GRAINS, ms, (name if mentor is None else mentor_field(name, mentor),), n)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


def _add(deltas: Deltas, half: int, mentor: str | None, add: tuple[int, int, int, int]) -> None:
    counts = deltas.get((half, mentor))
    if counts is None:
        counts = deltas[(half, mentor)] = [0, 0, 0, 0]
    for i, n in enumerate(add):
        counts[i] += n


# --- reads -----------------------------------------------------------------------------------------
async def rating_summary(
    view: queries.View, org: str, start: date, end: date, hourly: bool, zone: ZoneInfo | None = None
) -> list[dict[str, Any]]:
    """Rated conversations per hour or day (the zone's) from start to end, zeros included."""
    rows = await queries.periods(view, org, start, end, hourly, zone, [RATINGS])
    return [{"time": label, "total_ratings": n} for label, (n,) in rows]


async def mean_ratings(
    view: queries.View,
    org: str,
    start: date,
    end: date,
    hourly: bool,
    mentor_id: str | None = None,
    zone: ZoneInfo | None = None,
) -> list[tuple[str, list[int]]]:
    """(label, [conversations summed, high, low]) per hour or day (the zone's) from start to end, zeros
    included; of the org, or of the conversations whose newest record names the mentor."""
    fields = [SUMMED, HIGH, LOW]
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
        fields = [mentor_field(f, mentor_id) for f in fields]
    return await queries.periods(view, org, start, end, hourly, zone, fields)
