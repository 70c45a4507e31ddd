"""Chat history: conversations listed newest first with Django REST framework's paging, and records created,
replaced, changed and deleted through Kafka (the worker applies them like any other event).

Records are served in the platform's `Conversations` shape (tables/history.served_conversation). On writes
the server sets what the platform's server sets: the id, the student (the path's user), and the fields
that come from elsewhere (sentiment from the sentiment stream, counts from the messages).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from api import params
from api.auth import ORG, USER, Caller, require_admin
from api.errors import ApiError
from api.state import AppState, Served, State
from streams.exceptions import InvalidEvent
from streams.producer import complete, key_for
from streams.schemas import MAX_DEPTH, Conversation, format_timestamp, json_depth, parse
from streams.topics import CHAT_HISTORY
from tables import ids, queries
from tables.aggregates import chat_history as history
from tables.conversations import ConversationState

router = APIRouter(tags=["chat history"])

# The largest body a chat-history write takes: below the broker's message size (1 MiB by default), which
# the record (the body and a few fields) must fit. A bigger one is a 413, not a retry.
MAX_BODY_BYTES = 512 * 1024


# The platform's writable fields of a conversation record; anything else a client sends is ignored
# (read-only fields such as id, student, sentiment, rating are the server's).
BOOLS = ("has_document", "memory_tracked", "enable_artifacts", "is_shared", "is_authenticated")
SHORT_TEXTS = ("llm_name", "llm_provider", "title")  # at most 255 characters, or null
TEXTS = ("model", "platform")
WRITABLE = ("topics", "mentor", *TEXTS, *BOOLS, *SHORT_TEXTS, "metadata", "tools")
_FIELDS: dict[str, Any] = {
    "topics": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 255}},
            "required": ["name"],
        },
    },
    "mentor": {"type": "string", "minLength": 1, "description": "The mentor's unique id (a UUID on the platform)."},
    **{name: {"type": "string"} for name in TEXTS},
    **{name: {"type": ["boolean", "null"]} for name in BOOLS},
    **{name: {"type": ["string", "null"], "maxLength": 255} for name in SHORT_TEXTS},
    "metadata": {},
    "tools": {"type": "array", "items": {"type": "integer"}},
}
_BODY = {"type": "object", "properties": _FIELDS}
WRITE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The conversation's writable fields; the server sets id, student, sentiment and the rest.",
        "content": {
            content_type: {"schema": {**_BODY, "required": ["mentor"]}}
            for content_type in ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
        },
    }
}
PATCH_BODY: dict[str, Any] = {"requestBody": {"content": {"application/json": {"schema": _BODY}}}}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": f"The body is over {MAX_BODY_BYTES // 1024} KiB; `parameter` is body."}
}


# The range of a list of conversations (chat history's and the transcripts'), by insertion.
INSERTED_FROM = Annotated[
    str | None, Query(description="Conversations inserted on or after, YYYY-MM-DD.", **params.DATE)
]
INSERTED_TO = Annotated[
    str | None, Query(description="Conversations inserted on or before, YYYY-MM-DD.", **params.DATE)
]


@router.get("/chat-history/")
async def chat_history(
    request: Request,
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: INSERTED_FROM = None,
    end_date: INSERTED_TO = None,
    filter_user_id: Annotated[str | None, Query(description="Only this student's conversations.")] = None,
    mentor: Annotated[str | None, Query(description="Only conversations with this mentor (its UUID).")] = None,
    sentiment: Annotated[str | None, Query(description="Only conversations whose latest sentiment is this.")] = None,
    topics: Annotated[str | None, Query(description="Comma-separated topics; all must match.")] = None,
    page: Annotated[str | None, Query(description="Page number, from 1 (a page past the end is a 404).")] = None,
    page_size: Annotated[
        str | None, Query(description="Rows per page (default 20; more than 100 is capped at 100).")
    ] = None,
) -> dict[str, Any]:
    """Conversations, newest first, with the platform's pagination envelope."""
    require_admin(key)
    start, end = params.optional_days(start_date, end_date)
    topic_list = params.names("topics", topics)
    flt = history.HistoryFilter(
        start=start,
        end=end,
        student=params.text("filter_user_id", filter_user_id),
        mentor=params.text("mentor", mentor),
        sentiment=params.text("sentiment", sentiment),
        topics=topic_list,
    )
    size = params.page_size(page_size)
    wanted = params.page_number(page, 1_000_000) if page != "last" else 1
    count, rows = await history.chat_history(view, org, flt, wanted, size)
    pages = max(1, -(-count // size))
    n = params.page_number(page, pages)
    if n != wanted:  # "last"
        count, rows = await history.chat_history(view, org, flt, n, size)
    return {
        "count": count,
        "next": str(request.url.include_query_params(page=n + 1)) if n < pages else None,
        "previous": str(request.url.include_query_params(page=n - 1)) if n > 1 else None,
        "results": rows,
    }


@router.post("/chat-history/", status_code=201, openapi_extra=WRITE_BODY, responses=TOO_LARGE)
async def create_chat_history(org: ORG, user_id: USER, key: Caller, state: State, request: Request) -> dict[str, Any]:
    """Store a conversation record (JSON, form or multipart body): written through Kafka, listed within a
    second. The server sets its id and student (the path's user)."""
    require_admin(key)
    fields = writable_fields(await read_body(request), require_mentor=True)
    record = {**fields, "id": str(uuid.uuid4()), "student": user_id}
    return await write_record(state, org, record)


@router.get("/chat-history/{conversation_id}/")
async def get_chat_history(org: ORG, user_id: USER, key: Caller, view: Served, conversation_id: str) -> dict[str, Any]:
    """One conversation, by its id."""
    require_admin(key)
    return (await _existing(view, org, conversation_id))[2]


@router.put("/chat-history/{conversation_id}/", openapi_extra=WRITE_BODY, responses=TOO_LARGE)
async def replace_chat_history(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, conversation_id: str, request: Request
) -> dict[str, Any]:
    """Replace a conversation's writable fields (the others stay the server's)."""
    require_admin(key)
    return await _change(state, view, org, conversation_id, request, whole=True)


@router.patch("/chat-history/{conversation_id}/", openapi_extra=PATCH_BODY, responses=TOO_LARGE)
async def change_chat_history(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, conversation_id: str, request: Request
) -> dict[str, Any]:
    """Change some of a conversation's writable fields."""
    require_admin(key)
    return await _change(state, view, org, conversation_id, request, whole=False)


async def _change(
    state: AppState, view: queries.View, org: str, conversation_id: str, request: Request, *, whole: bool
) -> dict[str, Any]:
    """PUT (`whole`: the body is the whole record, so `mentor` is required) or PATCH an existing
    conversation: the body's writable fields over what is kept, written through Kafka."""
    cid, stored, served = await _existing(view, org, conversation_id)
    fields = writable_fields(await read_body(request), require_mentor=whole)
    return await write_record(state, org, {**_kept(cid, stored, served), **fields})


@router.delete("/chat-history/{conversation_id}/", status_code=204)
async def delete_chat_history(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, conversation_id: str
) -> Response:
    """Delete a conversation from chat history (its messages still count in the aggregates)."""
    require_admin(key)
    cid, stored, served = await _existing(view, org, conversation_id)
    await write_record(state, org, {**_kept(cid, stored, served), "deleted": True})
    return Response(status_code=204)


async def _existing(view: queries.View, org: str, conversation_id: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    found = await history.conversation(view, org, params.text("id", conversation_id) or "")
    if found is None:
        raise ApiError(404, "Not found.")
    return found


def _kept(cid: str, stored: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """The record a change starts from: what is stored, with the id, student, mentor and insertion time
    as served (a conversation known only from its messages has no record yet)."""
    return {
        **stored,
        "id": cid,
        "student": served["student"],
        "mentor": stored.get("mentor") or served["mentor_name"],
        "inserted_at": served["inserted_at"],
        "topics": stored.get("topics") or served["topics"],
    }


async def _read_limited(request: Request) -> None:
    """Read the body, refusing one over MAX_BODY_BYTES (413) before reading it all; kept for `body()` and
    `form()`, which read it from there."""
    declared = request.headers.get("content-length", "")
    too_big = ApiError(
        413,
        f"the body is over the limit of {MAX_BODY_BYTES} bytes ({MAX_BODY_BYTES // 1024} KiB) a chat-history write takes",
        param="body",
    )
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_big
        chunks.append(chunk)
    request._body = b"".join(chunks)  # Starlette's own cache of the body, which form() reads too


async def read_body(request: Request) -> dict[str, Any]:
    """The body as a dict, from JSON, form-urlencoded or multipart (as the platform accepts); 413 for one
    over MAX_BODY_BYTES."""
    await _read_limited(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        out: dict[str, Any] = {}
        for name in form:
            values = [v for v in form.getlist(name) if isinstance(v, str)]
            out[name] = _form_value(name, values)
        return out
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body is not JSON: {exc}", param="body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object (a conversation record)", param="body")
    return body


def _form_value(name: str, values: list[str]) -> Any:
    """A form field as the JSON body would carry it: topics and tools as lists (repeated, comma-separated
    or JSON), booleans from true/false, metadata from JSON text."""
    if name in ("topics", "tools"):
        items: list[Any] = []
        for v in values:
            v = v.strip()
            if v.startswith("["):
                try:
                    items += orjson.loads(v)
                    continue
                except orjson.JSONDecodeError:
                    pass
            items += [x.strip() for x in v.split(",") if x.strip()]
        if name == "tools":
            return [int(x) if isinstance(x, str) and x.lstrip("-").isdigit() else x for x in items]
        return items
    value = values[-1] if values else ""
    if name in BOOLS:
        return {"true": True, "false": False, "1": True, "0": False}.get(value.lower(), value)
    if name == "metadata":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return None if value == "" and name in SHORT_TEXTS else value


def writable_fields(body: dict[str, Any], *, require_mentor: bool) -> dict[str, Any]:
    """The platform's writable fields of a body, checked; a bad one is a 400 naming it."""
    out: dict[str, Any] = {}
    for name in WRITABLE:
        if name not in body:
            continue
        value = body[name]
        if name == "topics":
            if not isinstance(value, list) or not all(_topic(t) for t in value):
                raise ApiError(400, 'topics must be a list of {"name": "<topic>"} (or of names)', param="topics")
            out["topics"] = [{"name": _topic(t)} for t in value]
        elif name == "mentor":
            if not isinstance(value, str) or not value.strip():
                raise ApiError(400, "mentor must be the mentor's unique id", param="mentor")
            out["mentor"] = value.strip()
        elif name in BOOLS:
            if value is not None and not isinstance(value, bool):
                raise ApiError(400, f"{name} must be true or false", param=name)
            out[name] = value
        elif name in SHORT_TEXTS:
            if value is not None and (not isinstance(value, str) or len(value) > 255):
                raise ApiError(400, f"{name} must be text of at most 255 characters, or null", param=name)
            out[name] = value
        elif name in TEXTS:
            if not isinstance(value, str):
                raise ApiError(400, f"{name} must be text", param=name)
            out[name] = value
        elif name == "tools":
            if not isinstance(value, list) or not all(_tool_id(t) for t in value):
                raise ApiError(400, "tools must be a list of tool ids (64-bit whole numbers)", param="tools")
            out["tools"] = value
        else:
            out[name] = value
    if require_mentor and "mentor" not in out:
        raise ApiError(400, "mentor is required (the mentor's unique id)", param="mentor")
    return out


def _tool_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _topic(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else value
    return name if isinstance(name, str) and 0 < len(name) <= 255 else None


async def write_record(state: AppState, org: str, record: dict[str, Any]) -> dict[str, Any]:
    """Validate a record as the worker will, send it through Kafka, and answer it as it will be served."""
    if (depth := json_depth(record)) > MAX_DEPTH:
        raise ApiError(400, f"body: the record nests {depth} levels deep; at most {MAX_DEPTH}", param="body")
    now = datetime.now(UTC)
    record.setdefault("inserted_at", format_timestamp(now))
    event = complete({**record, "org": org})
    raw = orjson.dumps(event)
    key = key_for(CHAT_HISTORY, event)
    try:
        parsed = parse(CHAT_HISTORY, key, raw, int(now.timestamp() * 1000), state.limits)
    except InvalidEvent as exc:
        raise ApiError(400, f"body: {exc.reason}", param="body") from None
    assert isinstance(parsed, Conversation) and key is not None  # parse checked the id
    await state.kafka.send(CHAT_HISTORY, raw, key=key)
    conv = ConversationState(
        record_version=(parsed.ts_ms, 0, parsed.event_id),
        student=parsed.student,
        mentor=ids.normalize(parsed.mentor),
        topics=parsed.topics,
        inserted_ms=parsed.inserted_at_ms,
        deleted=parsed.deleted,
    )
    return history.served_conversation(org, ids.normalize(parsed.id), parsed.record, conv)
