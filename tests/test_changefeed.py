"""The compacted `analytics-aggregates` topic (the changefeed of absolute counter values) against Redis, under
load (issue #24): one fresh org's events (shuffled, duplicated, late by hours and days, observations re-sent
with another cost) sent while thousands of events a second for other orgs run through a worker with its
real batch settings, so batches are large and applied in overlapped parts. Once Redis equals the reference,
every published counter of the org must have a newest record holding Redis's value, and every record of the
org must hold what Redis holds (0 for a field Redis does not have)."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from infra.procs import ROOT
from streams import clients
from streams.demo import DemoConfig, DemoTraffic
from streams.producer import AnalyticsProducer
from streams.schemas import format_timestamp
from streams.settings import ENGINES, Settings
from streams.topics import INPUT_TOPICS, LLM_OBSERVATIONS
from tables import keys
from tables.buckets import Grain
from tables.changefeed import orgs_with_marks
from tests import reference
from tests.support import WorkerProcess, read_compacted, settle

pytestmark = pytest.mark.integration

BACKGROUND_RATE = 4000  # events a second for the other orgs
SECONDS = 16  # how long the background traffic runs; the org's events go in its middle part
ORG_EVENTS = 3000


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def org_events(org: str, n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    """`n` or so events of one org as the contract allows them: late ones (hours to days), observations
    re-sent with the same id and another cost (upserts; some also moved in time), shuffled, 5% sent twice."""
    rng = random.Random(seed)
    traffic = DemoTraffic(DemoConfig(seed=seed, late_share=0.15, resend_share=0.02))
    now = datetime.now(UTC)
    events: list[tuple[str, dict[str, Any]]] = []
    while len(events) < n:
        for topic, e in traffic.session(now):
            events.append((topic, {**e, "org": org}))
    upserts: list[tuple[str, dict[str, Any]]] = []
    for topic, e in events:
        if topic == LLM_OBSERVATIONS and rng.random() < 0.15:
            again = {**e, "cost": f"{rng.uniform(0.0001, 0.05):.9f}"}
            if rng.random() < 0.3:  # a version stamped elsewhere: its cost moves to another hour or day
                shift = timedelta(hours=rng.choice((-30, -5, -1, 1)))
                moved = datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")) + shift
                again["timestamp"] = format_timestamp(min(moved, now))
            upserts.append((topic, again))
    events += upserts
    rng.shuffle(events)
    for _ in range(len(events) // 20):  # 5% sent twice, anywhere in the stream
        events.insert(rng.randrange(len(events) + 1), rng.choice(events))
    return events


async def produce_under_load(
    settings: Settings, org_evs: list[tuple[str, dict[str, Any]]], rate: int, seconds: float, seed: int
) -> None:
    """Demo traffic for the other orgs at `rate` events a second for `seconds`, the org's events spread over
    its middle (from 15% to 75% of the time), each in send order."""
    traffic = DemoTraffic(DemoConfig(seed=seed, late_share=0.05, resend_share=0.01))
    background = traffic.sessions(datetime.now(UTC))
    ticks = int(seconds * 10)
    first, last = int(ticks * 0.15), int(ticks * 0.75)
    per_tick = -(-len(org_evs) // (last - first))
    sent = 0
    started = time.monotonic()
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for tick in range(ticks):
            for _ in range(rate // 10):
                topic, e = next(background)
                await producer.send(topic, e, wait=False)
            if first <= tick < last:
                for topic, e in org_evs[sent : sent + per_tick]:
                    await producer.send(topic, e, wait=False)
                sent += per_tick
            await producer.flush()
            await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.monotonic()))
        for topic, e in org_evs[sent:]:
            await producer.send(topic, e, wait=False)
        await producer.flush()


async def wait_all_committed(settings: Settings, timeout: float) -> None:
    """Until the group's committed offsets reach the end of every input partition (every batch applied)."""
    tps = [TopicPartition(settings.topic(t), p) for t in INPUT_TOPICS for p in range(settings.topic_partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    admin = clients.admin(settings.kafka_bootstrap)
    await consumer.start()
    await admin.start()
    try:
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            committed = await admin.list_consumer_group_offsets(settings.app_id, partitions=tps)
            short = {
                f"{tp.topic}[{tp.partition}]": (meta.offset if (meta := committed.get(tp)) else None, end)
                for tp, end in ends.items()
                if end > 0 and ((meta := committed.get(tp)) is None or meta.offset < end)
            }
            if not short:
                return
            assert time.monotonic() < deadline, f"committed offsets short of the ends (committed, end): {short}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
        await consumer.stop()


async def redis_counters(redis: Redis, org: str) -> dict[str, Any]:
    """record key -> the value Redis holds, for every published counter of the org: each field of its
    hourly and daily bucket hashes, each daily and weekly top-students set (as student -> count)."""
    out: dict[str, Any] = {}
    prefix = keys.bucket(0, org, Grain.DAY, 0).rsplit(":", 2)[0]  # aia:{org}
    async for raw in redis.scan_iter(match=f"{prefix}:*", count=1000):
        key = raw.decode()
        kind = (await redis.type(key)).decode()
        if kind == "hash" and keys.describe_counter(key, "x", "h") is not None:
            for fld, value in (await redis.hgetall(key)).items():
                described = keys.describe_counter(key, fld.decode(), "h")
                assert described is not None
                out[described[0]] = int(value)
        elif kind == "zset" and (described := keys.describe_counter(key, "", "z")) is not None:
            members = await redis.zrange(key, 0, -1, withscores=True)
            out[described[0]] = {m.decode(): int(s) for m, s in members}
    return out


def compare(org: str, want: dict[str, Any], latest: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(wrong, missing): records that disagree with Redis, counters without a record."""
    wrong, missing = [], []
    for rk, value in sorted(want.items()):
        rec = latest.get(rk)
        if rec is None:
            if value not in (0, {}):
                missing.append(f"{rk}: no record, Redis holds {value!r}")
        elif rec["value"] != value:
            wrong.append(f"{rk}: record says {rec['value']!r}, Redis holds {value!r}")
    for rk, rec in sorted(latest.items()):
        if rk.startswith(f"{org}|") and rk not in want and rec["value"] not in (0, {}):
            wrong.append(f"{rk}: record says {rec['value']!r}, Redis has no such field")
    return wrong, missing


async def wait_published(redis: Redis, org: str, timeout: float) -> None:
    """Until no counter of the org is marked unpublished and nobody holds its publication lock: a batch's
    changes go out after its apply, by its worker or by the sweep (tables/changefeed.py)."""
    deadline = time.monotonic() + timeout
    while await orgs_with_marks(redis, [org]) or await redis.exists(keys.changefeed_lock(org)):
        assert time.monotonic() < deadline, "the org's marked counters were never published"
        await asyncio.sleep(0.2)


async def check_changefeed(settings: Settings, redis: Redis, org: str, workers: list[WorkerProcess]) -> None:
    await wait_all_committed(settings, timeout=60)
    await wait_published(redis, org, timeout=30)
    want = await redis_counters(redis, org)
    latest = await read_compacted(settings, idle_s=2.0)
    wrong, missing = compare(org, want, latest)
    published = sum(1 for rk in latest if rk.startswith(f"{org}|"))
    assert not wrong and not missing, (
        f"{len(wrong)} of the org's {published} newest records disagree with Redis and {len(missing)} of its "
        f"{len(want)} counters have no record, e.g.:\n"
        + "\n".join(wrong[:10] + missing[:10])
        + "".join(f"\n--- {w.log}\n{w.log_tail(8)}" for w in workers)
    )


async def run_the_documented_consumer(settings: Settings, quiet_s: float = 4.0) -> dict[str, str]:
    """docs/contract.md's example consumer, run as written (pointed at this test's broker and topic) until
    it has read the topic: record key -> the last value it printed."""
    text = (ROOT / "docs" / "contract.md").read_text()
    code = text.split("Reading it (a runnable example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"analytics-aggregates"', repr(settings.topic("analytics-aggregates")))
    code = code.replace('"127.0.0.1:9092"', repr(settings.kafka_bootstrap))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    printed: dict[str, str] = {}
    try:
        while True:  # until it has printed nothing for `quiet_s` (it has read the topic to its end)
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), quiet_s if printed else 30.0)
            except TimeoutError:
                break
            assert line, "the example consumer stopped"
            org, metric_grain_bucket_value = line.decode().rstrip("\n").split(" ", 1)
            *metric, grain, bucket, value = metric_grain_bucket_value.split(" ")
            printed[f"{org}|{' '.join(metric)}|{grain}|{bucket}"] = value
    finally:
        proc.kill()
        await proc.wait()
    return printed


def realistic(settings: Settings) -> Settings:
    """The test settings with production batch sizes: large batches applied in overlapped parts."""
    return replace(settings, batch_size=40000, apply_chunk=10000, batch_within=0.2)


async def test_changefeed_equals_redis_for_an_org_sent_under_load(
    settings: Settings, redis: Redis, topics: list[str]
) -> None:
    """Issue #24's setting: one worker."""
    settings = realistic(settings)
    org = f"fresh-{uuid.uuid4().hex[:6]}"
    events = org_events(org, ORG_EVENTS, seed=241)
    worker = WorkerProcess(settings, "w1").start()
    try:
        await produce_under_load(settings, events, BACKGROUND_RATE, SECONDS, seed=7)
        await settle(redis, reference.expected(events), [worker], timeout=120)
        await check_changefeed(settings, redis, org, [worker])
        # The consumer docs/contract.md shows a user, run as written, ends with Redis's values too.
        printed = await run_the_documented_consumer(settings)
        counters = {rk: v for rk, v in (await redis_counters(redis, org)).items() if isinstance(v, int) and v}
        assert counters and all(printed.get(rk) == str(v) for rk, v in counters.items()), [
            (rk, printed.get(rk), v) for rk, v in counters.items() if printed.get(rk) != str(v)
        ][:5]
    finally:
        worker.kill()


async def test_changefeed_equals_redis_with_two_workers_under_load(
    settings: Settings, redis: Redis, topics: list[str]
) -> None:
    """Two workers share the partitions, so both apply (and publish) the org's counters, no faults."""
    settings = realistic(settings)
    org = f"fresh-{uuid.uuid4().hex[:6]}"
    events = org_events(org, 2 * ORG_EVENTS, seed=243)
    both = [WorkerProcess(settings, "w1").start(), WorkerProcess(settings, "w2").start()]
    try:
        await produce_under_load(settings, events, BACKGROUND_RATE, SECONDS, seed=9)
        await settle(redis, reference.expected(events), both, timeout=120)
        await check_changefeed(settings, redis, org, both)
    finally:
        for w in both:
            w.kill()


async def test_changefeed_equals_redis_with_two_workers_one_killed_under_load(
    settings: Settings, redis: Redis, topics: list[str]
) -> None:
    """One of two workers SIGKILLed every few seconds: batches it applied but had not published are replayed
    by the next owner, which must publish what they changed."""
    settings = realistic(settings)
    org = f"fresh-{uuid.uuid4().hex[:6]}"
    events = org_events(org, 2 * ORG_EVENTS, seed=242)
    rng = random.Random(3)
    steady = WorkerProcess(settings, "steady").start()
    victims = [WorkerProcess(settings, "victim").start()]
    try:
        sending = asyncio.create_task(produce_under_load(settings, events, BACKGROUND_RATE, SECONDS, seed=8))
        while not sending.done():
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            victims[-1].kill()
            victims.append(WorkerProcess(settings, "victim").start())
        await sending
        await settle(redis, reference.expected(events), [steady, *victims], timeout=180)
        await check_changefeed(settings, redis, org, [steady, victims[-1]])
    finally:
        for w in (steady, *victims):
            w.kill()
