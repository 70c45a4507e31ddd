"""Processing guarantees against the real broker and Redis: kill -9 and rebalances leave every aggregate
exactly equal to an independent reference; re-sent events count once; a re-sent observation replaces."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from streams.producer import AnalyticsProducer
from streams.settings import Settings
from tables import queries
from tests import reference
from tests.conftest import WorkerProcess, read_compacted
from tests.traffic import demo_events, produce

pytestmark = pytest.mark.integration


async def mismatches(redis: Redis, exp: reference.Expected) -> list[str]:
    """Every difference between what the queries serve and the reference, day by day."""
    out = []
    days = sorted({d for _, d in exp.days()})
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    for org in sorted(exp.orgs):
        rows = await queries.average_messages_per_session(redis, org, first, last, "daily")
        for row in rows:
            want = (exp.sessions[(org, row["time"])], exp.messages[(org, row["time"])])
            got = (row["total_sessions"], row["total_messages"])
            if got != want:
                out.append(f"{org} {row['time']} sessions/messages: got {got}, want {want}")
        for row in await queries.sentiment_counts(redis, org, first, last):
            if row["sentiment_count"] != exp.sentiment[(org, row["date"])]:
                out.append(
                    f"{org} {row['date']} sentiment: got {row['sentiment_count']}, want {exp.sentiment[(org, row['date'])]}"
                )
        d = first
        while d <= last:
            day = d.isoformat()
            start = datetime(d.year, d.month, d.day, tzinfo=UTC)
            cost = await queries.tenant_cost(redis, org, start, start + timedelta(days=1))
            if cost["cost_nanos"] != exp.cost[(org, day)]:
                out.append(f"{org} {day} cost: got {cost['cost_nanos']}, want {exp.cost[(org, day)]}")
            top = await queries.top_students(redis, org, d, d, limit=10_000)
            got_top = {r["username"]: r["chat_message_count"] for r in top}
            if got_top != dict(exp.human.get((org, day), {})):
                out.append(f"{org} {day} top students differ: got {sorted(got_top.items())[:5]}...")
            d += timedelta(days=1)
        count, _ = await queries.chat_history(redis, org, queries.HistoryFilter(), 1, 1)
        if count != len(exp.conversations[org]):
            out.append(f"{org} conversations: got {count}, want {len(exp.conversations[org])}")
    return out


async def settle(redis: Redis, exp: reference.Expected, workers: list[WorkerProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    diff: list[str] = []
    while time.monotonic() < deadline:
        diff = await mismatches(redis, exp)
        if not diff:
            await asyncio.sleep(2.0)  # and it stays exact: nothing applied twice afterwards
            diff = await mismatches(redis, exp)
            if not diff:
                for w in workers:  # the tripwire: no worker saw a partition's offsets jump
                    assert "continuity:" not in w.log.read_text(errors="replace"), w.log_tail()
                return
        await asyncio.sleep(1.0)
    for w in workers:
        if w.alive() and w.proc is not None:
            os.kill(w.proc.pid, signal.SIGUSR1)  # the worker logs where its tasks wait
    await asyncio.sleep(1.0)
    logs = "\n".join(f"--- {w.log}\n{w.log_tail(15)}" for w in workers)
    raise AssertionError(f"{len(diff)} mismatches, e.g.:\n" + "\n".join(diff[:15]) + f"\n{logs}")


async def test_kill9_during_a_stream_leaves_every_aggregate_exact(
    settings: Settings, redis: Redis, topics: list[str], workers: Any
) -> None:
    events = demo_events(15_000, seed=11)
    exp = reference.expected(events)
    rng = random.Random(5)
    started = [workers("a")]
    sending = asyncio.create_task(produce(settings, events, seconds=12))
    for _ in range(4):
        await asyncio.sleep(rng.uniform(2.0, 5.0))
        started[-1].kill()
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        started.append(workers("a"))  # same name: same data dir, as a restarted process
    await sending
    await settle(redis, exp, started, timeout=240)
    # The compacted output topic ends equal too, though publishes died with the killed workers.
    latest = await read_compacted(settings)
    for (org, day), n in exp.sessions.items():
        assert latest[f"{org}|sessions|d|{day.replace('-', '')}"]["value"] == n
    for (org, day), n in exp.messages.items():
        assert latest[f"{org}|messages|d|{day.replace('-', '')}"]["value"] == n
    for (org, day), nanos in exp.cost.items():
        assert latest[f"{org}|cost_nanos|d|{day.replace('-', '')}"]["value"] == nanos


async def test_two_workers_one_joining_one_killed_mid_stream(
    settings: Settings, redis: Redis, topics: list[str], workers: Any
) -> None:
    events = demo_events(12_000, seed=23)
    exp = reference.expected(events)
    first = workers("one")
    sending = asyncio.create_task(produce(settings, events, seconds=14))
    await asyncio.sleep(4.0)
    second = workers("two")  # joins mid-stream: a rebalance moves partitions to it
    await asyncio.sleep(6.0)
    first.kill()  # dies mid-stream: its partitions move to the second after the session timeout
    await sending
    await settle(redis, exp, [first, second], timeout=240)
    assert second.alive(), second.log_tail()


async def test_resent_event_counts_once_and_resent_observation_replaces_cost(
    settings: Settings, redis: Redis, topics: list[str], workers: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ts = now.isoformat()
    msg = {"event_id": "m-1", "org": "acme", "timestamp": ts, "session_id": "s1", "student": "ann",
           "mentor_id": "m1", "role": "human"}  # fmt: skip
    obs = {"event_id": "o-1", "org": "acme", "timestamp": ts, "trace_id": "t1", "type": "generation",
           "model": "gpt-4o", "usage": {"input": 10, "output": 10}, "cost": "0.50"}  # fmt: skip
    workers("w")
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        await producer.send("chat-messages", msg)
        await producer.send("llm-observations", obs)
        await producer.send("chat-messages", msg)  # the same event again
        await producer.send("llm-observations", {**obs, "cost": "0.125"})  # Langfuse-style update
        # a marker that arrives after everything above, so we know when it has all been applied
        await producer.send(
            "chat-messages",
            {**msg, "event_id": "m-2", "session_id": "s2"},
        )

    today = now.date()

    async def done() -> bool:
        rows = await queries.average_messages_per_session(redis, "acme", today, today)
        return rows[0]["total_sessions"] == 2

    deadline = time.monotonic() + 90
    while not await done():
        assert time.monotonic() < deadline, "events not applied in time"
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)
    start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    cost = await queries.tenant_cost(redis, "acme", start, start + timedelta(days=1))
    assert cost["total_cost_exact"] == "0.125"
    assert cost["observations"] == 1
    rows = await queries.average_messages_per_session(redis, "acme", today, today)
    assert (rows[0]["total_sessions"], rows[0]["total_messages"]) == (2, 2)
    assert await queries.top_students(redis, "acme", today, today) == [{"username": "ann", "chat_message_count": 2}]
