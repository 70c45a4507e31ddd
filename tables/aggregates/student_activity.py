"""Student activity: what `/api/analytics/users/details/` shows of each student beyond their messages, the
sessions they started in a range and their latest human message, kept per student so a page of students
reads a few small keys, not every conversation of each.

Rules (docs/semantics.md):
- a session is started by the student of its **earliest message** (`ConversationState.first_student`), at
  that message's time, to its mentor: a sorted set per student (`starts_key`) of one member per session,
  `<conversation digest>|<mentor as kept>`, scored by its start (epoch ms). Where a session is listed is a
  function of its conversation's final state (`changed`: the member it leaves, the one it gains), so any
  order and any copies of the events give the same set. It goes with the conversation: an erasure or the
  history retention removes it (tables/lua/remove_conversation.lua), as they do its chat-history entries.
- a student's latest human message is the maximum of their human messages' times (a hash of the org,
  `last_key`, student -> epoch ms, written as a maximum): any order and copies give it. Kept without
  expiry, as the first-seen sets are; an erasure removes it (`erase`).

Neither is published. A generation is read from these only once they are whole: written from its first
event (`generations.activity_whole`); one that held data before this code applied to it is read from the
conversations themselves (api/platform_users.py) until a rebuild.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from tables import keys, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.conversations import ConversationState


def starts_key(gen: int, org: str, student: str) -> str:
    """Sorted set of the sessions the student started: `starts_member` -> its start (epoch ms)."""
    return keys.org_key(gen, org, f"starts:{student}")


def starts_member(digest: int, mentor: str) -> str:
    """`<conversation digest>|<mentor as kept>`: the digest is a decimal integer, so whatever the mentor
    holds, the member's first `|` ends it (`member_mentor`)."""
    return f"{digest}|{mentor}"


def member_mentor(member: bytes) -> str:
    return member.split(b"|", 1)[1].decode()


def last_key(gen: int, org: str) -> str:
    """Hash student -> their latest human message (epoch ms)."""
    return keys.org_key(gen, org, "last")


def _start(conv: ConversationState) -> tuple[str, str, int] | None:
    """(student, mentor, start ms) of the session, or None until a message of it is known."""
    if conv.started_ms is None or not conv.first_student:
        return None
    return conv.first_student, conv.first_mentor or "", conv.started_ms


class StudentActivity:
    name = "student_activity"

    def fold(self, b: Batch, counted: Counted) -> None:
        """Each human message raises its student's latest (`hmax`: the write keeps the maximum)."""
        latest: dict[str, int] = {}
        for ev, _, _ in counted.messages:
            if ev.role == "human" and ev.ts_ms > latest.get(ev.student, -1):
                latest[ev.student] = ev.ts_ms
        if latest:
            hkey = last_key(b.gen, b.org)
            for student, ms in latest.items():
                b.w.hmax(hkey, student, ms)

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        """The session's member leaves its old student's set and is added to its new one (or rescored)."""
        old, new = _start(before), _start(after)
        if old == new:
            return
        w, digest = b.w, b.digest(cid)
        if old is not None and (new is None or old[:2] != new[:2]):
            w.zrem(starts_key(b.gen, b.org, old[0]), starts_member(digest, old[1]))
        if new is not None:
            w.zadd(starts_key(b.gen, b.org, new[0]), starts_member(digest, new[1]), new[2])

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """Their latest message, and their sessions' set: empty by now, each member having gone with its
        conversation (the erasure removes every conversation they started first)."""
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(starts_key(gen, org, student))
            pipe.hdel(last_key(gen, org), student)
            _, last = await pipe.execute()
        return Erased(audit={"last_activity": int(last)})


# --- reads -----------------------------------------------------------------------------------------
async def activity(
    view: queries.View, org: str, students: list[str], span_ms: tuple[int, int], mentor: str | None
) -> list[tuple[int, int | None]]:
    """Per student, (sessions they started in [span), to the mentor when one is named (as kept); their
    latest human message in epoch ms, None before any), in one round trip."""
    if not students:
        return []
    redis, gen = view
    lo, hi = span_ms[0], f"({span_ms[1]}"
    async with redis.pipeline(transaction=False) as pipe:
        for student in students:
            if mentor is None:
                pipe.zcount(starts_key(gen, org, student), lo, hi)
            else:
                pipe.zrangebyscore(starts_key(gen, org, student), lo, hi)
        pipe.hmget(last_key(gen, org), students)
        replies: list[Any] = await pipe.execute()
    out = []
    for started, last in zip(replies[:-1], replies[-1], strict=True):
        n = int(started) if mentor is None else sum(member_mentor(m) == mentor for m in started)
        out.append((n, None if last is None else int(last)))
    return out
