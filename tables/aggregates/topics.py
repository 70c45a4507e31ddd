"""Topics: per topic, how many conversations and how many messages fall in each hour and day, for
the org and for each mentor (what `most-discussed-topics/`, `topics/summary/` and
`/api/analytics/topics/details/` read).

Rule (docs/semantics.md): a conversation counts once for each of its topics (those of its newest record
and of every message: the topics chat history lists it under), with all its messages (both roles), at the
time chat history lists it by (its newest record's `inserted_at`, else its earliest message) and under the
mentor it lists it under (the record's, else the earliest message's); a deleted one counts nowhere. All of
it is a function of the conversation's state, so what a batch adds is the state after minus the state
before: a new topic, a later record or a deletion moves the whole conversation.

Beside the conversations and messages, the same conversations' sentiment and rating (`topic-statistics/`):
how many hold a sentiment and the sum of its score (positive 1, neutral 0, negative -1; their latest
judgement), how many hold a rating and its sum (as high and low 32 bits, as the ratings family sums them).

Keys: a hash per hour and day (`:tp:<label>`, a mentor's ending in `|m|<mentor>`), kept as long as the
buckets of its grain: the days of a zone half an hour off UTC are refused (`tz`), as for costs. A field is
a kind (`KINDS`), the topic's length in characters, `:` and the topic: the length says where a topic ends,
so no topic is another's field whatever it holds. And when each topic was first named (`tpfirst`, a
sorted set topic -> the earliest message or record naming it, `ZADD ... LT`, never expiring).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, keys, queries
from tables.aggregates import ratings
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import DAY_MS, HALF_MS, Grain, require_whole_hours
from tables.conversations import ConversationState

# conversations, messages, conversations with a sentiment, its score's sum, conversations rated, the rating's
# sum's high and low 32 bits
KINDS = ("c", "n", "s", "p", "r", "h", "l")
CONVERSATIONS, MESSAGES = "c", "n"
SCORES = {"positive": 1, "neutral": 0, "negative": -1}
SUMMARY_TOPICS = 10  # topics/summary/: the platform's top 10

# (half hour, mentor or None for the org's, field) -> what the batch adds there
Deltas = dict[tuple[int, str | None, str], int]
# mentor or None for the org's -> topic -> the earliest time (ms) an event of the batch named it
Firsts = dict[str | None, dict[str, int]]


@dataclass(slots=True)
class Sums:
    deltas: Deltas = field(default_factory=dict)
    firsts: Firsts = field(default_factory=dict)


def key(gen: int, org: str, grain: Grain, index: int, mentor: str | None = None) -> str:
    base = keys.org_key(gen, org, f"tp:{grain.label(index)}")
    return base if mentor is None else f"{base}|m|{mentor}"


def first_key(gen: int, org: str, mentor: str | None = None) -> str:
    """Sorted set topic -> the earliest time (ms) a message or record named it (`:tpfirst`; a mentor's ends in
    `|m|<mentor>`: named with that mentor). Never expires."""
    base = keys.org_key(gen, org, "tpfirst")
    return base if mentor is None else f"{base}|m|{mentor}"


def topic_field(kind: str, topic: str) -> str:
    return f"{kind}{len(topic)}:{topic}"


def parse_field(fld: str) -> tuple[str, str] | None:
    """(kind, topic) of a field, None for one that is not a whole field of this family."""
    kind = fld[:1]
    length, sep, topic = fld[1:].partition(":")
    if kind not in KINDS or not sep or not (length.isascii() and length.isdigit()):
        return None
    return (kind, topic) if len(topic) == int(length) else None


Contribution = tuple[int, str, frozenset[str], tuple[int, ...]]


def contribution(conv: ConversationState) -> Contribution | None:
    """(half hour, mentor or "", topics, what it counts per topic in `KINDS` order) a conversation counts
    with; None when it counts nowhere (deleted, no topic, or no time yet)."""
    if conv.deleted:
        return None
    topics = conv.msg_topics.union(conv.topics)
    at = conv.inserted_ms if conv.record_version is not None else conv.started_ms
    if not topics or at is None:
        return None
    mentor = conv.mentor if conv.record_version is not None else conv.first_mentor
    score = SCORES.get(conv.sentiment or "")
    high, low = ratings.split(conv.rating) if conv.rating else (0, 0)
    counts = (1, conv.human + conv.ai, score is not None, score or 0, bool(conv.rating), high, low)
    return at // HALF_MS, mentor or "", topics, tuple(int(n) for n in counts)


class Topics:
    name = "topics"

    def fold(self, b: Batch, counted: Counted) -> Sums:
        """When each topic was first named: the earliest message or record (at its `inserted_at`) naming it,
        for the org and with its mentor. (A conversation's counts are its state's: `changed`.)"""
        sums = Sums()
        named = [(ev.topics, mentor, ev.ts_ms) for ev, _, mentor in counted.messages if ev.topics]
        named += [(ev.topics, b.mentor(ev.mentor), ev.inserted_at_ms) for ev, _ in counted.records if ev.topics]
        for topics, mentor, ms in named:
            for whose in (None, mentor) if mentor else (None,):
                firsts = sums.firsts.setdefault(whose, {})
                for topic in topics:
                    held = firsts.get(topic)
                    if held is None or ms < held:
                        firsts[topic] = ms
        return sums

    def changed(self, b: Batch, sums: Sums, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The conversation's old counts leave and its new ones count; where it counts is unchanged (the
        same half hour, mentor and topics), only the difference."""
        old, new = contribution(before), contribution(after)
        if old == new:
            return
        if old is not None and new is not None and old[:3] == new[:3]:
            moves = [(new[:3], tuple(n - o for n, o in zip(new[3], old[3], strict=True)))]
        else:
            moves = [(c[:3], tuple(sign * n for n in c[3])) for c, sign in ((old, -1), (new, 1)) if c is not None]
        for (half, mentor, topics), counts in moves:
            for topic in topics:
                for whose in (None, mentor) if mentor else (None,):
                    for kind, n in zip(KINDS, counts, strict=True):
                        if n:
                            slot = (half, whose, topic_field(kind, topic))
                            sums.deltas[slot] = sums.deltas.get(slot, 0) + n

    def flush(self, b: Batch, sums: Sums) -> None:
        """Each count into the hour and day of the org's hashes and the mentor's; each topic's
        first time into the org's and the mentor's sorted set (`ZADD LT`: the earliest ever)."""
        w, gen, org, retention = b.w, b.gen, b.org, b.retention
        for (half, mentor, fld), n in sums.deltas.items():
            if not n:
                continue
            for grain, index in ((Grain.HOUR, half // 2), (Grain.DAY, half * HALF_MS // DAY_MS)):
                hkey = key(gen, org, grain, index, mentor)
                w.hincr(hkey, fld, n)
                w.expire_at(hkey, retention.expire_at_s(grain, index))
        for mentor, firsts in sums.firsts.items():
            w.zadd_lt(first_key(gen, org, mentor), firsts)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


# --- reads -----------------------------------------------------------------------------------------
async def topic_counts(
    view: queries.View, org: str, start: date, end: date, mentor_id: str | None = None, zone: ZoneInfo | None = None
) -> dict[str, list[int]]:
    """topic -> its sums in `KINDS` order (conversations, messages, ...) over the days from start to end (the
    zone's), of the org or of one mentor; topics without a conversation left out."""
    redis, gen = view
    require_whole_hours(start, end, zone, "topics are")
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    pieces = [piece for _, made_of in queries.period_pieces(start, end, False, zone) for piece in made_of]
    out: dict[str, list[int]] = {}
    for raw in await queries.pipelined(redis, [("hgetall", key(gen, org, g, i, mentor_id)) for g, i in pieces]):
        for fld, value in raw.items():
            parsed = parse_field(fld.decode())
            if parsed is None:
                continue
            kind, topic = parsed
            counts = out.get(topic)
            if counts is None:
                counts = out[topic] = [0] * len(KINDS)
            counts[KINDS.index(kind)] += int(value)
    return {topic: counts for topic, counts in out.items() if counts[0]}


def ranked(counts: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """(topic, conversations, messages), most conversations first, ties by topic."""
    return sorted(((t, c[0], c[1]) for t, c in counts.items()), key=lambda row: (-row[1], row[0]))


def statistics(counts: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Per topic, most conversations first (ties by topic): conversations, messages, and the mean sentiment
    score and rating as decimal strings of two places ("" where none of its conversations has one)."""
    rows = []
    for topic, conversations, messages in ranked(counts):
        _, _, judged, score, rated, high, low = counts[topic]
        rows.append({
            "name": topic, "conversations": conversations, "messages": messages,
            "avg_sentiment": queries.decimal_text(score, judged, 2) if judged else "",
            "avg_user_rating": queries.decimal_text((high << 32) + low, rated, 2) if rated else "",
        })  # fmt: skip
    return rows


async def topics_first_named(
    view: queries.View, org: str, first_ms: int | None, end_ms: int | None, mentor_id: str | None = None
) -> int:
    """How many topics were first named in [first_ms, end_ms) (all of them with None, None), of the org or
    with one mentor."""
    redis, gen = view
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
    zkey = first_key(gen, org, mentor_id)
    if first_ms is None or end_ms is None:
        return int(await redis.zcard(zkey))
    return int(await redis.zcount(zkey, first_ms, f"({end_ms}"))
