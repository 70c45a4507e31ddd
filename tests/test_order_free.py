"""Every answer is a function of the set of records received.

One set of records (chat messages, sentiment, chat-history records, observations with re-sent versions,
re-sent copies) goes through the BatchProcessor on a real Redis several times: each time in another random
order, cut into other random batches, with random records delivered again (as an at-least-once engine
does). Every answer the API serves (through tables/queries) and every conversation record must be identical
each time, and equal to the independent batch computation in tests/reference.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any
from unittest import mock

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from agents import pipeline
from bench.throughput import messages, records
from infra.redis import RedisServer
from streams.deadletter import DeadLetter, Record
from streams.settings import Settings
from tables import generations, ids, keys, queries, traces
from tables.aggregates import (
    chat_history,
    first_seen,
    llm_cost,
    ratings,
    sentiment,
    sessions,
    student_activity,
    top_students,
    topics,
)
from tables.buckets import DAY_MS, Grain, days_between, local_days, month_index, time_zone
from tables.conversations import conversation_digest
from tables.writer import OrgWrite, Writer
from tests import reference
from tests.support import apply_batches, as_records

pytestmark = pytest.mark.integration

ORG = "acme"
LOCAL_ZONE = "America/Los_Angeles"
MENTORS = ("m1", "m2")
TOPICS = ("algebra", "essays", "physics")
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)


def ts(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


@st.composite
def event_sets(draw: st.DrawFn) -> list[tuple[str, dict[str, Any]]]:
    """Events in send order: sessions whose messages are stamped out of order, over day boundaries."""
    events: list[tuple[str, dict[str, Any]]] = []
    n = 0

    def eid(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{kind}{n}"

    for s in range(draw(st.integers(1, 5))):
        session, student = f"s{s}", f"stu{draw(st.integers(0, 3))}"
        # Times spread over three days (minutes ago), distinct within a session: no ties to break.
        times = draw(st.lists(st.integers(1, 3 * 24 * 60), min_size=1, max_size=6, unique=True))
        for t in times:
            events.append(("chat-messages", {
                "event_id": eid("m"), "org": ORG, "timestamp": ts(t), "session_id": session, "student": student,
                "mentor_id": draw(st.sampled_from(MENTORS)), "role": draw(st.sampled_from(("human", "ai"))),
                "topics": draw(st.lists(st.sampled_from(TOPICS), max_size=2, unique=True)),
            }))  # fmt: skip
        sentiment_times = draw(st.lists(st.integers(1, 3 * 24 * 60), max_size=3, unique=True))
        for t in sentiment_times:
            events.append(("sentiment", {
                "event_id": eid("j"), "org": ORG, "timestamp": ts(t), "session_id": session, "student": student,
                "sentiment": draw(st.sampled_from(("positive", "neutral", "negative"))),
            }))  # fmt: skip
        for t in draw(st.lists(st.integers(1, 3 * 24 * 60), max_size=2, unique=True)):
            events.append(("chat-history", {
                "event_id": eid("r"), "org": ORG, "timestamp": ts(t), "id": session, "student": student,
                "mentor": draw(st.sampled_from(MENTORS)), "title": f"title at {t}",
                "topics": [{"name": x} for x in draw(st.lists(st.sampled_from(TOPICS), max_size=2, unique=True))],
                "rating": draw(st.sampled_from([0, 1, -1, 5, True, "5"])),
            }))  # fmt: skip
    for o in range(draw(st.integers(0, 4))):
        event_id = eid("o")
        # A trace's observation, sent again with another cost (Langfuse's update); newest by time then send
        # wins. Attributed through its session (if any) to the session's earliest message's student and mentor.
        session = draw(st.sampled_from([None, *(f"s{i}" for i in range(5))]))
        for t in draw(st.lists(st.integers(1, 3 * 24 * 60), min_size=1, max_size=3)):
            events.append(("llm-observations", {
                "event_id": event_id, "org": ORG, "timestamp": ts(t), "trace_id": f"t{o}", "type": "generation",
                "model": draw(st.sampled_from(("gpt-4o", "claude-3-5-sonnet"))), "usage": {"input": 10, "output": 5},
                "cost": str(draw(st.integers(0, 10**6))) + "e-6", "session_id": session,
            }))  # fmt: skip
    # Producers retry: some events sent twice, the same event_id in a second record.
    copies = draw(st.lists(st.sampled_from(range(len(events))), max_size=4, unique=True))
    return events + [events[i] for i in copies]


def deliveries(records: list[Record], rng: random.Random) -> list[list[Record]]:
    """The records in a random order, some of them again, cut into random batches."""
    stream = records + rng.sample(records, rng.randint(0, len(records)))
    rng.shuffle(stream)
    batches, i = [], 0
    while i < len(stream):
        size = rng.randint(1, 12)
        batches.append(stream[i : i + size])
        i += size
    return batches


async def answers(redis: Redis, first: date, last: date) -> dict[str, Any]:
    """Everything the API would serve for the org over the range."""
    out: dict[str, Any] = {}
    for agg in ("hourly", "daily", "weekly"):
        for mentor in (None, *MENTORS):
            out[f"avg {agg} {mentor}"] = await sessions.average_messages_per_session(
                queries.View(redis, 0), ORG, first, last, agg, mentor
            )
    out["sentiment"] = await sentiment.sentiment_counts(queries.View(redis, 0), ORG, first, last)
    d = first
    while d <= last:
        start = datetime(d.year, d.month, d.day, tzinfo=UTC)
        out[f"cost {d}"] = await llm_cost.tenant_cost(queries.View(redis, 0), ORG, start, start + timedelta(days=1))
        for mentor in (None, *MENTORS):
            out[f"top {d} {mentor}"] = await top_students.top_students(
                queries.View(redis, 0), ORG, d, d, mentor, limit=1000
            )
        d += timedelta(days=1)
    out["top all"] = await top_students.top_students(queries.View(redis, 0), ORG, first, last)
    for hourly in (False, True):
        out[f"ratings {hourly}"] = await ratings.rating_summary(queries.View(redis, 0), ORG, first, last, hourly)
        for mentor in (None, *MENTORS):
            out[f"mean ratings {hourly} {mentor}"] = await ratings.mean_ratings(
                queries.View(redis, 0), ORG, first, last, hourly, mentor
            )
    d = first
    while d <= last:
        for mentor in (None, *MENTORS):
            out[f"topics {d} {mentor}"] = await topics.topic_counts(queries.View(redis, 0), ORG, d, d, mentor)
        d += timedelta(days=1)
    for mentor in (None, *MENTORS):
        human = sessions.HUMAN if mentor is None else sessions.mentor_field(sessions.HUMAN, mentor)
        out[f"session human {mentor}"] = await queries.periods(
            queries.View(redis, 0), ORG, first, last, False, None, [human]
        )
    for mentor in (None, *MENTORS):
        named = await redis.zrange(topics.first_key(0, ORG, mentor), 0, -1, withscores=True)
        out[f"named topics {mentor}"] = {t.decode(): int(ms) for t, ms in named}
    for mentor in (None, *MENTORS):
        sent = sessions.SENT if mentor is None else sessions.mentor_field(sessions.SENT, mentor)
        out[f"sent {mentor}"] = await queries.periods(queries.View(redis, 0), ORG, first, last, True, None, [sent])
        # New and returning students: over every day, over each day, over each day to the last.
        spans = [(first, last)] + [(first + timedelta(days=i), last) for i in range(1, (last - first).days + 1)]
        spans += [(first + timedelta(days=i),) * 2 for i in range((last - first).days + 1)]
        for a, b in spans:
            out[f"pie {a} {b} {mentor}"] = await first_seen.new_and_returning(queries.View(redis, 0), ORG, a, b, mentor)
    # In a time zone: local days from hourly buckets, top students from hourly sets at the days' edges.
    zone = time_zone(LOCAL_ZONE)
    out["local avg daily"] = await sessions.average_messages_per_session(
        queries.View(redis, 0), ORG, first, last, zone=zone
    )
    out["local sentiment"] = await sentiment.sentiment_counts(queries.View(redis, 0), ORG, first, last, zone)
    for d, _, _ in local_days(first, last, zone):
        out[f"local top {d}"] = await top_students.top_students(
            queries.View(redis, 0), ORG, d, d, limit=1000, zone=zone
        )
        for mentor in (None, *MENTORS):
            out[f"local pie {d} {mentor}"] = await first_seen.new_and_returning(
                queries.View(redis, 0), ORG, d, d, mentor, zone
            )
    span = (datetime(first.year, first.month, first.day, tzinfo=UTC), datetime.now(UTC) + timedelta(hours=1))
    for kind, values in (
        ("u", [f"stu{i}" for i in range(4)]),
        ("m", MENTORS),
        ("model", ["gpt-4o", "claude-3-5-sonnet"]),
    ):
        for value in values:
            out[f"attributed {kind} {value}"] = await llm_cost.cost_of(
                queries.View(redis, 0), ORG, *span, llm_cost.cost_field(kind, value)
            )
    out["session costs"] = await llm_cost.session_costs(queries.View(redis, 0), ORG, *span)
    listed = await traces.all_observations(queries.View(redis, 0), ORG, newest_first=False)
    out["observations listed"] = [(o.event_id, o.applied.ts_ms, o.applied.cost, o.applied.trace_id) for o in listed]
    out["traces listed"] = [
        (t.trace_id, t.first_ms, t.session, t.student)
        for t in await traces.all_traces(queries.View(redis, 0), ORG, newest_first=False)
    ]
    # Per student: sessions started in each day and in the whole range, to each mentor; latest message.
    first_ms, days_n = (first - date(1970, 1, 1)).days * DAY_MS, (last - first).days + 2
    spans_ms = [(first_ms, first_ms + days_n * DAY_MS)]
    spans_ms += [(first_ms + i * DAY_MS, first_ms + (i + 1) * DAY_MS) for i in range(days_n)]
    out["activity"] = {
        (span_ms, mentor): await student_activity.activity(
            queries.View(redis, 0), ORG, [f"stu{i}" for i in range(4)], span_ms, mentor
        )
        for span_ms in spans_ms
        for mentor in (None, *MENTORS)
    }
    filters = [chat_history.HistoryFilter()]
    filters += [chat_history.HistoryFilter(mentor=m) for m in MENTORS]
    filters += [chat_history.HistoryFilter(topics=(t,)) for t in TOPICS]
    filters += [chat_history.HistoryFilter(sentiment=s) for s in ("positive", "neutral", "negative")]
    filters += [chat_history.HistoryFilter(student=f"stu{i}") for i in range(4)]
    for flt in filters:
        out[f"history {flt}"] = await chat_history.chat_history(queries.View(redis, 0), ORG, flt, 1, 100)
    return out


async def apply_all(
    url: str, batches: list[list[Record]], apply_chunk: int = 1000, script_ops: int = 0
) -> dict[str, Any]:
    """The answers after applying the batches, each in parts of `apply_chunk` events planned while the part
    before is applied (agents/pipeline.py); `script_ops`: each org's script bounded to about that many
    operations, parts cut down to one event (`MIN_SCRIPT_EVENTS` lowered)."""
    redis = Redis.from_url(url)
    try:
        with mock.patch.object(pipeline, "MIN_SCRIPT_EVENTS", 1):
            await apply_batches(redis, batches, Settings(apply_chunk=apply_chunk, apply_script_ops=script_ops))
        first, last = (NOW - timedelta(days=4)).date(), NOW.date()
        return await answers(redis, first, last)
    finally:
        await redis.aclose()


def check_reference(got: dict[str, Any], exp: reference.Expected, events: list[tuple[str, dict[str, Any]]]) -> None:
    """The answers equal the batch computation over the set of events."""
    for agg, table in (("hourly", exp.hourly), ("daily", exp.daily), ("weekly", exp.weekly)):
        for mentor in (None, *MENTORS):
            for row in got[f"avg {agg} {mentor}"]:
                want = table.get((ORG, row["time"], mentor or ""), [0, 0])
                assert [row["total_sessions"], row["total_messages"]] == want, (agg, mentor, row)
    for row in got["sentiment"]:
        assert row["sentiment_count"] == exp.sentiment[(ORG, row["date"])], row
    for name, value in got.items():
        if name.startswith("cost "):
            assert value["cost_nanos"] == exp.cost[(ORG, name[5:])], name
        if name.startswith("top ") and name.endswith(" None") and name != "top all":
            day = name.split()[1]
            assert {r["username"]: r["chat_message_count"] for r in value} == dict(exp.human.get((ORG, day), {}))
    rated = reference.ratings(reference.conversations(events))
    for hourly in (False, True):
        for row in got[f"ratings {hourly}"]:
            assert row["total_ratings"] == rated.get((ORG, row["time"]), 0), (hourly, row)
    sums = reference.rating_sums(reference.conversations(events))
    by_hour = reference.messages_by_hour(events)
    for mentor in (None, *MENTORS):
        for hourly in (False, True):
            for label, (n, high, low) in got[f"mean ratings {hourly} {mentor}"]:
                assert [n, (high << 32) + low] == sums.get((ORG, label, mentor or ""), [0, 0]), (mentor, label)
        for label, (n,) in got[f"sent {mentor}"]:
            hour = int(datetime.fromisoformat(label).timestamp()) // 3600
            assert n == by_hour[(ORG, mentor or "", hour)], (mentor, label)
    starts = reference.session_starts(events)
    seen: set[str] = set()
    human: Counter[tuple[str, str]] = Counter()  # (day of the session's start, its first mentor or "")
    for topic, e in events:
        if topic == "chat-messages" and e["role"] == "human" and e["event_id"] not in seen:
            seen.add(e["event_id"])
            start = starts[(ORG, e["session_id"])]
            for who in ("", start[3]):
                human[(reference.day(start[0]), who)] += 1
    for mentor in (None, *MENTORS):
        for label, (n,) in got[f"session human {mentor}"]:
            assert n == human[(label, mentor or "")], (mentor, label)
    # Per student: sessions started in each span (to each mentor), and their latest human message.
    latest: dict[str, int] = {}
    for topic, e in events:
        if topic == "chat-messages" and e["role"] == "human" and e["org"] == ORG:
            latest[e["student"]] = max(latest.get(e["student"], 0), reference.ts_ms(e["timestamp"]))
    for (span, mentor), value in got["activity"].items():
        want = [
            (
                sum(1 for (o, _), (ms, _, st, m) in starts.items()
                    if o == ORG and st == f"stu{i}" and span[0] <= ms < span[1] and mentor in (None, m)),
                latest.get(f"stu{i}"),
            )
            for i in range(4)
        ]  # fmt: skip
        assert value == want, (span, mentor, value, want)
    first_named = reference.topics_first_named(events)
    for mentor in (None, *MENTORS):
        assert got[f"named topics {mentor}"] == first_named.get((ORG, mentor or ""), {}), mentor
    by_topic = reference.topics_by_day(events, reference.conversations(events))
    for name, value in got.items():
        if name.startswith("topics "):
            _, day, mentor = name.split(" ")
            want_topics = by_topic.get((ORG, day, "" if mentor == "None" else mentor), {})
            got_topics = {t: [*c[:5], (c[5] << 32) + c[6]] for t, c in value.items()}
            assert got_topics == {t: counts for t, counts in want_topics.items()}, name
    local = reference.local(events, LOCAL_ZONE)
    for row in got["local avg daily"]:
        assert [row["total_sessions"], row["total_messages"]] == local.daily.get((row["time"], ""), [0, 0]), row
    for row in got["local sentiment"]:
        assert row["sentiment_count"] == local.sentiment[row["date"]], row
    for name, value in got.items():
        if name.startswith("local top "):
            day = name.split()[2]
            assert [(r["username"], r["chat_message_count"]) for r in value] == local.top(day, day, limit=1000), name
    attributed = reference.observations(events)
    for kind, field in (("u", "student"), ("m", "mentor"), ("model", "model")):
        for name, value in got.items():
            if name.startswith(f"attributed {kind} "):
                who = name.split(" ", 2)[2]
                want = sum(o.nanos for o in attributed if getattr(o, field) == who)
                assert value == want, (name, value, want)
    oldest = (NOW.date() - date(1970, 1, 1)).days - 6  # the default observation retention: every event
    assert got["observations listed"] == sorted(
        ((o.event_id, o.ts_ms, o.nanos, o.trace_id) for o in attributed), key=lambda o: (o[1], o[0])
    )
    assert got["traces listed"] == reference.traces(events, ORG, oldest)
    count, rows = got[f"history {chat_history.HistoryFilter()}"]
    assert count == len(exp.conversations[ORG])
    for rec in rows:
        assert rec["sentiment"] == exp.latest_sentiment.get((ORG, rec["session_id"]), ""), rec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=event_sets(), seed=st.integers(0, 2**32))
def test_any_order_any_split_any_repetition_gives_the_same_answers(
    redis_server: RedisServer, events: list[tuple[str, dict[str, Any]]], seed: int
) -> None:
    records = as_records(events)
    rng = random.Random(seed)
    in_order = asyncio.run(apply_all(redis_server.url, [records]))
    check_reference(in_order, reference.expected(events), events)
    # One batch in parts of a few events, each planned on what the part before will have written.
    assert asyncio.run(apply_all(redis_server.url, [records], apply_chunk=rng.randint(1, 5))) == in_order
    for _ in range(2):
        shuffled = asyncio.run(apply_all(redis_server.url, deliveries(records, rng), apply_chunk=rng.randint(1, 5)))
        assert shuffled == in_order
    # Parts cut by the bound on a script's operations instead (an org's part down to one event).
    bounded = asyncio.run(apply_all(redis_server.url, deliveries(records, rng), apply_chunk=0, script_ops=1))
    assert bounded == in_order


async def test_monthly_sets_give_the_students_of_the_weeks_and_days_they_stand_for(redis_server: RedisServer) -> None:
    """100 days of the traffic model, delivered in a random order with copies: top students and distinct
    students over ranges holding whole months (read from the monthly sets) equal the independent count over
    the events. Then the same records applied after a version that wrote no monthly sets (an org already
    holding data): the months up to this one are read from weeks and days, with the same answers, and the
    student activity is marked not whole (users/details reads the conversations instead)."""
    msgs = messages("backfill", 8000, days=100)
    recs = list(records(msgs, partitions=3))
    humans: dict[str, dict[str, Counter[str]]] = {}  # org -> day -> student -> human messages
    seen: set[str] = set()
    for topic, _, value in msgs:
        e = orjson.loads(value)
        if topic == "chat-messages" and e["role"] == "human" and e["event_id"] not in seen:
            seen.add(e["event_id"])
            humans.setdefault(e["org"], {}).setdefault(reference.day(reference.ts_ms(e["timestamp"])), Counter())[
                e["student"]
            ] += 1
    today = datetime.now(UTC).date()
    last_month_end = today.replace(day=1) - timedelta(days=1)
    ranges = [
        (last_month_end.replace(day=1), last_month_end),
        (today - timedelta(days=89), today),
        ((last_month_end.replace(day=1) - timedelta(days=1)).replace(day=1), today),
        (today - timedelta(days=60), today - timedelta(days=15)),
    ]
    redis = Redis.from_url(redis_server.url)

    async def check(whole_months: bool) -> None:
        generations._months_from.clear()
        view = queries.View(redis, 0)
        first_month = await generations.months_from(redis, 0)
        used = False
        for org in ("org-000", "org-003"):
            for a, b in ranges:
                want: Counter[str] = Counter()
                for d in days_between(a, b):
                    want.update(humans.get(org, {}).get(d.isoformat(), Counter()))
                got = await top_students.top_students(view, org, a, b, limit=None)
                assert [(r["username"], r["chat_message_count"]) for r in got] == sorted(
                    want.items(), key=lambda kv: (-kv[1], kv[0])
                ), (org, a, b)
                zkeys = top_students.range_keys(0, org, a, b, None, None, first_month=first_month)
                assert await queries.union_sizes(redis, [zkeys]) == [len(want)]
                used |= any(":top:m" in k for k in zkeys)
        assert used == whole_months

    try:
        generations._months_from.clear()
        await apply_batches(redis, deliveries(recs, random.Random(5)), Settings())
        assert await generations.months_from(redis, 0) == 0  # a fresh generation: every month whole
        assert await generations.activity_whole(redis, 0)  # and the student activity whole
        await check(whole_months=True)
        # Data applied before monthly sets were written: the months up to this one are not whole.
        await redis.flushall()
        await redis.sadd(keys.orgs(), "org-000")
        await redis.hset(keys.meta(0, "org-000"), keys.DATA_VERSION, 1)
        generations._months_from.clear()
        await apply_batches(redis, deliveries(recs, random.Random(6)), Settings(), flush=False)
        assert await generations.months_from(redis, 0) == month_index(today) + 1
        generations._activity_whole.clear()
        assert not await generations.activity_whole(redis, 0)  # users/details reads the conversations
        await check(whole_months=False)
    finally:
        generations._months_from.clear()
        await redis.aclose()


async def test_hostile_values_through_parts_cut_small_give_the_answers_of_one_uncut_apply(
    redis_server: RedisServer,
) -> None:
    """Cost that drives a counter past 64 bits (9,230 observations of a million dollars in one day), beside a
    bystander org whose students and mentors hold our separators, braces, look-alikes and another mentor's
    served UUID: applied with every org's script cut to a few events, the overflowing records are the only
    dead letters (isolated from whichever small part held them), nothing stops, and every aggregate is what
    one uncut apply gives."""
    day = int(datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp() * 1000)
    whale = [("llm-observations", {"event_id": f"w{i}", "org": "whale", "timestamp": day, "trace_id": f"w{i}",
              "type": "generation", "model": "gpt-4o", "usage": {"input": 1, "output": 1}, "cost": "1000000"})
             for i in range(9_230)]  # fmt: skip
    odd = ["x|top_students|y", "a:b{c}", "\u200bann", "ann", "m|x", "m", ids.served("by", ids.MENTOR, "m")]
    bystander = [("chat-messages", {"event_id": f"b{i}", "org": "by", "timestamp": day + i, "session_id": odd[i % 7],
                  "student": odd[(i + 1) % 7], "mentor_id": odd[(i + 2) % 7], "role": ("human", "ai")[i % 2]})
                 for i in range(300)]  # fmt: skip
    batch = as_records([e for pair in zip(whale[:300], bystander, strict=True) for e in pair] + whale[300:])

    async def apply(settings: Settings) -> tuple[list[str], dict[bytes, Any]]:
        dead: list[Any] = []

        async def keep(letters: list[Any]) -> None:
            dead.extend(letters)

        async def counted(self: Writer, writes: list[OrgWrite]) -> dict[str, str]:
            scripts.extend(w.operations() for w in writes)
            return await real_apply(self, writes)

        await redis.flushall()
        with mock.patch.object(pipeline, "MIN_SCRIPT_EVENTS", 1), mock.patch.object(Writer, "apply", counted):
            await pipeline.BatchProcessor(settings, redis, keep).process(pipeline.Batch.of(batch))
        return sorted(d.reason for d in dead), await dump_aggregates(redis)

    scripts: list[int] = []
    real_apply = Writer.apply

    redis = Redis.from_url(redis_server.url)
    try:
        uncut_dead, uncut = await apply(Settings(apply_chunk=0, apply_script_ops=0))
        scripts.clear()
        cut_dead, cut = await apply(Settings(apply_chunk=0, apply_script_ops=40))
    finally:
        await redis.aclose()
    assert len(uncut_dead) == 7 and all("overflow" in reason for reason in uncut_dead), uncut_dead[:2]
    assert len(scripts) > 500  # the cut apply ran as many small scripts
    assert cut_dead == uncut_dead
    assert cut == uncut
    # Each look-alike student has their own sessions and latest message, none of another's.
    starts = reference.session_starts(bystander)
    humans = [(e["student"], reference.ts_ms(e["timestamp"])) for _, e in bystander if e["role"] == "human"]
    latest = {s: max(ms for who, ms in humans if who == s) for s in odd}
    for student in odd:
        sessions = dict(cut[student_activity.starts_key(0, "by", student).encode()])
        got = {(int(d), m.decode()): ms for (d, _, m), ms in ((k.partition(b"|"), v) for k, v in sessions.items())}
        want = {(conversation_digest("by", ids.normalize(sid)), ids.normalize(m)): float(ms)
                for (_, sid), (ms, _, st, m) in starts.items() if st == student}  # fmt: skip
        assert got == want and len(want) == 1, (student, got, want)
    assert cut[student_activity.last_key(0, "by").encode()] == {
        s.encode(): str(ms).encode() for s, ms in latest.items()
    }


def differences(got: dict[bytes, Any], want: dict[bytes, Any]) -> dict[bytes, Any]:
    """Per key that differs, what differs: the fields or members of one side only, or with other values."""
    out: dict[bytes, Any] = {}
    for key in set(got) | set(want):
        a, b = got.get(key), want.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out[key] = {f: (a.get(f), b.get(f)) for f in set(a) | set(b) if a.get(f) != b.get(f)}
        else:
            out[key] = (a, b)
    return out


async def dump_aggregates(redis: Redis) -> dict[bytes, Any]:
    """Every aggregate key's content (not the conversations, whose versions count writes, nor the
    changefeed's marks, which count applies, nor the meta's data version and apply time, nor the
    generations hash, which says from which month a worker's monthly sets are whole)."""
    out: dict[bytes, Any] = {}
    async for key in redis.scan_iter(count=1000):
        if b":cv:" in key or key.startswith(b"aia:cf:") or key in (b"aia:erasure-secret", keys.generations().encode()):
            continue
        kind = await redis.type(key)
        if kind == b"hash":  # a counter taken back to 0 is no count: one part adds it, another takes it back
            out[key] = {f: v for f, v in (await redis.hgetall(key)).items() if v != b"0"}
            if key.endswith(b":meta"):  # the data version counts writes, the apply time is the clock's
                out[key] = {f: v for f, v in out[key].items() if f not in (b"version", b"last_apply_ms")}
        elif kind == b"zset":
            out[key] = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            out[key] = await redis.smembers(key)
        else:
            out[key] = await redis.get(key)
    return out


async def test_no_apply_script_does_more_than_its_bound(redis_server: RedisServer) -> None:
    """A batch whose events touch many keys (90 days of the traffic model: chat-history records and judgements
    plan four times the operations of a message or an observation) is cut into parts whose scripts each do at
    most `apply_script_ops` operations, changefeed marks counted (readers wait behind a script while it
    runs): a write planned over it is planned again on fewer events, the rest applied next. The answers are
    those of one uncut apply."""
    batch = list(records(messages("backfill", 6000, days=2), partitions=3))
    sizes: list[int] = []
    real_apply = Writer.apply

    async def apply(self: Writer, writes: list[OrgWrite]) -> dict[str, str]:
        sizes.extend(w.operations() for w in writes)
        return await real_apply(self, writes)

    async def no_dead_letters(letters: list[DeadLetter]) -> None:
        raise AssertionError(letters)

    redis = Redis.from_url(redis_server.url)
    try:
        # No floor under a part's events (`MIN_SCRIPT_EVENTS`), so the bound of 500 alone decides.
        with mock.patch.object(Writer, "apply", apply), mock.patch.object(pipeline, "MIN_SCRIPT_EVENTS", 1):
            await apply_batches(redis, [batch], Settings(apply_chunk=0, apply_script_ops=0))
            uncut = await dump_aggregates(redis)
            assert max(sizes) > 2000  # uncut, the largest org's script is large
            sizes.clear()
            # Overlapped parts (`_apply_overlapped`: a worker's batch), then one part after the other (`_apply`:
            # a rebuild's generation, a batch planned again after a conflict)
            for chunk, generation in ((0, None), (1000, None), (1000, 0)):
                await redis.flushall()
                settings = Settings(apply_chunk=chunk, apply_script_ops=500)
                processor = pipeline.BatchProcessor(settings, redis, no_dead_letters)
                await processor.process(pipeline.Batch.of(batch), generation=generation)
                assert len(sizes) > 20 and max(sizes) <= 500, (chunk, generation, sorted(sizes)[-5:])
                sizes.clear()
                cut = await dump_aggregates(redis)
                assert cut == uncut, differences(cut, uncut)
    finally:
        await redis.aclose()


async def test_observations_past_the_dedup_window_are_pruned(redis_server: RedisServer) -> None:
    from tables.aggregates.llm_cost import AppliedObservation
    from tables.state import prune_observations

    redis = Redis.from_url(redis_server.url)
    try:
        await redis.delete(keys.observations(0, ORG))
        old, new = (AppliedObservation(1, 0, 0, 0, 5, 1, "m", "s1", day).value() for day in (100, 107))
        await redis.hset(keys.observations(0, ORG), mapping={b"old": old, b"new": new})
        await prune_observations(redis, 0, ORG, oldest_day=101, chunk=1)
        assert await redis.hkeys(keys.observations(0, ORG)) == [b"new"]
    finally:
        await redis.aclose()


async def test_observations_kept_before_their_packed_form_still_count_once(redis_server: RedisServer) -> None:
    """An observation applied while the observations hash was `aia:{org}:obs` (event id -> JSON) is met by the
    state read, moved, and replaces or dedups as before: a copy counts once, a newer version replaces it.
    Ids that look alike (a UUID, its 16 bytes spelled as text, its upper-case spelling) are three ids."""
    uid = "4a4a4a4a-4a4a-4a4a-4a4a-4a4a4a4a4a4a"  # its 16 bytes are "JJJJJJJJJJJJJJJJ"

    def obs(event_id: str, cost: str, minutes_ago: int = 5) -> tuple[str, dict[str, Any]]:
        return ("llm-observations", {"event_id": event_id, "org": ORG, "timestamp": ts(minutes_ago),
                                     "trace_id": "t1", "type": "generation", "model": "gpt-4o",
                                     "usage": {"input": 1, "output": 1}, "cost": cost, "session_id": "s1"})  # fmt: skip

    async def total() -> int:
        days = {Grain.DAY.index(int((NOW - timedelta(minutes=m)).timestamp() * 1000)) for m in (4, 5)}
        return sum([int(await redis.hget(keys.bucket(0, ORG, Grain.DAY, d), llm_cost.COST) or 0) for d in days])

    redis = Redis.from_url(redis_server.url)
    try:
        await redis.flushall()
        await apply_batches(redis, [as_records([obs(uid, "1"), obs("JJJJJJJJJJJJJJJJ", "2"), obs(uid.upper(), "4")])],
                            Settings())  # fmt: skip
        assert await total() == 7 * 10**9
        # As the worker kept them before: moved back to the hash of event ids and JSON values.
        ob, before = keys.observations(0, ORG), keys.observations_before(0, ORG)
        for event_id in (uid, "JJJJJJJJJJJJJJJJ", uid.upper()):
            value = await redis.hget(ob, keys.observation_field(event_id))
            assert value is not None
            applied = llm_cost.AppliedObservation.parse(value)
            await redis.hset(before, event_id, orjson.dumps(dataclasses.astuple(applied)))
        await redis.delete(ob)
        copies = [obs(uid, "1"), obs("JJJJJJJJJJJJJJJJ", "2"), obs(uid.upper(), "0.5", minutes_ago=4)]
        await apply_batches(redis, [as_records(copies)], Settings(), flush=False)
        assert await total() == 3_500_000_000  # the copies counted once; the newer version replaced 4 with 0.5
        assert not await redis.exists(before) and await redis.hlen(ob) == 3
    finally:
        await redis.aclose()


async def test_conversations_quiet_past_the_dedup_window_forget_their_event_ids(redis_server: RedisServer) -> None:
    """A conversation keeps the digests of the events it counted until it has been quiet for the dedup window;
    then they go (a re-send counts again, as past the window it should), and nothing else changes."""
    from tables.state import prune_conversations

    def chat(event_id: str, session: str) -> tuple[str, dict[str, Any]]:
        return ("chat-messages", {"event_id": event_id, "org": ORG, "timestamp": ts(5), "session_id": session,
                                  "student": "stu0", "mentor_id": "m1", "role": "human"})  # fmt: skip

    redis = Redis.from_url(redis_server.url)
    try:
        await apply_batches(redis, [as_records([chat("e1", "quiet"), chat("e2", "quiet"), chat("e3", "busy")])],
                            Settings())  # fmt: skip
        today = Grain.DAY.index(int(datetime.now(UTC).timestamp() * 1000))
        quiet, busy = conversation_digest(ORG, "quiet"), conversation_digest(ORG, "busy")
        (held,) = await queries.conversation_states(queries.View(redis, 0), ORG, [quiet])
        assert len(held.ids) == 2 and held.last_day == today
        # Written eight days ago, as far as the prune can tell; the busy one today.
        where = (keys.conversation_bucket(0, ORG, quiet), keys.conversation_field(quiet))
        await redis.hset(*where, msgspec.structs.replace(held, last_day=today - 8).pack())
        assert await prune_conversations(redis, 0, ORG, oldest_day=today - 7, chunk=1) == 1
        (after,) = await queries.conversation_states(queries.View(redis, 0), ORG, [quiet])
        assert len(after.ids) == 0 and after.version == held.version + 1
        assert msgspec.structs.replace(after, ids=held.ids, version=held.version, last_day=held.last_day) == held
        assert len((await queries.conversation_states(queries.View(redis, 0), ORG, [busy]))[0].ids) == 1
        assert await prune_conversations(redis, 0, ORG, oldest_day=today - 7) == 0  # nothing more is due
        day = (NOW - timedelta(minutes=5)).date()
        rows = await sessions.average_messages_per_session(queries.View(redis, 0), ORG, day, day, "daily", None)
        assert [(r["total_sessions"], r["total_messages"]) for r in rows] == [(2, 3)]  # served unchanged
        # Past the window a re-send is a new event; within it (the busy conversation) it is not.
        await apply_batches(redis, [as_records([chat("e1", "quiet"), chat("e3", "busy")])], Settings(), flush=False)
        rows = await sessions.average_messages_per_session(queries.View(redis, 0), ORG, day, day, "daily", None)
        assert [(r["total_sessions"], r["total_messages"]) for r in rows] == [(2, 4)]
    finally:
        await redis.aclose()


async def test_chat_history_past_its_retention_is_deleted_and_the_counts_stay(redis_server: RedisServer) -> None:
    """AIA_HISTORY_RETENTION_DAYS: a conversation listed before the retention goes from the chat history, its
    filters and the per-mentor session costs; the aggregates it counted in stay as they were."""
    from tables.conversations import conversation_digest
    from tables.state import expire_conversations

    old, recent = 40 * 24 * 60, 5  # minutes ago
    events = [
        ("chat-messages", {"event_id": "e1", "org": ORG, "timestamp": ts(old), "session_id": "old",
                           "student": "stu0", "mentor_id": "m1", "role": "human", "topics": ["algebra"]}),
        ("chat-history", {"event_id": "r1", "org": ORG, "timestamp": ts(old), "id": "old", "student": "stu0",
                          "mentor": "m1", "title": "old", "topics": [{"name": "algebra"}]}),
        ("llm-observations", {"event_id": "o1", "org": ORG, "timestamp": ts(old), "trace_id": "t1",
                              "type": "generation", "model": "gpt-4o", "usage": {"input": 10, "output": 5},
                              "cost": "0.5", "session_id": "old"}),
        ("chat-messages", {"event_id": "e2", "org": ORG, "timestamp": ts(recent), "session_id": "recent",
                           "student": "stu0", "mentor_id": "m1", "role": "human", "topics": ["algebra"]}),
    ]  # fmt: skip
    redis = Redis.from_url(redis_server.url)
    try:
        await apply_batches(redis, [as_records(events)], Settings())
        old_day = (NOW - timedelta(minutes=old)).date()
        before = await sessions.average_messages_per_session(
            queries.View(redis, 0), ORG, old_day, old_day, "daily", None
        )
        day_index = Grain.DAY.index(int((NOW - timedelta(minutes=old)).timestamp() * 1000))
        assert await redis.zcard(llm_cost.sessions_key(0, ORG, day_index)) == 1
        everything = chat_history.HistoryFilter()
        assert (await chat_history.chat_history(queries.View(redis, 0), ORG, everything, 1, 10))[0] == 2

        cutoff = int((NOW - timedelta(days=30)).timestamp() * 1000)
        assert await expire_conversations(redis, 0, ORG, cutoff, chunk=1) == 1
        assert await expire_conversations(redis, 0, ORG, cutoff) == 0
        count, rows = await chat_history.chat_history(queries.View(redis, 0), ORG, everything, 1, 10)
        assert count == 1 and len(rows) == 1
        for flt in (chat_history.HistoryFilter(student="stu0"), chat_history.HistoryFilter(topics=("algebra",))):
            assert (await chat_history.chat_history(queries.View(redis, 0), ORG, flt, 1, 10))[0] == 1
        (gone,) = await queries.conversation_states(queries.View(redis, 0), ORG, [conversation_digest(ORG, "old")])
        assert gone.version is None
        assert await redis.zcard(llm_cost.sessions_key(0, ORG, day_index)) == 0
        after = await sessions.average_messages_per_session(
            queries.View(redis, 0), ORG, old_day, old_day, "daily", None
        )
        assert after == before and after
    finally:
        await redis.aclose()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=event_sets(), seed=st.integers(0, 2**32))
def test_a_part_after_a_conflict_is_planned_again_from_redis(
    redis_server: RedisServer, events: list[tuple[str, dict[str, Any]]], seed: int
) -> None:
    """When a part's apply meets a conflict (another worker wrote first), the part planned on what it would
    have written is dropped and planned again: here every other apply reports a conflict, writing nothing."""
    from tables.writer import Writer

    records = as_records(events)
    expected = asyncio.run(apply_all(redis_server.url, [records]))
    real_apply = Writer.apply
    calls = 0

    async def conflicting(self: Writer, writes: list[Any]) -> dict[str, str]:
        nonlocal calls
        calls += 1
        if calls % 2:
            return {w.org: "guard (a test's conflict)" for w in writes}
        return await real_apply(self, writes)

    Writer.apply = conflicting  # type: ignore[method-assign]
    try:
        got = asyncio.run(apply_all(redis_server.url, [records], apply_chunk=random.Random(seed).randint(1, 4)))
    finally:
        Writer.apply = real_apply  # type: ignore[method-assign]
    assert calls > 1
    assert got == expected
