"""Sessions and messages: how many sessions start in each hour, half hour and day (for the org and for each
mentor), how many messages they hold, and chat messages per minute (what the alert rules read).

Rule (docs/semantics.md): a session belongs to the bucket of its **earliest message** by event time (ties
by the smaller event_id) and counts all its messages there; a message that arrives later with an earlier
time moves the session, count and messages, to its own bucket. The conversation's state keeps where the
session starts and its counts per role, so what the session adds is derived from its final state.
"""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from tables import ids, queries
from tables.aggregates.base import Batch, Counted, Erased
from tables.buckets import DAY_MS, HALF_MS, HOUR_MS, MINUTE_MS, Grain
from tables.conversations import ConversationState

# Bucket fields (hourly, half-hourly, daily): sessions started, their messages, the human ones of those; a
# mentor's end in `|m|<mentor>`.
SESSIONS = "sessions"
MESSAGES = "messages"  # also per minute: every chat message by its own time (the alert rules)
HUMAN = "session_human"  # daily only (all-time reads); the top-students family's `human` is by own day
SENT = "sent"  # hourly: every chat message by its own time (the weekday x hour heatmap; whole-hour zones)


def mentor_field(fld: str, mentor: str) -> str:
    """A field of one mentor's sessions or messages."""
    return f"{fld}|m|{mentor}"


# (half hour of a session's start, its first mentor or "") -> [sessions, messages, human messages] a batch adds
Deltas = dict[tuple[int, str], list[int]]


class Sessions:
    name = "sessions"

    def fold(self, b: Batch, counted: Counted) -> Deltas:
        """Every message in its minute, and in its hour for the org and its mentor. (Where a
        session starts and its counts per role are its conversation's: `ConversationState.add_message`;
        what they add is derived in `changed`.)"""
        messages = counted.messages
        for minute, n in Counter([ev.ts_ms // MINUTE_MS for ev, _, _ in messages]).items():
            b.add_at(Grain.MINUTE, minute, MESSAGES, n)  # Counter counts in C
        for (hour, mentor), n in Counter([(ev.ts_ms // HOUR_MS, mentor) for ev, _, mentor in messages]).items():
            b.add_at(Grain.HOUR, hour, SENT, n)
            if mentor:
                b.add_at(Grain.HOUR, hour, mentor_field(SENT, mentor), n)
        return {}

    def changed(self, b: Batch, deltas: Deltas, cid: str, before: ConversationState, after: ConversationState) -> None:
        """A session that moved leaves its old buckets whole and counts whole in its new ones; one that
        stayed adds its new messages."""
        if (before.started_ms, before.first_mentor) != (after.started_ms, after.first_mentor):
            _session(deltas, before, -1)
            _session(deltas, after, 1)
        elif after.started_ms is not None and (n := after.human + after.ai - before.human - before.ai):
            _session(deltas, after, 1, messages_only=(n, after.human - before.human))

    def flush(self, b: Batch, deltas: Deltas) -> None:
        """The sessions and messages summed per half hour and mentor, spread over the hour, half hour (for
        the days of zones half an hour off UTC) and day, for the org and for the mentor; the human messages
        over the day only (read all time, by the day)."""
        for (half, mentor), (sessions, messages, human) in deltas.items():
            whose = [(SESSIONS, MESSAGES, HUMAN)]
            if mentor:
                whose.append(
                    (mentor_field(SESSIONS, mentor), mentor_field(MESSAGES, mentor), mentor_field(HUMAN, mentor))
                )
            for grain, index in ((Grain.HOUR, half // 2), (Grain.HALF, half), (Grain.DAY, half * HALF_MS // DAY_MS)):
                for s_field, m_field, h_field in whose:
                    for fld, n in ((s_field, sessions), (m_field, messages)):
                        if n:
                            b.add_at(grain, index, fld, n)
                    if human and grain is Grain.DAY:
                        b.add_at(grain, index, h_field, human)

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        return Erased()  # counts without a name


def _session(
    deltas: Deltas, conv: ConversationState, sign: int, *, messages_only: tuple[int, int] | None = None
) -> None:
    """What a conversation adds: one session and all its messages (and of those the human ones) in the half
    hour of its earliest message (`messages_only`: just that many more messages, and human ones, of the
    same session)."""
    if conv.started_ms is None:
        return
    slot = (conv.started_ms // HALF_MS, conv.first_mentor or "")
    counts = deltas.get(slot)
    if counts is None:
        counts = deltas[slot] = [0, 0, 0]
    if messages_only:
        counts[1] += messages_only[0]
        counts[2] += messages_only[1]
    else:
        counts[0] += sign
        counts[1] += sign * (conv.human + conv.ai)
        counts[2] += sign * conv.human


# --- reads -----------------------------------------------------------------------------------------
AGGREGATIONS = ("hourly", "daily", "weekly")


def _ratio(messages: int, sessions: int) -> tuple[int, float]:
    if sessions == 0:
        return 0, 0.0
    exact = Decimal(messages) / Decimal(sessions)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)), float(exact)


async def average_messages_per_session(
    view: queries.View,
    org: str,
    start: date,
    end: date,
    aggregation: str = "daily",
    mentor_id: str | None = None,
    zone: ZoneInfo | None = None,
) -> list[dict[str, Any]]:
    """Rows of sessions started per period and their messages; periods with no session included. Days and
    weeks are the zone's (UTC without one)."""
    s_field, m_field = SESSIONS, MESSAGES
    if mentor_id is not None:
        mentor_id = await queries.resolve(view, org, ids.MENTOR, mentor_id)
        s_field, m_field = mentor_field(s_field, mentor_id), mentor_field(m_field, mentor_id)
    periods = [
        (t, s, m)
        for t, (s, m) in await queries.periods(view, org, start, end, aggregation == "hourly", zone, [s_field, m_field])
    ]
    if aggregation == "weekly":
        weeks: dict[str, list[int]] = {}
        for t, s, m in periods:
            d = date.fromisoformat(t)
            monday = (d - timedelta(days=d.weekday())).isoformat()
            acc = weeks.setdefault(monday, [0, 0])
            acc[0] += s
            acc[1] += m
        periods = [(t, s, m) for t, (s, m) in weeks.items()]
    rows = []
    for t, sessions, messages in periods:
        avg, exact = _ratio(messages, sessions)
        rows.append(
            {
                "time": t,
                "avg_messages": avg,
                "total_sessions": sessions,
                "total_messages": messages,
                "avg_messages_exact": exact,
            }
        )
    return rows
