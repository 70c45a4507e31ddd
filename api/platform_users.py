"""`/api/analytics/users/details/`: each student active in the date filter's days, with their messages,
conversations, last activity and email, most messages first, paged.

The platform's SDK types the answer as one `UserDetail`, not a list: the answer's own fields are the page's
first student's (so the SDK's model parses it, and reads the most active student), and the whole page is in
`results`, with the paging beside it (`page`, `limit`, `total_pages`, `total_records`).

Read from the top-students family (human messages per student per day or hour: who was active and how
much) and, for the page's students only, from their conversations (the chat-history student index and
each conversation's state: sessions started in the range, the latest human message, the newest record's
email). Emails are what chat-history records say of a student: a platform_admin key, as chat history, and
the answer is not kept by the answer cache (which does not key on the caller's role).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import params
from api.auth import caller, require_admin
from api.errors import ApiError
from api.platform_analytics import Ask, Asked
from api.platform_financial import utc_span
from streams.schemas import format_timestamp
from tables import queries
from tables.aggregates import chat_history
from tables.aggregates import top_students as top
from tables.conversations import ConversationState

router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

LIMIT, MAX_LIMIT = 20, 100
MAX_SEARCHED = 2_000  # students a search reads the email of (their conversations each)


@router.get("/users/details/")
async def user_details(
    request: Request,
    a: Asked,
    limit: Annotated[
        str | None,
        Query(
            description=f"Students per page, 1 to {MAX_LIMIT} (default {LIMIT}).",
            json_schema_extra={"pattern": "^([1-9][0-9]?|100)$"},
        ),
    ] = None,
    page: Annotated[
        str | None,
        Query(
            description="The page, from 1 (a page past the last is a 404).",
            json_schema_extra={"pattern": "^[1-9][0-9]*$"},
        ),
    ] = None,
    search: Annotated[
        str | None, Query(description="Only students whose username or email holds this, in any case.")
    ] = None,
) -> dict[str, Any]:
    """Students who sent a message (a human one) in the range, to the mentor when one is named: per student
    `messages` (their human messages in the range), `conversations` (their sessions started in the range:
    at the earliest message, which is theirs), `last_activity` (their latest human message, all time),
    `email` (their newest chat-history record's, "" without one) and `full_name` ("": in no event); most
    messages first, ties by username. The top-level fields are the first row's (the SDK reads one
    `UserDetail`); no student active in the range is a 404."""
    require_admin(await caller(request, a.org, a.state), "student details (emails)")
    per_page = params.positive_int("limit", limit, LIMIT, MAX_LIMIT)
    start, end, zone = await a.span(hourly=False)
    span_ms = [int(t.timestamp() * 1000) for t in utc_span(start, end, zone)]
    mentor = await a.mentor()
    counts = await top.top_students(a.view, a.org, start, end, mentor, limit=None, zone=zone)
    needle = (params.text("search", search) or "").casefold()
    if needle:
        # An email is read per student: a search reads every active student's conversations.
        if len(counts) > MAX_SEARCHED:
            raise params.bad(
                "search", f"search reads each active student's email; {len(counts):,} are active in the range, "
                f"more than {MAX_SEARCHED:,}: narrow the range"
            )  # fmt: skip
        found = []
        for row in counts:
            detail = await _detail(a, row["username"], span_ms, mentor)
            if needle in row["username"].casefold() or needle in detail["email"].casefold():
                found.append({**detail, "messages": row["chat_message_count"]})
        rows = found
    else:
        rows = [{"username": row["username"], "messages": row["chat_message_count"]} for row in counts]
    if not rows:
        raise ApiError(404, "No student sent a message in the range.", param="date_filter")
    pages = max(1, -(-len(rows) // per_page))
    n = params.page_number(page, pages)
    results = []
    for row in rows[(n - 1) * per_page : n * per_page]:
        detail = row if "email" in row else {**await _detail(a, row["username"], span_ms, mentor), **row}
        results.append(detail)
    first = results[0]
    return {
        **{k: first[k] for k in ("email", "full_name", "messages", "conversations", "last_activity")},
        "page": n, "limit": per_page, "total_pages": pages, "total_records": len(rows), "results": results,
    }  # fmt: skip


async def _detail(a: Ask, student: str, span_ms: list[int], mentor: str | None) -> dict[str, Any]:
    """One student's conversations started in [span), their latest human message and their newest
    record's email, from their conversations' states."""
    redis, gen = a.view
    digests = [int(d) for d in await redis.smembers(chat_history.filter_key(gen, a.org, "student", student))]
    started, latest = 0, 0
    recorded: list[ConversationState] = []  # the conversations whose newest record is the student's
    for conv in await queries.conversation_states(a.view, a.org, digests):
        if conv.first_student == student:
            if conv.started_ms is not None and span_ms[0] <= conv.started_ms < span_ms[1]:
                started += mentor is None or conv.first_mentor == mentor
            latest = max(latest, _last_human(conv))
        if conv.record_version is not None and conv.student == student:
            recorded.append(conv)
    # A record is inflated only until one with an email is found, newest first (a student's hundreds of
    # conversations are one inflation, not hundreds).
    email = ""
    for conv in sorted(recorded, key=lambda c: c.inserted_ms or 0, reverse=True):
        held = conv.record().get("email")
        if isinstance(held, str) and held:
            email = held
            break
    return {
        "username": student, "email": email, "full_name": "", "conversations": started,
        "last_activity": format_timestamp(latest) if latest else None,
    }  # fmt: skip


def _last_human(conv: ConversationState) -> int:
    """The latest human message of the session: kept since `last_human_ms` was; before, its start stands
    in (a state written earlier, until a rebuild)."""
    if conv.last_human_ms is not None:
        return conv.last_human_ms
    return (conv.started_ms or 0) if conv.human else 0
