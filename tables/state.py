"""Reading back what the planner needs before it decides: an org's offset watermarks, which event ids it
has seen, and its conversations' state. One Lua read per org, all orgs of a batch in one round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys

READ_LUA = r"""
-- KEYS: the offsets hash, one seen hash per day, then the conversations. ARGV[1]: JSON
-- {o: offset fields, s: [[event ids] per seen hash], n: number of conversations, f: conversation fields}
local a = cjson.decode(ARGV[1])
local offsets = {}
if #a.o > 0 then offsets = redis.call('HMGET', KEYS[1], unpack(a.o)) end
local seen = {}
for i, ids in ipairs(a.s) do
  local vals = {}
  for j = 1, #ids, 1000 do
    local part = redis.call('HMGET', KEYS[1 + i], unpack(ids, j, math.min(j + 999, #ids)))
    for n = 1, #part do vals[#vals + 1] = part[n] end
  end
  seen[i] = vals
end
local convs = {}
local base = 1 + #a.s
for i = 1, a.n do convs[i] = redis.call('HMGET', KEYS[base + i], unpack(a.f)) end
return cjson.encode({offsets, seen, convs})
"""


@dataclass
class OrgState:
    """What Redis held for one org before the batch: the planner's preconditions."""

    offsets: dict[str, int | None] = field(default_factory=dict)
    seen: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (day, event_id) -> value
    convs: dict[str, dict[str, str | None]] = field(default_factory=dict)  # id -> keys.CONV_STATE fields


@dataclass
class StateQuery:
    """What to read for one org: offset fields, event ids by their day (`YYYYMMDD`), conversation ids."""

    offset_fields: list[str]
    seen: dict[str, list[str]]
    convs: list[str]


class StateReader:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._read: Any = redis.register_script(READ_LUA)

    async def read(self, queries: dict[str, StateQuery]) -> dict[str, OrgState]:
        """Every org's state in one round trip. One Lua read per org returns it as one JSON document:
        thousands of small replies would cost more to parse than everything else in the batch."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for org, q in queries.items():
                key_list = [keys.offsets(org), *(keys.seen(org, day) for day in q.seen)]
                key_list += [keys.conversation(org, cid) for cid in q.convs]
                args = orjson.dumps(
                    {"o": q.offset_fields, "s": list(q.seen.values()), "n": len(q.convs), "f": keys.CONV_STATE}
                )
                await self._read(keys=key_list, args=[args], client=pipe)
            replies = await pipe.execute()
        states: dict[str, OrgState] = {}
        for (org, q), raw in zip(queries.items(), replies, strict=True):
            offsets, seen_vals, conv_vals = (v or [] for v in orjson.loads(raw))  # Lua's cjson writes {} for []
            st = OrgState()
            for fld, val in zip(q.offset_fields, offsets or [], strict=True):
                st.offsets[fld] = None if val is False else int(val)
            for (day, ids), vals in zip(q.seen.items(), seen_vals, strict=True):
                for event_id, val in zip(ids, vals or [], strict=True):
                    st.seen[(day, event_id)] = None if val is False else val
            for cid, vals in zip(q.convs, conv_vals, strict=True):
                st.convs[cid] = {f: None if v is False else v for f, v in zip(keys.CONV_STATE, vals, strict=True)}
            states[org] = st
        return states
