"""One batch, start to end: validate, dead-letter the bad, plan and apply the good atomically per org.

Independent of Kafka clients, so it can be driven by the worker (agents/worker.py), a benchmark or a tool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from agents.planner import CONV_FIELDS, Item, OrgState, Planner, Retention, state_reads
from streams.deadletter import DeadLetter, Record
from streams.exceptions import InvalidEvent
from streams.prices import PriceTable
from streams.schemas import Limits, parse
from streams.settings import Settings
from tables import keys
from tables.writer import OrgWrite, Writer

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 50


@dataclass
class BatchResult:
    applied: int = 0  # events that changed an aggregate (new, or a replacing observation)
    skipped: int = 0  # already applied (replay) or duplicates
    dead: int = 0
    orgs: set[str] = field(default_factory=set)
    attempts: int = 1


SendDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]
# (record key, record value) pairs for the compacted analytics-aggregates topic
Publish = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]


class BatchProcessor:
    def __init__(
        self, settings: Settings, redis: Redis, send_dead_letters: SendDeadLetters, publish: Publish | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.send_dead_letters = send_dead_letters
        self.publish = publish
        self.writer = Writer(redis)
        self._read: Any = redis.register_script(READ_LUA)
        day = 86_400_000
        self.limits = Limits(
            retention_ms=settings.daily_retention_days * day,
            max_future_ms=settings.max_future_seconds * 1000,
        )
        self.planner = Planner(
            PriceTable.load(settings.price_table),
            Retention(
                hourly_ms=settings.hourly_retention_days * day,
                daily_ms=settings.daily_retention_days * day,
                dedup_ms=settings.dedup_window_days * day,
            ),
        )

    def validate(self, records: list[Record], now_ms: int) -> tuple[dict[str, list[Item]], list[DeadLetter]]:
        by_org: dict[str, list[Item]] = {}
        dead: list[DeadLetter] = []
        # The planner wants each record once, in offset order per partition (as the worker reads them).
        unique = {(r.topic, r.partition, r.offset): r for r in reversed(records)}
        for r in sorted(unique.values(), key=lambda r: (r.topic, r.partition, r.offset)):
            try:
                ev = parse(r.topic, r.key, r.value, now_ms, self.limits)
            except InvalidEvent as exc:
                dead.append(DeadLetter(r, exc.reason))
                continue
            except Exception as exc:  # a bug must not stop the stream: the event is kept, with why
                log.exception("validating %s[%d]@%d failed", r.topic, r.partition, r.offset)
                dead.append(DeadLetter(r, f"could not be validated: {exc!r}"))
                continue
            by_org.setdefault(ev.org, []).append(Item(ev, r.topic, r.partition, r.offset))
        return by_org, dead

    async def process(self, records: list[Record]) -> BatchResult:
        now_ms = int(time.time() * 1000)
        by_org, dead = self.validate(records, now_ms)
        result = BatchResult(dead=len(dead), orgs=set(by_org))
        if dead:
            # Before the batch's offsets can be committed, so no bad event is ever lost.
            await self.send_dead_letters(dead)
        pending = by_org
        done: list[tuple[OrgWrite, OrgState]] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts = attempt
            states = await self.read_states(pending)
            writes = [self.planner.plan(org, items, states[org], now_ms) for org, items in pending.items()]
            conflicts = await self.writer.apply(writes)
            for w in writes:
                if w.org not in conflicts:
                    result.applied += w.events
                    done.append((w, states[w.org]))
            if not conflicts:
                break
            log.debug("re-planning %d org(s) after conflicts: %s", len(conflicts), conflicts)
            pending = {org: pending[org] for org in conflicts}
            await asyncio.sleep(0.002 * attempt)  # let the other writer finish before re-reading
        else:
            raise RuntimeError(f"gave up applying a batch after {MAX_ATTEMPTS} conflicting attempts: {conflicts}")
        result.skipped = len(records) - len(dead) - result.applied
        if by_org:
            await self.redis.sadd(keys.orgs(), *by_org)
        if self.publish is not None and done:
            await self.publish(await self.aggregate_records(done, now_ms))
        return result

    async def aggregate_records(
        self, writes: list[tuple[OrgWrite, OrgState]], now_ms: int
    ) -> list[tuple[bytes, bytes]]:
        """The new absolute value of every bucket counter the batch touched.

        Values come from the apply script itself. Events a replay skipped (applied by a run that may have
        died before publishing) have their counters' current values read back and published again, so
        the compacted topic never keeps a value older than Redis.
        """
        values: dict[tuple[str, str], int] = {}
        zsets: set[str] = set()
        reread: list[tuple[str, str]] = []
        for w, state in writes:
            values.update(w.new_values)
            zsets |= w.sorted_sets()
            if w.replayed:
                shadow = self.planner.touched_by(w.org, w.replayed, state, now_ms)
                shadow.payload()
                reread += shadow.counters()
                zsets |= shadow.sorted_sets()
        reread = [slot for slot in dict.fromkeys(reread) if slot not in values]
        # A top-students set is published whole (one record per org, day and mentor), read after the apply.
        ordered_zsets = sorted(zsets)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, fld in reread:
                pipe.hget(key, fld)
            for key in ordered_zsets:
                pipe.zrange(key, 0, -1, withscores=True)
            replies = await pipe.execute() if (reread or ordered_zsets) else []
        for slot, value in zip(reread, replies[: len(reread)], strict=True):
            values[slot] = int(value or 0)
        out = []
        for (key, fld), value in values.items():
            described = keys.describe_counter(key, fld, "h")
            if described is not None:
                record_key, fields = described
                out.append((record_key.encode(), orjson.dumps({**fields, "value": value, "applied_at_ms": now_ms})))
        for key, members in zip(ordered_zsets, replies[len(reread) :], strict=True):
            described = keys.describe_counter(key, "", "z")
            if described is not None:
                record_key, fields = described
                counts = {m.decode(): int(score) for m, score in members}
                out.append((record_key.encode(), orjson.dumps({**fields, "value": counts, "applied_at_ms": now_ms})))
        return out

    async def read_states(self, by_org: dict[str, list[Item]]) -> dict[str, OrgState]:
        """Everything the planner needs from Redis, for every org of the batch, in one round trip.

        One Lua read per org returns its state as one JSON document: thousands of small replies would
        cost more to parse than everything else in the batch."""
        plans = {org: state_reads(org, items) for org, items in by_org.items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            for org, (offset_fields, seen, convs) in plans.items():
                key_list = [keys.offsets(org), *(keys.seen(org, day) for day in seen)]
                key_list += [keys.conversation(org, cid) for cid in convs]
                args = orjson.dumps({"o": offset_fields, "s": list(seen.values()), "n": len(convs), "f": CONV_FIELDS})
                await self._read(keys=key_list, args=[args], client=pipe)
            replies = await pipe.execute()
        states: dict[str, OrgState] = {}
        for (org, (offset_fields, seen, convs)), raw in zip(plans.items(), replies, strict=True):
            offsets, seen_vals, conv_vals = (v or [] for v in orjson.loads(raw))  # Lua's cjson writes {} for []
            st = OrgState()
            for fld, val in zip(offset_fields, offsets or [], strict=True):
                st.offsets[fld] = None if val is False else int(val)
            for (day, ids), vals in zip(seen.items(), seen_vals, strict=True):
                for event_id, val in zip(ids, vals or [], strict=True):
                    st.seen[(day, event_id)] = None if val is False else val
            for cid, vals in zip(convs, conv_vals, strict=True):
                st.convs[cid] = {f: None if v is False else v for f, v in zip(CONV_FIELDS, vals, strict=True)}
            states[org] = st
        return states


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
