"""Transcripts: each chat message's content, per conversation, only when the operator turns them on.

With `AIA_TRANSCRIPT_DAYS` 0 (the default) this family writes nothing: message content is never stored.
With N days, each chat message that counts (the first copy of its `event_id` in its conversation) and
carries `content` is kept in its conversation's transcript hash (`transcript_key`): field the event id,
value the JSON `[time (ms), "human" or "ai", content]`. The hash expires N days after the batch that last
wrote it (each write pushes it on), and goes with its conversation: erased with the student, deleted with
the conversation past the history retention (tables/lua/remove_conversation.lua).

A message is kept once, by its event id, as it is counted once: a copy of it re-sent with other content is
a re-send and changes nothing (docs/contract.md: duplicates are decided by `event_id` alone). Reads order a
transcript by (time, event id), whatever order it arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.schemas import format_timestamp
from tables import ids, keys, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.conversations import ConversationState, conversation_digest


def transcript_key(gen: int, org: str, digest: int) -> str:
    """Hash `event id` -> `[time, role, content]` of a conversation's messages (by its digest)."""
    return keys.org_key(gen, org, f"tx:{digest}")


class Transcripts:
    name = "transcripts"

    def fold(self, b: Batch, counted: Counted) -> None:
        """Each counted message's content in its conversation's transcript, when transcripts are on."""
        days = b.retention.transcript_days
        if not days:
            return
        expire_at = (b.arrival_day + 1 + days) * 86_400
        w, gen, org = b.w, b.gen, b.org
        for ev, _, _ in counted.messages:
            if ev.content is None:
                continue
            key = transcript_key(gen, org, b.digest(ids.normalize(ev.session_id)))
            w.hset(key, ev.event_id, orjson.dumps([ev.ts_ms, ev.role, ev.content]).decode())
            w.expire_at(key, expire_at)

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        return

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """Nothing here: a transcript goes with its conversation (tables/erase.py, `removal`)."""
        return Erased()


@dataclass(frozen=True, slots=True)
class Message:
    event_id: str
    ts_ms: int
    role: str
    content: str


async def transcripts(view: queries.View, org: str, cids: list[str]) -> list[list[Message]]:
    """Each conversation's kept messages, by (time, event id); [] for one with none kept."""
    if not cids:
        return []
    redis, gen = view
    calls = [("hgetall", transcript_key(gen, org, conversation_digest(org, cid))) for cid in cids]
    out = []
    for held in await queries.pipelined(redis, calls):
        messages = []
        for fld, raw in dict(held).items():
            ts_ms, role, content = orjson.loads(raw)
            messages.append(Message(bytes(fld).decode(), int(ts_ms), str(role), str(content)))
        out.append(sorted(messages, key=lambda m: (m.ts_ms, m.event_id)))
    return out


def first_message(messages: list[Message]) -> str:
    """The conversation's first human message's text ("" when none is kept)."""
    return next((m.content for m in messages if m.role == "human"), "")


def pairs(messages: list[Message]) -> list[dict[str, Any]]:
    """The messages as human/AI pairs in time order: each human message with the AI messages after it until
    the next human one (`ai` null when none; an AI message before any human one stands alone)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        text = {"content": m.content, "timestamp": format_timestamp(m.ts_ms), "event_id": m.event_id}
        if m.role == "human" or not out:
            out.append({"human": text if m.role == "human" else None, "ai": None if m.role == "human" else [text]})
        else:
            out[-1]["ai"] = [*(out[-1]["ai"] or []), text]
    return out
