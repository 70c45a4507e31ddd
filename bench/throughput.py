"""The throughput benchmark's parts, used by bench/run.py: the events, producing them, the raw ceiling,
starting a worker and counting what it applied."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from infra.procs import spawn, worker_command
from streams.settings import Settings
from tables import keys

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
    consumer = AIOKafkaConsumer(
        settings.topic("chat-messages"),
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


async def applied(redis: Redis) -> int:
    total = 0
    for org in ORGS:  # a fresh Redis: generation 0
        total += int(await redis.hget(keys.meta(0, org), "events|chat-messages") or 0)
    return total
