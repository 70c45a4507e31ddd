"""Erasing a student from an org (FERPA, GDPR art. 17).

1. A tombstone first, in one script (tables/lua/erase.lua) that also bumps the org's erasures version. Every batch's apply is
   guarded on that version (agents/planner.py), so a batch planned before the erasure cannot write after
   it; every batch planned after it drops the student's events (chat messages, sentiment, chat-history
   records), counting them in the org's `meta` (`dropped|erased`, in /metrics). A rebuild, a replay or a
   producer's re-send meets the same tombstone. The tombstone is a digest of (org, student) keyed with the
   deployment's secret (`Tombstones`): it does not keep the username, and without the secret nobody can
   confirm that a guessed username was erased. (Tombstones written before the secret, unkeyed, still hold.)
2. Then everything that names the student is removed; nothing can add it back:
   - their conversations (found through the student index and by scanning the org's conversation buckets
     for the record's or the earliest message's student): the state (the record, with its email), every
     chat-history index entry, and the session's entries in the per-mentor session costs, each
     conversation by one guarded script (tables/lua/remove_conversation.lua: only if no batch wrote it
     since it was read, else it is read again); then their sessions' traces (tables/traces.py): the trace
     no longer names the session, and a trace no other session names is no longer listed;
   - what each aggregate family keeps that names them (`Family.erase`, tables/aggregates/): their
     per-student LLM cost fields in every hourly and daily bucket, their entries in every top-students set
     (hourly, daily, weekly, all time, per mentor), the days they chatted (distinct students), their first
     message (the first-seen sets of the org and of its mentors), the sessions they started and their
     latest message (student activity).
3. Then the compacted `analytics-aggregates` topic hears of it (`publications`): a Kafka tombstone for each
   published counter a family removed (their cost counters), the new value of each published set it
   changed (the top-students sets). A worker may have applied a batch just
   before the tombstone and be about to publish its records, which name the student: every publication
   begins with PUBLISH_BEGIN_LUA (tables/lua/publish_begin.lua), atomic with the tombstone, which leaves
   erased students out of its records, and the erasure waits for those that began before it (`PublicationFence`), so no record naming
   the student lands after the erasure's.

What stays: counts without a name. The org's (and its mentors') sessions, messages, sentiment and cost
totals keep what the student's events added before the erasure (they are sums over every student; taking
the student's part out would change the org's history under its dashboards). A rebuild recomputes them
without the student, whose events it drops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from streams.settings import Settings
from streams.topics import AGGREGATES, ERASURES
from tables import connections, keys, traces
from tables.aggregates import FAMILIES, chat_history, llm_cost, student_activity, top_students, transcripts
from tables.aggregates.base import SCAN_CHUNK, scan_batches
from tables.connections import Replication
from tables.conversations import ConversationState, prefix
from tables.generations import Generations
from tables.scripts import Call, Script, load

log = logging.getLogger(__name__)

ERASE_LUA = load("tables", "erase")  # tables/lua/erase.lua
PUBLISH_BEGIN_LUA = load("tables", "publish_begin")  # the workers' side of the fence: `PublicationFence`
REMOVE_CONVERSATION_LUA = load("tables", "remove_conversation", include=("conversation",))

# How long an erasure waits for the publications that began before it; a token older than this is taken
# for one whose worker died (its records were never all sent, or were sent long before).
PUBLISH_STALE_MS = 60_000


@dataclass
class Erasure:
    """What an erasure did (the audit record's `what`), and the top-students sets it changed (to publish)."""

    org: str
    student: str  # kept in memory for the publications; the audit record names only the tombstone
    tombstone: str
    at_ms: int
    by: str
    conversations: int = 0
    what: dict[str, int] = field(default_factory=dict)  # the families' counts of what they removed
    sorted_sets: list[str] = field(default_factory=list)  # published sets it changed
    counters: list[tuple[str, str]] = field(default_factory=list)  # published counters (key, field) it removed

    def audit(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "student_tombstone": self.tombstone,
            "at_ms": self.at_ms,
            "by": self.by,
            "what": {"conversations": self.conversations, **self.what},
        }


@dataclass(frozen=True)
class Tombstones:
    """The deployment's tombstone digests: keyed with `AIA_ERASURE_SECRET`, or without it with a secret made
    once and kept in Redis (`keys.erasure_secret`), which every process reads."""

    secret: bytes

    @classmethod
    async def load(cls, redis: Redis, configured: str = "") -> Tombstones:
        if configured:
            return cls(configured.encode())
        await redis.set(keys.erasure_secret(), secrets.token_hex(32), nx=True)
        value: Any = await redis.get(keys.erasure_secret())
        return cls(bytes(value))

    def of(self, org: str, student: str) -> str:
        """The field an erasure writes."""
        return keys.tombstone(org, student, self.secret)

    def fields(self, org: str, student: str) -> tuple[str, str]:
        """The fields that say a student is erased: the keyed one, and the unkeyed one of an erasure made
        before the secret."""
        return keys.tombstone(org, student, self.secret), keys.legacy_tombstone(org, student)

    @staticmethod
    def erased(students: list[str], flags: list[Any]) -> set[str]:
        """The students erased, from what Redis answered for each one's two `fields`, in order (a field
        present: truthy)."""
        return {s for s, keyed, legacy in zip(students, flags[0::2], flags[1::2], strict=True) if keyed or legacy}


async def erase_student(
    redis: Redis,
    org: str,
    student: str,
    *,
    by: str,
    now_ms: int,
    secret: str = "",
    replication: Replication | None = None,
) -> Erasure:
    """Tombstone the student, then remove every trace of them from the org's keys (see the module).
    `secret`: `AIA_ERASURE_SECRET` (empty: the one kept in Redis). `replication`: the tombstone is on that
    many replicas before anything is removed, and the removals before the erasure is done, as a batch's
    writes are before it counts as applied (NotReplicated when they are not: the erasure is to be run
    again, and erasing twice is erasing once)."""
    tombstone = (await Tombstones.load(redis, secret)).of(org, student)
    out = Erasure(org, student, tombstone, now_ms, by)
    under_way = await Script(redis, ERASE_LUA).run(
        [keys.erasures(org), keys.publishing(org)], [tombstone, orjson.dumps({"at_ms": now_ms, "by": by})]
    )
    if replication is not None:  # a failover now must not lose the tombstone the workers' fence reads
        await replication.wait([org])
    gens = await Generations.read(redis)
    for n in (gens.current, gens.building):  # and the one a rebuild is building
        if n is not None:
            await _remove(redis, n, org, student, out, publish=n == gens.current)
    await _wait_for_publications(redis, org, [t.decode() for t in under_way[0::2]], [float(x) for x in under_way[1::2]])
    if replication is not None:
        await replication.wait([org])
    return out


async def erase_waiting(redis: Redis, settings: Settings, org: str, student: str, *, by: str) -> Erasure:
    """`erase_student` now, with the deployment's secret, waiting for the replicas a batch waits for
    (`connections.replication`): what the API's DELETE and `ai-analytics erase` run."""
    waiting = connections.replication(redis, settings)
    try:
        return await erase_student(
            redis, org, student, by=by, now_ms=int(time.time() * 1000), secret=settings.erasure_secret,
            replication=waiting,
        )  # fmt: skip
    finally:
        await waiting.aclose()


async def _wait_for_publications(redis: Redis, org: str, tokens: list[str], began: list[float]) -> None:
    """Wait until the changefeed publications under way at the tombstone are through (or taken for dead),
    so none of their records, which may name the student, lands after the erasure's Kafka tombstones."""
    if not tokens:
        return
    deadline = max(began) / 1000 + PUBLISH_STALE_MS / 1000  # by Redis's clock
    while True:
        scores = await redis.zmscore(keys.publishing(org), tokens)
        if all(s is None for s in scores):
            return
        now_s, now_us = await redis.time()
        if now_s + now_us / 1e6 >= deadline:
            log.warning(
                "erasure in %s: %d publication(s) under way past %d s; going on",
                org,
                len(tokens),
                PUBLISH_STALE_MS // 1000,
            )
            return
        await asyncio.sleep(0.02)


class PublicationFence:
    """The workers' side of the fence above: `begin` an org's changefeed records (those naming an erased
    student left out), send them, then `end`."""

    def __init__(self, redis: Redis, secret: str = "", replication: Replication | None = None) -> None:
        self.redis = redis
        self.script = Script(redis, PUBLISH_BEGIN_LUA)
        self.secret = secret
        self.replication = replication
        self._tombstones: Tombstones | None = None

    async def begin(self, records: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], list[str], str]:
        """The records to send (erased students' left out), the orgs and the token to `end`. With a
        `replication`, the publication's registration is on replicas before any record is sent: a failover
        cannot lose it, so an erasure always waits for it (NotReplicated otherwise, the registration taken
        back: nothing is sent)."""
        token = uuid.uuid4().hex
        by_org: dict[str, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            by_org.setdefault(key[: key.index(b"|")].decode(), []).append((key, value))
        named = {org: _students_named(recs) for org, recs in by_org.items()}
        tombstones = await self.tombstones()
        fields = tombstones.fields
        calls = [
            (
                [keys.erasures(org), keys.publishing(org)],
                [token, PUBLISH_STALE_MS, *(f for s in named[org] for f in fields(org, s))],
            )
            for org in by_org
        ]
        out: list[tuple[bytes, bytes]] = []
        for org, flags in zip(by_org, await self.script.run_many(calls), strict=True):
            erased = tombstones.erased(named[org], flags)
            out += _without(by_org[org], erased) if erased else by_org[org]
        if self.replication is not None:
            try:
                await self.replication.wait(by_org)
            except Exception:
                await self.end(list(by_org), token)
                raise
        return out, list(by_org), token

    async def tombstones(self) -> Tombstones:
        """The deployment's tombstones, loaded once (the workers' state reads use them too)."""
        if self._tombstones is None:
            self._tombstones = await Tombstones.load(self.redis, self.secret)
        return self._tombstones

    async def end(self, orgs: list[str], token: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for org in orgs:
                pipe.zrem(keys.publishing(org), token)
            await pipe.execute()


def _students_named(records: list[tuple[bytes, bytes]]) -> list[str]:
    """The students the records name: each top-students set's members, each student cost counter's student
    (record keys parsed exactly, `keys.parse_record_key`: a name holding `|top_students|` is just a name)."""
    named: set[str] = set()
    for key, value in records:
        _, metric, _, _ = keys.parse_record_key(key)
        if top_students.is_metric(metric):
            named.update(orjson.loads(value)["value"])
        elif (student := llm_cost.student_of_metric(metric)) is not None:
            named.add(student)
    return sorted(named)


def _without(records: list[tuple[bytes, bytes]], erased: set[str]) -> list[tuple[bytes, bytes]]:
    """The records without the erased students: their cost records left out, their top-students entries
    taken out of the sets' values."""
    out: list[tuple[bytes, bytes]] = []
    for key, value in records:
        _, metric, _, _ = keys.parse_record_key(key)
        if top_students.is_metric(metric):
            record = orjson.loads(value)
            record["value"] = {s: n for s, n in record["value"].items() if s not in erased}
            out.append((key, orjson.dumps(record)))
        elif llm_cost.student_of_metric(metric) not in erased:
            out.append((key, value))
    return out


def removal(gen: int, org: str, digest: int, state: ConversationState, version: int) -> Call:
    """The call of remove_conversation.lua that removes the conversation `digest` of generation `gen`, read
    as `state` at `version` (its stored value's, `conversations.prefix`), from its bucket, the chat-history
    index, its filter sets, its per-mentor session costs and its transcript (an erased student's, or one past
    the history retention, tables/state.expire_conversations), and from its student's session starts."""
    filters = [chat_history.filter_key(gen, org, kind, value, digest) for kind, value in state.index_entries() if kind]
    costs = [llm_cost.sessions_key(gen, org, day) for day in sorted({hour // 24 for hour in state.costs})]
    member = llm_cost.session_member(state.first_mentor or "", state.cid or "")
    starts = student_activity.starts_key(gen, org, state.first_student or "")
    started = student_activity.starts_member(digest, state.first_mentor or "")
    return (
        [keys.conversation_bucket(gen, org, digest), chat_history.index_key(gen, org), starts, *filters, *costs,
         transcripts.transcript_key(gen, org, digest)],
        [keys.conversation_field(digest), version, digest, len(filters), member, 1, started],
    )  # fmt: skip


async def _remove(redis: Redis, gen: int, org: str, student: str, out: Erasure, *, publish: bool) -> None:
    """Step 2, in generation `gen`; `publish`: the served one, whose changes the audit record counts
    and the aggregates topic hears of."""
    indexed: Any = await redis.smembers(chat_history.filter_key(gen, org, "student", student))
    digests = {int(m) for m in indexed}
    # And any conversation whose state names them (its record's or its earliest message's student).
    async for batch in scan_batches(redis, keys.conversation_buckets(gen, org)):
        for held_in in batch:
            async for fld, raw in redis.hscan_iter(held_in, count=SCAN_CHUNK):
                conv = ConversationState.unpack(raw)
                if student in (conv.student, conv.first_student):
                    digests.add(int.from_bytes(fld, "big", signed=True))

    # Each goes by the guarded script, as an expired one does: a batch that writes it between the read and
    # the removal (another event of its session) makes the script refuse, and it is read again, so no index
    # entry the batch added is left behind.
    remove = Script(redis, REMOVE_CONVERSATION_LUA)
    sessions: set[tuple[str, str]] = set()  # (trace, session) of every trace of their sessions
    for digest in sorted(digests):
        bucket, fld = keys.conversation_bucket(gen, org, digest), keys.conversation_field(digest)
        while (held := await redis.hget(bucket, fld)) is not None:
            value = bytes(held)  # type: ignore[arg-type]
            state = ConversationState.unpack(value)
            if int(await remove.run(*removal(gen, org, digest, state, prefix(value)[0]))):
                out.conversations += publish
                sessions.update((trace, state.cid) for trace in state.traces if state.cid)
                break
    await redis.delete(chat_history.filter_key(gen, org, "student", student))
    # Their sessions' traces no longer name the session, and one no other session names is no longer listed
    # (its observations, which name no student, stay listed: tables/traces.py).
    dropped = await traces.forget_sessions(redis, gen, org, sessions)
    if publish:
        out.what["traces"] = out.what.get("traces", 0) + dropped

    # Then what each family keeps that names them (tables/aggregates/: cost fields, top-students entries,
    # the days they chatted, their first message).
    for family in FAMILIES:
        erased = await family.erase(redis, gen, org, student)
        if publish:
            out.counters += erased.counters
            out.sorted_sets += erased.sets
            for name, n in erased.audit.items():
                out.what[name] = out.what.get(name, 0) + n


async def publications(redis: Redis, erasure: Erasure) -> list[tuple[str, bytes, bytes | None]]:
    """(topic, key, value) to send after an erasure: its audit record (compacted `analytics-erasures`, keyed
    `org|tombstone`); on the compacted `analytics-aggregates`, a Kafka tombstone (no value) for each of the
    student's cost counters, and the new value of each top-students set the erasure changed. Once the topic
    is compacted (and `delete.retention.ms` has passed for the tombstones) no record there names them."""
    out: list[tuple[str, bytes, bytes | None]] = [
        (ERASURES, f"{erasure.org}|{erasure.tombstone}".encode(), orjson.dumps(erasure.audit()))
    ]
    for key, fld in erasure.counters:
        if record := keys.counter_record(key, fld, "h", 0, erasure.at_ms):
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
