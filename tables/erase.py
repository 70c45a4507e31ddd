"""Erasing a student from an org (FERPA, GDPR art. 17).

1. A tombstone first, in one script that also bumps the org's erasures version. Every batch's apply is
   guarded on that version (agents/planner.py), so a batch planned before the erasure cannot write after
   it; every batch planned after it drops the student's events (chat messages, sentiment, chat-history
   records), counting them in the org's `meta` (`dropped|erased`, in /metrics). A rebuild, a replay or a
   producer's re-send meets the same tombstone. The tombstone is a digest of (org, student): it does not
   keep the username.
2. Then everything that names the student is removed; nothing can add it back:
   - their conversations (found through the student index and by scanning the org's conversation buckets
     for the record's or the earliest message's student): the state (the record, with its email), every
     chat-history index entry, and the session's entries in the per-mentor session costs;
   - their per-student LLM cost fields in the hourly and daily buckets their sessions cost in;
   - their entries in every top-students set (hourly, daily, weekly, all time, per mentor).

What stays: counts without a name. The org's (and its mentors') sessions, messages, sentiment and cost
totals keep what the student's events added before the erasure (they are sums over every student; taking
the student's part out would change the org's history under its dashboards). A rebuild recomputes them
without the student, whose events it drops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.topics import AGGREGATES, ERASURES
from tables import keys, queries
from tables.buckets import Grain
from tables.conversations import ConversationState
from tables.generations import Generations

ERASE_LUA = r"""
-- KEYS[1] an org's erased-students hash. ARGV: the tombstone, its record. Returns the new version.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'v', 1)
"""

_CHUNK = 500


@dataclass
class Erasure:
    """What an erasure did (the audit record's `what`), and the top-students sets it changed (to publish)."""

    org: str
    student: str  # kept in memory for the publications; the audit record names only the tombstone
    tombstone: str
    at_ms: int
    by: str
    conversations: int = 0
    cost_fields: int = 0
    top_entries: int = 0
    sorted_sets: list[str] = field(default_factory=list)
    cost_buckets: list[str] = field(default_factory=list)  # buckets whose student cost field was removed

    def audit(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "student_tombstone": self.tombstone,
            "at_ms": self.at_ms,
            "by": self.by,
            "what": {
                "conversations": self.conversations,
                "cost_fields": self.cost_fields,
                "top_students_entries": self.top_entries,
            },
        }


async def is_erased(redis: Redis, org: str, student: str) -> bool:
    return bool(await redis.hexists(keys.erasures(org), keys.tombstone(org, student)))


async def erase_student(redis: Redis, org: str, student: str, *, by: str, now_ms: int) -> Erasure:
    """Tombstone the student, then remove every trace of them from the org's keys (see the module)."""
    tombstone = keys.tombstone(org, student)
    out = Erasure(org, student, tombstone, now_ms, by)
    script: Any = redis.register_script(ERASE_LUA)
    await script(keys=[keys.erasures(org)], args=[tombstone, orjson.dumps({"at_ms": now_ms, "by": by})])
    gens = await Generations.read(redis)
    for n in (gens.current, gens.building):  # and the one a rebuild is building
        if n is not None:
            with keys.generation(n):
                await _remove(redis, org, student, out, publish=n == gens.current)
    return out


async def _remove(redis: Redis, org: str, student: str, out: Erasure, *, publish: bool) -> None:
    """Step 2, in the context's generation; `publish`: the served one, whose changes the audit record counts
    and the aggregates topic hears of."""
    indexed: Any = await redis.smembers(keys.conversations_by(org, "student", student))
    digests = {int(m) for m in indexed}
    # And any conversation whose state names them (its record's or its earliest message's student).
    async for batch in _scan(redis, keys.conversation_buckets(org)):
        for bucket in batch:
            async for fld, raw in redis.hscan_iter(bucket, count=_CHUNK):
                conv = ConversationState.unpack(raw)
                if student in (conv.student, conv.first_student):
                    digests.add(int.from_bytes(fld, "big", signed=True))

    for digest in sorted(digests):
        (state,) = await queries.conversation_states(redis, org, [digest])
        member = str(digest)
        async with redis.pipeline(transaction=False) as pipe:
            for kind, value in state.index_entries():
                if kind:
                    pipe.srem(keys.conversations_by(org, kind, value, digest), member)
                else:
                    pipe.zrem(keys.conversations(org), member)
            for day in {hour // 24 for hour in state.costs}:
                pipe.zrem(keys.session_costs(org, day), f"{state.first_mentor or ''}|{state.cid}")
            pipe.hdel(keys.conversation_bucket(org, digest), keys.conversation_field(digest))
            await pipe.execute()
        out.conversations += publish
    await redis.delete(keys.conversations_by(org, "student", student))

    # The student's cost fields, in every hourly and daily bucket (found by name: a session's hash may be gone).
    cost_field = keys.cost_field("u", student)
    for pattern in (keys.bucket(org, Grain.HOUR, 0), keys.bucket(org, Grain.DAY, 0)):
        async for batch in _scan(redis, pattern.rsplit(":", 1)[0] + ":*"):
            async with redis.pipeline(transaction=False) as pipe:
                for key in batch:
                    pipe.hdel(key, cost_field)
                removed = await pipe.execute()
            if publish:
                out.cost_buckets += [key.decode() for key, n in zip(batch, removed, strict=True) if n]
    out.cost_fields = len(out.cost_buckets)

    async for batch in _scan(redis, keys.top_students(org, Grain.DAY, 0).rsplit(":", 1)[0] + ":*"):
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.zrem(key, student)
            removed = await pipe.execute()
        for key, n in zip(batch, removed, strict=True):
            if n and publish:
                out.top_entries += n
                out.sorted_sets.append(key.decode())


async def _scan(redis: Redis, pattern: str) -> Any:
    """The keys matching pattern, in batches (SCAN: never blocks Redis; on a cluster, every primary's)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=_CHUNK):
        batch.append(key)
        if len(batch) >= _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


async def publications(redis: Redis, erasure: Erasure) -> list[tuple[str, bytes, bytes | None]]:
    """(topic, key, value) to send after an erasure: its audit record (compacted `analytics-erasures`, keyed
    `org|tombstone`); on the compacted `analytics-aggregates`, a Kafka tombstone (no value) for each of the
    student's cost counters, and the new value of each top-students set the erasure changed. Once the topic
    is compacted (and `delete.retention.ms` has passed for the tombstones) no record there names them."""
    out: list[tuple[str, bytes, bytes | None]] = [
        (ERASURES, f"{erasure.org}|{erasure.tombstone}".encode(), orjson.dumps(erasure.audit()))
    ]
    field = keys.cost_field("u", erasure.student)
    for key in erasure.cost_buckets:
        if record := keys.counter_record(key, field, "h", 0, erasure.at_ms):
            out.append((AGGREGATES, record[0], None))
    async with redis.pipeline(transaction=False) as pipe:
        for key in erasure.sorted_sets:
            pipe.zrange(key, 0, -1, withscores=True)
        replies = await pipe.execute() if erasure.sorted_sets else []
    for key, members in zip(erasure.sorted_sets, replies, strict=True):
        counts = {m.decode(): int(score) for m, score in members}
        if record := keys.counter_record(key, "", "z", counts, erasure.at_ms):
            out.append((AGGREGATES, *record))
    return out
