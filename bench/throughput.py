"""The throughput benchmark's parts, used by bench/run.py: the events, producing them, the raw ceiling,
starting a worker and counting what it applied.

Two kinds of events: `platform` traffic (streams/traffic.py, docs/TRAFFIC.md: the four topics, many orgs of
unequal size, UUIDs), in its `live` mode (sessions of the last minutes) or its `backfill` mode (90 days of
history), which every claim is measured on; and `chat`, the earlier benchmark's chat messages (5 orgs, 400
students, sessions of 8), kept as one comparison line.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from infra.procs import spawn, worker_command
from streams.deadletter import Record
from streams.producer import key_for
from streams.settings import Settings
from streams.topics import INPUT_TOPICS
from streams.traffic import PlatformTraffic, TrafficConfig
from tables import keys

TRAFFICS = ("live", "backfill", "chat")
Message = tuple[str, bytes | None, bytes]  # (topic without prefix, key, value)

ORGS = [f"org{i}" for i in range(5)]


def event(i: int, now_ms: int) -> tuple[bytes, bytes]:
    """The i-th chat message: sessions of 8 messages (both roles), 5 orgs, 400 students, 7 mentors."""
    session = f"s{i // 8:08d}"
    e = {
        "event_id": f"e{i:010d}",
        "org": ORGS[(i // 8) % len(ORGS)],
        "timestamp": now_ms - (i % 3_600_000),
        "session_id": session,
        "student": f"student{i % 400:04d}",
        "mentor_id": f"mentor{i % 7}",
        "role": "human" if i % 2 == 0 else "ai",
        "topics": ["algebra", "fractions"],
        "content": "How do I add fractions with different denominators? Explain it step by step.",
    }
    return session.encode(), orjson.dumps(e)


def stream(traffic: str, n: int, seed: int = 7, days: int = 90) -> Iterator[Message]:
    """The n events of a kind of traffic (`TRAFFICS`), keyed as the platform's producer keys them, made as
    they are taken (10M backfill events stream in a few hundred MiB)."""
    if traffic == "chat":
        now_ms = int(time.time() * 1000)
        yield from (("chat-messages", *event(i, now_ms)) for i in range(n))
        return
    model = PlatformTraffic(TrafficConfig(seed=seed))
    events = model.backfill(n, days) if traffic == "backfill" else model.live()
    for _, (topic, e) in zip(range(n), events, strict=False):
        yield topic, key_for(topic, e), orjson.dumps(e)


def messages(traffic: str, n: int, seed: int = 7, days: int = 90) -> list[Message]:
    return list(stream(traffic, n, seed, days))


def records(msgs: Iterable[Message], partitions: int) -> Iterator[Record]:
    """The messages as a worker's records, made as they are taken, each on the partition its key's CRC-32
    falls in (keyless ones in turn), offsets counted per topic and partition."""
    offsets: dict[tuple[str, int], int] = {}
    for i, (topic, key, value) in enumerate(msgs):
        p = zlib.crc32(key) % partitions if key is not None else i % partitions
        o = offsets.get((topic, p), 0)
        offsets[topic, p] = o + 1
        yield Record(topic, p, o, key, value)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


async def slowlog_start(redis: Redis) -> None:
    """Redis's slow log emptied, keeping every command of 1 ms or more from now on."""
    await redis.config_set("slowlog-log-slower-than", 1000)
    await redis.config_set("slowlog-max-len", 10_000)
    await redis.slowlog_reset()


async def slowlog_longest(redis: Redis, n: int = 1) -> list[tuple[int, str]]:
    """The n longest commands of the slow log since `slowlog_start`: (µs, the command's start)."""
    slow = await redis.slowlog_get(10_000)
    return [(int(e["duration"]), str(e["command"])[:90]) for e in sorted(slow, key=lambda e: -e["duration"])[:n]]


async def produce_messages(settings: Settings, msgs: Iterable[Message]) -> tuple[dict[str, int], float]:
    """Send the messages to their topics (the settings' prefix): how many to each topic, and their average
    size in bytes."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    started = time.perf_counter()
    size = n = 0
    counts = dict.fromkeys(INPUT_TOPICS, 0)
    try:
        for topic, key, value in msgs:
            size += len(value)
            n += 1
            counts[topic] += 1
            await producer.send(settings.topic(topic), value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    print(f"produced {n:,} events (avg {size / n:.0f} bytes) in {time.perf_counter() - started:.1f}s", flush=True)
    return counts, size / n


async def produce(settings: Settings, n: int) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    now_ms = int(time.time() * 1000)
    started = time.perf_counter()
    topic = settings.topic("chat-messages")
    size = 0
    try:
        for i in range(n):
            key, value = event(i, now_ms)
            size += len(value)
            # The record timestamp is the event time, so Faust's windowed baseline windows by event time too.
            await producer.send(topic, value, key=key, timestamp_ms=now_ms - (i % 3_600_000))
        await producer.flush()
    finally:
        await producer.stop()
    print(f"produced {n} events (avg {size / n:.0f} bytes) in {time.perf_counter() - started:.1f}s", flush=True)
    return size / n


async def ceiling(settings: Settings, n: int) -> float:
    """Events/s of one raw aiokafka consumer of the input topics: `getmany` and `orjson.loads`, nothing else."""
    consumer = AIOKafkaConsumer(
        *(settings.topic(t) for t in INPUT_TOPICS),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=f"ceiling-{uuid.uuid4().hex[:6]}",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        enable_auto_commit=False,
    )
    await consumer.start()
    seen = 0
    started = None
    try:
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            if started is None and batch:
                started = time.perf_counter()
            for records in batch.values():
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
    finally:
        await consumer.stop()
    assert started is not None
    return n / (time.perf_counter() - started)


def start_worker(settings: Settings, name: str, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.as_env()}
    return spawn(worker_command("warn"), log=log, env=env)


async def consumed(redis: Redis, group: str) -> int:
    """Records of the input topics a consumer group has wholly applied, by its progress in Redis (both
    engines keep it, as each partition's last applied offset): every record counts, duplicates and dead
    letters too."""
    progress = await redis.hgetall(keys.progress(group))
    return sum(int(v) + 1 for v in progress.values())


async def applied(redis: Redis) -> int:
    """Chat messages counted in Redis (the `chat` traffic's orgs, generation 0)."""
    total = 0
    for org in ORGS:  # a fresh Redis: generation 0
        total += int(await redis.hget(keys.meta(0, org), "events|chat-messages") or 0)
    return total


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank; 100: the largest), 0 of nothing."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]
