"""Topics: per topic, how many conversations and how many messages fall in each half hour, hour and day, for
the org and for each mentor (what `most-discussed-topics/`, `topics/summary/` and
`/api/analytics/topics/details/` read).

Rule (docs/semantics.md): a conversation counts once for each of its topics (those of its newest record
and of every message: the topics chat history lists it under), with all its messages (both roles), at the
time chat history lists it by (its newest record's `inserted_at`, else its earliest message) and under the
mentor it lists it under (the record's, else the earliest message's); a deleted one counts nowhere. All of
it is a function of the conversation's state, so what a batch adds is the state after minus the state
before: a new topic, a later record or a deletion moves the whole conversation.

Keys: a hash per half hour, hour and day (`:tp:<label>`, a mentor's ending in `|m|<mentor>`), kept as long
as the buckets of its grain. A field is a kind (`c` conversations, `n` messages), the topic's length in
characters, `:` and the topic: the length says where a topic ends, so no topic is another's field whatever
it holds.
"""

from __future__ import annotations

from datetime import date
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, keys, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import DAY_MS, HALF_MS, Grain
from tables.conversations import ConversationState

CONVERSATIONS, MESSAGES = "c", "n"
SUMMARY_TOPICS = 10  # topics/summary/: the platform's top 10

# (half hour, mentor or None for the org's, field) -> what the batch adds there
Deltas = dict[tuple[int, str | None, str], int]


def key(gen: int, org: str, grain: Grain, index: int, mentor: str | None = None) -> str:
    base = keys.org_key(gen, org, f"tp:{grain.label(index)}")
    return base if mentor is None else f"{base}|m|{mentor}"


def topic_field(kind: str, topic: str) -> str:
    return f"{kind}{len(topic)}:{topic}"


def parse_field(fld: str) -> tuple[str, str] | None:
    """(kind, topic) of a field, None for one that is not a whole field of this family."""
    kind = fld[:1]
    length, sep, topic = fld[1:].partition(":")
    if kind not in (CONVERSATIONS, MESSAGES) or not sep or not (length.isascii() and length.isdigit()):
        return None
    return (kind, topic) if len(topic) == int(length) else None


def contribution(conv: ConversationState) -> tuple[int, str, frozenset[str], int] | None:
    """(half hour, mentor or "", topics, messages) a conversation counts with; None when it counts nowhere
    (deleted, no topic, or no time yet)."""
    if conv.deleted:
        return None
    topics = conv.msg_topics.union(conv.topics)
    at = conv.inserted_ms if conv.record_version is not None else conv.started_ms
    if not topics or at is None:
        return None
    mentor = conv.mentor if conv.record_version is not None else conv.first_mentor
    return at // HALF_MS, mentor or "", topics, conv.human + conv.ai


class Topics:
    name = "topics"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        return {}  # a conversation's topics and messages are its state's (`changed`)

    def changed(self, b: Batch, deltas: Deltas, cid: str, before: ConversationState, after: ConversationState) -> None:
        old, new = contribution(before), contribution(after)
        if old == new:
            return
        for counts, sign in ((old, -1), (new, 1)):
            if counts is None:
                continue
            half, mentor, topics, messages = counts
            for topic in topics:
                for whose in (None, mentor) if mentor else (None,):
                    slot = (half, whose, topic_field(CONVERSATIONS, topic))
                    deltas[slot] = deltas.get(slot, 0) + sign
                    if messages:
                        slot = (half, whose, topic_field(MESSAGES, topic))
                        deltas[slot] = deltas.get(slot, 0) + sign * messages

    def flush(self, b: Batch, deltas: Deltas) -> None:
        """Each count into the half hour, hour and day of the org's hashes and the mentor's."""
        w, gen, org, retention = b.w, b.gen, b.org, b.retention
        for (half, mentor, fld), n in deltas.items():
            if not n:
                continue
            for grain, index in ((Grain.HALF, half), (Grain.HOUR, half // 2), (Grain.DAY, half * HALF_MS // DAY_MS)):
                hkey = key(gen, org, grain, index, mentor)
                w.hincr(hkey, fld, n)
                w.expire_at(hkey, retention.expire_at_s(grain, index))

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


# --- reads -----------------------------------------------------------------------------------------
async def topic_counts(
    view: queries.View, org: str, start: date, end: date, mentor_id: str | None = None, zone: ZoneInfo | None = None
) -> dict[str, list[int]]:
    """topic -> [conversations, messages] over the days from start to end (the zone's), of the org or of one
    mentor; topics without a conversation left out."""
    redis, gen = view
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
            counts = out.setdefault(topic, [0, 0])
            counts[0 if kind == CONVERSATIONS else 1] += int(value)
    return {topic: counts for topic, counts in out.items() if counts[0]}


def ranked(counts: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """(topic, conversations, messages), most conversations first, ties by topic."""
    return sorted(((t, c, m) for t, (c, m) in counts.items()), key=lambda row: (-row[1], row[0]))
