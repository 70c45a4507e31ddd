"""Hostile input: no record stops the pipeline, and no identifier mixes one student's, session's or mentor's
data with another's. Pure rules first (bounds, encodings, served ids), then a real worker on a real Kafka and
Redis fed the events that used to stop it, colliding identifiers, a counter driven past 64 bits, and
generated events with extreme values and odd characters in every identifier beside a bystander org."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from streams.exceptions import InvalidEvent
from streams.schemas import MAX_TOKENS, MIN_TIME_MS, Limits, parse
from streams.settings import ENGINES, Settings
from tables import ids, keys, queries, traces
from tables.aggregates import chat_history, first_seen, llm_cost, top_students
from tables.buckets import Grain
from tables.faults import is_data_fault
from tests import reference
from tests.support import WorkerProcess, demo_events, mismatches, read_compacted, read_topic, worker_and_producer

NOW_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
LIMITS = Limits(retention_ms=None, max_future_ms=300_000)
# Identifiers a hostile producer may choose: separators of our keys and records, hash-tag braces, look-alikes,
# a served UUID's shape, whitespace and controls.
ODD = st.sampled_from(["|", ":", "{", "}", "|top_students|", "|m|", "cost_nanos|u|", "\\", "\0", " ", "\u200b", "ǀ"])
hostile_names = st.lists(st.one_of(ODD, st.text(min_size=1, max_size=6)), min_size=1, max_size=5).map("".join)


def chat(**over: Any) -> dict[str, Any]:
    return {"event_id": "e1", "org": "acme", "timestamp": NOW_MS - 60_000, "session_id": "s1", "student": "ann",
            "mentor_id": "m1", "role": "human", **over}  # fmt: skip


def observation(**over: Any) -> dict[str, Any]:
    return {"event_id": "o1", "org": "acme", "timestamp": NOW_MS - 60_000, "trace_id": "t1", "type": "generation",
            "model": "gpt-4o", "usage": {"input": 10, "output": 5}, **over}  # fmt: skip


def record(**over: Any) -> dict[str, Any]:
    return {"event_id": "h1", "org": "acme", "timestamp": NOW_MS - 60_000, "id": "s1", "student": "ann",
            "mentor": "m1", **over}  # fmt: skip


def nested(depth: int) -> Any:
    """Arrays `depth` deep: as a value up to 200 levels, else a marker `encode` writes out (orjson writes
    at most 254 levels, so a producer's deeper JSON is written by hand)."""
    if depth > 200:
        return f"@deep:{depth}@"
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def encode(event: dict[str, Any]) -> bytes:
    """JSON as a producer may write it: integers past 64 bits, arrays nested past what orjson writes."""
    raw = json.dumps(event, separators=(",", ":")).encode()
    while b'"@deep:' in raw:
        start = raw.index(b'"@deep:')
        end = raw.index(b'@"', start + 7)
        depth = int(raw[start + 7 : end])
        raw = raw[:start] + b"[" * depth + b"1" + b"]" * depth + raw[end + 2 :]
    return raw


def refusal(topic: str, event: dict[str, Any], key: bytes = b"s1") -> str:
    with pytest.raises(InvalidEvent) as err:
        parse(topic, key, encode(event), NOW_MS, LIMITS)
    return err.value.reason


# --- bounds: each a dead letter naming it --------------------------------------------------------------


def test_every_value_the_code_cannot_store_is_refused_with_a_reason() -> None:
    assert "inserted_at" in refusal("chat-history", record(inserted_at=1e20))
    assert "inserted_at" in refusal("chat-history", record(inserted_at="2030-01-01T00:00:00Z"))  # the future
    assert "nests" in refusal("chat-history", record(metadata=nested(300)))
    assert "2000-01-01" in refusal("chat-messages", chat(timestamp=-100_000_000_000_000))
    assert "2000-01-01" in refusal("chat-messages", chat(timestamp="0001-01-01T00:00:00Z"))
    assert "usage.input" in refusal("llm-observations", observation(usage={"input": 2**63, "output": 1}), b"t1")
    assert "usage.output" in refusal("llm-observations", observation(usage={"input": 1, "output": MAX_TOKENS + 1}))
    assert "topics" in refusal("chat-messages", chat(topics=[f"t{i}" for i in range(20_000)]))
    assert "topics" in refusal("chat-history", record(topics=[{"name": f"t{i}"} for i in range(65)]))


def test_values_at_the_bounds_are_accepted() -> None:
    ok = parse(
        "chat-history", b"s1", orjson.dumps(record(metadata=nested(30), inserted_at=MIN_TIME_MS)), NOW_MS, LIMITS
    )
    assert ok.inserted_at_ms == MIN_TIME_MS  # type: ignore[union-attr]
    obs = parse("llm-observations", b"t1", orjson.dumps(observation(usage={"input": MAX_TOKENS})), NOW_MS, LIMITS)
    assert obs.input_tokens == MAX_TOKENS  # type: ignore[union-attr]
    many = parse(
        "chat-messages", b"s1", orjson.dumps(chat(topics=["a"] * 100 + [f"t{i}" for i in range(63)])), NOW_MS, LIMITS
    )
    assert len(set(many.topics or ())) == 64  # type: ignore[union-attr]


# --- encodings read back exactly -------------------------------------------------------------------------


@settings(max_examples=300)
@given(student=hostile_names, mentor=hostile_names, model=hostile_names, session=hostile_names)
def test_record_keys_and_session_cost_members_read_back_exactly(
    student: str, mentor: str, model: str, session: str
) -> None:
    bucket = keys.bucket(0, "acme", Grain.DAY, 20_000)
    for field in (
        llm_cost.cost_field("u", student),
        llm_cost.cost_field("m", mentor),
        llm_cost.cost_field("model", model),
    ):
        described = keys.describe_counter(bucket, field, "h")
        assert described is not None
        assert keys.parse_record_key(described[0].encode()) == ("acme", field, "d", Grain.DAY.label(20_000))
        assert not top_students.is_metric(field)
        assert llm_cost.student_of_metric(field) == (student if field == llm_cost.cost_field("u", student) else None)
    top = keys.describe_counter(top_students.key(0, "acme", Grain.DAY, 20_000, mentor), "", "z")
    assert top is not None
    metric = keys.parse_record_key(top[0])[1]
    assert top_students.is_metric(metric) and metric == f"top_students|m|{mentor}"
    assert llm_cost.parse_session_member(llm_cost.session_member(mentor, session)) == (mentor, session)


def test_session_cost_members_of_different_pairs_differ() -> None:
    assert llm_cost.session_member("m|x", "s") != llm_cost.session_member("m", "x|s")
    assert llm_cost.parse_session_member("m|x|s") is None  # a member written before the length prefix


def test_no_served_id_is_another_ids_served_id() -> None:
    for kind in (ids.CONVERSATION, ids.MENTOR):
        slug_served = ids.served("acme", kind, "slug-m")
        assert uuid.UUID(slug_served).version == 5
        # A producer using that served UUID as an id of its own gets another served id...
        assert ids.served("acme", kind, slug_served) != slug_served
        # ... in any spelling, and its served id is stable.
        assert ids.served("acme", kind, slug_served.upper()) == ids.served("acme", kind, slug_served)
        assert ids.needs_mapping(slug_served)
        # A random (version 4) UUID, as the platform sends, is still served as itself.
        v4 = str(uuid.uuid4())
        assert ids.served("acme", kind, v4.upper().replace("-", "")) == v4 and not ids.needs_mapping(v4)


def test_a_refused_apply_is_a_data_fault_and_redis_being_away_is_not() -> None:
    assert is_data_fault(ResponseError("apply script refused: k f: ERR increment or decrement would overflow"))
    assert is_data_fault(TypeError("Integer exceeds 64-bit range"))
    assert not is_data_fault(ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"))
    assert not is_data_fault(ResponseError("OOM command not allowed when used memory > 'maxmemory'. script: x"))
    assert not is_data_fault(ConnectionError("refused"))


# --- a real worker ---------------------------------------------------------------------------------------

_serial = itertools.count()


def _key(topic: str, event: dict[str, Any]) -> bytes:
    field = {"chat-messages": "session_id", "sentiment": "session_id", "chat-history": "id"}.get(topic, "trace_id")
    value = event.get(field)
    return str(value if value is not None else "k").encode()


async def _send(
    producer: AIOKafkaProducer, cfg: Settings, events: list[tuple[str, dict[str, Any]]]
) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Send the events; where each landed -> the event."""
    where = {}
    futures = [(await producer.send(cfg.topic(t), encode(e), key=_key(t, e)), t, e) for t, e in events]
    for fut, topic, event in futures:
        meta = await fut
        where[(topic, meta.partition, meta.offset)] = event
    return where


async def _dead_letters(cfg: Settings) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {
        (d["topic"], d["partition"], d["offset"]): d for _, d in await read_topic(cfg, "analytics-dead-letter", 0.5)
    }


async def _until(check: Any, worker: WorkerProcess, timeout: float = 90) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        last = await check()
        if last is True:
            return
        assert worker.alive(), worker.log_tail()
        assert asyncio.get_running_loop().time() < deadline, (last, worker.log_tail())
        await asyncio.sleep(0.5)


@pytest.fixture
async def hostile_worker(settings: Settings, topics: list[str], redis: Redis) -> Any:
    # Transcripts on: hostile message content and event ids go through the transcripts family too.
    settings = dataclasses.replace(settings, transcript_days=7)
    async with worker_and_producer(settings, "hostile") as (worker, producer):
        yield settings, producer, redis, worker


@pytest.mark.integration
async def test_events_that_used_to_stop_the_worker_and_colliding_ids(hostile_worker: Any) -> None:
    """The six events that stopped every org's processing (four now dead letters, two valid and counted),
    and identifiers built to collide, beside a bystander org's traffic: the worker keeps applying, each
    bad event is a dead letter with its reason, and every count is the reference's."""
    cfg, producer, redis, worker = hostile_worker
    now = int(datetime.now(UTC).timestamp() * 1000) - 120_000
    org = "hostile"
    n = itertools.count()

    def ev(**fields: Any) -> dict[str, Any]:
        return {"event_id": f"h{next(n)}", "org": org, "timestamp": now, **fields}

    bad = [
        ("chat-history", ev(id="c1", student="ann", mentor="m1", inserted_at=1e20)),
        ("chat-history", ev(id="c2", student="ann", mentor="m1", metadata=nested(300))),
        (
            "chat-messages",
            ev(timestamp=-100_000_000_000_000, session_id="c3", student="ann", mentor_id="m1", role="human"),
        ),
        ("llm-observations", ev(trace_id="t1", type="generation", model="gpt-4o", usage={"input": 2**63, "output": 1})),
    ]
    slug_session_served = ids.served(org, ids.CONVERSATION, "slug-s")
    slug_mentor_served = ids.served(org, ids.MENTOR, "slug-m")
    good = [
        # a model and a username holding a record key's separators, with costs on the session
        ("chat-messages", ev(session_id="c4", student="eve|top_students|x", mentor_id="m1", role="human")),
        (
            "llm-observations",
            ev(
                trace_id="t2",
                type="generation",
                model="x|top_students|y",
                usage={"input": 1},
                session_id="c4",
                cost="0.5",
            ),
        ),
        (
            "llm-observations",
            ev(trace_id="t3", type="generation", model="gpt-4o", usage={"input": 1}, session_id="c4", cost="0.25"),
        ),
        # a session, and another whose id is the first one's served UUID (two students, two messages each)
        *[
            ("chat-messages", ev(session_id="slug-s", student="bob", mentor_id="slug-m", role=r))
            for r in ("human", "ai")
        ],
        *[
            ("chat-messages", ev(session_id=slug_session_served, student="cat", mentor_id=slug_mentor_served, role=r))
            for r in ("human", "ai")
        ],
        # per-mentor session costs: mentor `m|x` with session `s`, mentor `m` with session `x|s`
        ("chat-messages", ev(session_id="s", student="dan", mentor_id="m|x", role="human")),
        ("chat-messages", ev(session_id="x|s", student="dan", mentor_id="m", role="human")),
        (
            "llm-observations",
            ev(trace_id="t4", type="generation", model="gpt-4o", usage={"input": 1}, session_id="s", cost="1"),
        ),
        (
            "llm-observations",
            ev(trace_id="t5", type="generation", model="gpt-4o", usage={"input": 1}, session_id="x|s", cost="2"),
        ),
    ]
    bystander = demo_events(600, seed=91)
    sent_bad = await _send(producer, cfg, bad)
    await _send(producer, cfg, good + bystander)
    exp = reference.expected(good + bystander)

    async def done() -> Any:
        dead = await _dead_letters(cfg)
        missing = [where for where in sent_bad if where not in dead]
        diff = await mismatches(redis, exp)
        return True if not missing and not diff else (missing, diff[:5])

    await _until(done, worker)
    dead = await _dead_letters(cfg)
    reasons = sorted(dead[where]["reason"] for where in sent_bad)
    assert any("inserted_at" in r for r in reasons) and any("nests" in r for r in reasons), reasons
    assert any("2000-01-01" in r for r in reasons) and any("usage.input" in r for r in reasons), reasons
    assert len(dead) == len(sent_bad), [d["reason"] for d in dead.values()]  # nothing valid was dead-lettered

    today = datetime.fromtimestamp(now / 1000, UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    span = (start, start + timedelta(days=1))
    # Two sessions, not one; each conversation with its own student and messages.
    history = {
        c["session_id"]: c
        for c in (await chat_history.chat_history(queries.View(redis, 0), org, chat_history.HistoryFilter(), 1, 100))[1]
    }
    assert history["slug-s"]["student"] == "bob" and history[slug_session_served]["student"] == "cat"
    assert history["slug-s"]["id"] != history[slug_session_served]["id"]
    found = await chat_history.conversation(queries.View(redis, 0), org, history[slug_session_served]["id"])
    assert found is not None and found[0] == slug_session_served
    # Each mentor reachable by the id it is served under.
    assert await queries.resolve(queries.View(redis, 0), org, ids.MENTOR, slug_mentor_served) == "slug-m"
    assert (
        await queries.resolve(queries.View(redis, 0), org, ids.MENTOR, history[slug_session_served]["mentor"])
        == slug_mentor_served
    )

    # total-users-by-mentor: students who sent a message, from the top-students sets, kept apart the same way.
    async def active(mentor: str | None = None, hourly: bool = False) -> list[int]:
        rows = await top_students.active_students(queries.View(redis, 0), org, today, today, hourly, mentor)
        return [r["user_count"] for r in rows]

    assert await active() == [len({"eve|top_students|x", "bob", "cat", "dan"})]
    assert (await active("m|x"), await active("m"), await active("m1")) == ([1], [1], [1])
    assert await active(slug_mentor_served) == [1] and await active(history[slug_session_served]["mentor"]) == [1]
    hours = await active(hourly=True)
    assert len(hours) == 24 and max(hours) <= 4 <= sum(hours)  # every student in an hour, none twice in one

    # New students (their first message): each one once under their own name, each mentor's set its own.
    async def new(mentor: str | None = None) -> tuple[int, int]:
        split = await first_seen.new_and_returning(queries.View(redis, 0), org, today, today, mentor)
        return split["new_users"]["count"], split["returning_users"]["count"]

    assert await new() == (4, 0)
    assert (await new("m|x"), await new("m"), await new(slug_mentor_served)) == ((1, 0), (1, 0), (1, 0))
    assert await redis.zrange(first_seen.key(0, org), 0, -1) == [b"bob", b"cat", b"dan", b"eve|top_students|x"]
    assert await redis.zrange(first_seen.key(0, org, "m|x"), 0, -1) == [b"dan"]
    assert await redis.zrange(first_seen.key(0, org, "slug-m"), 0, -1) == [b"bob"]
    # Per-mentor session costs kept apart.
    sessions = await llm_cost.session_costs(queries.View(redis, 0), org, *span)
    assert sessions[("m|x", "s")] == 1_000_000_000 and sessions[("m", "x|s")] == 2_000_000_000
    # The hostile names are counted under their own names.
    assert (
        await llm_cost.cost_of(queries.View(redis, 0), org, *span, llm_cost.cost_field("u", "eve|top_students|x"))
        == 750_000_000
    )
    assert (
        await llm_cost.cost_of(queries.View(redis, 0), org, *span, llm_cost.cost_field("model", "x|top_students|y"))
        == 500_000_000
    )
    assert worker.alive()


@pytest.mark.integration
@pytest.mark.parametrize("engine", ENGINES)
async def test_a_counter_driven_past_64_bits_dead_letters_only_the_records_that_would_pass_it(
    hostile_worker: Any,
) -> None:
    """9,230 observations of a million dollars each into one day: the first 9,223 fit in a 64-bit counter of
    nano-dollars, the other 7 are isolated from their batches and dead-lettered with the reason; every
    other event of those batches (a bystander org's) is applied, and the worker never stops."""
    cfg, producer, redis, worker = hostile_worker
    now = int(datetime.now(UTC).timestamp() * 1000) - 120_000
    whale = [
        (
            "llm-observations",
            observation(event_id=f"w{i}", org="whale", timestamp=now, trace_id=f"w{i}", cost="1000000"),
        )
        for i in range(9_230)
    ]
    bystander = demo_events(1_500, seed=97)
    mixed = [e for pair in itertools.zip_longest(whale, bystander) for e in pair if e is not None]
    await _send(producer, cfg, mixed)
    exp = reference.expected(bystander)

    async def done() -> Any:
        dead = [d for d in (await _dead_letters(cfg)).values() if d["topic"] == "llm-observations"]
        diff = await mismatches(redis, exp)
        return True if len(dead) >= 7 and not diff else (len(dead), diff[:5])

    await _until(done, worker, timeout=150)
    await asyncio.sleep(2.0)
    dead = list((await _dead_letters(cfg)).values())
    assert len(dead) == 7, [d["reason"] for d in dead][:3]
    assert all("overflow" in d["reason"] for d in dead), dead[0]["reason"]
    today = datetime.fromtimestamp(now / 1000, UTC).date()
    start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    cost = await llm_cost.tenant_cost(queries.View(redis, 0), "whale", start, start + timedelta(days=1))
    assert cost["cost_nanos"] == 9_223 * 10**15  # exactly the observations that fit, none counted twice
    assert int((await redis.hget(keys.quarantined(), "llm-observations")) or 0) == 7
    assert worker.alive()


# --- generated hostile traffic ------------------------------------------------------------------------

_orgs = itertools.count()
_ids = itertools.count()
NOW = int(datetime.now(UTC).timestamp() * 1000) - 600_000


@st.composite
def hostile_event(draw: Any, org: str) -> tuple[str, dict[str, Any]]:
    """A valid event whose every identifier may hold separators and look-alikes, and whose numbers may
    sit at the bounds."""
    topic = draw(st.sampled_from(["chat-messages", "sentiment", "llm-observations", "chat-history"]))
    ts = NOW - draw(st.integers(0, 5 * 86_400_000))
    base = {"event_id": f"hx-{next(_ids)}-{draw(hostile_names)}", "org": org, "timestamp": ts}
    session = draw(st.sampled_from(["s1", "s2"]) | hostile_names | st.just(ids.served(org, ids.CONVERSATION, "s1")))
    if topic == "chat-messages":
        extra: dict[str, Any] = {"session_id": session, "student": draw(hostile_names), "mentor_id": draw(hostile_names),
                                 "role": draw(st.sampled_from(["human", "ai"])), "topics": draw(st.lists(hostile_names, max_size=3)),
                                 "content": draw(hostile_names | st.just("[" * 40 + "]" * 40))}  # fmt: skip
    elif topic == "sentiment":
        extra = {"session_id": session, "student": draw(hostile_names),
                 "sentiment": draw(st.sampled_from(["positive", "neutral", "negative"])), "score": draw(st.floats(allow_nan=False, allow_infinity=False))}  # fmt: skip
    elif topic == "llm-observations":
        extra = {"trace_id": draw(hostile_names), "type": "generation", "model": draw(hostile_names),
                 "usage": {"input": draw(st.integers(0, MAX_TOKENS)), "output": draw(st.integers(0, MAX_TOKENS))},
                 "session_id": session, "cost": draw(st.sampled_from(["0", "1000000", "0.000000001"]))}  # fmt: skip
    else:
        extra = {"id": session, "student": draw(hostile_names), "mentor": draw(hostile_names),
                 "metadata": nested(draw(st.integers(0, 30))), "title": draw(hostile_names),
                 "inserted_at": ts - draw(st.integers(0, 86_400_000)),
                 # the rating sums and the topics family: 64-bit extremes, look-alike values, separators in topics
                 "rating": draw(st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, True, "5", None, 1.5])),
                 "topics": [{"name": n} for n in draw(st.lists(hostile_names, max_size=3))]}  # fmt: skip
    return topic, {**base, **extra}


@st.composite
def beyond_bounds(draw: Any, org: str) -> tuple[str, dict[str, Any]]:
    topic, event = draw(hostile_event(org))
    kind = draw(st.sampled_from(["old", "deep", "huge"]))
    if kind == "old" or (kind == "deep" and topic != "chat-history"):
        event["timestamp"] = draw(st.integers(-(2**63), MIN_TIME_MS - 1))
    elif kind == "deep":
        event["metadata"] = nested(draw(st.integers(33, 1000)))
    elif topic == "llm-observations":
        event["usage"] = {"input": draw(st.integers(MAX_TOKENS + 1, 2**64))}
    elif topic == "chat-history":
        event["inserted_at"] = draw(st.sampled_from([1e20, -1e20, 2**70]))
    else:
        event["topics"] = [f"t{i}" for i in range(65)]
        if topic == "sentiment":
            event["timestamp"] = 10**30
    return topic, event


@st.composite
def hostile_traffic(draw: Any) -> tuple[str, list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
    org = f"hx-{next(_orgs)}"
    good = draw(st.lists(hostile_event(org), min_size=1, max_size=15))
    return org, good, draw(st.lists(beyond_bounds(org), min_size=1, max_size=5))


@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=hostile_traffic())
@pytest.mark.integration
async def test_generated_hostile_events_never_stop_the_worker_nor_touch_a_bystander(
    hostile_worker: Any, case: Any
) -> None:
    cfg, producer, redis, worker = hostile_worker
    _org, good, bad = case
    bystander = [(t, {**e, "org": f"by-{_org}"}) for t, e in demo_events(60, seed=next(_ids))]
    sent_bad = await _send(producer, cfg, bad)
    await _send(producer, cfg, [e for pair in itertools.zip_longest(good, bystander) for e in pair if e is not None])
    exp = reference.expected(bystander)

    # Every trace reads back with its own id, first time and session, whatever separators they hold.
    oldest = Grain.DAY.index(int(datetime.now(UTC).timestamp() * 1000)) - 6
    want_traces = [row[:3] for row in reference.traces(good, _org, oldest)]

    async def done() -> Any:
        dead = await _dead_letters(cfg)
        missing = [where for where in sent_bad if where not in dead]
        diff = await mismatches(redis, exp)
        listed = await traces.all_traces(queries.View(redis, 0), _org, newest_first=False)
        wrong = [(t.trace_id, t.first_ms, t.session) for t in listed] != want_traces
        return True if not missing and not diff and not wrong else (missing[:3], diff[:3], wrong)

    await _until(done, worker, timeout=60)
    dead = await _dead_letters(cfg)
    assert all(dead[where]["reason"] for where in sent_bad)
    assert int((await redis.hget(keys.quarantined(), "chat-messages")) or 0) == 0  # nothing valid isolated


# --- erasure leaves nothing a reader could use ---------------------------------------------------------


def test_tombstones_are_keyed_with_the_deployments_secret() -> None:
    import hashlib

    unkeyed = hashlib.sha256(b"acme\0ann").hexdigest()[:32]
    assert keys.tombstone("acme", "ann", b"s1") not in (unkeyed, keys.tombstone("acme", "ann", b"s2"))
    assert keys.legacy_tombstone("acme", "ann") == unkeyed


@pytest.mark.integration
async def test_an_erasure_from_before_the_secret_still_drops_the_students_events(hostile_worker: Any) -> None:
    cfg, producer, redis, worker = hostile_worker
    now = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    await redis.hset(keys.erasures("acme"), keys.legacy_tombstone("acme", "old"), b'{"at_ms": 1, "by": "test"}')
    events = [
        ("chat-messages", chat(event_id=f"l{i}", timestamp=now, session_id=f"s-{who}", student=who, mentor_id="m"))
        for i, who in enumerate(["old", "new", "old"])
    ]
    await _send(producer, cfg, events)
    today = datetime.fromtimestamp(now / 1000, UTC).date()

    async def done() -> Any:
        top = await top_students.top_students(queries.View(redis, 0), "acme", today, today)
        return True if top == [{"username": "new", "chat_message_count": 1}] else top

    await _until(done, worker)
    assert int(await redis.hget(keys.meta(0, "acme"), keys.ERASED_DROPPED) or 0) == 2


@pytest.mark.integration
async def test_dead_letters_are_kept_for_the_configured_days(settings: Settings, topics: list[str]) -> None:
    """The dead-letter topic's retention (its raw values may name an erased student) is the setting's, also
    on a topic that existed before."""
    from dataclasses import replace

    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    from streams import clients

    async def retention_ms() -> int:
        admin = clients.admin(settings.kafka_bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, settings.topic("analytics-dead-letter"))]
            )
        finally:
            await admin.close()
        entries = response.resources[0][4]
        return int(next(e[1] for e in entries if e[0] == "retention.ms"))

    assert await retention_ms() == settings.dead_letter_retention_days * 86_400_000
    await clients.ensure_topics(replace(settings, dead_letter_retention_days=3))
    for _ in range(40):  # the controller applies a topic's new configuration within moments
        if await retention_ms() == 3 * 86_400_000:
            break
        await asyncio.sleep(0.25)
    assert await retention_ms() == 3 * 86_400_000


@pytest.mark.integration
async def test_a_changefeed_record_over_the_brokers_size_is_left_out_and_the_rest_published(
    hostile_worker: Any,
) -> None:
    """2,000 students with 600-character usernames in one day: that day's top-students set is a record
    larger than the broker takes (1 MiB). It is left out (logged, counted); the worker keeps applying and
    every other counter of the org reaches the changefeed."""
    cfg, producer, redis, worker = hostile_worker
    now = int(datetime.now(UTC).timestamp() * 1000) - 60_000
    events = [
        (
            "chat-messages",
            chat(
                event_id=f"big{i}",
                org="crowd",
                timestamp=now,
                session_id=f"s{i}",
                student=f"{i:06d}" + "x" * 594,
                mentor_id="m",
            ),
        )
        for i in range(2_000)
    ]
    await _send(producer, cfg, events)
    day = datetime.fromtimestamp(now / 1000, UTC).strftime("%Y%m%d")

    async def done() -> Any:
        latest = await read_compacted(cfg, idle_s=1.0)
        messages = latest.get(f"crowd|messages|d|{day}", {}).get("value")
        quarantined = int(await redis.hget(keys.quarantined(), "analytics-aggregates") or 0)
        return True if messages == 2_000 and quarantined else (messages, quarantined)

    await _until(done, worker, timeout=120)
    latest = await read_compacted(cfg, idle_s=1.0)
    assert latest[f"crowd|human|d|{day}"]["value"] == 2_000
    # The set too large to send keeps at most its last record that fit (documented in docs/contract.md).
    assert len(latest.get(f"crowd|top_students|d|{day}", {}).get("value", {})) < 2_000
    assert worker.alive()
