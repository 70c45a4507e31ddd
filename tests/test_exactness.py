"""Processing guarantees against the real broker and Redis: kill -9 and rebalances leave every aggregate
exactly equal to an independent reference; re-sent events count once; a re-sent observation replaces."""

from __future__ import annotations

import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from streams.producer import AnalyticsProducer
from streams.settings import ENGINES, Settings
from tables import queries
from tables.aggregates import llm_cost, sessions, top_students
from tests import reference
from tests.support import WorkerProcess, demo_events, produce, read_compacted, settle

pytestmark = pytest.mark.integration


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both engines."""
    return str(request.param)


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
        rows = await sessions.average_messages_per_session(queries.View(redis, 0), "acme", today, today)
        return rows[0]["total_sessions"] == 2

    deadline = time.monotonic() + 90
    while not await done():
        assert time.monotonic() < deadline, "events not applied in time"
        await asyncio.sleep(0.25)
    await asyncio.sleep(1.0)
    start = datetime(today.year, today.month, today.day, tzinfo=UTC)
    cost = await llm_cost.tenant_cost(queries.View(redis, 0), "acme", start, start + timedelta(days=1))
    assert cost["total_cost_exact"] == "0.125"
    assert cost["observations"] == 1
    rows = await sessions.average_messages_per_session(queries.View(redis, 0), "acme", today, today)
    assert (rows[0]["total_sessions"], rows[0]["total_messages"]) == (2, 2)
    assert await top_students.top_students(queries.View(redis, 0), "acme", today, today) == [
        {"username": "ann", "chat_message_count": 2}
    ]


async def test_chaos_one_of_two_workers_killed_every_few_seconds_during_a_shuffled_duplicated_stream(
    settings: Settings, redis: Redis, topics: list[str], workers: Any
) -> None:
    """Sessions' messages out of order (several producers, late mobile clients), 5% of events sent again,
    and one of two workers SIGKILLed and restarted every few seconds: the answers equal the batch
    computation over the set of events."""
    rng = random.Random(77)
    events = demo_events(12_000, seed=53)
    rng.shuffle(events)
    events += rng.sample(events, len(events) // 20)
    exp = reference.expected(events)
    steady = workers("steady")
    victims = [workers("victim")]
    sending = asyncio.create_task(produce(settings, events, seconds=15))
    while not sending.done():
        await asyncio.sleep(rng.uniform(2.0, 4.0))
        victims[-1].kill()
        victims.append(workers("victim"))
    await sending
    await settle(redis, exp, [steady, *victims], timeout=240)
    assert steady.alive(), steady.log_tail()


@pytest.mark.parametrize("engine", ["faust"])
async def test_faust_own_command_runs_the_agents(settings: Settings, redis: Redis, topics: list[str]) -> None:
    """`faust -A streams.app worker` (Faust's own command line) runs the same agents, exactly."""
    events = demo_events(2_000, seed=61)
    faust = str(Path(sys.executable).with_name("faust"))
    worker = WorkerProcess(settings, "faust-cli", [faust, "-A", "streams.app", "worker", "-l", "info", "--without-web"])
    worker.start()
    try:
        await produce(settings, events, seconds=1)
        await settle(redis, reference.expected(events), [worker], timeout=120)
    finally:
        worker.kill()
