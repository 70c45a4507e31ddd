"""Faults during a stream: Redis killed and restarted from its append-only file, the Kafka broker
restarted. Every aggregate still ends exactly equal to the independent reference.

These tests restart their servers, so they use their own Kafka and Redis (one pair for the module),
not the session's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from infra.kafka import KafkaBroker
from infra.procs import free_port
from infra.redis import RedisServer
from streams.clients import ensure_topics
from streams.settings import ENGINES, Settings
from tests import reference
from tests.support import WorkerProcess, demo_events, make_settings, mismatches, produce, settle

pytestmark = pytest.mark.integration


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Every test here runs on both engines."""
    return str(request.param)


@pytest.fixture(scope="module")
def own_servers(tmp_root: Path) -> Iterator[tuple[KafkaBroker, RedisServer]]:
    root = tmp_root / f"faults-{uuid.uuid4().hex[:6]}"
    broker = KafkaBroker(root / "kafka", port=free_port(), controller_port=free_port(), partitions=3)
    server = RedisServer(root / "redis", port=free_port(), appendonly=True)
    broker.start()
    server.start()
    yield broker, server
    broker.stop()
    server.stop()


@pytest.fixture
async def fault_settings(own_servers: tuple[KafkaBroker, RedisServer], engine: str) -> AsyncIterator[Settings]:
    broker, server = own_servers
    settings = replace(make_settings(broker.bootstrap, server.url, "fault"), engine=engine)
    client = Redis.from_url(server.url)
    await client.flushall()
    await ensure_topics(settings)
    yield settings
    await client.aclose()


async def test_redis_killed_and_restarted_from_its_aof_mid_stream(
    fault_settings: Settings, own_servers: tuple[KafkaBroker, RedisServer]
) -> None:
    _, server = own_servers
    events = demo_events(12_000, seed=31)
    exp = reference.expected(events)
    worker = WorkerProcess(fault_settings, "r").start()
    try:
        sending = asyncio.create_task(produce(fault_settings, events, seconds=10))
        await asyncio.sleep(4.0)
        server.kill()  # SIGKILL: whatever the append-only file had not synced is gone
        await asyncio.sleep(3.0)  # the worker retries its batch meanwhile
        server.start()
        await sending
        redis = Redis.from_url(fault_settings.redis_url)
        try:
            await settle(redis, exp, [worker], timeout=180)
        finally:
            await redis.aclose()
        assert worker.alive(), worker.log_tail()
        assert "batch not applied" in worker.log.read_text(), "Redis was down: the worker should have retried"
    finally:
        worker.kill()


async def test_kafka_broker_restarted_mid_stream(
    fault_settings: Settings, own_servers: tuple[KafkaBroker, RedisServer]
) -> None:
    broker, _ = own_servers
    events = demo_events(12_000, seed=37)
    exp = reference.expected(events)
    await produce(fault_settings, events, seconds=2)
    # A slower worker, so that the restart lands while it is still reading the stream.
    worker = WorkerProcess(replace(fault_settings, batch_size=100), "k").start()
    try:
        redis = Redis.from_url(fault_settings.redis_url)

        async def some_applied() -> Any:
            return await redis.hget(f"aia:{{{sorted(exp.orgs)[0]}}}:meta", "events|chat-messages")

        for _ in range(240):
            if await some_applied():
                break
            await asyncio.sleep(0.25)
        assert await mismatches(redis, exp), "the stream was applied before the restart: nothing was tested"
        broker.stop()
        await asyncio.sleep(3.0)
        broker.start()
        try:
            await settle(redis, exp, [worker], timeout=180)
        finally:
            await redis.aclose()
        assert worker.alive(), worker.log_tail()
    finally:
        worker.kill()


async def test_a_worker_rebuilds_what_redis_lost_from_kafka(fault_settings: Settings) -> None:
    """Redis comes back with less than Kafka's committed offsets say (here: nothing at all, as after
    losing its disk): a restarted worker reads those partitions again and every aggregate is exact."""
    events = demo_events(5_000, seed=41)
    exp = reference.expected(events)
    await produce(fault_settings, events, seconds=1)
    redis = Redis.from_url(fault_settings.redis_url)
    worker = WorkerProcess(fault_settings, "lost")
    try:
        worker.start()
        await settle(redis, exp, [worker], timeout=120)
        worker.stop()  # commits its offsets and leaves
        await redis.flushall()
        worker.start()
        await settle(redis, exp, [worker], timeout=120)
        assert "reading again from 0" in worker.log.read_text()
    finally:
        worker.kill()
        await redis.aclose()
