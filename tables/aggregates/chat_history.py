"""Chat history: the conversations as the platform lists them, newest first, filtered by student, mentor,
topic or sentiment.

Rules (docs/semantics.md): a conversation's record is its **latest chat-history record** by (event time,
offset, event_id), its sentiment the latest judgement by the same order, its topics those of the record and
of every message (the conversation's own rules, `ConversationState.add_record`, `add_judgement`,
`add_message`, which the planner applies). Where it is listed is a function of its final state
(`ConversationState.index_entries`), so the index changes by the difference between the state before the
batch and after it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from streams.schemas import format_timestamp
from tables import ids, keys, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import local_midnight
from tables.conversations import ConversationState, addressed_digest

# The mentor, topic and sentiment indexes (few values, many conversations each) are in shards.
FILTER_SHARDS = 16


def index_key(gen: int, org: str) -> str:
    """Sorted set of conversation digests (decimal) scored by inserted_at (ms): the chat-history index."""
    return keys.org_key(gen, org, "convs")


def filter_key(gen: int, org: str, kind: str, value: str, digest: int | None = None) -> str:
    """Set of the digests of the conversations with a `student`, `mentor`, `topic` or `sentiment`. A
    student's is one set; the others are in `FILTER_SHARDS` shards (`digest` says which; the shard of
    every digest is `filter_keys`)."""
    base = keys.org_key(gen, org, f"cx:{kind}:{value}")
    return base if kind == "student" else f"{base}:{(digest or 0) % FILTER_SHARDS}"


def filter_keys(gen: int, org: str, kind: str, value: str) -> list[str]:
    """Every key of one filter's index (one for a student, `FILTER_SHARDS` for the others)."""
    if kind == "student":
        return [filter_key(gen, org, kind, value)]
    return [filter_key(gen, org, kind, value, shard) for shard in range(FILTER_SHARDS)]


class ChatHistory:
    name = "chat_history"

    def fold(self, b: Batch, counted: Counted) -> None:
        """Nothing of its own: the record, the sentiment and the topics a conversation is listed by are its
        state's (`ConversationState.add_record`, `add_judgement`, `add_message`)."""
        return

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The index entries the conversation leaves and the ones it gains."""
        if before.listing() == after.listing():
            return
        w, gen, org = b.w, b.gen, b.org
        digest = b.digest(cid)
        old, new = before.index_entries(), after.index_entries()
        member = str(digest)
        for kind, value in old.keys() - new.keys():
            if kind:
                w.srem(filter_key(gen, org, kind, value, digest), member)
            else:
                w.zrem(index_key(gen, org), member)
        for (kind, value), score in new.items():
            if (kind, value) in old and (kind or old[(kind, value)] == score):
                continue
            if kind:
                w.sadd(filter_key(gen, org, kind, value, digest), member)
            else:
                w.zadd(index_key(gen, org), member, score)

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


# --- reads -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryFilter:
    start: date | None = None
    end: date | None = None
    student: str | None = None
    mentor: str | None = None
    sentiment: str | None = None
    topics: tuple[str, ...] = ()
    zone: ZoneInfo | None = None  # start and end are this zone's days (UTC's without one)


async def chat_history(
    view: queries.View, org: str, flt: HistoryFilter, page: int, page_size: int
) -> tuple[int, list[dict[str, Any]]]:
    """(count, the page's conversations), newest first by inserted_at."""
    redis, gen = view
    flt = await _resolved(view, org, flt)
    lo, hi = index_range(flt)
    if not _filters(flt):
        index = index_key(gen, org)
        count = int(await redis.zcount(index, lo, hi))
        start = (page - 1) * page_size
        members: Any = await redis.zrevrangebyscore(index, hi, lo, start=start, num=page_size)
        digests = [int(m) for m in members]
    else:
        matched = await _filtered(view, org, flt, lo, hi)
        count = len(matched)
        digests = [d for _, d in matched[(page - 1) * page_size : page * page_size]]
    return count, await _conversations(view, org, digests)


async def listed(view: queries.View, org: str, flt: HistoryFilter, limit: int) -> list[int]:
    """The digests of the conversations the filter lists, newest first by inserted_at (ties by digest), at
    most `limit` + 1 (more than `limit` says there are more). Its Redis work: without a student, mentor,
    sentiment or topic, one ZREVRANGEBYSCORE of at most `limit` + 1 members; with them, that of
    `chat_history`'s filtered pages (the range of the index or the smallest filter, whichever is smaller,
    each member checked against the others)."""
    redis, gen = view
    flt = await _resolved(view, org, flt)
    lo, hi = index_range(flt)
    if _filters(flt):
        return [d for _, d in (await _filtered(view, org, flt, lo, hi))[: limit + 1]]
    pairs: Any = await redis.zrevrangebyscore(index_key(gen, org), hi, lo, start=0, num=limit + 1, withscores=True)
    return [d for _, d in sorted(((-float(score), int(m)) for m, score in pairs), key=lambda sd: (sd[0], str(sd[1])))]


async def _resolved(view: queries.View, org: str, flt: HistoryFilter) -> HistoryFilter:
    if flt.mentor:
        return replace(flt, mentor=await queries.resolve(view, org, ids.MENTOR, flt.mentor))
    return flt


def index_range(flt: HistoryFilter) -> tuple[str | int, str | int]:
    """The index's scores (inserted_at, ms) of the filter's days: UTC days, or the zone's."""
    if flt.start is None:
        lo: str | int = "-inf"
    else:
        lo = _ms(flt.start) if flt.zone is None else local_midnight(flt.start, flt.zone) * 1000
    if flt.end is None:
        hi: str | int = "+inf"
    else:
        after = flt.end + timedelta(days=1)
        hi = (_ms(after) if flt.zone is None else local_midnight(after, flt.zone) * 1000) - 1
    return lo, hi


def _filters(flt: HistoryFilter) -> list[tuple[str, str]]:
    filters: list[tuple[str, str]] = []
    if flt.student:
        filters.append(("student", flt.student))
    if flt.mentor:
        filters.append(("mentor", flt.mentor))
    if flt.sentiment:
        filters.append(("sentiment", flt.sentiment))
    filters.extend(("topic", t) for t in flt.topics)
    return filters


async def _filtered(
    view: queries.View, org: str, flt: HistoryFilter, lo: str | int, hi: str | int
) -> list[tuple[float, int]]:
    """(inserted_at, digest) of every conversation in [lo, hi] in every filter's set, newest first (ties by
    digest as text). Walks the smaller of the range's index and the smallest filter's sets, and checks the
    other filters (and the range) against it."""
    redis, gen = view
    index = index_key(gen, org)
    filters = _filters(flt)
    shards = [filter_keys(gen, org, kind, value) for kind, value in filters]
    sizes = await queries.pipelined(
        redis, [("zcount", index, lo, hi), *(("scard", k) for keys_ in shards for k in keys_)]
    )
    in_range, totals, i = int(sizes[0]), [], 1
    for keys_ in shards:
        totals.append(sum(int(n) for n in sizes[i : i + len(keys_)]))
        i += len(keys_)
    smallest = totals.index(min(totals))
    if in_range <= totals[smallest]:
        pairs: Any = await redis.zrangebyscore(index, lo, hi, withscores=True)
        candidates: list[Any] = [m for m, _ in pairs]
        scores: list[Any] = [s for _, s in pairs]
        smallest = -1
    else:
        found = await queries.pipelined(redis, [("smembers", k) for k in shards[smallest]])
        candidates = [m for ms in found for m in ms]
        scores = await redis.zmscore(index, candidates) if candidates else []
    if not candidates:
        return []
    keep = [s is not None for s in scores]
    for n, (kind, value) in enumerate(filters):
        if n == smallest:
            continue
        member_of = await queries.pipelined(
            redis, [("sismember", filter_key(gen, org, kind, value, int(m)), m) for m in candidates]
        )
        keep = [k and bool(hit) for k, hit in zip(keep, member_of, strict=True)]
    lo_f = float("-inf") if lo == "-inf" else float(lo)
    hi_f = float("inf") if hi == "+inf" else float(hi)
    return sorted(
        ((score, int(m)) for m, score, ok in zip(candidates, scores, keep, strict=True)
         if ok and score is not None and lo_f <= score <= hi_f),
        key=lambda sd: (-sd[0], str(sd[1])),
    )  # fmt: skip


async def conversation(view: queries.View, org: str, conv_id: str) -> tuple[str, dict[str, Any], dict[str, Any]] | None:
    """(the kept id, the stored record, the served conversation) of a conversation by the id a client
    sends (a served UUID or a kept id), or None when there is none (or it was deleted)."""
    conv = await conversation_state(view, org, conv_id)
    if conv is None or conv.cid is None:
        return None
    stored = conv.record()
    return conv.cid, stored, served_conversation(org, conv.cid, stored, conv)


async def conversation_state(view: queries.View, org: str, conv_id: str) -> ConversationState | None:
    """The state of a conversation by the id a client sends, None when there is none (or it was deleted)."""
    (conv,) = await queries.conversation_states(view, org, [addressed_digest(org, conv_id)])
    if conv.deleted or (conv.record_version is None and conv.started_ms is None) or conv.cid is None:
        return None
    return conv


async def _conversations(view: queries.View, org: str, digests: list[int]) -> list[dict[str, Any]]:
    out = []
    for conv in await queries.conversation_states(view, org, digests):
        cid = conv.cid or ""
        out.append(served_conversation(org, cid, conv.record(), conv))
    return out


# Optional fields of the platform's record, served when the record holds a value of the right type.


_BOOLS = ("has_document", "memory_tracked", "enable_artifacts", "is_shared", "is_authenticated")


_SHORT_TEXTS = ("llm_name", "llm_provider", "title")  # at most 255 characters on the platform


_TEXTS = ("email", "model", "platform", "lti_email", "lti_username")  # required: "" when unknown


def served_conversation(org: str, cid: str, record: dict[str, Any], conv: ConversationState) -> dict[str, Any]:
    """A conversation in the platform's `Conversations` shape, readable by its SDK whatever the events held.

    The newest chat-history record supplies the platform's fields; the messages supply the student and
    mentor where no record names them, the per-role counts and further topics; sentiment is the latest
    judgement ("" when none). Ids are UUIDs (tables/ids.py; the kept ids are in `session_id` and
    `mentor_name`). `messages` is an empty list ("[]"): contents are kept only with transcripts turned on
    (AIA_TRANSCRIPT_DAYS), and served then by transcripts/ and messages/details/, never in this record."""
    has_record = conv.record_version is not None
    mentor = (conv.mentor if has_record else conv.first_mentor) or ""
    student = (conv.student if has_record else conv.first_student) or ""
    inserted_ms = conv.inserted_ms if has_record and conv.inserted_ms else conv.started_ms
    topics = list(dict.fromkeys([*conv.topics, *sorted(conv.msg_topics)]))
    out: dict[str, Any] = {
        "id": ids.served(org, ids.CONVERSATION, cid),
        "session_id": cid,
        "messages": "[]",
        "topics": [{"name": t[:255]} for t in topics],
        "sentiment": conv.sentiment or "",
        "mentor": ids.served(org, ids.MENTOR, mentor),
        "mentor_name": mentor,
        "student": student,
        "rating": r if isinstance(r := record.get("rating"), int) and not isinstance(r, bool) else 0,
        "inserted_at": format_timestamp(inserted_ms or 0),
        "is_conversation": conv.human > 0 and conv.ai > 0,
        "message_count_human": conv.human,
        "message_count_ai": conv.ai,
        "message_count": conv.human + conv.ai,
    }
    for name in _TEXTS:
        value = record.get(name)
        out[name] = value if isinstance(value, str) else ""
    for name in _BOOLS:
        if isinstance(record.get(name), bool):
            out[name] = record[name]
    for name in _SHORT_TEXTS:
        if isinstance(record.get(name), str):
            out[name] = record[name][:255]
    if "metadata" in record:
        out["metadata"] = record["metadata"]
    tools = record.get("tools")
    if isinstance(tools, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in tools):
        out["tools"] = tools
    return out


def _ms(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)
