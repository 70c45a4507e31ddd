"""Each Lua script of tables/lua/ and agents/lua/ on its own, against the real Redis: what it writes when its
guard holds, that it writes nothing when the guard fails, and the stored encodings it reads (the
conversations' header, and values written in the form before it). Plus the one mechanism that runs them
(tables/scripts.py): a script Redis forgot (SCRIPT FLUSH) is loaded again, one call or many."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from agents import alerts, rebuild
from streams.schemas import format_timestamp
from streams.settings import Settings
from tables import changefeed, erase, keys, queries, state, traces
from tables.aggregates import chat_history, llm_cost, sessions, student_activity, top_students, transcripts
from tables.aggregates.llm_cost import AppliedObservation
from tables.buckets import DAY_MS, Grain
from tables.conversations import FORMAT, ConversationState, Digests, conversation_digest, event_digest, prefix
from tables.scripts import Lua, Script, load
from tables.writer import APPLY_LUA, OrgWrite, Writer
from tests.support import apply_batches, as_records

pytestmark = pytest.mark.integration

ORG = "scripts"
G = 0  # the generation served in an empty Redis
ROOT = Path(__file__).resolve().parent.parent
SCRIPTS: dict[str, Lua] = {
    "apply": APPLY_LUA,
    "read": state.READ_LUA,
    "prune_observations": state.PRUNE_LUA,
    "prune_conversations": state.PRUNE_CONVERSATIONS_LUA,
    "prune_traces": traces.PRUNE_TRACES_LUA,
    "save_progress": state.SAVE_PROGRESS_LUA,
    "remove_conversation": erase.REMOVE_CONVERSATION_LUA,
    "erase": erase.ERASE_LUA,
    "publish_begin": erase.PUBLISH_BEGIN_LUA,
    "changefeed_snapshot": changefeed.SNAPSHOT_LUA,
    "changefeed_clear": changefeed.CLEAR_LUA,
    "unlock": changefeed.UNLOCK_LUA,
    "zunion_scores": queries.ZUNION_SCORES_LUA,
    "zunion_size": queries.ZUNION_SIZE_LUA,
    "rebuild_start": rebuild.START_LUA,
    "rebuild_switch": rebuild.SWITCH_LUA,
    "alert_transition": alerts.TRANSITION_LUA,
    "alert_lease": alerts.LEASE_LUA,
}


def legacy(st: ConversationState) -> bytes:
    """A conversation's value as stored before the header: `<version>:<last_day>:` then msgpack."""
    return b"%d:%d:%b" % (st.version or 0, st.last_day, msgspec.msgpack.encode(st, enc_hook=lambda d: d.packed()))


def conversation(version: int, **fields: Any) -> ConversationState:
    return ConversationState(version=version, started_ms=1_000, first_event="e0", cid="c1", **fields)


# The mechanism.


async def test_every_script_is_a_file_redis_compiles_and_no_script_names_a_key(redis: Redis) -> None:
    files = {p.stem for p in ROOT.glob("*/lua/*.lua")} - {"conversation"}  # a library, in the others
    assert files == set(SCRIPTS)
    for name, lua in SCRIPTS.items():
        assert await redis.script_load(lua.source) == lua.sha, name
        assert keys.NS + ":" not in lua.source, f"{name} builds a key: every key goes in KEYS"


async def test_a_script_redis_forgot_is_loaded_again(redis: Redis) -> None:
    script = Script(redis, load("tables", "save_progress"))
    assert await script.run(["p"], ["t:0", 5]) == 1
    await redis.script_flush()
    assert await script.run(["p"], ["t:0", 7]) == 1
    await redis.script_flush()
    assert await script.run_many([(["p"], ["t:0", 9]), (["q"], ["t:1", 3])]) == [1, 1]
    assert await redis.hgetall("p") == {b"t:0": b"9"} and await redis.hgetall("q") == {b"t:1": b"3"}
    with pytest.raises(ResponseError):  # any other error is raised, by both
        await script.run(["p"], ["t:0"])
    with pytest.raises(ResponseError):
        await script.run_many([(["p"], ["t:0"])])


async def test_union_sizes_count_each_member_once_inside_redis(redis: Redis) -> None:
    """zunion_size.lua (queries.union_sizes): one set's ZCARD, a union's size (a member in two sets once),
    absent sets as empty."""
    a, b, c = (f"aia:{{{ORG}}}:g0:top:{n}" for n in ("a", "b", "none"))
    await redis.zadd(a, {"ann": 1, "bob": 2, "x|y": 1})
    await redis.zadd(b, {"bob": 5, "cat": 1})
    assert await queries.union_sizes(redis, [[a], [a, b], [b, c], [c], [a, b, c]]) == [3, 4, 2, 0, 4]
    assert await queries.union_sizes(redis, []) == []


# apply.lua (tables/writer.py)


def write(org: str = ORG) -> OrgWrite:
    return OrgWrite(org, G, state.OrgState(), [])


def counted(org: str = ORG) -> tuple[str, OrgWrite]:
    """A write adding 2 to an hourly bucket's messages, moving a watermark from 4 to 9."""
    w = write(org)
    bucket = keys.bucket(G, org, Grain.HOUR, 500_000)
    w.watermark("chat-messages:0", 4, 9)
    w.hincr(bucket, sessions.MESSAGES, 2)
    return bucket, w


async def test_apply_writes_nothing_when_a_watermark_or_a_guard_moved(redis: Redis) -> None:
    writer = Writer(redis)
    bucket, w = counted()
    await redis.hset(keys.offsets(G, ORG), "chat-messages:0", 5)  # another batch went first
    assert (await writer.apply([w]))[ORG].startswith("offset")
    assert await redis.exists(bucket) == 0

    await redis.hset(keys.offsets(G, ORG), "chat-messages:0", 4)
    bucket, w = counted()
    w.guard(keys.erasures(ORG), keys.ERASURES_VERSION, None)
    await redis.hset(keys.erasures(ORG), keys.ERASURES_VERSION, 1)  # an erasure since the plan
    assert (await writer.apply([w]))[ORG].startswith("guard")
    assert await redis.exists(bucket) == 0 and await redis.hget(keys.offsets(G, ORG), "chat-messages:0") == b"4"

    bucket, w = counted()
    w.guard(keys.erasures(ORG), keys.ERASURES_VERSION, "1")
    assert await writer.apply([w]) == {}
    assert await redis.hget(bucket, sessions.MESSAGES) == b"2"
    assert await redis.hget(keys.offsets(G, ORG), "chat-messages:0") == b"9"


async def test_apply_undoes_its_counters_when_one_would_overflow(redis: Redis) -> None:
    bucket, w = counted()
    await redis.hset(keys.offsets(G, ORG), "chat-messages:0", 4)
    await redis.hset(bucket, sessions.MESSAGES, 10)
    w.hincr(bucket, sessions.SESSIONS, 1)
    w.hincr(bucket, llm_cost.COST, 2**62)
    await redis.hset(bucket, llm_cost.COST, 2**62)  # + 2**62 leaves 64 bits
    with pytest.raises(ResponseError, match="apply script refused"):
        await Writer(redis).apply([w])
    assert await redis.hmget(bucket, [sessions.MESSAGES, sessions.SESSIONS, llm_cost.COST]) == [
        b"10",
        b"0",
        b"%d" % 2**62,
    ]
    assert await redis.hget(keys.offsets(G, ORG), "chat-messages:0") == b"4"  # nothing else written either


@pytest.mark.parametrize("form", ["header", "legacy"])
async def test_apply_writes_a_conversation_only_at_the_version_it_was_planned_on(redis: Redis, form: str) -> None:
    writer = Writer(redis)
    digest = conversation_digest(ORG, "c1")
    where = (keys.conversation_bucket(G, ORG, digest), keys.conversation_field(digest))
    held = conversation(3, last_day=20_000)
    await redis.hset(*where, held.pack() if form == "header" else legacy(held))
    new = conversation(4, human=1).pack()
    for planned_on in (None, 2, 4):  # absent, older, newer: each a conflict that writes nothing
        w = write()
        w.put_conversation(where[0], where[1], planned_on, new)
        assert (await writer.apply([w]))[ORG].startswith("conversation"), planned_on
    assert ConversationState.unpack(await redis.hget(*where)) == held
    w = write()
    w.put_conversation(where[0], where[1], 3, new)
    assert await writer.apply([w]) == {}
    assert await redis.hget(*where) == new
    # And a conversation not there yet is written only by a plan that found none.
    other = conversation_digest(ORG, "c2")
    w = write()
    w.put_conversation(keys.conversation_bucket(G, ORG, other), keys.conversation_field(other), 1, new)
    assert ORG in await writer.apply([w])


async def test_apply_marks_the_published_counters_it_changes(redis: Redis) -> None:
    writer = Writer(redis)
    bucket, w = counted()
    await redis.hset(keys.offsets(G, ORG), "chat-messages:0", 4)
    w.publish = True
    assert await writer.apply([w]) == {}
    mark = keys.counter_mark(bucket, sessions.MESSAGES, "h")
    assert await redis.hgetall(keys.changefeed_marks(ORG)) == {b"#": b"1", mark.encode(): b"1"}
    # A generation being built (publish False) marks nothing.
    w = write()
    w.watermark("chat-messages:0", 9, 12)
    w.hincr(bucket, sessions.MESSAGES, 1)
    assert await writer.apply([w]) == {}
    assert await redis.hget(keys.changefeed_marks(ORG), "#") == b"1"


async def test_apply_lowers_a_sorted_sets_scores_and_never_raises_them(redis: Redis) -> None:
    """ZADD LT (`OrgWrite.zadd_lt`, the first-seen sets): a member absent is added, one held with a higher score
    is lowered, one held lower is kept; in chunks of many members, whatever they are named."""
    zkey = keys.org_key(G, ORG, "first")
    await redis.zadd(zkey, {"ann": 500, "bob": 100})
    many = {f"s{i}": 1_795_217_400_000 + i for i in range(1_200)}
    w = write()
    w.zadd_lt(zkey, {"ann": 300, "bob": 200, "5": 7, "x|m|y": 9, **many})
    w.zadd_lt(zkey, {"ann": 400, "x|m|y": 8})  # a higher score in the same write changes nothing either
    assert await Writer(redis).apply([w]) == {}
    held = dict(await redis.zrange(zkey, 0, -1, withscores=True))
    assert {k: held[k.encode()] for k in ("ann", "bob", "5", "x|m|y", "s0", "s1199")} == {
        "ann": 300, "bob": 100, "5": 7, "x|m|y": 8, "s0": 1_795_217_400_000, "s1199": 1_795_217_401_199,
    }  # fmt: skip
    assert len(held) == 4 + 1_200


# read.lua (tables/state.py)


async def test_read_returns_what_an_org_holds_for_the_plan(redis: Redis) -> None:
    tombstones = erase.Tombstones(b"secret")
    digest = conversation_digest(ORG, "c1")
    held = conversation(3, ids=Digests([event_digest("e0")]))
    await redis.hset(keys.offsets(G, ORG), "chat-messages:0", 7)
    applied = AppliedObservation(1, 0, 0, 0, 5, 1, "m", None, 100)
    await redis.hset(keys.observations(G, ORG), keys.observation_field("o1"), applied.value())
    # kept before: the event id as its field, JSON as its value (moved to the observations hash when read)
    await redis.hset(keys.observations_before(G, ORG), mapping={"o3": '[2,0,0,0,5,1,"m",null,100]', "o4": "x"})
    await redis.hset(keys.erasures(ORG), mapping={keys.ERASURES_VERSION: 2, tombstones.of(ORG, "ann"): "{}"})
    await redis.hset(keys.org_generations(ORG), "v", 5)
    await redis.hset(keys.conversation_bucket(G, ORG, digest), keys.conversation_field(digest), legacy(held))
    query = state.StateQuery(
        ["chat-messages:0", "chat-messages:1"],
        ["o1", "o2", "o3"],
        ["c1", "c2"],
        [f for s in ("ann", "bob") for f in tombstones.fields(ORG, s)],
        ["ann", "bob"],
    )
    got = (await state.StateReader(redis).read({ORG: query}, G))[ORG]
    assert got.offsets == {"chat-messages:0": 7, "chat-messages:1": None}
    assert got.observations == {"o1": applied.value(), "o2": None, "o3": b'[2,0,0,0,5,1,"m",null,100]'}
    assert await redis.hgetall(keys.observations_before(G, ORG)) == {b"o4": b"x"}  # o3 moved, o4 not read
    assert await redis.hget(keys.observations(G, ORG), keys.observation_field("o3")) == got.observations["o3"]
    assert got.erased == {"ann"} and got.erasures_version == "2" and got.generations_version == "5"
    assert got.convs == {"c1": held, "c2": ConversationState()}


# prune_observations.lua, prune_conversations.lua, remove_conversation.lua, save_progress.lua (tables/state.py)


async def test_prune_forgets_observations_that_arrived_before_the_window(redis: Redis) -> None:
    """Values of either form (msgpack after 0x02, JSON as kept before), in the observations hash and in the
    hash as kept before; an entry that is neither is kept."""
    uid = "2b1f7a52-8c4e-4c1e-9d7e-3f1a2b3c4d5e"
    entries: dict[str | bytes, str | bytes] = {
        "old": '[1,0,0,0,5,1,"m",null,100]',
        "kept": '[1,0,0,0,5,2,"m","s1",107]',
        "odd session": '[1,0,0,0,5,2,"m","99]",107]',  # a session id that ends like a day
        "not json": "99]",
        "short": '[1,0,0,0,5,2,"m",null]',
        b"old packed": AppliedObservation(1, 0, 0, 0, 5, 1, "m", uid, 100).value(),
        b"kept packed": AppliedObservation(1, 0, 0, 0, 5, 1, "m", uid, 101).value(),
        b"bad packed": b"\x02\xc1",
    }
    gone = {"old", b"old packed"}
    for key in (keys.observations(G, ORG), keys.observations_before(G, ORG)):
        await redis.hset(key, mapping=entries)  # type: ignore[arg-type]
    await state.prune_observations(redis, G, ORG, oldest_day=101, chunk=1)
    for key in (keys.observations(G, ORG), keys.observations_before(G, ORG)):
        kept = sorted(k if isinstance(k, bytes) else k.encode() for k in entries if k not in gone)
        assert sorted(await redis.hkeys(key)) == kept


async def test_prune_traces_forgets_what_is_past_the_observation_retention(redis: Redis) -> None:
    """Observations and traces timed before the first day kept go, with every session of each trace gone and
    none of another's: trace ids that hold `|`, one whose id ends another's prefix, one not ASCII (its
    length counted in bytes, as the script counts it)."""
    day = 20_000
    old, kept = (day - 1) * DAY_MS + 5, day * DAY_MS
    session = llm_cost.trace_session
    await redis.zadd(keys.observation_index(G, ORG), {"o-old": old, "o-kept": kept})
    await redis.zadd(keys.trace_index(G, ORG), {"t|1": old, "t": kept, "té": old, "1": kept})
    await redis.zadd(
        keys.trace_sessions(G, ORG),
        {session("t|1", "s1"): 0, session("t|1", "s2"): 0, session("t", "1|s"): 0, session("té", "s"): 0,
         session("1", "t|1|s"): 0},
    )  # fmt: skip
    assert await traces.prune_traces(redis, G, ORG, day, chunk=1) == 3
    assert await redis.zrange(keys.observation_index(G, ORG), 0, -1) == [b"o-kept"]
    assert sorted(await redis.zrange(keys.trace_index(G, ORG), 0, -1)) == [b"1", b"t"]
    assert sorted(await redis.zrange(keys.trace_sessions(G, ORG), 0, -1)) == sorted(
        s.encode() for s in (session("t", "1|s"), session("1", "t|1|s"))
    )
    # An erased student's session: the trace no longer names it, and a trace no session names goes.
    assert await traces.forget_sessions(redis, G, ORG, {("t", "1|s")}) == 1
    assert await redis.zrange(keys.trace_index(G, ORG), 0, -1) == [b"1"]
    assert await redis.zrange(keys.trace_sessions(G, ORG), 0, -1) == [session("1", "t|1|s").encode()]


@pytest.mark.parametrize("form", ["header", "legacy"])
async def test_prune_conversations_drops_digests_only_of_an_unchanged_conversation(redis: Redis, form: str) -> None:
    digest = conversation_digest(ORG, "c1")
    where = (keys.conversation_bucket(G, ORG, digest), keys.conversation_field(digest))
    held = conversation(3, last_day=100, ids=Digests([event_digest("e0")]))
    stored = held.pack() if form == "header" else legacy(held)
    await redis.hset(*where, stored)
    script = Script(redis, state.PRUNE_CONVERSATIONS_LUA)
    assert await script.run([where[0]], [1, where[1], 2, b"stale"]) == 0  # read at another version
    assert await redis.hget(*where) == stored
    assert await state.prune_conversations(redis, G, ORG, oldest_day=101) == 1
    after = await redis.hget(*where)
    assert after is not None and after[0] == FORMAT and prefix(after) == (4, 0)  # now stored with the header
    assert ConversationState.unpack(after) == msgspec.structs.replace(held, version=4, ids=Digests(), last_day=0)
    assert await state.prune_conversations(redis, G, ORG, oldest_day=101) == 0


async def listed(redis: Redis) -> list[Any]:
    digest = conversation_digest(ORG, "c1")
    return [
        await redis.hget(keys.conversation_bucket(G, ORG, digest), keys.conversation_field(digest)),
        await redis.zrange(chat_history.index_key(G, ORG), 0, -1),
        await redis.smembers(chat_history.filter_key(G, ORG, "topic", "algebra", digest)),
        await redis.zrange(llm_cost.sessions_key(G, ORG, 0), 0, -1),
        await redis.hgetall(transcripts.transcript_key(G, ORG, digest)),
        await redis.zrange(student_activity.starts_key(G, ORG, "s1"), 0, -1),
    ]


async def stored_conversation(redis: Redis, form: str) -> tuple[ConversationState, list[Any]]:
    """A conversation listed in the index, a topic filter, the session costs of day 0 and its student's
    session starts, with a transcript."""
    digest = conversation_digest(ORG, "c1")
    held = conversation(3, msg_topics=frozenset({"algebra"}), costs={5: 10}, first_mentor="m1", first_student="s1")
    await redis.hset(
        keys.conversation_bucket(G, ORG, digest),
        keys.conversation_field(digest),
        held.pack() if form == "header" else legacy(held),
    )
    await redis.zadd(chat_history.index_key(G, ORG), {str(digest): 1_000})
    await redis.sadd(chat_history.filter_key(G, ORG, "topic", "algebra", digest), str(digest))
    await redis.zadd(llm_cost.sessions_key(G, ORG, 0), {llm_cost.session_member("m1", "c1"): 10})
    await redis.hset(transcripts.transcript_key(G, ORG, digest), "e0", '[1000, "human", "hello"]')
    await redis.zadd(student_activity.starts_key(G, ORG, "s1"), {student_activity.starts_member(digest, "m1"): 1_000})
    return held, await listed(redis)


@pytest.mark.parametrize("form", ["header", "legacy"])
async def test_remove_conversation_removes_it_everywhere_unless_written_since(redis: Redis, form: str) -> None:
    held, before = await stored_conversation(redis, form)
    assert all(before)
    digest = conversation_digest(ORG, "c1")
    script = Script(redis, erase.REMOVE_CONVERSATION_LUA)
    assert await script.run(*erase.removal(G, ORG, digest, held, 2)) == 0  # read at another version
    assert await listed(redis) == before
    assert await state.expire_conversations(redis, G, ORG, before_ms=1_001) == 1
    assert await listed(redis) == [None, [], set(), [], {}, []]


async def test_save_progress_never_lowers_an_offset(redis: Redis) -> None:
    await state.save_progress(redis, "g", {"t:0": 10, "t:1": 3})
    await state.save_progress(redis, "g", {"t:0": 7, "t:1": 4, "t:2": 0})
    assert await redis.hgetall(keys.progress("g")) == {b"t:0": b"10", b"t:1": b"4", b"t:2": b"0"}


# erase.lua, publish_begin.lua, and the removal of an erased student's conversations (tables/erase.py)


async def test_erase_writes_the_tombstone_bumps_the_version_and_names_the_publications_under_way(
    redis: Redis,
) -> None:
    await redis.zadd(keys.publishing(ORG), {"t1": 1_000})
    script = Script(redis, erase.ERASE_LUA)
    assert await script.run([keys.erasures(ORG), keys.publishing(ORG)], ["stone", "{}"]) == [b"t1", b"1000"]
    assert await script.run([keys.erasures(ORG), keys.publishing(ORG)], ["stone2", "{}"]) == [b"t1", b"1000"]
    assert await redis.hgetall(keys.erasures(ORG)) == {b"stone": b"{}", b"stone2": b"{}", b"v": b"2"}


async def test_publish_begin_registers_drops_stale_tokens_and_says_who_is_erased(redis: Redis) -> None:
    now_ms = int(time.time() * 1000)
    await redis.zadd(keys.publishing(ORG), {"dead": now_ms - 120_000, "alive": now_ms - 1_000})
    await redis.hset(keys.erasures(ORG), "stone", "{}")
    flags = await Script(redis, erase.PUBLISH_BEGIN_LUA).run(
        [keys.erasures(ORG), keys.publishing(ORG)], ["mine", 60_000, "other", "stone"]
    )
    assert flags == [0, 1]
    tokens = await redis.zrange(keys.publishing(ORG), 0, -1, withscores=True)
    assert [t for t, _ in tokens] == [b"alive", b"mine"] and abs(tokens[1][1] - now_ms) < 5_000


async def test_erasing_a_conversation_written_meanwhile_reads_it_again(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch writing the erased student's conversation between the erasure's read and its removal (here
    a new topic, so a new filter entry) makes the guarded script refuse; read again, it goes whole."""
    events = [
        ("chat-messages", {"event_id": "e1", "org": ORG, "timestamp": format_timestamp(int(time.time() * 1000) - 60_000), "session_id": "c1",
                           "student": "ann", "mentor_id": "m1", "role": "human", "topics": ["algebra"]}),
    ]  # fmt: skip
    await apply_batches(redis, [as_records(events)], Settings())
    digest = conversation_digest(ORG, "c1")
    where = (keys.conversation_bucket(G, ORG, digest), keys.conversation_field(digest))
    geometry = chat_history.filter_key(G, ORG, "topic", "geometry", digest)
    run = Script.run
    refused: list[int] = []

    async def meanwhile(self: Script, keys_: Any, args: Any = ()) -> Any:
        if self.lua is erase.REMOVE_CONVERSATION_LUA and not refused:
            held = ConversationState.unpack(await redis.hget(*where))
            written = msgspec.structs.replace(
                held, version=(held.version or 0) + 1, msg_topics=frozenset({"algebra", "geometry"})
            )
            await redis.hset(*where, written.pack())
            await redis.sadd(geometry, str(digest))
            refused.append(await run(self, keys_, args))
        return await run(self, keys_, args)

    monkeypatch.setattr(Script, "run", meanwhile)
    done = await erase.erase_student(redis, ORG, "ann", by="test", now_ms=1)
    assert refused == [0] and done.conversations == 1
    assert await redis.hget(*where) is None and await redis.exists(geometry) == 0
    assert await redis.zcard(chat_history.index_key(G, ORG)) == 0


# changefeed_snapshot.lua, changefeed_clear.lua, unlock.lua (tables/changefeed.py)


async def test_changefeed_snapshot_reads_each_mark_and_its_hash_counter(redis: Redis) -> None:
    bucket = keys.bucket(G, ORG, Grain.DAY, 20_000)
    top = top_students.key(G, ORG, Grain.DAY, 20_000)
    odd = "cost|u|a\0b|c"  # a field holding a NUL and `|`: read whole
    await redis.hset(bucket, mapping={sessions.MESSAGES: 7, odd: 3})
    marks = [keys.counter_mark(bucket, f, "h") for f in (sessions.MESSAGES, odd, sessions.SESSIONS)]
    marks.append(keys.counter_mark(top, "", "z"))
    await redis.hset(keys.changefeed_marks(ORG), mapping={m: n for n, m in enumerate(marks[:3], start=1)})
    seqs, values = await Script(redis, changefeed.SNAPSHOT_LUA).run(
        [keys.changefeed_marks(ORG), bucket, top], [*marks, 2, 2, 2, 3]
    )
    assert seqs == [b"1", b"2", b"3", None]
    assert values == [b"7", b"3", None, None]


async def test_changefeed_clear_leaves_a_mark_made_again_since(redis: Redis) -> None:
    await redis.hset(keys.changefeed_marks(ORG), mapping={"#": 9, "a": 3, "b": 9})
    cleared = await Script(redis, changefeed.CLEAR_LUA).run([keys.changefeed_marks(ORG)], ["a", 3, "b", 4, "c", 1])
    assert cleared == 1
    assert await redis.hgetall(keys.changefeed_marks(ORG)) == {b"#": b"9", b"b": b"9"}


async def test_unlock_releases_only_the_holders_lock(redis: Redis) -> None:
    unlock = Script(redis, changefeed.UNLOCK_LUA)
    await redis.set("lock", "me")
    assert await unlock.run(["lock"], ["you"]) == 0 and await redis.get("lock") == b"me"
    assert await unlock.run(["lock"], ["me"]) == 1 and await redis.exists("lock") == 0
    assert await unlock.run(["lock"], ["me"]) == 0


# zunion_scores.lua (tables/queries.py)


async def test_zunion_adds_the_scores_of_the_sets(redis: Redis) -> None:
    a, b = top_students.key(G, ORG, Grain.DAY, 1), top_students.key(G, ORG, Grain.DAY, 2)
    await redis.zadd(a, {"ann": 2, "bob": 1})
    await redis.zadd(b, {"ann": 3, "cy": 4})
    assert sorted(await queries.zunion(redis, [a, b, top_students.key(G, ORG, Grain.DAY, 3)])) == [
        (b"ann", 5.0),
        (b"bob", 1.0),
        (b"cy", 4.0),
    ]


# alert_transition.lua, alert_lease.lua (agents/alerts.py)


async def test_alert_transition_writes_state_and_outbox_only_from_the_state_read(redis: Redis) -> None:
    script = Script(redis, alerts.TRANSITION_LUA)
    where = [keys.alert_state(ORG), keys.alert_outbox(ORG)]
    assert await script.run(where, ["cost", "", "firing-1", "alert-1"]) == 1
    assert await script.run(where, ["cost", "", "firing-2", "alert-2"]) == 0  # decided on a stale read
    assert await script.run(where, ["cost", "firing-1", "ok", "alert-3"]) == 1
    assert await redis.hgetall(keys.alert_state(ORG)) == {b"cost": b"ok"}
    assert await redis.lrange(keys.alert_outbox(ORG), 0, -1) == [b"alert-1", b"alert-3"]


async def test_alert_lease_is_taken_renewed_refused_and_released(redis: Redis) -> None:
    lease = Script(redis, alerts.LEASE_LUA)
    assert await lease.run([keys.alert_lease()], ["w1", 1_000]) == 1
    assert await lease.run([keys.alert_lease()], ["w2", 1_000]) == 0
    assert await lease.run([keys.alert_lease()], ["w1", 50_000]) == 1
    assert await redis.pttl(keys.alert_lease()) > 10_000  # renewed
    assert await Script(redis, changefeed.UNLOCK_LUA).run([keys.alert_lease()], ["w1"]) == 1  # on its way out
    assert await lease.run([keys.alert_lease()], ["w2", 1_000]) == 1


# rebuild_start.lua, rebuild_switch.lua (agents/rebuild.py)


async def test_rebuild_start_and_switch(redis: Redis) -> None:
    start, switch = Script(redis, rebuild.START_LUA), Script(redis, rebuild.SWITCH_LUA)
    gens = keys.generations()
    await redis.hset(gens, mapping={"current": 1, "v": 4})
    assert await switch.run([gens], [2]) == 0  # nothing being built
    assert await start.run([gens], [2]) == 5
    assert await start.run([gens], [3]) == 0  # one rebuild at a time
    await redis.hset(gens, mapping={"until": orjson.dumps({"t:0": 5}), "started_ms": 1})
    assert await switch.run([gens], [3]) == 0 and await redis.hget(gens, "current") == b"1"
    assert await switch.run([gens], [2]) == 6
    assert await redis.hgetall(gens) == {b"current": b"2", b"v": b"6"}
