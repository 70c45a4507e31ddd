"""Reading back what the planner needs before it decides: an org's offset watermarks, which event ids it
has seen, and its conversations' state. One Lua read per org, all orgs of a batch in one round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys
from tables.scripts import Call, Script
from tables.writer import OrgWrite

READ_LUA = r"""
-- KEYS: the offsets hash, the observations hash, the erased-students hash, one seen hash per day, then the
-- conversations. ARGV[1]: JSON {o: offset fields, b: observation ids, e: erased-students fields (the
-- version, then the batch's students), s: [[event ids] per seen hash], n: conversations, f: their fields}
local a = cjson.decode(ARGV[1])
local function hmget(key, ids)
  local vals = {}
  for j = 1, #ids, 1000 do
    local part = redis.call('HMGET', key, unpack(ids, j, math.min(j + 999, #ids)))
    for n = 1, #part do vals[#vals + 1] = part[n] end
  end
  return vals
end
local offsets = {}
if #a.o > 0 then offsets = redis.call('HMGET', KEYS[1], unpack(a.o)) end
local obs = hmget(KEYS[2], a.b)
local erased = hmget(KEYS[3], a.e)
local seen = {}
for i, ids in ipairs(a.s) do seen[i] = hmget(KEYS[3 + i], ids) end
local convs = {}
local base = 3 + #a.s
for i = 1, a.n do convs[i] = redis.call('HMGET', KEYS[base + i], unpack(a.f)) end
return cjson.encode({offsets, obs, seen, convs, erased})
"""


@dataclass
class OrgState:
    """What Redis held for one org before the batch: the planner's preconditions."""

    offsets: dict[str, int | None] = field(default_factory=dict)
    seen: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (day, event_id) -> value
    observations: dict[str, str | None] = field(default_factory=dict)  # event_id -> value
    convs: dict[str, dict[str, str | None]] = field(default_factory=dict)  # id -> keys.CONV_STATE fields
    erased: set[str] = field(default_factory=set)  # tombstones of the batch's students that are erased
    erasures_version: str | None = None  # the erased-students hash's version: the apply's guard


@dataclass
class StateQuery:
    """What to read for one org: offset fields, observation ids, other event ids by their day (`YYYYMMDD`),
    conversation ids, the tombstones of the batch's students."""

    offset_fields: list[str]
    observations: list[str]
    seen: dict[str, list[str]]
    convs: list[str]
    tombstones: list[str] = field(default_factory=list)


class StateReader:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._read = Script(redis, READ_LUA)

    async def read(self, queries: dict[str, StateQuery]) -> dict[str, OrgState]:
        """Every org's state in one round trip. One Lua read per org returns it as one JSON document:
        thousands of small replies would cost more to parse than everything else in the batch."""
        calls: list[Call] = []
        for org, q in queries.items():
            key_list = [keys.offsets(org), keys.observations(org), keys.erasures(org)]
            key_list += [keys.seen(org, day) for day in q.seen]
            key_list += [keys.conversation(org, cid) for cid in q.convs]
            args = orjson.dumps(
                {
                    "o": q.offset_fields,
                    "b": q.observations,
                    "e": [keys.ERASURES_VERSION, *q.tombstones],
                    "s": list(q.seen.values()),
                    "n": len(q.convs),
                    "f": keys.CONV_STATE,
                }
            )
            calls.append((key_list, [args]))
        replies = await self._read.run_many(calls)
        states: dict[str, OrgState] = {}
        for (org, q), raw in zip(queries.items(), replies, strict=True):
            offsets, obs_vals, seen_vals, conv_vals, erased = (v or [] for v in orjson.loads(raw))  # {} for []
            st = OrgState()
            st.erasures_version = None if erased[0] is False else erased[0]
            st.erased = {t for t, val in zip(q.tombstones, erased[1:], strict=True) if val is not False}
            for fld, val in zip(q.offset_fields, offsets, strict=True):
                st.offsets[fld] = None if val is False else int(val)
            for event_id, val in zip(q.observations, obs_vals, strict=True):
                st.observations[event_id] = None if val is False else val
            for (day, ids), vals in zip(q.seen.items(), seen_vals, strict=True):
                for event_id, val in zip(ids, vals or [], strict=True):
                    st.seen[(day, event_id)] = None if val is False else val
            for cid, vals in zip(q.convs, conv_vals, strict=True):
                st.convs[cid] = {f: None if v is False else v for f, v in zip(keys.CONV_STATE, vals, strict=True)}
            states[org] = st
        return states


def as_after(state: OrgState, query: StateQuery, org: str, w: OrgWrite) -> None:
    """Make `state` (read while `w` was being applied, before or after it) what the org will hold once `w`
    is applied: its new watermarks, event-id values and conversations. What `w` does not write is what
    Redis held either way. So the next batch can be planned while `w` is applied; the apply's guards are
    the arbiter (a plan on a state that did not come true writes nothing and is made again)."""
    for fld, (_, new) in w.watermarks.items():
        if fld in state.offsets:
            state.offsets[fld] = new
    written = w.seen.get(keys.observations(org), {})
    for event_id in state.observations.keys() & written.keys():
        state.observations[event_id] = written[event_id][1]
    for day in query.seen:
        written = w.seen.get(keys.seen(org, day), {})
        for event_id in written.keys() & set(query.seen[day]):
            state.seen[(day, event_id)] = written[event_id][1]
    for cid in state.convs.keys() & w.conv_after.keys():
        after = w.conv_after[cid]
        state.convs[cid] = {f: after.get(f) for f in keys.CONV_STATE}


PRUNE_LUA = r"""
-- KEYS[1] an org's observations hash. ARGV: cursor, how many to scan, the oldest arrival day to keep.
-- Deletes the entries that arrived before it; returns the next cursor ("0" when the scan is through).
local r = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local oldest = tonumber(ARGV[3])
local gone = {}
for i = 1, #r[2], 2 do
  local arrived = tonumber(string.match(r[2][i + 1], '(%d+)%]$'))
  if arrived ~= nil and arrived < oldest then gone[#gone + 1] = r[2][i] end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
return r[1]
"""


async def prune_observations(redis: Redis, org: str, oldest_day: int, *, chunk: int = 1000) -> None:
    """Forget the observations of an org that arrived before `oldest_day` (a day index): past the dedup
    window a re-sent version counts as a new observation, as a re-sent event does."""
    script: Any = redis.register_script(PRUNE_LUA)
    cursor = "0"
    while True:
        cursor = (await script(keys=[keys.observations(org)], args=[cursor, chunk, oldest_day])).decode()
        if cursor == "0":
            return


SAVE_PROGRESS_LUA = r"""
-- KEYS[1] a group's progress hash. ARGV: field, offset, field, offset, ... Moves each field up, never down.
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '-1')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


async def save_progress(redis: Redis, group: str, offsets: dict[str, int]) -> None:
    """Record, per `topic:partition`, the last offset below which every record is applied (never lowered:
    a worker that lost a partition may still finish a batch of it)."""
    script: Any = redis.register_script(SAVE_PROGRESS_LUA)
    args: list[str | int] = []
    for fld, offset in offsets.items():
        args += [fld, offset]
    await script(keys=[keys.progress(group)], args=args)
