"""Each LLM observation and each trace, as the observations and traces endpoints list them.

The cost family (tables/aggregates/llm_cost.py) keeps every applied observation in the org's observations
hash (its contribution, version, model, session, trace and type) and, for the observations whose event day
is within the observation retention (AIA_OBSERVATION_RETENTION_DAYS), indexes them:

- `keys.observation_index`: event id -> the applied version's time;
- `keys.trace_index`: trace id -> the earliest time of its observations (`ZADD LT`: any order, any copies);
- `keys.trace_sessions`: the sessions each trace's observations name (`llm_cost.trace_session`).

What a trace is served with is read from these alone: its session is the least of the sessions its
observations name (one, unless a producer mixed them), its student that session's (the student its cost
counts for). The worker's hourly housekeeping drops what is past the retention (`prune_traces`); an
erasure drops the erased student's sessions from their traces, and the traces no other session names
(tables/erase.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.schemas import format_timestamp
from tables import ids, keys, queries
from tables.aggregates import llm_cost
from tables.aggregates.llm_cost import AppliedObservation
from tables.buckets import DAY_MS
from tables.conversations import conversation_digest
from tables.scripts import Script, load

PRUNE_TRACES_LUA = load("tables", "prune_traces")  # tables/lua/prune_traces.lua
# A search reads every listed observation (or trace) of the org; past this many, it is refused (a 400
# naming `search`) rather than holding the API for seconds.
SEARCH_MAX = 20_000
CHUNK = 1000
# The platform's total_cost pattern (`^-?\d{0,6}(?:\.\d{0,12})?$`) holds costs below a million dollars.
MAX_TOTAL_COST_NANOS = 10**15 - 1


async def prune_traces(redis: Redis, gen: int, org: str, oldest_day: int, *, chunk: int = 500) -> int:
    """Drop the org's observations and traces whose time is before `oldest_day` (a day index), each call
    of the script at most `chunk` of each; returns how many were dropped."""
    script = Script(redis, PRUNE_TRACES_LUA)
    index_keys = [keys.observation_index(gen, org), keys.trace_index(gen, org), keys.trace_sessions(gen, org)]
    dropped = 0
    while n := int(await script.run(index_keys, [oldest_day * DAY_MS, chunk])):
        dropped += n
    return dropped


# --- observations ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """An observation as listed: its event id and what the observations hash keeps of it."""

    event_id: str
    applied: AppliedObservation


async def count_observations(view: queries.View, org: str) -> int:
    redis, gen = view
    return int(await redis.zcard(keys.observation_index(gen, org)))


async def observation_page(
    view: queries.View, org: str, offset: int, limit: int, *, newest_first: bool
) -> list[Listed]:
    """The listed observations from `offset`, at most `limit`, by time (ties by event id)."""
    redis, gen = view
    ids: Any = await redis.zrange(keys.observation_index(gen, org), offset, offset + limit - 1, desc=newest_first)
    return await _records(view, org, [bytes(i).decode() for i in ids])


async def all_observations(view: queries.View, org: str, *, newest_first: bool) -> list[Listed]:
    """Every listed observation, by time (a search's input; the caller bounds it by `SEARCH_MAX`)."""
    out: list[Listed] = []
    async for rows in _by_score(view[0], keys.observation_index(view[1], org), newest_first):
        out += await _records(view, org, [event_id for event_id, _ in rows])
    return out


async def _by_score(redis: Redis, key: str, newest_first: bool) -> AsyncIterator[list[tuple[str, int]]]:
    """A sorted set's members with their scores, in order, `CHUNK` at a time."""
    start = 0
    while True:
        rows: Any = await redis.zrange(key, start, start + CHUNK - 1, desc=newest_first, withscores=True)
        yield [(bytes(member).decode(), int(score)) for member, score in rows]
        if len(rows) < CHUNK:
            return
        start += CHUNK


async def observation(view: queries.View, org: str, event_id: str) -> Listed | None:
    """One listed observation by its event id; None when it is not listed (unknown, past the retention)."""
    redis, gen = view
    if await redis.zscore(keys.observation_index(gen, org), event_id) is None:
        return None
    found = await _records(view, org, [event_id])
    return found[0] if found else None


async def _records(view: queries.View, org: str, event_ids: list[str]) -> list[Listed]:
    if not event_ids:
        return []
    redis, gen = view
    raw: Any = await redis.hmget(keys.observations(gen, org), [keys.observation_field(e) for e in event_ids])
    out = []
    for event_id, value in zip(event_ids, raw, strict=True):
        if value is None:  # pruned between the two reads
            continue
        applied = AppliedObservation.parse(bytes(value))
        if applied.trace_id is not None:
            out.append(Listed(event_id, applied))
    return out


def served_observation(o: Listed) -> dict[str, Any]:
    """An observation in the platform's `Observation` shape. What the contract's events do not carry is
    null, or the platform's default (`level` DEFAULT, `name` empty); usage and cost are JSON texts as
    the platform sends them, the cost exact to the nano-dollar."""
    a = o.applied
    when = format_timestamp(a.ts_ms)
    cost = llm_cost.usd_text(a.cost, 9)
    usage = {"input": a.input_tokens, "output": a.output_tokens}
    return {
        "id": o.event_id, "trace_id": a.trace_id, "type": a.kind or "", "parent_observation_id": None,
        "start_time": when, "end_time": None, "name": "", "metadata": None, "level": "DEFAULT",
        "status_message": None, "version": None, "input": None, "output": None,
        "provided_model_name": a.model, "internal_model_id": None, "model_parameters": None,
        "provided_usage_details": orjson.dumps(usage).decode(),
        "usage_details": orjson.dumps({**usage, "total": a.input_tokens + a.output_tokens}).decode(),
        "provided_cost_details": f'{{"total":{cost}}}' if a.cost_given else "{}",
        "cost_details": "{}" if a.unpriced else f'{{"total":{cost}}}',
        "total_cost": None if a.unpriced or a.cost > MAX_TOTAL_COST_NANOS else cost,
        "completion_start_time": None, "prompt_id": None, "prompt_name": None, "prompt_version": None,
        "created_at": when, "updated_at": None, "event_ts": when, "is_deleted": 0,
    }  # fmt: skip


def observation_matches(o: Listed, needle: str) -> bool:
    """Whether the search term is in the observation's id, trace, type or model, in any case."""
    a = o.applied
    return any(needle in (v or "").casefold() for v in (o.event_id, a.trace_id, a.kind, a.model))


# --- traces ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TraceRow:
    trace_id: str
    first_ms: int
    session: str | None
    student: str | None


async def count_traces(view: queries.View, org: str) -> int:
    redis, gen = view
    return int(await redis.zcard(keys.trace_index(gen, org)))


async def trace_page(view: queries.View, org: str, offset: int, limit: int, *, newest_first: bool) -> list[TraceRow]:
    """The listed traces from `offset`, at most `limit`, by their first time (ties by id)."""
    redis, gen = view
    rows: Any = await redis.zrange(
        keys.trace_index(gen, org), offset, offset + limit - 1, desc=newest_first, withscores=True
    )
    return await _traces(view, org, [(bytes(t).decode(), int(s)) for t, s in rows])


async def all_traces(view: queries.View, org: str, *, newest_first: bool) -> list[TraceRow]:
    """Every listed trace by its first time (a search's input; the caller bounds it by `SEARCH_MAX`)."""
    out: list[TraceRow] = []
    async for rows in _by_score(view[0], keys.trace_index(view[1], org), newest_first):
        out += await _traces(view, org, rows)
    return out


async def trace(view: queries.View, org: str, trace_id: str) -> TraceRow | None:
    redis, gen = view
    score = await redis.zscore(keys.trace_index(gen, org), trace_id)
    if score is None:
        return None
    return (await _traces(view, org, [(trace_id, int(score))]))[0]


async def _traces(view: queries.View, org: str, rows: list[tuple[str, int]]) -> list[TraceRow]:
    """Each trace with its session (the least its observations name) and that session's student."""
    if not rows:
        return []
    redis, gen = view
    calls = []
    for trace_id, _ in rows:
        prefix = llm_cost.trace_prefix(trace_id).encode()
        calls.append(("zrangebylex", keys.trace_sessions(gen, org), b"[" + prefix, b"(" + prefix + b"\xff", 0, 1))
    firsts = await queries.pipelined(redis, calls)
    sessions = [
        bytes(found[0])[len(llm_cost.trace_prefix(t).encode()) :].decode() if found else None
        for (t, _), found in zip(rows, firsts, strict=True)
    ]
    digests = [conversation_digest(org, s) for s in sessions if s is not None]
    states = iter(await queries.conversation_states(view, org, digests))
    out = []
    for (trace_id, first_ms), session in zip(rows, sessions, strict=True):
        student = None
        if session is not None:
            who = next(states).attribution()
            student = who[0] if who is not None and who[0] else None
        out.append(TraceRow(trace_id, first_ms, session, student))
    return out


def served_trace(org: str, t: TraceRow) -> dict[str, Any]:
    """A trace in the platform's `Trace` shape: its first observation's time, its session and that session's
    student; what the contract's events do not carry (name, tags, input, output, metadata) empty or null."""
    when = format_timestamp(t.first_ms)
    return {
        "id": t.trace_id, "timestamp": when, "name": "", "user_id": t.student, "metadata": None,
        "release": None, "version": None, "tags": [], "input": None, "output": None,
        "session_id": None if t.session is None else ids.served(org, ids.CONVERSATION, t.session), "created_at": when, "updated_at": None, "event_ts": when, "is_deleted": 0,
    }  # fmt: skip


def trace_matches(t: TraceRow, needle: str) -> bool:
    """Whether the search term is in the trace's id, session or student, in any case."""
    return any(needle in (v or "").casefold() for v in (t.trace_id, t.session, t.student))


async def forget_sessions(redis: Redis, gen: int, org: str, pairs: set[tuple[str, str]]) -> int:
    """An erased student's (trace, session) pairs: each trace no longer names the session, and a trace no
    other session names is no longer listed. Returns how many traces are no longer listed."""
    index, named = keys.trace_index(gen, org), keys.trace_sessions(gen, org)
    dropped = 0
    for trace_id, session in sorted(pairs):
        await redis.zrem(named, llm_cost.trace_session(trace_id, session))
        prefix = llm_cost.trace_prefix(trace_id).encode()
        if not await redis.zrangebylex(named, b"[" + prefix, b"(" + prefix + b"\xff", 0, 1):
            dropped += int(await redis.zrem(index, trace_id))
    return dropped
