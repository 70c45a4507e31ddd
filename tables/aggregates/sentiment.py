"""Sentiment: how many sentiment judgements fall in each minute, hour, half hour and day, in all and per
label. Each judgement counts once, in the buckets of its own time (its conversation's latest judgement is
chat history's: `chat_history`)."""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from streams.schemas import SENTIMENTS
from tables import queries
from tables.aggregates.base import Batch, Counted
from tables.buckets import Grain
from tables.conversations import ConversationState

SENTIMENT = "sentiment"  # bucket field: judgements in all; `sentiment|<label>` per label
GRAINS = (Grain.HOUR, Grain.HALF, Grain.DAY, Grain.MINUTE)  # minutes: the alert rules read them


def sentiment_field(label: str) -> str:
    return f"{SENTIMENT}|{label}"


LABEL_FIELDS = {label: (SENTIMENT, sentiment_field(label)) for label in SENTIMENTS}


class Sentiment:
    name = "sentiment"

    def fold(self, b: Batch, counted: Counted) -> None:
        for ev, _ in counted.sentiments:
            b.add(GRAINS, ev.ts_ms, LABEL_FIELDS[ev.sentiment], 1)  # a label is one of SENTIMENTS (validated)

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, sums: None) -> None:
        return


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
