"""Chat history: conversations listed newest first with the platform's paging envelope, and new records
written through Kafka (the worker applies them like any other event)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request

from api import params
from api.auth import ORG, USER, Caller, require_admin
from api.errors import ApiError
from api.state import State
from streams.exceptions import InvalidEvent
from streams.producer import complete, key_for
from streams.schemas import SENTIMENTS, Conversation, parse
from streams.topics import CHAT_HISTORY
from tables import queries

router = APIRouter(tags=["chat history"])


@router.get("/chat-history/")
async def chat_history(
    request: Request,
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    start_date: Annotated[str | None, Query(description="Conversations inserted on or after, YYYY-MM-DD.")] = None,
    end_date: Annotated[str | None, Query(description="Conversations inserted on or before, YYYY-MM-DD.")] = None,
    filter_user_id: Annotated[str | None, Query(description="Only this student's conversations.")] = None,
    mentor: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    sentiment: Annotated[str | None, Query(description="positive, neutral or negative (latest judgement).")] = None,
    topics: Annotated[str | None, Query(description="Comma-separated topics; all must match.")] = None,
    page: Annotated[str | None, Query(description="Page number, from 1.")] = None,
    page_size: Annotated[str | None, Query(description="Rows per page, 1 to 100 (default 20).")] = None,
) -> dict[str, Any]:
    """Conversations, newest first, with the platform's pagination envelope."""
    require_admin(key)
    start = params.parse_date("start_date", start_date, required=False)
    end = params.parse_date("end_date", end_date, required=False)
    if start and end and end < start:
        raise params.bad("end_date", f"end_date {end} is before start_date {start}")
    topic_list = tuple(t.strip() for t in (params.text("topics", topics) or "").split(",") if t.strip())
    flt = queries.HistoryFilter(
        start=start,
        end=end,
        student=params.text("filter_user_id", filter_user_id),
        mentor=params.text("mentor", mentor),
        sentiment=params.choice("sentiment", sentiment, SENTIMENTS, None),
        topics=topic_list,
    )
    n = params.positive_int("page", page, 1, maximum=1_000_000)
    size = params.positive_int("page_size", page_size, 20, maximum=params.MAX_PAGE_SIZE)
    count, rows = await queries.chat_history(state.redis, org, flt, n, size)
    pages = max(1, -(-count // size))
    if n > pages:
        raise params.bad("page", f"page {n} is past the last page ({pages})")
    return {
        "count": count,
        "next": str(request.url.include_query_params(page=n + 1)) if n < pages else None,
        "previous": str(request.url.include_query_params(page=n - 1)) if n > 1 else None,
        "results": rows,
    }


@router.post("/chat-history/", status_code=201)
async def post_chat_history(org: ORG, user_id: USER, key: Caller, state: State, request: Request) -> dict[str, Any]:
    """Store a conversation record: validated, written through Kafka, visible to GET within a second."""
    require_admin(key)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object (a conversation record)", param="body")
    for reserved in ("org", "event_id", "timestamp"):
        body.pop(reserved, None)
    event = complete({**body, "org": org})
    event.setdefault("id", event["event_id"])
    raw = orjson.dumps(event)
    key_bytes = key_for(CHAT_HISTORY, event)
    try:
        parsed = parse(CHAT_HISTORY, key_bytes, raw, int(datetime.now(UTC).timestamp() * 1000), state.limits)
    except InvalidEvent as exc:
        raise ApiError(400, f"body: {exc.reason}", param="body") from None
    assert isinstance(parsed, Conversation) and key_bytes is not None  # parse checked the id
    await state.kafka.send(CHAT_HISTORY, raw, key=key_bytes)
    return parsed.record
