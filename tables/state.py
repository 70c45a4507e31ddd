"""Reading back what the planner needs before it decides: an org's offset watermarks, its observations'
applied versions, its erased students among the batch's, and its conversations' state (which also says
which events each has counted). One Lua read per org (`tables/lua/read.lua`), all orgs of a batch in one
round trip. Then the housekeeping: pruning past the dedup window, expiring past the history retention, and
the workers' progress, each a script of tables/lua/ too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from tables import keys
from tables.conversations import ConversationState, conversation_digest, prefix
from tables.erase import REMOVE_CONVERSATION_LUA, Tombstones, removal
from tables.scripts import Call, Script, load
from tables.writer import OrgWrite

READ_LUA = load("tables", "read")  # tables/lua/read.lua


@dataclass
class OrgState:
    """What Redis held for one org before the batch: the planner's preconditions."""

    offsets: dict[str, int | None] = field(default_factory=dict)
    observations: dict[str, bytes | None] = field(default_factory=dict)  # event_id -> value as kept
    convs: dict[str, ConversationState] = field(default_factory=dict)  # every conversation read (empty if new)
    erased: set[str] = field(default_factory=set)  # the batch's students that are erased
    erasures_version: str | None = None  # the erased-students hash's version: the apply's guard
    generations_version: str | None = None  # the org's copy of the generations' version: a guard too


@dataclass
class StateQuery:
    """What to read for one org: offset fields, observation ids, conversation ids, the tombstones of the
    batch's students."""

    offset_fields: list[str]
    observations: list[str]
    convs: list[str]
    tombstones: list[str] = field(default_factory=list)  # each student's two (tables/erase.Tombstones.fields)
    students: list[str] = field(default_factory=list)


class StateReader:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._read = Script(redis, READ_LUA)

    async def read(self, queries: dict[str, StateQuery], gen: int) -> dict[str, OrgState]:
        """Every org's state in generation `gen`, in one round trip: one Lua read per org."""
        calls: list[Call] = []
        for org, q in queries.items():
            key_list = [
                keys.offsets(gen, org),
                keys.observations(gen, org),
                keys.erasures(org),
                keys.org_generations(org),
                keys.observations_before(gen, org),
            ]
            index: dict[str, int] = {}
            buckets, fields = [], []
            for cid in q.convs:
                digest = conversation_digest(org, cid)
                bucket = keys.conversation_bucket(gen, org, digest)
                k = index.get(bucket)
                if k is None:
                    key_list.append(bucket)
                    k = index[bucket] = len(key_list)
                buckets.append(k)
                fields.append(keys.conversation_field(digest))
            doc = {
                "o": q.offset_fields,
                "b": len(q.observations),
                "e": [keys.ERASURES_VERSION, *q.tombstones],
                "c": buckets,
            }
            argv: list[bytes] = [orjson.dumps(doc), *fields]
            for event_id in q.observations:
                argv += (keys.observation_field(event_id), event_id.encode())
            calls.append((key_list, argv))
        replies = await self._read.run_many(calls)
        states: dict[str, OrgState] = {}
        unpack = ConversationState.unpack
        for (org, q), (offsets, obs_vals, erased, conv_vals, gens_v) in zip(queries.items(), replies, strict=True):
            st = OrgState()
            st.generations_version = None if gens_v is None else gens_v.decode()
            st.erasures_version = None if erased[0] is None else erased[0].decode()
            st.erased = Tombstones.erased(q.students, erased[1:])
            for fld, val in zip(q.offset_fields, offsets, strict=True):
                st.offsets[fld] = None if val is None else int(val)
            for event_id, val in zip(q.observations, obs_vals, strict=True):
                st.observations[event_id] = val
            st.convs = {cid: unpack(raw) for cid, raw in zip(q.convs, conv_vals, strict=True)}
            states[org] = st
        return states


def as_after(state: OrgState, org: str, w: OrgWrite) -> None:
    """Make `state` (read while `w` was being applied, before or after it) what the org will hold once `w`
    is applied: its new watermarks, observation values and conversations. What `w` does not write is what
    Redis held either way. So the next batch can be planned while `w` is applied; the apply's guards are
    the arbiter (a plan on a state that did not come true writes nothing and is made again)."""
    for fld, (_, new) in w.watermarks.items():
        if fld in state.offsets:
            state.offsets[fld] = new
    written = w.seen.get(keys.observations(w.gen, org), {})
    for event_id in state.observations.keys() & written.keys():
        state.observations[event_id] = written[event_id][1]
    for cid in state.convs.keys() & w.conv_after.keys():
        state.convs[cid] = w.conv_after[cid]


PRUNE_LUA = load("tables", "prune_observations")


async def prune_observations(redis: Redis, gen: int, org: str, oldest_day: int, *, chunk: int = 1000) -> None:
    """Forget the observations of an org that arrived before `oldest_day` (a day index): past the dedup
    window a re-sent version counts as a new observation, as a re-sent event does."""
    script = Script(redis, PRUNE_LUA)
    for key in (keys.observations(gen, org), keys.observations_before(gen, org)):
        cursor = "0"
        while True:
            cursor = (await script.run([key], [cursor, chunk, oldest_day])).decode()
            if cursor == "0":
                break


PRUNE_CONVERSATIONS_LUA = load("tables", "prune_conversations", include=("conversation",))


async def prune_conversations(redis: Redis, gen: int, org: str, oldest_day: int, *, chunk: int = 500) -> int:
    """Drop the event digests of the org's conversations last written before `oldest_day` (a day index):
    past the dedup window an event re-sent to a quiet conversation counts again, as a re-sent observation
    does. Walks every bucket (HSCAN); returns how many were pruned."""
    script = Script(redis, PRUNE_CONVERSATIONS_LUA)
    pruned = 0
    async for bucket in redis.scan_iter(match=keys.conversation_buckets(gen, org), count=chunk):
        due: list[tuple[bytes, int, ConversationState]] = []  # field, version (as the script reads it), state
        async for fld, raw in redis.hscan_iter(bucket, count=chunk):
            version, last_day = prefix(raw)
            if 0 < last_day < oldest_day:
                due.append((fld, version, ConversationState.unpack(raw)))
        if due:
            args: list[Any] = [len(due), *(f for f, _, _ in due), *(v for _, v, _ in due)]
            args += [st.pruned().pack() for _, _, st in due]
            pruned += int(await script.run([bucket], args))
    return pruned


async def expire_conversations(redis: Redis, gen: int, org: str, before_ms: int, *, chunk: int = 500) -> int:
    """Delete the org's conversations (chat history) listed before `before_ms`: by their newest record's
    insertion time, or their first message's when there is no record (AIA_HISTORY_RETENTION_DAYS). Each
    goes with its index and filter entries and its per-mentor session costs, unless it was written since it
    was read. Returns how many went."""
    script = Script(redis, REMOVE_CONVERSATION_LUA)
    expired = 0
    async for bucket in redis.scan_iter(match=keys.conversation_buckets(gen, org), count=chunk):
        calls: list[Call] = []
        async for fld, raw in redis.hscan_iter(bucket, count=chunk):
            st = ConversationState.unpack(raw)
            listed = st.inserted_ms if st.record_version is not None else st.started_ms
            if listed is None or listed >= before_ms:
                continue
            calls.append(removal(gen, org, int.from_bytes(fld, "big", signed=True), st, prefix(raw)[0]))
        if calls:
            expired += sum(int(n) for n in await script.run_many(calls))
    return expired


SAVE_PROGRESS_LUA = load("tables", "save_progress")


async def save_progress(redis: Redis, group: str, offsets: dict[str, int]) -> None:
    """Record, per `topic:partition`, the last offset below which every record is applied (never lowered:
    a worker that lost a partition may still finish a batch of it)."""
    args: list[str | int] = []
    for fld, offset in offsets.items():
        args += [fld, offset]
    await Script(redis, SAVE_PROGRESS_LUA).run([keys.progress(group)], args)
