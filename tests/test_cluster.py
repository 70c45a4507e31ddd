"""Past one machine: three Kafka brokers (topics replicated three times, two in sync for a write) and a Redis
Cluster (three primaries, two replicas each). While a shuffled stream with duplicates is produced and two
workers consume it, the Redis primary of the busiest org is killed and kept down for over a minute (a
replica takes over, and has a replica of its own, so every batch's WAIT is still met), then the leader
broker of a partition is killed and kept down too. Every answer ends exactly equal to the independent
reference, nothing valid is dead-lettered, the API answers throughout (a 503 while a primary is failed
over, never a wrong number), and neither the answers nor the applying stop for longer than a failover's
pause (`PAUSE_S`).

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

from bench.cluster import Poller, Progress, kill_leader_broker, kill_primary
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


PAUSE_S = 10.0  # the longest an org's answers or its applying may stop when a node is lost (issue: < 10 s)


async def test_a_redis_primary_and_a_leader_broker_kept_down_stop_nothing_for_long(
    cluster: tuple[KafkaCluster, RedisClusterNodes], cluster_settings: Settings
) -> None:
    kafka, rnodes = cluster
    settings = cluster_settings
    rng = random.Random(97)
    events = demo_events(16_000, seed=71)
    rng.shuffle(events)
    events += rng.sample(events, len(events) // 20)  # producers' retries: 5% sent again
    exp = reference.expected(events)
    busiest = max(exp.orgs, key=lambda org: len(exp.conversations[org]))
    redis = connections.connect(settings.redis_url)
    token, _ = await apikeys.create(redis, apikeys.ALL_ORGS, "platform_admin", "cluster test")
    workers = [WorkerProcess(settings, "c1").start(), WorkerProcess(settings, "c2").start()]
    api = start_api(settings, LOG_ROOT / settings.app_id / "api.log")
    stop = asyncio.Event()
    poller = Poller(f"http://127.0.0.1:{settings.api_port}", token, sorted(exp.orgs))
    progress = Progress(cast(RedisCluster, redis), busiest)
    watching = [asyncio.create_task(poller.run(stop)), asyncio.create_task(progress.run(stop))]
    down: list[str] = []
    try:
        sending = asyncio.create_task(produce(settings, events, seconds=110))
        await asyncio.sleep(10)

        # The Redis primary of the busiest org dies without a word and stays down past the minute after
        # which a cluster of one replica per primary stopped applying that org.
        redis_down, port = await kill_primary(cast(RedisCluster, redis), rnodes, keys.meta(0, busiest))
        down.append(f"redis {port}")
        await asyncio.sleep(65)
        redis_until = time.monotonic()

        # Then the leader of a chat-messages partition dies and stays down too.
        kafka_down, node_id = await kill_leader_broker(settings, kafka)
        down.append(f"broker {node_id}")
        await sending
        kafka_until = time.monotonic()

        gaps = {
            "answers, Redis primary down": poller.longest_gap(redis_down, redis_until),
            "applying, Redis primary down": progress.longest_gap(redis_down, redis_until),
            "answers, leader broker down": poller.longest_gap(kafka_down, kafka_until),
            "applying, leader broker down": progress.longest_gap(kafka_down, kafka_until),
        }
        print(f"kept down: {down}; longest pauses: " + ", ".join(f"{k} {v:.1f}s" for k, v in gaps.items()))
        await settle(redis, exp, workers, timeout=300)
        assert poller.problems() == []
        assert all(w.alive() for w in workers), [w.log_tail() for w in workers]
        dead = await read_topic(settings, "analytics-dead-letter", idle_s=2.0)
        assert dead == [], dead[:3]
        # Every org answers, through the API, with the reference's numbers, both nodes still down.
        async with httpx.AsyncClient(headers={"Authorization": f"Api-Token {token}"}, timeout=10) as client:
            for org in sorted(exp.orgs):
                r = await client.get(f"{poller.base}/api/ai-analytics/orgs/{org}/users/t/chat-history/")
                assert r.status_code == 200, (r.status_code, r.text, poller.answers[-20:])
                assert r.json()["count"] == len(exp.conversations[org])
        assert all(gap < PAUSE_S for gap in gaps.values()), gaps
        # What an operator sees meanwhile (docs/operations.md): the dead primary named, every primary with a
        # replica again, so nothing waits on them.
        async with httpx.AsyncClient(timeout=10) as client:
            ready = (await client.get(f"{poller.base}/readyz")).json()
            metrics = (await client.get(f"{poller.base}/metrics")).text
        assert (ready["status"], ready["redis"]) == ("ok", "ok"), ready  # whichever node was the client's default
        assert ready["redis_cluster"] == (
            f"degraded: 1 node(s) failing: 127.0.0.1:{port}; every primary has at least 1 replica(s)"
        ), ready
        assert "aia_redis_nodes_failing 1.0" in metrics
        assert metrics.count("aia_redis_primary_replicas{") == 3, metrics
    finally:
        stop.set()
        await asyncio.gather(*watching)
        api.terminate()
        api.wait(30)
        for w in workers:
            w.kill()
        await redis.aclose()
