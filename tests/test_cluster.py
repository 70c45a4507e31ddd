"""Past one machine: three Kafka brokers (topics replicated three times, two in sync for a write) and a Redis
Cluster (three primaries, a replica each). While a shuffled stream with duplicates is produced and two
workers consume it, the partition leader broker is killed and restarted, then a Redis primary is killed
(its replica takes over) and brought back as a replica. Every answer ends exactly equal to the
independent reference, nothing valid is dead-lettered, and the API answers throughout (a 503 while a
primary is failed over, never a wrong number at the end).

The servers are this module's own (one Kafka cluster and one Redis Cluster for the module)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import cast

import httpx
import pytest
from redis.asyncio import RedisCluster

from bench.cluster import Poller, bounce_leader_broker, fail_over_primary
from infra.kafka import KafkaCluster
from infra.procs import free_port
from infra.redis import RedisClusterNodes
from streams.clients import ensure_topics
from streams.settings import Settings
from tables import apikeys, connections, keys
from tests import reference
from tests.support import LOG_ROOT, WorkerProcess, demo_events, make_settings, produce, read_topic, settle, start_api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_root: Path) -> Iterator[tuple[KafkaCluster, RedisClusterNodes]]:
    root = tmp_root / f"cluster-{uuid.uuid4().hex[:6]}"
    kafka = KafkaCluster(root, partitions=3)
    redis = RedisClusterNodes(root)
    kafka.start()
    try:
        redis.start()
        yield kafka, redis
    finally:
        redis.stop()
        kafka.stop()


@pytest.fixture
async def cluster_settings(cluster: tuple[KafkaCluster, RedisClusterNodes]) -> Settings:
    kafka, redis = cluster
    settings = replace(make_settings(kafka.bootstrap, redis.url, "cluster"), topic_replication=3, api_port=free_port())
    client = connections.connect(redis.url)
    await client.flushall()
    await client.aclose()
    await ensure_topics(settings)
    return settings


async def test_broker_and_redis_primary_failovers_leave_every_answer_exact(
    cluster: tuple[KafkaCluster, RedisClusterNodes], cluster_settings: Settings
) -> None:
    kafka, rnodes = cluster
    settings = cluster_settings
    rng = random.Random(97)
    events = demo_events(12_000, seed=71)
    rng.shuffle(events)
    events += rng.sample(events, len(events) // 20)  # producers' retries: 5% sent again
    exp = reference.expected(events)
    redis = connections.connect(settings.redis_url)
    token, _ = await apikeys.create(redis, apikeys.ALL_ORGS, "platform_admin", "cluster test")
    workers = [WorkerProcess(settings, "c1").start(), WorkerProcess(settings, "c2").start()]
    api = start_api(settings, LOG_ROOT / settings.app_id / "api.log")
    stop = asyncio.Event()
    poller = Poller(f"http://127.0.0.1:{settings.api_port}", token, sorted(exp.orgs))
    polling = asyncio.create_task(poller.run(stop))
    try:
        sending = asyncio.create_task(produce(settings, events, seconds=45))
        await asyncio.sleep(8)

        # The leader of a chat-messages partition dies without a word, and comes back.
        kafka_down = await bounce_leader_broker(settings, kafka)
        kafka_gap = poller.longest_gap(kafka_down, time.monotonic())

        # The Redis primary of the busiest org dies; its replica takes over; it comes back as the replica.
        busiest = max(exp.orgs, key=lambda org: len(exp.conversations[org]))
        redis_down = await fail_over_primary(cast(RedisCluster, redis), rnodes, keys.meta(0, busiest))
        rnodes.wait_ok()
        redis_gap = poller.longest_gap(redis_down, time.monotonic())

        await sending
        await settle(redis, exp, workers, timeout=300)
        assert poller.problems() == []
        assert all(w.alive() for w in workers), [w.log_tail() for w in workers]
        dead = await read_topic(settings, "analytics-dead-letter", idle_s=2.0)
        assert dead == [], dead[:3]
        # Every org answers again, through the API, with the reference's numbers.
        async with httpx.AsyncClient(headers={"Authorization": f"Api-Token {token}"}, timeout=10) as client:
            for org in sorted(exp.orgs):
                r = await client.get(f"{poller.base}/api/ai-analytics/orgs/{org}/users/t/chat-history/")
                assert r.status_code == 200, (r.status_code, r.text, poller.answers[-20:])
                assert r.json()["count"] == len(exp.conversations[org])
        print(f"longest time an org went without an answer: broker failover {kafka_gap:.1f}s, "
              f"Redis failover {redis_gap:.1f}s")  # fmt: skip
    finally:
        stop.set()
        await polling
        api.terminate()
        api.wait(30)
        for w in workers:
            w.kill()
        await redis.aclose()
