"""Sentiment: how many sentiment judgements fall in each minute, hour, half hour and day, in all and per
label. Each judgement counts once, in the buckets of its own time (its conversation's latest judgement is
chat history's: `chat_history`)."""

from __future__ import annotations

from streams.schemas import SENTIMENTS
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
