"""`/api/analytics/users/details/`: each student active in the date filter's days, with their messages,
conversations, last activity and email, most messages first, paged.

The platform's SDK types the answer as one `UserDetail`, not a list: the answer's own fields are the page's
first student's (so the SDK's model parses it, and reads the most active student), and the whole page is in
`results`, with the paging beside it (`page`, `limit`, `total_pages`, `total_records`).

Read from the top-students family (human messages per student per day or hour: who was active and how
much), and for the page's students only from the student-activity family (sessions started in the range,
the latest human message: tables/aggregates/student_activity.py) and the chat-history index (their
conversations newest first, read until a record holds an email). A generation that held data before the
student-activity family was written reads each student's conversations instead (`_Details`). Emails are
what chat-history records say of a student: a platform_admin key, as chat history; the answer cache keys
answers on the caller's role, so it keeps this one too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from api import params
from api.auth import caller, require_admin
from api.cache import answered_by
from api.errors import ApiError
from api.platform_analytics import Ask, Asked
from api.platform_financial import utc_span
from streams.schemas import format_timestamp
from tables import generations, queries
from tables.aggregates import chat_history, student_activity
from tables.aggregates import top_students as top
from tables.conversations import ConversationState

router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

LIMIT, MAX_LIMIT = 20, 100
MAX_SEARCHED = 2_000  # students a search reads the email of
EMAIL_READS = 16  # conversations read at a time looking for a student's newest email


@router.get(
    "/users/details/",
    openapi_extra=answered_by(
        top.TopStudents, student_activity.StudentActivity, chat_history.ChatHistory, per_role=True
    ),
)
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
    details = _Details(a, span_ms, mentor, await generations.activity_whole(a.view.redis, a.view.gen))
    if needle:
        # An email is read per student: a search reads every active student's.
        if len(counts) > MAX_SEARCHED:
            raise params.bad(
                "search", f"search reads each active student's email; {len(counts):,} are active in the range, "
                f"more than {MAX_SEARCHED:,}: narrow the range"
            )  # fmt: skip
        found = []
        emails = await details.emails([row["username"] for row in counts])
        for row, email in zip(counts, emails, strict=True):
            if needle in row["username"].casefold() or needle in email.casefold():
                found.append({"username": row["username"], "messages": row["chat_message_count"], "email": email})
        rows = found
    else:
        rows = [{"username": row["username"], "messages": row["chat_message_count"]} for row in counts]
    if not rows:
        raise ApiError(404, "No student sent a message in the range.", param="date_filter")
    pages = max(1, -(-len(rows) // per_page))
    n = params.page_number(page, pages)
    results = await details.rows(rows[(n - 1) * per_page : n * per_page])
    first = results[0]
    return {
        **{k: first[k] for k in ("email", "full_name", "messages", "conversations", "last_activity")},
        "page": n, "limit": per_page, "total_pages": pages, "total_records": len(rows), "results": results,
    }  # fmt: skip


@dataclass(frozen=True)
class _Details:
    """What a page shows of its students beyond their messages. From the student-activity family when the
    generation has it whole (`generations.activity_whole`): each student's sessions started in the range
    and latest human message, a few keys per page; else from each student's conversations (a generation
    that held data before that family was written, until a rebuild)."""

    a: Ask
    span_ms: list[int]
    mentor: str | None
    whole: bool

    async def rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows (username, messages, maybe email) with their email, sessions and last activity."""
        students = [row["username"] for row in rows]
        if not self.whole:
            return [{**await self._from_conversations(row["username"]), **row} for row in rows]
        span = (self.span_ms[0], self.span_ms[1])
        known = await student_activity.activity(self.a.view, self.a.org, students, span, self.mentor)
        missing = [row["username"] for row in rows if "email" not in row]
        emails = dict(zip(missing, await self.emails(missing), strict=True))
        return [
            {"username": row["username"], "email": emails.get(row["username"], ""), "full_name": "",
             "conversations": started, "last_activity": format_timestamp(last) if last else None, **row}
            for row, (started, last) in zip(rows, known, strict=True)
        ]  # fmt: skip

    async def emails(self, students: list[str]) -> list[str]:
        """Each student's newest chat-history record's email ("" without one): the student's conversations
        in the chat-history index's order (newest inserted_at first: one ZINTER of the student's index with
        the org's), read `EMAIL_READS` at a time until a record of theirs holds one; every student's first
        few in one pipeline."""
        if not self.whole:
            return [(await self._from_conversations(student))["email"] for student in students]
        redis, gen = self.a.view
        index = chat_history.index_key(gen, self.a.org)
        calls = [("zinter", {index: 1, chat_history.filter_key(gen, self.a.org, "student", s): 0}, None, True)
                 for s in students]  # fmt: skip
        newest = [
            [int(m) for m, _ in sorted(listed, key=lambda ms: (ms[1], ms[0]), reverse=True)]
            for listed in await queries.pipelined(redis, calls)
        ]
        firsts = await queries.conversation_states(
            self.a.view, self.a.org, [d for n in newest for d in n[:EMAIL_READS]]
        )
        out, at = [], 0
        for student, digests in zip(students, newest, strict=True):
            read = firsts[at : at + min(len(digests), EMAIL_READS)]
            at += len(read)
            i, email = EMAIL_READS, _email(student, read)
            while email is None and i < len(digests):
                email = _email(
                    student, await queries.conversation_states(self.a.view, self.a.org, digests[i : i + EMAIL_READS])
                )
                i += EMAIL_READS
            out.append(email or "")
        return out

    async def _from_conversations(self, student: str) -> dict[str, Any]:
        """One student's conversations started in [span), their latest human message and their newest
        record's email, from their conversations' states."""
        a, span_ms, mentor = self.a, self.span_ms, self.mentor
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
        email = _email(student, sorted(recorded, key=lambda c: c.inserted_ms or 0, reverse=True)) or ""
        return {
            "username": student, "email": email, "full_name": "", "conversations": started,
            "last_activity": format_timestamp(latest) if latest else None,
        }  # fmt: skip


def _email(student: str, convs: list[ConversationState]) -> str | None:
    """The email of the first of these conversations (newest first) whose record is the student's and
    holds one, else None."""
    for conv in convs:
        if conv.record_version is not None and conv.student == student:
            held = conv.record().get("email")
            if isinstance(held, str) and held:
                return held
    return None


def _last_human(conv: ConversationState) -> int:
    """The latest human message of the session: kept since `last_human_ms` was; before, its start stands
    in (a state written earlier, until a rebuild)."""
    if conv.last_human_ms is not None:
        return conv.last_human_ms
    return (conv.started_ms or 0) if conv.human else 0
