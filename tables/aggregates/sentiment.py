"""Sentiment: how many sentiment judgements fall in each minute, hour, half hour and day, in all and per
label. Each judgement counts once, in the buckets of its own time (its conversation's latest judgement is
chat history's: `chat_history`)."""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from streams.schemas import SENTIMENTS
from tables import queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import Grain
from tables.conversations import ConversationState

SENTIMENT = "sentiment"  # bucket field: judgements in all; `sentiment|<label>` per label
GRAINS = (Grain.HOUR, Grain.HALF, Grain.DAY, Grain.MINUTE)  # minutes: the alert rules read them


def sentiment_field(label: str) -> str:
    return f"{SENTIMENT}|{label}"


LABEL_FIELDS = {label: (SENTIMENT, sentiment_field(label)) for label in SENTIMENTS}
LABELS = tuple(sentiment_field(label) for label in SENTIMENTS)  # the per-label fields, in SENTIMENTS' order


class Sentiment:
    name = "sentiment"

    def fold(self, b: Batch, counted: Counted) -> None:
        for ev, _ in counted.sentiments:
            b.add(GRAINS, ev.ts_ms, LABEL_FIELDS[ev.sentiment], 1)  # a label is one of SENTIMENTS (validated)

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


# --- reads -----------------------------------------------------------------------------------------
async def sentiment_counts(
    view: queries.View, org: str, start: date, end: date, zone: ZoneInfo | None = None
) -> list[dict[str, Any]]:
    """One row per day of the zone (UTC without one), zeros included: all sentiment events, and the count
    of each label."""
    fields = [SENTIMENT, *(sentiment_field(s) for s in SENTIMENTS)]
    return [
        {"date": d, "sentiment_count": total, **dict(zip(SENTIMENTS, labels, strict=True))}
        for d, (total, *labels) in await queries.periods(view, org, start, end, False, zone, fields)
    ]


async def sentiment_summary(
    view: queries.View, org: str, start: date, end: date, zone: ZoneInfo | None = None
) -> dict[str, Any]:
    """The judgements from start to end (days of the zone, UTC without one): how many, each label's share of
    them in percent (`queries.percentages`: two decimals adding up to 100; every label, 0 when none, all 0
    when there is no judgement), and each label's count."""
    counts = [0] * len(SENTIMENTS)
    for _, sums in await queries.periods(view, org, start, end, False, zone, list(LABELS)):
        counts = [a + b for a, b in zip(counts, sums, strict=True)]
    return {
        "sentiment_distribution": dict(zip(SENTIMENTS, queries.percentages(counts), strict=True)),
        "total_sentiments": sum(counts),
        "sentiment_counts": dict(zip(SENTIMENTS, counts, strict=True)),
    }
