"""LLM cost: the cost (nano-dollars, exact), tokens and observations of an org's LLM calls per hour and day,
per model, and attributed to the student and mentor of the session they belong to; per day, each
mentor's sessions' costs (for the per-mentor report).

Rules (docs/semantics.md): an observation counts once by its `event_id`; one re-sent with the same id
**replaces** the applied one when it is newer by (event time, offset), its old contribution taken back
(the observations hash keeps what each applied version added: `AppliedObservation`). A session's cost by
hour is kept in its conversation's state and counts for the student and mentor of its earliest message,
whichever arrives first: what it adds is derived from the conversation's final state (`attributed`).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import orjson
from redis.asyncio import Redis

from streams.prices import PriceTable
from streams.schemas import LlmObservation
from tables import ids, keys, queries
from tables.aggregates import chat_history
from tables.aggregates.base import Batch, Counted, Erased, remove_everywhere
from tables.buckets import Grain, day_index, days_between, hour_index
from tables.conversations import ConversationState, conversation_digest, is_newer

GRAINS = (Grain.HOUR, Grain.DAY)
# Bucket fields (hourly and daily): cost, tokens, observations, observations no price was known for; the
# cost per model, student and mentor is `cost_field(kind, value)`.
COST = "cost_nanos"
TOKENS_IN = "tokens_in"
TOKENS_OUT = "tokens_out"
OBSERVATIONS = "observations"
UNPRICED = "unpriced"
TOTALS = (COST, TOKENS_IN, TOKENS_OUT, OBSERVATIONS, UNPRICED)


def cost_field(kind: str, value: str) -> str:
    """A bucket field of LLM cost (nano-dollars) for one student (`u`), mentor (`m`) or model (`model`)."""
    return f"{COST}|{kind}|{value}"


def student_of_metric(metric: str) -> str | None:
    """The student a changefeed record's metric names (their LLM cost, `cost_nanos|u|<student>`), if any."""
    prefix = cost_field("u", "")
    return metric[len(prefix) :] if metric.startswith(prefix) else None


def sessions_key(gen: int, org: str, day: int) -> str:
    """Sorted set `session_member(mentor, session)` -> LLM cost (nano-dollars) of the session's
    observations that day (a day index), for the per-mentor cost report."""
    return keys.org_key(gen, org, f"costsess:{Grain.DAY.label(day)}")


def session_member(mentor: str, session: str) -> str:
    """A member of `sessions_key`: `<length of the mentor id>|<mentor>|<session>`. Length-prefixed, so no
    two (mentor, session) pairs give the same member whatever `|` they hold (`m|x` with `s` and `m` with
    `x|s` differ); `parse_session_member` reads it back exactly."""
    return f"{len(mentor)}|{mentor}|{session}"


def trace_session(trace: str, session: str) -> str:
    """A member of `keys.trace_sessions`: `trace_prefix(trace)` then the session, so a trace's members are
    exactly those starting with its prefix, whatever `|` the ids hold."""
    return trace_prefix(trace) + session


def trace_prefix(trace: str) -> str:
    """`<length of the trace id in UTF-8 bytes>|<trace>|` (bytes, as the pruning script counts them)."""
    return f"{len(trace.encode())}|{trace}|"


def parse_session_member(member: str) -> tuple[str, str] | None:
    """(mentor, session) of a `session_member`, None for anything else (a member written before the
    length prefix: `ai-analytics rebuild` rewrites those)."""
    length, sep, rest = member.partition("|")
    if not sep or not length.isdigit() or len(rest) <= int(length) or rest[int(length)] != "|":
        return None
    n = int(length)
    return rest[:n], rest[n + 1 :]


# An applied observation's value in the observations hash (`keys.observations`): this byte, the day it
# arrived (an unsigned 32-bit big-endian epoch day index, where the pruning script reads it), then the
# msgpack array `[cost, in, out, unpriced, ts, offset, model, session, trace, type, cost given]`, the session
# as its 16 bytes when it is a UUID, the trace as the bytes it spells when it is lowercase hex, the type as
# its index in `_KINDS` when it is one of them (an array of 8, written before traces were served, is still
# read). A value kept before it is `[cost, in, out, unpriced, ts, offset, model, session, arrival day]`
# as JSON text (it starts with `[`): still read.
OBSERVATION_FORMAT = b"\x02"
_ARRIVAL = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class AppliedObservation:
    """What the observations hash records for an applied observation: its contribution, its version, the
    model and session it counts for, the day it arrived (for pruning past the dedup window and the
    observation retention), and what the observations endpoints serve of it: its trace, its type and
    whether its cost was given (not inferred from the price table). Those three are None in a value
    written before they were kept."""

    cost: int
    input_tokens: int
    output_tokens: int
    unpriced: int
    ts_ms: int
    offset: int
    model: str
    session: str | None
    arrival_day: int
    trace_id: str | None = None
    kind: str | None = None
    cost_given: bool | None = None

    def value(self) -> bytes:
        """`OBSERVATION_FORMAT`, the arrival day, then the msgpack array."""
        session: str | bytes | None = self.session
        if self.session is not None:
            session = ids.uuid_bytes(self.session) or self.session
        return (
            OBSERVATION_FORMAT
            + _ARRIVAL.pack(self.arrival_day)
            + _PACK.encode(
                (self.cost, self.input_tokens, self.output_tokens, self.unpriced, self.ts_ms, self.offset,
                 self.model, session, _packed_trace(self.trace_id), _KIND_CODES.get(self.kind or "", self.kind),
                 self.cost_given)
            )
        )  # fmt: skip

    @classmethod
    def parse(cls, value: bytes) -> AppliedObservation:
        """The observation a value records (either form)."""
        if value[:1] != OBSERVATION_FORMAT:
            return cls(*orjson.loads(value))
        (arrival_day,) = _ARRIVAL.unpack_from(value, 1)
        cost, tokens_in, tokens_out, unpriced, ts_ms, offset, model, session, *served = _UNPACK.decode(
            memoryview(value)[5:]
        )
        if isinstance(session, bytes):
            session = str(uuid.UUID(bytes=session))
        trace, kind, cost_given = (*served, None, None, None)[:3]
        if isinstance(trace, bytes):
            trace = trace.hex()
        if isinstance(kind, int):
            kind = _KINDS[kind]
        return cls(
            cost, tokens_in, tokens_out, unpriced, ts_ms, offset, model, session, arrival_day, trace, kind, cost_given
        )


# Langfuse's trace ids are lowercase hex (32 digits): kept as the bytes they spell, half the size; any other
# id as its text. The usual observation types as a small number, any other as its text.
_HEX = frozenset("0123456789abcdef")
_KINDS = ("generation", "span", "event")
_KIND_CODES = {kind: i for i, kind in enumerate(_KINDS)}


def _packed_trace(trace: str | None) -> str | bytes | None:
    if trace and len(trace) % 2 == 0 and len(trace) <= 128 and _HEX.issuperset(trace):
        return bytes.fromhex(trace)
    return trace


_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder()  # the session is str or bytes: msgspec types no such union


class LlmCost:
    name = "llm_cost"

    def fold(self, b: Batch, counted: Counted) -> None:
        """Apply (or replace) each observation's cost and tokens in the org's and its model's buckets, and
        its session's cost by hour; an observation that changes nothing (a copy, an older version) is
        skipped."""
        w, state = b.w, b.state
        applied = dict(state.observations)
        seen = keys.observations(b.gen, b.org)
        listed, traces = keys.observation_index(b.gen, b.org), keys.trace_index(b.gen, b.org)
        trace_sessions = keys.trace_sessions(b.gen, b.org)
        oldest_listed = b.retention.oldest_observation_day(b.arrival_day)
        for ev in counted.observations:
            listing = Grain.DAY.index(ev.ts_ms) >= oldest_listed  # listed by the observations and traces endpoints
            session = None if ev.session_id is None else ids.normalize(ev.session_id)
            if listing:  # every version received, applied or not: its trace's time and sessions are order-free
                w.zadd_lt(traces, {ev.trace_id: ev.ts_ms})
                if session is not None:
                    w.zadd(trace_sessions, trace_session(ev.trace_id, session), 0)
            raw = applied.get(ev.event_id)
            prev = None if raw is None else AppliedObservation.parse(raw)
            new = _applied(ev, session, prev, b.arrival_day, b.prices)
            if new is None:
                continue
            w.events += 1
            if prev is None:
                b.count(ev)
            value = applied[ev.event_id] = new.value()
            w.mark_seen(seen, ev.event_id, state.observations.get(ev.event_id), value)
            if listing:
                w.zadd(listed, ev.event_id, new.ts_ms)
            for version, sign in ((prev, -1), (new, 1)):
                if version is None:
                    continue
                for fld, n in zip(
                    TOTALS,
                    (version.cost, version.input_tokens, version.output_tokens, 1, version.unpriced),
                    strict=True,
                ):
                    b.add(GRAINS, version.ts_ms, (fld,), sign * n)
                b.add(GRAINS, version.ts_ms, (cost_field("model", version.model),), sign * version.cost)
                if version.session is None:
                    continue
                # The session's cost by hour: attributed to its student and mentor from its final state.
                conv = b.conversation(version.session, must_be_read=True)
                hour = Grain.HOUR.index(version.ts_ms)
                conv.costs = {**conv.costs, hour: conv.costs.get(hour, 0) + sign * version.cost}
                if sign > 0:  # the latest time of each trace: a maximum, whatever the order
                    conv.traces = {**conv.traces, ev.trace_id: max(ev.ts_ms, conv.traces.get(ev.trace_id, 0))}

    def changed(self, b: Batch, sums: None, cid: str, before: ConversationState, after: ConversationState) -> None:
        """What the session's cost adds to its student's and mentor's buckets and to the day's per-mentor
        session costs: the difference between its state after the batch and before."""
        if before.costs == after.costs and before.attribution() == after.attribution():
            return
        w, gen, org = b.w, b.gen, b.org
        old_cost, new_cost = attributed(cid, before), attributed(cid, after)
        for slot in old_cost.keys() | new_cost.keys():
            n = new_cost.get(slot, 0) - old_cost.get(slot, 0)
            if not n:
                continue
            kind, grain, index, member = slot
            if kind == "z":
                key = sessions_key(gen, org, index)
                w.zincr(key, member, n)
                w.expire_at(key, b.retention.expire_at_s(Grain.DAY, index))
            else:
                b.add_at(grain, index, member, n)

    def flush(self, b: Batch, sums: None) -> None:
        return

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """The student's cost fields, in every hourly and daily bucket (found by name: a session's state may
        be gone). The org's and mentors' totals keep what the student's sessions cost."""
        fld = cost_field("u", student)
        out = Erased()
        for grain in (Grain.HOUR, Grain.DAY):
            pattern = keys.bucket(gen, org, grain, 0).rsplit(":", 1)[0] + ":*"
            out.counters += [(key, fld) for key, _ in await remove_everywhere(redis, pattern, "HDEL", fld)]
        out.audit["cost_fields"] = len(out.counters)
        return out


def _applied(
    ev: LlmObservation, session: str | None, prev: AppliedObservation | None, arrival_day: int, prices: PriceTable
) -> AppliedObservation | None:
    """What the observations hash will record for the observation (`session`: its session as kept), or None
    when it changes nothing."""
    if prev is not None and not is_newer(
        (ev.ts_ms, ev.src_offset, ev.event_id), (prev.ts_ms, prev.offset, ev.event_id)
    ):
        return None
    cost = ev.cost_nanos
    unpriced = 0
    if cost is None:
        cost = prices.cost_nanos(ev.model, ev.input_tokens, ev.output_tokens)
        if cost is None:
            cost, unpriced = 0, 1
    return AppliedObservation(
        cost, ev.input_tokens, ev.output_tokens, unpriced, ev.ts_ms, ev.src_offset, ev.model, session, arrival_day,
        ev.trace_id, ev.type, ev.cost_nanos is not None,
    )  # fmt: skip


def attributed(cid: str, conv: ConversationState) -> dict[tuple[str, Grain, int, str], int]:
    """What a session's cost adds to its student's and mentor's buckets (hour and day), and to the day's
    per-mentor session costs: a function of the conversation's state alone."""
    who = conv.attribution()
    out: dict[tuple[str, Grain, int, str], int] = {}
    if who is None:
        return out
    student, mentor = who
    fields = (cost_field("u", student), cost_field("m", mentor))
    for hour, n in conv.costs.items():
        day = hour // 24
        for grain, index in ((Grain.HOUR, hour), (Grain.DAY, day)):
            for fld in fields:
                slot = ("h", grain, index, fld)
                out[slot] = out.get(slot, 0) + n
        zslot = ("z", Grain.DAY, day, session_member(mentor, cid))
        out[zslot] = out.get(zslot, 0) + n
    return out


# --- reads -----------------------------------------------------------------------------------------
NANOS = Decimal(1_000_000_000)


def cost_buckets(gen: int, org: str, start: datetime, end: datetime) -> list[str]:
    """Bucket keys that exactly cover [start, end): whole days as daily buckets, the edges as hours.

    Both ends are rounded down to the hour (the finest grain kept).
    """
    start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    out = []
    t = start
    while t < end:
        if t.hour == 0 and t + timedelta(days=1) <= end:
            out.append(keys.bucket(gen, org, Grain.DAY, day_index(t.date())))
            t += timedelta(days=1)
        else:
            out.append(keys.bucket(gen, org, Grain.HOUR, hour_index(t)))
            t += timedelta(hours=1)
    return out


async def tenant_cost(view: queries.View, org: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Exact LLM cost of the org in [start, end), in USD (and nano-dollars, tokens, observations)."""
    redis, gen = view
    fields = [COST, TOKENS_IN, TOKENS_OUT, OBSERVATIONS, UNPRICED]
    async with redis.pipeline(transaction=False) as pipe:
        for key in cost_buckets(gen, org, start, end):
            pipe.hmget(key, fields)
        replies = await pipe.execute()
    totals = [sum(queries.as_int(r[i]) for r in replies) for i in range(len(fields))]
    nanos = totals[0]
    return {
        "total_cost": usd(nanos),
        "total_cost_exact": str(Decimal(nanos) / NANOS),
        "cost_nanos": nanos,
        "input_tokens": totals[1],
        "output_tokens": totals[2],
        "observations": totals[3],
        "unpriced_observations": totals[4],
    }


def usd(nanos: int) -> float:
    """Nano-dollars as the float the platform's clients read (sums are kept exact in nano-dollars)."""
    return float(Decimal(nanos) / NANOS)


def usd_text(nanos: int, places: int) -> str:
    """Nano-dollars as the decimal string of USD the platform's finance answers carry (its pattern allows
    `places` places), rounded half to even, never through a float: `usd_text(1_234_567, 5)` is `0.00123`."""
    return queries.decimal_text(nanos, 1_000_000_000, places)


async def cost_fields(view: queries.View, org: str, start: datetime, end: datetime, prefix: str) -> dict[str, int]:
    """Sum over [start, end) of every bucket field starting with `prefix` (e.g. `cost|model|`), by the rest
    of the field's name; whole days from daily buckets, the edges from hourly ones."""
    redis, gen = view
    buckets = cost_buckets(gen, org, start, end)
    rows = await queries.pipelined(redis, [("hgetall", key) for key in buckets])
    out: dict[str, int] = {}
    for row in rows:
        for fld, value in row.items():
            name = fld.decode()
            if name.startswith(prefix):
                rest = name[len(prefix) :]
                out[rest] = out.get(rest, 0) + int(value)
    return out


async def cost_of(view: queries.View, org: str, start: datetime, end: datetime, fld: str) -> int:
    """Exact nano-dollars of one cost field (cost_field) over [start, end)."""
    redis, gen = view
    replies = await queries.pipelined(redis, [("hget", key, fld) for key in cost_buckets(gen, org, start, end)])
    return sum(queries.as_int(r) for r in replies)


@dataclass(frozen=True, slots=True)
class SessionCost:
    """A session's cost over a range, with the student and mentor it counts for."""

    session: str
    student: str
    mentor: str
    nanos: int


async def attributed_sessions(view: queries.View, org: str, start: datetime, end: datetime) -> list[SessionCost]:
    """The sessions whose observations in [start, end) cost something, with that cost (exact to the hour
    like every cost) and the student and mentor it counts for: the sessions come from the per-day sets of
    the days the range touches, their cost from each session's cost by hour, their student from its
    state."""
    redis, gen = view
    first = start.astimezone(UTC).date()
    last = (end.astimezone(UTC) - timedelta(microseconds=1)).date()
    if last < first:
        return []
    merged = await queries.zunion(redis, [sessions_key(gen, org, day_index(d)) for d in days_between(first, last)])
    candidates = [pair for member, score in merged if int(score) and (pair := parse_session_member(member.decode()))]
    states = await queries.conversation_states(view, org, [conversation_digest(org, s) for _, s in candidates])
    out = []
    for (mentor, session), state in zip(candidates, states, strict=True):
        if nanos := session_cost(state, start, end):
            who = state.attribution()
            out.append(SessionCost(session, "" if who is None else who[0], mentor, nanos))
    return out


def session_cost(state: ConversationState, start: datetime, end: datetime) -> int:
    """Nano-dollars of a session's observations in [start, end), from its cost by hour: exact to the hour
    (both ends rounded down to theirs), like every cost."""
    lo, hi = hour_index(start.astimezone(UTC)), hour_index(end.astimezone(UTC))
    return sum(n for h, n in state.costs.items() if lo <= h < hi)


async def session_costs(view: queries.View, org: str, start: datetime, end: datetime) -> dict[tuple[str, str], int]:
    """(mentor, session) -> cost of the session's observations in [start, end) (`attributed_sessions`)."""
    return {(s.mentor, s.session): s.nanos for s in await attributed_sessions(view, org, start, end)}


async def latest_trace(
    view: queries.View, org: str, student: str, start: datetime, end: datetime
) -> tuple[str, int] | None:
    """(trace_id, time in ms) of the latest LLM trace in [start, end) of the student's sessions."""
    redis, gen = view
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    members: Any = await redis.smembers(chat_history.filter_key(gen, org, "student", student))
    best: tuple[int, str] | None = None
    for state in await queries.conversation_states(view, org, [int(m) for m in members]):
        for trace_id, ts in state.traces.items():
            if lo <= ts < hi and (best is None or (ts, trace_id) > best):
                best = (ts, trace_id)
    return None if best is None else (best[1], best[0])
