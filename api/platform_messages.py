"""The platform's conversation list, `/api/analytics/messages/`: the org's conversations (a conversation is a
session) listed in the date filter's days, newest first, filtered and paged, each with its messages and LLM
cost, and a summary of every one matched.

Read from chat history's index and filters (tables/aggregates/chat_history.py: which conversations are
listed, on which day, under which mentor and sentiment, and how each is served) and from each
conversation's cost by hour, which the LLM cost family keeps in its state (`llm_cost.session_cost`), so the
list agrees with `chat-history/` and the finance operations. The org, range and mentor are the family's
`Ask` (api/platform_analytics.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import params
from api.cache import answered_by
from api.platform_analytics import Asked
from api.platform_financial import utc_span
from tables import queries
from tables.aggregates import chat_history, first_seen, llm_cost, topics
from tables.conversations import ConversationState

router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

SENTIMENTS = ("positive", "negative", "neutral")
COST_PLACES = 6  # a conversation costs fractions of a cent: micro-dollars show it
PLATFORM = 0  # the platform's numeric platform id is in no event: a stable stand-in
MAX_LISTED = 5_000  # conversations read per request (one HGET of its state each)
LIMIT, MAX_LIMIT = 20, 100
SHORT = 255  # the SDK's bound on `username` and `name`


@router.get(
    "/messages/",
    openapi_extra=answered_by(chat_history.ChatHistory, llm_cost.LlmCost, first_seen.FirstSeen),
)
async def conversation_list(
    a: Asked,
    limit: Annotated[str | None, Query(description="Conversations per page, 1 to 100 (default 20).")] = None,
    page: Annotated[str | None, Query(description="The page, from 1 (a page past the last is a 404).")] = None,
    min_messages: Annotated[
        str | None, Query(description="Only conversations with at least this many messages (both roles).")
    ] = None,
    max_messages: Annotated[
        str | None, Query(description="Only conversations with at most this many messages (both roles).")
    ] = None,
    sentiment: Annotated[
        str | None,
        Query(
            description="Only conversations whose latest judgement is this.",
            json_schema_extra={"enum": list(SENTIMENTS)},
        ),
    ] = None,
    topic: Annotated[
        str | None, Query(description="Only conversations with a topic whose name holds this, in any case.")
    ] = None,
    search: Annotated[
        str | None,
        Query(description="Only conversations whose title or student's username holds this, in any case."),
    ] = None,
) -> dict[str, Any]:
    """The conversations chat history lists in the date filter's days (at their newest record's
    `inserted_at`, else their first message's time; the org's days), newest first (ties by their digest, as
    chat history's filtered pages), of the mentor, sentiment, topic, message count and search asked for,
    paged; `summary` sums every one matched (all pages). `granularity` has no effect.

    Redis work per request: the index's range (or the mentor's or sentiment's set, whichever is smaller)
    and one HGET per conversation it lists (its state, about 700 bytes), at most `MAX_LISTED` (5,000; a
    range that lists more is a 400 naming `date_filter`: narrow it, or filter by mentor or sentiment).
    Measured on a local Redis: about 1.5 us of Redis per conversation (under 8 ms at the bound) and about
    25 us of the API's own (reading the reply, decoding the state). Topic, message counts and search are
    checked on those states; titles are decompressed only for a search and for the page served. Answers
    are cached per data version (api/cache.py)."""
    per_page = params.positive_int("limit", limit, LIMIT, MAX_LIMIT)
    fewest = params.whole_number("min_messages", min_messages)
    most = params.whole_number("max_messages", max_messages)
    if fewest is not None and most is not None and most < fewest:
        raise params.bad("max_messages", f"max_messages {most} is below min_messages {fewest}")
    label = params.choice("sentiment", sentiment, SENTIMENTS, None)
    needle_topic = (params.text("topic", topic) or "").casefold()
    needle = (params.text("search", search) or "").casefold()
    start, end, zone = await a.span(hourly=False)
    span = utc_span(start, end, zone)
    flt = chat_history.HistoryFilter(
        start=start, end=end, mentor=params.text("mentor_unique_id", a.mentor_raw), sentiment=label, zone=zone
    )
    digests = await chat_history.listed(a.view, a.org, flt, MAX_LISTED)
    if len(digests) > MAX_LISTED:
        raise params.bad(
            "date_filter",
            f"more than {MAX_LISTED} conversations are listed in these days: narrow the range, or filter by "
            "mentor_unique_id or sentiment",
        )
    kept: list[tuple[ConversationState, dict[str, Any] | None, int]] = []
    messages = human = ai = nanos = 0
    students: set[str] = set()
    for conv in await queries.conversation_states(a.view, a.org, digests):
        if conv.deleted or conv.cid is None:
            continue
        count = conv.human + conv.ai
        if (fewest is not None and count < fewest) or (most is not None and count > most):
            continue
        if needle_topic and not any(needle_topic in t.casefold() for t in (*conv.topics, *conv.msg_topics)):
            continue
        row = None
        if needle:
            row = chat_history.served_conversation(a.org, conv.cid, conv.record(), conv)
            if not any(needle in str(row.get(f) or "").casefold() for f in ("title", "student")):
                continue
        cost = llm_cost.session_cost(conv, *span)
        kept.append((conv, row, cost))
        messages, human, ai, nanos = messages + count, human + conv.human, ai + conv.ai, nanos + cost
        students.add((conv.student if conv.record_version is not None else conv.first_student) or "")
    pages = max(1, -(-len(kept) // per_page))
    n = params.page_number(page, pages)
    results = []
    for conv, row, cost in kept[(n - 1) * per_page : n * per_page]:
        cid = conv.cid or ""
        row = row or chat_history.served_conversation(a.org, cid, conv.record(), conv)
        results.append(list_item(a.org, row, conv, cost))
    return {
        "summary": {
            "total_conversations": len(kept), "total_messages": messages, "user_queries": human,
            "assistant_responses": ai, "unique_users": len(students - {""}),
            "total_cost": llm_cost.usd_text(nanos, COST_PLACES), "cost_nanos": nanos,
        },
        "results": results,
        "pagination": {
            "count": len(kept), "page": n, "limit": per_page, "total_pages": pages,
            "next": n + 1 if n < pages else None, "previous": n - 1 if n > 1 else None,
        },
    }  # fmt: skip


def list_item(org: str, row: dict[str, Any], conv: ConversationState, nanos: int) -> dict[str, Any]:
    """A conversation in the SDK's `ConversationListItem` shape, from its chat-history form (`row`): the
    org as platform, the mentor as the events name it and by its UUID, the title as `name` and the student
    as `username` (both cut to 255 characters as chat history cuts titles), per-role counts, the latest
    judgement and its score, the listing time, and its cost over the range (`nanos`)."""
    return {
        "platform_name": org, "platform_key": org, "platform": PLATFORM,
        "mentor": row["mentor_name"], "mentor_unique_id": row["mentor"],
        "model": row["model"],
        "cost": llm_cost.usd_text(nanos, COST_PLACES), "cost_nanos": nanos,
        "username": row["student"][:SHORT], "name": (row.get("title") or "")[:SHORT],
        "topics": row["topics"],
        "message_count": row["message_count"], "user_queries": row["message_count_human"],
        "assistant_responses": row["message_count_ai"],
        "sentiment": conv.sentiment or None, "average_sentiment": topics.SCORES.get(conv.sentiment or ""),
        "created_at": row["inserted_at"],
        "session": row["id"], "session_id": row["session_id"],
    }  # fmt: skip
