"""The atomic batch writer: one org's deltas, its source offsets and its guards applied by one Lua script.

A batch is split by org; each org's part becomes an `OrgWrite`. The script first checks that the org's
offset watermarks and every guarded field still hold what the planner read; only then does it write
everything. A mismatch (a replayed batch already applied, another worker racing in a rebalance) writes
nothing and reports a conflict, and the caller re-plans that org from fresh state. So an org's
aggregates always equal exactly the events up to its watermarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys
from tables.buckets import Grain
from tables.scripts import Script

APPLY_LUA = r"""
-- KEYS[1] the org's offsets hash, then every key the write touches. ARGV[1] JSON of the write (below), then
-- the fields and new values of the conversations it writes (`c`: bucket, its field's ARGV, the version it
-- was planned on, its value's ARGV).
local p = cjson.decode(ARGV[1])
local offsets = KEYS[1]
local function same(cur, expected)
  if expected == cjson.null then return cur == false end
  return cur == expected
end
for _, w in ipairs(p.w) do
  if not same(redis.call('HGET', offsets, w[1]), w[2]) then return {0, 'offset ' .. w[1]} end
end
for _, g in ipairs(p.g) do
  if not same(redis.call('HGET', KEYS[g[1]], g[2]), g[3]) then return {0, 'guard ' .. KEYS[g[1]] .. ' ' .. g[2]} end
end
for _, c in ipairs(p.c) do
  local cur = redis.call('HGET', KEYS[c[1]], ARGV[c[2]])
  if not same(cur and string.match(cur, '^%d+'), c[3]) then return {0, 'conversation in ' .. KEYS[c[1]]} end
end
for _, d in ipairs(p.d) do
  local key, ids, expected = KEYS[d[1]], d[2], d[3]
  for i = 1, #ids, 1000 do
    local cur = redis.call('HMGET', key, unpack(ids, i, math.min(i + 999, #ids)))
    for n = 1, #cur do
      if not same(cur[n], expected[i + n - 1]) then return {0, 'seen ' .. ids[i + n - 1]} end
    end
  end
end
-- The counters first, each by pcall: one that would leave 64 bits (hostile values) undoes those before it
-- and refuses the whole write before anything else is written (a script's error keeps what it wrote).
for n, o in ipairs(p.i) do
  local v = redis.pcall('HINCRBY', KEYS[o[1]], o[2], o[3])
  if type(v) == 'table' and v.err then
    for m = n - 1, 1, -1 do  -- negated as text: a double would round increments past 2^53
      local d = p.i[m][3]
      redis.call('HINCRBY', KEYS[p.i[m][1]], p.i[m][2], string.sub(d, 1, 1) == '-' and string.sub(d, 2) or '-' .. d)
    end
    return redis.error_reply('ERR apply script refused: ' .. KEYS[o[1]] .. ' ' .. o[2] .. ': ' .. v.err)
  end
end
for _, w in ipairs(p.w) do redis.call('HSET', offsets, w[1], w[3]) end
for _, c in ipairs(p.c) do redis.call('HSET', KEYS[c[1]], ARGV[c[2]], ARGV[c[4]]) end
for _, d in ipairs(p.d) do
  local key, ids, values = KEYS[d[1]], d[2], d[4]
  for i = 1, #ids, 500 do
    local args = {}
    for n = i, math.min(i + 499, #ids) do
      args[#args + 1] = ids[n]
      args[#args + 1] = values[n]
    end
    redis.call('HSET', key, unpack(args))
  end
end
for _, o in ipairs(p.z) do
  local key = KEYS[o[1]]
  for i = 2, #o, 2 do redis.call('ZINCRBY', key, o[i + 1], o[i]) end
end
for _, o in ipairs(p.s) do redis.call('HSET', KEYS[o[1]], o[2], o[3]) end
for _, o in ipairs(p.r) do redis.call('ZREM', KEYS[o[1]], o[2]) end
for _, o in ipairs(p.a) do redis.call('ZADD', KEYS[o[1]], o[3], o[2]) end
local function members(command, o)
  for i = 2, #o, 1000 do redis.call(command, KEYS[o[1]], unpack(o, i, math.min(i + 999, #o))) end
end
for _, o in ipairs(p.sr) do members('SREM', o) end
for _, o in ipairs(p.sa) do members('SADD', o) end
for _, o in ipairs(p.an) do redis.call('ZADD', KEYS[o[1]], 'NX', o[3], o[2]) end
for _, o in ipairs(p.m) do
  local cur = tonumber(redis.call('HGET', KEYS[o[1]], o[2]) or '-1')
  if tonumber(o[3]) > cur then redis.call('HSET', KEYS[o[1]], o[2], o[3]) end
end
for _, o in ipairs(p.x) do redis.call('EXPIREAT', KEYS[o[1]], o[2]) end
-- The published counters it changed are marked with this apply's number, atomically with the change: the
-- changefeed publishes them from these marks (tables/changefeed.py), whoever applied and whenever.
if p.mk then
  local marks = KEYS[p.mk]
  local seq = redis.call('HINCRBY', marks, '#', 1)
  for i = 1, #p.pub, 500 do
    local args = {}
    for n = i, math.min(i + 499, #p.pub) do
      args[#args + 1] = p.pub[n]
      args[#args + 1] = seq
    end
    redis.call('HSET', marks, unpack(args))
  end
end
return {1, ''}
"""


@dataclass
class OrgWrite:
    """Everything one batch does to one org, with the preconditions it was planned under."""

    org: str
    gen: int  # the generation it writes (tables/keys.py)
    _keys: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    guards: dict[tuple[int, str], str | None] = field(default_factory=dict)
    hincrs: dict[tuple[int, str], int] = field(default_factory=dict)
    zincrs: dict[int, dict[str, int]] = field(default_factory=dict)  # key index -> member -> increment
    sets: dict[tuple[int, str], str] = field(default_factory=dict)
    zrems: dict[tuple[int, str], None] = field(default_factory=dict)
    zadds: dict[tuple[int, str], float] = field(default_factory=dict)
    nx_zadds: dict[tuple[int, str], float] = field(default_factory=dict)
    maxes: dict[tuple[int, str], int] = field(default_factory=dict)
    expires: dict[int, int] = field(default_factory=dict)
    # event_id -> (value before the batch, value after), per hash key (observations): checked and written in bulk
    seen: dict[str, dict[str, tuple[str | None, str]]] = field(default_factory=dict)
    # (bucket key index, field) -> (the version it was planned on, or None for a new one; its new value)
    convs: dict[tuple[int, bytes], tuple[int | None, bytes]] = field(default_factory=dict)
    # set key index -> members to add, and to remove (the chat-history filter indexes)
    sadds: dict[int, dict[str, None]] = field(default_factory=dict)
    srems: dict[int, dict[str, None]] = field(default_factory=dict)
    # (grain, bucket index, field) -> delta; (day index, mentor or None, student) -> delta
    bucket_deltas: dict[tuple[Grain, int, str], int] = field(default_factory=dict)
    top_deltas: dict[tuple[int, str | None, str], int] = field(default_factory=dict)  # (half hour, mentor, student)
    # (half hour of a session's start, its first mentor or "") -> [sessions, messages] to add there
    session_deltas: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    events: int = 0
    # conversation id -> its state as it will be once this write is applied
    conv_after: dict[str, Any] = field(default_factory=dict)
    state: Any = None  # the OrgState it was planned from (tables/state.py)
    items: list[Any] = field(default_factory=list)  # the items (agents/planner.py) it was planned from
    replayed: list[Any] = field(default_factory=list)  # items counted before (a re-send or a replay)
    _incr_order: list[tuple[tuple[int, str], int]] = field(default_factory=list)
    # Mark the published counters it changes for the changefeed (tables/changefeed.py): set for the
    # generation served, not for one a rebuild is building.
    publish: bool = False

    def __post_init__(self) -> None:
        self.k(keys.offsets(self.gen, self.org))  # KEYS[1] is always the offsets hash

    def k(self, key: str) -> int:
        idx = self._index.get(key)
        if idx is None:
            self._keys.append(key)
            idx = self._index[key] = len(self._keys)  # Lua is 1-based
        return idx

    @property
    def keys(self) -> list[str]:
        return self._keys

    def watermark(self, offset_field: str, expected: int | None, new: int) -> None:
        prev = self.watermarks.get(offset_field)
        self.watermarks[offset_field] = (expected if prev is None else prev[0], max(new, prev[1] if prev else new))

    def mark_seen(self, key: str, event_id: str, expected: str | None, new: str) -> None:
        ids = self.seen.setdefault(key, {})
        prev = ids.get(event_id)
        ids[event_id] = (expected if prev is None else prev[0], new)

    def put_conversation(self, bucket: str, fld: bytes, expected: int | None, value: bytes) -> None:
        """Write a conversation's new value, if it still has the version it was planned on (None: absent)."""
        self.convs[(self.k(bucket), fld)] = (expected, value)

    def sadd(self, key: str, member: str) -> None:
        k = self.k(key)
        self.srems.get(k, {}).pop(member, None)
        self.sadds.setdefault(k, {})[member] = None

    def srem(self, key: str, member: str) -> None:
        k = self.k(key)
        self.sadds.get(k, {}).pop(member, None)
        self.srems.setdefault(k, {})[member] = None

    def guard(self, key: str, fld: str, expected: str | None) -> None:
        self.guards.setdefault((self.k(key), fld), expected)

    def hincr(self, key: str, fld: str, n: int = 1) -> None:
        slot = (self.k(key), fld)
        self.hincrs[slot] = self.hincrs.get(slot, 0) + n

    def zincr(self, key: str, member: str, n: int = 1) -> None:
        members = self.zincrs.setdefault(self.k(key), {})
        members[member] = members.get(member, 0) + n

    def zincr_members(self, key: str, increments: dict[str, int]) -> None:
        """ZINCRBY each member of the sorted set by its increment."""
        members = self.zincrs.setdefault(self.k(key), {})
        if not members:
            members.update(increments)
            return
        for member, n in increments.items():
            members[member] = members.get(member, 0) + n

    def hset(self, key: str, fld: str, value: str) -> None:
        self.sets[(self.k(key), fld)] = value

    def zadd(self, key: str, member: str, score: float) -> None:
        slot = (self.k(key), member)
        self.zrems.pop(slot, None)
        self.zadds[slot] = score

    def zrem(self, key: str, member: str) -> None:
        slot = (self.k(key), member)
        self.zadds.pop(slot, None)
        self.zrems[slot] = None

    def nx_zadd(self, key: str, member: str, score: float) -> None:
        self.nx_zadds.setdefault((self.k(key), member), score)

    def hmax(self, key: str, fld: str, value: int) -> None:
        slot = (self.k(key), fld)
        self.maxes[slot] = max(value, self.maxes.get(slot, value))

    def expire_at(self, key: str, epoch_s: int | None) -> None:
        """EXPIREAT for the key (None: kept forever, nothing to do)."""
        if epoch_s is not None:
            self.expires[self.k(key)] = epoch_s

    def marks(self) -> list[str]:
        """The changefeed marks (`keys.counter_mark`) of the published counters this write changes: hash
        counters of hourly and daily buckets, daily and weekly top-students sets (after payload())."""
        out = []
        for (k, f), _ in self._incr_order:
            key = self._keys[k - 1]
            if keys.published_kind(key) == "h":
                out.append(keys.counter_mark(key, f, "h"))
        for k, members in self.zincrs.items():
            key = self._keys[k - 1]
            if keys.published_kind(key) == "z" and any(members.values()):
                out.append(keys.counter_mark(key, "", "z"))
        return out

    def payload(self) -> list[bytes]:
        """The script's ARGV: the write as JSON, then the conversations' new values."""
        self._incr_order = [(slot, n) for slot, n in self.hincrs.items() if n]
        doc = orjson.dumps(
            {
                "w": [[f, None if exp is None else str(exp), str(new)] for f, (exp, new) in self.watermarks.items()],
                "g": [[k, f, exp] for (k, f), exp in self.guards.items()],
                "d": [
                    [self.k(key), list(ids), [e for e, _ in ids.values()], [v for _, v in ids.values()]]
                    for key, ids in self.seen.items()
                ],
                "i": [[k, f, str(n)] for (k, f), n in self._incr_order],
                "z": [[k, *_pairs(members)] for k, members in self.zincrs.items() if any(members.values())],
                "s": [[k, f, v] for (k, f), v in self.sets.items()],
                "an": [[k, m, _score(s)] for (k, m), s in self.nx_zadds.items()],
                "r": [[k, m] for (k, m) in self.zrems],
                "a": [[k, m, _score(s)] for (k, m), s in self.zadds.items()],
                "m": [[k, f, str(v)] for (k, f), v in self.maxes.items()],
                "x": [[k, ts] for k, ts in self.expires.items()],
                "c": [
                    [k, 2 * n, None if exp is None else str(exp), 2 * n + 1]
                    for n, ((k, _), (exp, _)) in enumerate(self.convs.items(), start=1)
                ],
                "sa": [[k, *members] for k, members in self.sadds.items() if members],
                "sr": [[k, *members] for k, members in self.srems.items() if members],
                **self._marking(),
            }
        )
        out: list[bytes] = [doc]
        for (_, fld), (_, value) in self.convs.items():
            out += (fld, value)
        return out

    def _marking(self) -> dict[str, Any]:
        marks = self.marks() if self.publish else []
        return {"mk": self.k(keys.changefeed_marks(self.org)), "pub": marks} if marks else {}


def _pairs(members: dict[str, int]) -> list[str]:
    """member, increment, member, increment, ... (the increments that are not 0)."""
    out: list[str] = []
    for member, n in members.items():
        if n:
            out += (member, str(n))
    return out


def _score(score: float) -> str:
    """A sorted-set score as Redis reads it: integral ones (milliseconds) without a fraction."""
    return str(int(score)) if score == int(score) else repr(score)


class Writer:
    """Applies OrgWrites with one pipelined round trip; returns the orgs whose preconditions failed."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = Script(redis, APPLY_LUA)

    async def apply(self, writes: list[OrgWrite]) -> dict[str, str]:
        if not writes:
            return {}
        # Each script is atomic on its own; orgs may live in different cluster slots.
        results = await self._script.run_many([(w.keys, w.payload()) for w in writes])
        conflicts = {}
        for w, (ok, reason) in zip(writes, results, strict=True):
            if int(ok) != 1:
                conflicts[w.org] = reason.decode() if isinstance(reason, bytes) else str(reason)
        return conflicts
