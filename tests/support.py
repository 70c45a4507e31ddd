"""Helpers the integration tests share: settings per test, demo traffic, worker subprocesses, polling,
reading topics back, and comparing what the queries serve with the independent reference."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from agents.pipeline import Batch, BatchProcessor
from bench.throughput import records
from infra.procs import cli_command, free_port, port_open, spawn, tail, worker_command
from streams.clients import ensure_topics
from streams.deadletter import DeadLetter, Record
from streams.demo import DemoConfig, DemoTraffic
from streams.producer import AnalyticsProducer
from streams.settings import Settings
from tables import apikeys, keys, queries
from tables.aggregates import chat_history, first_seen, llm_cost, sentiment, sessions, top_students
from tables.changefeed import orgs_with_marks
from tests import reference

LOG_ROOT = Path(tempfile.gettempdir()) / "aia-test-logs"


def make_settings(bootstrap: str, redis_url: str, name: str = "test") -> Settings:
    """Settings of one test: its own topic prefix and consumer group, small batches, a quick rebalance."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{run}.",
        topic_partitions=3,
        app_id=f"aia-{name}-{run}",
        batch_size=500,
        batch_within=0.1,
        session_timeout=6.0,
        heartbeat_interval=1.0,
    )


def demo_events(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    traffic = DemoTraffic(DemoConfig(seed=seed, late_share=0.1, resend_share=0.02))
    now = datetime.now(UTC)
    out: list[tuple[str, dict[str, Any]]] = []
    while len(out) < n:
        out.extend(traffic.session(now))
    return out


async def produce(settings: Settings, events: list[tuple[str, dict[str, Any]]], seconds: float) -> None:
    """Send the events spread over about `seconds`, in order."""
    chunks = max(1, int(seconds * 10))
    size = -(-len(events) // chunks)
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for i in range(0, len(events), size):
            for topic, e in events[i : i + size]:
                await producer.send(topic, e, wait=False)
            await producer.flush()
            await asyncio.sleep(0.1)


def start_api(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """A real `ai-analytics api` subprocess on `settings.api_port`, once its port accepts connections."""
    env = {**os.environ, **settings.as_env()}
    proc = spawn(cli_command("api"), log=log, env=env)
    deadline = time.monotonic() + 30
    while not port_open(settings.api_port):
        assert proc.poll() is None and time.monotonic() < deadline, tail(log)
        time.sleep(0.1)
    return proc


class WorkerProcess:
    """A real `ai-analytics worker` subprocess, as a user would run it; its log under the test's log folder."""

    def __init__(self, settings: Settings, name: str = "w1", command: list[str] | None = None) -> None:
        self.settings = settings
        self.log = LOG_ROOT / settings.app_id / f"{name}.log"
        self.command = command or worker_command("info")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        env.pop("AIA_PRICE_TABLE", None)
        self.proc = spawn(self.command, log=self.log, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or leave the group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


@contextlib.asynccontextmanager
async def worker_and_producer(settings: Settings, name: str) -> AsyncIterator[tuple[WorkerProcess, AIOKafkaProducer]]:
    """A running worker and a raw producer (acks=all) for tests that send records of their own making; the
    worker is killed and the producer stopped after."""
    worker = WorkerProcess(settings, name).start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        yield worker, producer
    finally:
        await producer.stop()
        worker.kill()


@dataclass
class Env:
    """A running stack for API tests: its settings, the API's base URL, named keys and the reference."""

    settings: Settings
    base: str
    keys: dict[str, str]
    expected: reference.Expected
    worker: WorkerProcess
    api_log: Path
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # what was produced

    def url(self, org: str, path: str) -> str:
        return f"{self.base}/api/ai-analytics/orgs/{org}/users/tester/{path}/"

    def get(
        self, org: str, path: str, key: str | None = "admin", scheme: str = "Api-Token", **query: Any
    ) -> httpx.Response:
        headers = {} if key is None else {"Authorization": f"{scheme} {self.keys.get(key, key)}"}
        return httpx.get(self.url(org, path), params=query, headers=headers, timeout=10)


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll an async check until it returns a truthy value; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} not reached within {timeout}s; last value: {last!r}")


async def read_topic(settings: Settings, name: str, idle_s: float = 3.0) -> list[tuple[bytes | None, Any]]:
    """Every record of a topic from the beginning, as (key, decoded JSON value), until `idle_s` of quiet."""
    consumer = AIOKafkaConsumer(
        settings.topic(name), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes | None, Any]] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out += [(r.key, None if r.value is None else orjson.loads(r.value)) for r in records]
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return out


async def wait_published(redis: Redis, org: str, timeout: float) -> None:
    """Until no counter of the org is marked unpublished and nobody holds its publication lock: a batch's
    changes go out after its apply, by its worker or by the sweep (tables/changefeed.py)."""
    deadline = time.monotonic() + timeout
    while await orgs_with_marks(redis, [org]) or await redis.exists(keys.changefeed_lock(org)):
        assert time.monotonic() < deadline, "the org's marked counters were never published"
        await asyncio.sleep(0.2)


async def read_compacted(settings: Settings, idle_s: float = 3.0) -> dict[str, dict[str, Any]]:
    """Everything on analytics-aggregates from the beginning, last value per key (what compaction keeps: a
    key whose last record is a tombstone goes)."""
    latest: dict[str, dict[str, Any]] = {}
    for key, value in await read_topic(settings, "analytics-aggregates", idle_s):
        assert key is not None
        if value is None:
            latest.pop(key.decode(), None)
        else:
            latest[key.decode()] = value
    return latest


async def mismatches(redis: Redis, exp: reference.Expected) -> list[str]:
    """Every difference between what the queries serve and the reference, day by day."""
    out = []
    days = sorted({d for _, d in exp.days()})
    first, last = date.fromisoformat(days[0]), date.fromisoformat(days[-1])
    for org in sorted(exp.orgs):
        rows = await sessions.average_messages_per_session(queries.View(redis, 0), org, first, last, "daily")
        for row in rows:
            want = (exp.sessions[(org, row["time"])], exp.messages[(org, row["time"])])
            got = (row["total_sessions"], row["total_messages"])
            if got != want:
                out.append(f"{org} {row['time']} sessions/messages: got {got}, want {want}")
        for row in await sentiment.sentiment_counts(queries.View(redis, 0), org, first, last):
            if row["sentiment_count"] != exp.sentiment[(org, row["date"])]:
                out.append(
                    f"{org} {row['date']} sentiment: got {row['sentiment_count']}, want {exp.sentiment[(org, row['date'])]}"
                )
        d = first
        while d <= last:
            day = d.isoformat()
            start = datetime(d.year, d.month, d.day, tzinfo=UTC)
            cost = await llm_cost.tenant_cost(queries.View(redis, 0), org, start, start + timedelta(days=1))
            if cost["cost_nanos"] != exp.cost[(org, day)]:
                out.append(f"{org} {day} cost: got {cost['cost_nanos']}, want {exp.cost[(org, day)]}")
            top = await top_students.top_students(queries.View(redis, 0), org, d, d, limit=10_000)
            got_top = {r["username"]: r["chat_message_count"] for r in top}
            if got_top != dict(exp.human.get((org, day), {})):
                out.append(f"{org} {day} top students differ: got {sorted(got_top.items())[:5]}...")
            out += await new_and_returning_mismatches(redis, exp, org, d, d)
            d += timedelta(days=1)
        out += await new_and_returning_mismatches(redis, exp, org, first, last)
        count, _ = await chat_history.chat_history(queries.View(redis, 0), org, chat_history.HistoryFilter(), 1, 1)
        if count != len(exp.conversations[org]):
            out.append(f"{org} conversations: got {count}, want {len(exp.conversations[org])}")
    return out


async def new_and_returning_mismatches(
    redis: Redis, exp: reference.Expected, org: str, first: date, last: date
) -> list[str]:
    """The org's new and returning students from first to last (UTC days) against the reference, if they differ."""
    split = await first_seen.new_and_returning(queries.View(redis, 0), org, first, last)
    got = (split["new_users"]["count"], split["returning_users"]["count"])
    want = reference.new_and_returning(exp, org, *reference.day_ms(first.isoformat(), last.isoformat()))
    return [] if got == want else [f"{org} {first}..{last} new and returning students: got {got}, want {want}"]


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


def wait_applied(
    env: Env, events: list[tuple[str, dict[str, Any]]], expected: reference.Expected, timeout: float
) -> None:
    """Poll the API's freshness until every distinct event of `events` is applied, per topic."""
    unique = Counter(t for t, _ in {(t, ev["event_id"]): None for t, ev in events})
    deadline = time.monotonic() + timeout
    while True:
        counts: Counter[str] = Counter()
        for org in expected.orgs:
            r = env.get(org, "freshness")
            if r.status_code == 200:
                counts.update(r.json()["events"])
        if counts == unique:
            return
        assert time.monotonic() < deadline, f"not applied: {counts} != {unique}\n{env.worker.log_tail()}"
        time.sleep(0.5)


def api_settings(bootstrap: str, redis_url: str, name: str) -> Settings:
    """Settings of a module's worker and API: its own topics, group and API port."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap, redis_url=redis_url, topic_prefix=f"{name}{run}.", topic_partitions=3,
        app_id=f"aia-{name}-{run}", batch_size=500, batch_within=0.1, session_timeout=6.0,
        heartbeat_interval=1.0, api_port=free_port(),
    )  # fmt: skip


async def create_keys(settings: Settings) -> dict[str, str]:
    """A clean Redis with the keys the API tests use (admin: all orgs; analyst and acme_admin: acme-academy;
    other: globex-school; revoked), and the contract's topics."""
    redis = Redis.from_url(settings.redis_url)
    await redis.flushall()
    made = {}
    for name, org, role in [
        ("admin", "*", "platform_admin"),
        ("analyst", "acme-academy", "analyst"),
        ("acme_admin", "acme-academy", "platform_admin"),
        ("other", "globex-school", "analyst"),
    ]:
        made[name], _ = await apikeys.create(redis, org, role, name)
    revoked, record = await apikeys.create(redis, "*", "analyst", "revoked")
    await apikeys.revoke(redis, record.id)
    made["revoked"] = revoked
    await redis.aclose()
    await ensure_topics(settings)
    return made


# Partitioning records as a broker would, for tests that feed the BatchProcessor directly.
PARTITIONS = 3
KEY_FIELD = {
    "chat-messages": "session_id",
    "sentiment": "session_id",
    "chat-history": "id",
    "llm-observations": "trace_id",
}


def as_records(events: list[tuple[str, dict[str, Any]]]) -> list[Record]:
    """The records a broker would hold: partition by key, offsets in send order per partition
    (`bench.throughput.records`)."""
    return list(records(((topic, e[KEY_FIELD[topic]].encode(), orjson.dumps(e)) for topic, e in events), PARTITIONS))


async def apply_batches(redis: Redis, batches: list[list[Record]], settings: Settings, *, flush: bool = True) -> None:
    """On an emptied Redis (unless `flush` is False), apply the batches through the BatchProcessor; none of the
    records may be a dead letter."""
    if flush:
        await redis.flushall()
    dead: list[DeadLetter] = []

    async def keep(letters: list[DeadLetter]) -> None:
        dead.extend(letters)

    processor = BatchProcessor(settings, redis, keep)
    for batch in batches:
        await processor.process(Batch.of(batch))
    assert dead == [], [d.reason for d in dead]
