"""Failovers on the cluster stack, measured from outside: a poller of the API, an org's applying progress,
and the helpers that find and kill (and leave down) the partition leader broker or a Redis primary. Used
by bench/run.py's `cluster` section (how long answers and applying stop) and by tests/test_cluster.py
(that they stop no longer than a failover's pause, and end exact)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from redis.asyncio import RedisCluster

from infra.kafka import KafkaCluster
from infra.redis import RedisClusterNodes, cluster_nodes
from streams import clients
from streams.settings import Settings
from tables import keys


@dataclass
class Poller:
    """Polls every org's sentiment counts the whole time; remembers what it got and when."""

    base: str
    token: str
    orgs: list[str]
    answers: list[tuple[float, str, int, int]] = field(default_factory=list)  # (time, org, status, total)
    failures: list[str] = field(default_factory=list)  # requests that got no answer, and why

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Api-Token {self.token}"}
        async with httpx.AsyncClient(headers=headers, timeout=5) as client:
            while not stop.is_set():
                for org in self.orgs:
                    url = f"{self.base}/api/ai-analytics/orgs/{org}/users/poller/sentiment-count/"
                    try:
                        r = await client.get(url)
                        status = r.status_code
                        total = sum(row["sentiment_count"] for row in r.json()) if status == 200 else -1
                    except httpx.HTTPError as exc:
                        status, total = 0, -1
                        self.failures.append(f"{type(exc).__name__} {exc}")
                    self.answers.append((time.monotonic(), org, status, total))
                await asyncio.sleep(0.1)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time any org went without a 200 between `since` and `until`, in seconds."""
        worst = 0.0
        for org in self.orgs:
            last_ok = since
            for at, o, status, _ in self.answers:
                if o == org and since <= at <= until and status == 200:
                    worst = max(worst, at - last_ok)
                    last_ok = at
            worst = max(worst, until - last_ok)
        return worst

    def problems(self) -> list[str]:
        """What a dashboard should never see: once an org exists, anything but a 200 or a 503 (a dependency
        away, with its reason), and a total that goes down."""
        out = []
        for org in self.orgs:
            mine = [(status, total) for _, o, status, total in self.answers if o == org]
            first_ok = next((i for i, (status, _) in enumerate(mine) if status == 200), len(mine))
            statuses = Counter(status for status, _ in mine[first_ok:])
            if not set(statuses) <= {200, 503}:
                out.append(f"{org}: answers {dict(statuses)}; no answer: {self.failures[:3]}")
            totals = [total for status, total in mine if status == 200]
            if totals != sorted(totals):
                out.append(f"{org}'s sentiment total went down: {totals}")
        return out


async def leader_of(settings: Settings, topic: str, partition: int) -> int:
    """The node id leading a partition of one of our topics."""
    admin = clients.admin(settings.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([settings.topic(topic)])
    finally:
        await admin.close()
    return int(next(p["leader"] for p in described["partitions"] if p["partition"] == partition))


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout}s")
        await asyncio.sleep(0.2)


def failed_over(rnodes: RedisClusterNodes, dead_port: int) -> bool:
    """Every live node marks the dead one failed, and there are as many primaries as before it died."""
    live = [n for n in rnodes.nodes if n.port != dead_port and n.proc is not None]
    views = [cluster_nodes(n.port) for n in live]
    return (
        all("fail" in v.get(dead_port, "fail") for v in views) and len(rnodes.running_primaries()) == rnodes.primaries
    )


async def kill_leader_broker(settings: Settings, kafka: KafkaCluster) -> tuple[float, int]:
    """kill -9 the broker leading partition 0 of chat-messages and leave it down; returns when it was killed
    (time.monotonic) and its node id."""
    node_id = await leader_of(settings, "chat-messages", 0)
    kafka.brokers[node_id - 1].kill()
    return time.monotonic(), node_id


async def kill_primary(redis: RedisCluster, rnodes: RedisClusterNodes, key: str) -> tuple[float, int]:
    """kill -9 the Redis primary holding `key` and leave it down; returns when it was killed
    (time.monotonic) and its port, once a replica has taken over."""
    holder = redis.get_node_from_key(key)
    assert holder is not None
    primary = next(node for node in rnodes.nodes if node.port == holder.port)
    primary.kill()
    killed = time.monotonic()
    await until(lambda: failed_over(rnodes, primary.port), 30, "a replica taking over")
    return killed, primary.port


@dataclass
class Progress:
    """How far an org's applying has come (its chat messages counted in generation 0), sampled every 0.1 s."""

    redis: RedisCluster
    org: str
    samples: list[tuple[float, int]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                count = int(await self.redis.hget(keys.meta(0, self.org), "events|chat-messages") or 0)
                self.samples.append((time.monotonic(), count))
            except Exception:  # its primary away: no sample
                pass
            await asyncio.sleep(0.1)

    def longest_gap(self, since: float, until_: float) -> float:
        """The longest time between `since` and `until_` in which the count did not grow, in seconds."""
        worst, last_change, last = 0.0, since, -1
        for at, count in self.samples:
            if since <= at <= until_ and count != last:
                worst, last_change, last = max(worst, at - last_change), at, count
        return max(worst, until_ - last_change)
