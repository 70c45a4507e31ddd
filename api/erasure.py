"""Erasing a student (an admin call; `ai-analytics erase` does the same): tables/erase.py says what goes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam

from api.auth import ORG, USER, Caller, require_admin
from api.state import State
from streams.schemas import MAX_TEXT
from tables import erase

router = APIRouter(tags=["erasure"])


@router.delete("/students/{student:path}/")
async def erase_student(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    student: Annotated[
        str,
        PathParam(
            description="The username the events name: any an event may carry (`/` included, URL-encoded or not).",
            min_length=1,
            max_length=MAX_TEXT,
        ),
    ],
) -> dict[str, Any]:
    """Erase a student from the org: their conversations, per-student counts and costs; every later,
    re-sent or replayed event of theirs is dropped. Answers the audit record (also written to the compacted
    `analytics-erasures` topic); `by` is the key's id."""
    require_admin(key, "erasing a student")
    erasure = await erase.erase_waiting(state.redis, state.settings, org, student, by=f"key:{key.id}")
    for topic, record_key, value in await erase.publications(state.redis, erasure):
        await state.kafka.send(topic, value, key=record_key)
    return erasure.audit()
