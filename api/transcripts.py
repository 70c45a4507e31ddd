"""What needs message content: `transcripts/` (each conversation with its first message's text) and
`/api/analytics/messages/details/` (one conversation's human and AI messages).

Message content is kept only when the operator turns transcripts on (`AIA_TRANSCRIPT_DAYS`, the days a
conversation's messages are kept after its latest one arrived: tables/aggregates/transcripts.py); without
it both answer 404 and say so. Both need a platform_admin key, as chat history does: they are what
students wrote.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import params
from api.auth import ORG, USER, Caller, PlatformOrg, caller, require_admin
from api.errors import ApiError
from api.history import INSERTED_FROM, INSERTED_TO
from api.platform_analytics import refuse_usergroups
from api.platform_messages import list_item
from api.state import AppState, Served, State
from tables import ids, queries
from tables.aggregates import chat_history, llm_cost
from tables.aggregates import transcripts as tx
from tables.buckets import DAY_MS, day_index

router = APIRouter(tags=["transcripts"])
analytics_router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

MAX_LISTED = 1_000  # conversations a transcripts answer reads (a transcript each)


def require_transcripts(state: AppState) -> None:
    if not state.settings.transcript_days:
        raise ApiError(
            404, "transcripts are not kept: message content is stored only with AIA_TRANSCRIPT_DAYS set (see "
            "docs/contract.md)"
        )  # fmt: skip


@router.get("/transcripts/")
async def transcript_list(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: INSERTED_FROM = None,
    end_date: INSERTED_TO = None,
    mentor: Annotated[str | None, Query(description="Only this mentor's conversations (its UUID).")] = None,
    topics: Annotated[str | None, Query(description="Comma-separated topics; all must match.")] = None,
) -> list[dict[str, Any]]:
    """The conversations chat history lists in the range (newest first) whose transcript holds a message,
    each with its first human message's text; at most 1,000 read (more: a 400 naming start_date)."""
    require_admin(key, "transcripts")
    require_transcripts(state)
    start, end = params.optional_days(start_date, end_date)
    wanted = params.names("topics", topics)
    flt = chat_history.HistoryFilter(start=start, end=end, mentor=params.text("mentor", mentor), topics=wanted)
    digests = await chat_history.listed(view, org, flt, MAX_LISTED)
    if len(digests) > MAX_LISTED:
        raise params.bad("start_date", f"more than {MAX_LISTED:,} conversations in the range: narrow it")
    states = [c for c in await queries.conversation_states(view, org, digests) if c.cid and not c.deleted]
    out = []
    for conv, messages in zip(states, await tx.transcripts(view, org, [c.cid or "" for c in states]), strict=True):
        if not messages:
            continue
        row = chat_history.served_conversation(org, conv.cid or "", conv.record(), conv)
        out.append({
            "first_message": tx.first_message(messages), "topics": row["topics"], "id": row["id"],
            "user_id": row["student"], "message_count": row["message_count"], "model": row["model"],
            "inserted_at": row["inserted_at"], "user_sentiment": row["sentiment"],
        })  # fmt: skip
    return out


@analytics_router.get("/messages/details/")
async def conversation_detail(
    request: Request,
    org: PlatformOrg,
    state: State,
    view: Served,
    session_id: Annotated[str, Query(description="The conversation: its UUID (or its session id as sent).")],
    start_date: Annotated[
        str | None, Query(description="Only messages on or after, YYYY-MM-DD (UTC).", **params.DATE)
    ] = None,
    end_date: Annotated[
        str | None, Query(description="Only messages on or before, YYYY-MM-DD (UTC).", **params.DATE)
    ] = None,
    mentor_unique_id: Annotated[
        str | None, Query(description="Only if the conversation is this mentor's (a 404 otherwise).", max_length=256)
    ] = None,
    usergroup_ids: Annotated[str | None, Query(include_in_schema=False)] = None,
) -> dict[str, Any]:
    """One conversation: its summary (as `/api/analytics/messages/` lists it, its cost over every hour
    kept) and its messages in time order as human/AI pairs (`{"human": {content, timestamp, event_id} or
    null, "ai": [...] or null}`); a 404 for an unknown conversation, another mentor's, or one with no
    message kept in the range."""
    require_admin(await caller(request, org, state), "message content")
    refuse_usergroups(usergroup_ids)
    require_transcripts(state)
    start, end = params.optional_days(start_date, end_date)
    conv = await chat_history.conversation_state(view, org, params.text("session_id", session_id) or "")
    if conv is None or conv.cid is None:
        raise ApiError(404, "No conversation matches the given query.", param="session_id")
    cid = conv.cid
    row = chat_history.served_conversation(org, cid, conv.record(), conv)
    if mentor_unique_id and await queries.resolve(view, org, ids.MENTOR, mentor_unique_id) != row["mentor_name"]:
        raise ApiError(404, "No conversation of this mentor matches the given query.", param="mentor_unique_id")
    (messages,) = await tx.transcripts(view, org, [cid])
    lo_ms = day_index(start) * DAY_MS if start else None
    hi_ms = (day_index(end) + 1) * DAY_MS if end else None
    messages = [m for m in messages if (lo_ms is None or m.ts_ms >= lo_ms) and (hi_ms is None or m.ts_ms < hi_ms)]
    if not messages:
        raise ApiError(404, "No message of this conversation is kept in the range.", param="session_id")
    every_hour = llm_cost.session_cost(conv, datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
    return {"summary": list_item(org, row, conv, every_hour), "messages": tx.pairs(messages)}
