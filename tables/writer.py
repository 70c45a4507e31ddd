"""The atomic batch writer: one org's deltas, its source offsets and its guards applied by one Lua script
(`tables/lua/apply.lua`).

A batch is split by org; each org's part becomes an `OrgWrite`. The script first checks that the org's
offset watermarks and every guarded field still hold what the planner read; only then does it write
everything. A mismatch (a replayed batch already applied, another worker racing in a rebalance) writes
nothing and reports a conflict, and the caller re-plans that org from fresh state. So an org's
aggregates always equal exactly the events up to its watermarks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis

from tables import keys
from tables.conversations import ConversationState
from tables.scripts import Script, load

if TYPE_CHECKING:
    from streams.schemas import Event
    from tables.state import OrgState

APPLY_LUA = load("tables", "apply", include=("conversation",))  # tables/lua/apply.lua


@dataclass
class OrgWrite:
    """Everything one batch does to one org, with the preconditions it was planned under."""

    org: str
    gen: int  # the generation it writes (tables/keys.py)
    state: OrgState  # the state it was planned from
    items: list[Event]  # the events it was planned from
    _keys: list[str] = field(default_factory=list)
    _index: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    guards: dict[tuple[int, str], str | None] = field(default_factory=dict)
    hincrs: dict[tuple[int, str], int] = field(default_factory=dict)
    zincrs: dict[int, dict[str, int]] = field(default_factory=dict)  # key index -> member -> increment
    sets: dict[tuple[int, str], str] = field(default_factory=dict)
    zrems: dict[tuple[int, str], None] = field(default_factory=dict)
    zadds: dict[tuple[int, str], float] = field(default_factory=dict)
    zmins: dict[int, dict[str, int]] = field(default_factory=dict)  # key index -> member -> a score (ZADD LT)
    maxes: dict[tuple[int, str], int] = field(default_factory=dict)
    expires: dict[int, int] = field(default_factory=dict)
    # event_id -> (value before the batch, value after), per observations hash: checked and written in bulk,
    # each under its field `keys.observation_field` (made once, in `payload`)
    seen: dict[str, dict[str, tuple[bytes | None, bytes]]] = field(default_factory=dict)
    # (bucket key index, field) -> (the version it was planned on, or None for a new one; its new value)
    convs: dict[tuple[int, bytes], tuple[int | None, bytes]] = field(default_factory=dict)
    # set key index -> members to add, and to remove (the chat-history filter indexes)
    sadds: dict[int, dict[str, None]] = field(default_factory=dict)
    srems: dict[int, dict[str, None]] = field(default_factory=dict)
    events: int = 0  # events that count (agents/planner.py)
    # conversation id -> its state as it will be once this write is applied
    conv_after: dict[str, ConversationState] = field(default_factory=dict)
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

    def mark_seen(self, key: str, event_id: str, expected: bytes | None, new: bytes) -> None:
        """Set the event's entry to `new` if it still holds `expected` (None: absent) when the write applies."""
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

    def sadd_members(self, key: str, members: Iterable[str]) -> None:
        """SADD each member to the set."""
        k = self.k(key)
        removed = self.srems.get(k)
        if removed:
            for member in members:
                removed.pop(member, None)
        self.sadds.setdefault(k, {}).update(dict.fromkeys(members))

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

    def zadd_lt(self, key: str, scores: dict[str, int]) -> None:
        """ZADD LT each member with its score: added when absent, else lowered to it, never raised (the
        minimum of every score ever written: any order, any copies give the same set)."""
        members = self.zmins.setdefault(self.k(key), {})
        if not members:
            members.update(scores)
            return
        for member, score in scores.items():
            held = members.get(member)
            if held is None or score < held:
                members[member] = score

    def zrem(self, key: str, member: str) -> None:
        slot = (self.k(key), member)
        self.zadds.pop(slot, None)
        self.zrems[slot] = None

    def hmax(self, key: str, fld: str, value: int) -> None:
        slot = (self.k(key), fld)
        self.maxes[slot] = max(value, self.maxes.get(slot, value))

    def expire_at(self, key: str, epoch_s: int | None) -> None:
        """EXPIREAT for the key (None: kept forever, nothing to do)."""
        if epoch_s is not None:
            self.expires[self.k(key)] = epoch_s

    def operations(self) -> int:
        """About how many Redis operations the apply script runs for this write (what bounds its time): each
        check, counter, member, field and expiry, and the changefeed mark of each published counter it changes
        (`marked`: an HSET field each; a write to the generation a rebuild builds marks none, so it does
        fewer). On the traffic model's backfill each costs Redis about 2 µs, the payload's decoding included
        (`python -m bench.script_time`)."""
        return (
            self.marked()
            + len(self.watermarks) * 2
            + len(self.guards)
            + len(self.convs) * 2
            + sum(len(ids) for ids in self.seen.values()) * 2
            + len(self.hincrs)
            + sum(len(members) for members in self.zincrs.values())
            + len(self.sets)
            + len(self.zrems)
            + len(self.zadds)
            + sum(len(members) for members in self.zmins.values())
            + len(self.maxes) * 2
            + len(self.expires)
            + sum(len(members) for members in self.sadds.values())
            + sum(len(members) for members in self.srems.values())
        )

    def marked(self) -> int:
        """How many changefeed marks the write leaves when it publishes: `len(self.marks())`, counted without
        making them (before `payload()`)."""
        hashes = {k for k, _ in self.hincrs}
        published = {k for k in hashes if keys.published_kind(self._keys[k - 1]) == "h"}
        n = sum(1 for (k, _), incr in self.hincrs.items() if incr and k in published)
        for k, members in self.zincrs.items():
            if keys.published_kind(self._keys[k - 1]) == "z" and any(members.values()):
                n += 1
        return n

    def marks(self) -> list[str]:
        """The changefeed marks (`keys.counter_mark`) of the published counters this write changes: hash
        counters of hourly and daily buckets, daily and weekly top-students sets (after payload())."""
        out = []
        kinds: dict[int, str | None] = {}  # key index -> its published kind, found once per key
        for (k, f), _ in self._incr_order:
            kind = kinds.get(k, "")
            if kind == "":
                kind = kinds[k] = keys.published_kind(self._keys[k - 1])
            if kind == "h":
                out.append(keys.counter_mark(self._keys[k - 1], f, "h"))
        for k, members in self.zincrs.items():
            key = self._keys[k - 1]
            if keys.published_kind(key) == "z" and any(members.values()):
                out.append(keys.counter_mark(key, "", "z"))
        return out

    def payload(self) -> list[bytes]:
        """The script's ARGV: the write as JSON, then the conversations' new values, then the observations'."""
        self._incr_order = [(slot, n) for slot, n in self.hincrs.items() if n]
        doc = orjson.dumps(
            {
                "w": [[f, None if exp is None else str(exp), str(new)] for f, (exp, new) in self.watermarks.items()],
                "g": [[k, f, exp] for (k, f), exp in self.guards.items()],
                "d": self._seen_argv(),
                "i": [[k, f, str(n)] for (k, f), n in self._incr_order],
                "z": [[k, *_pairs(members)] for k, members in self.zincrs.items() if any(members.values())],
                "s": [[k, f, v] for (k, f), v in self.sets.items()],
                "r": [[k, m] for (k, m) in self.zrems],
                "a": [[k, m, _score(s)] for (k, m), s in self.zadds.items()],
                "lt": [[k, *_scored(members)] for k, members in self.zmins.items() if members],
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
        for ids in self.seen.values():
            for event_id, (expected, value) in ids.items():
                out += (keys.observation_field(event_id), expected or b"", value)
        return out

    def _seen_argv(self) -> list[list[int]]:
        """Per hash of `seen`: [its key, its first ARGV, how many fields]; the fields follow the
        conversations' values in ARGV as (field, value expected or "" for none, new value): binary, as kept."""
        out = []
        first = 2 + 2 * len(self.convs)
        for key, ids in self.seen.items():
            out.append([self.k(key), first, len(ids)])
            first += 3 * len(ids)
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


def _scored(members: dict[str, int]) -> list[str]:
    """score, member, score, member, ... (ZADD's order)."""
    out: list[str] = []
    for member, score in members.items():
        out += (str(score), member)
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
