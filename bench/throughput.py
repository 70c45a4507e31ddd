"""Throughput: the raw aiokafka ceiling against one (and two) of our workers, on the same broker and events.

    python -m bench.throughput --events 200000

Starts its own Kafka and Redis (temporary folders, free ports), produces N chat-message events of about
250 bytes across several orgs and sessions, then measures:
- ceiling: one aiokafka consumer, `getmany` + `orjson.loads`, nothing else;
- ours: worker process(es) from the first to the last event applied in Redis (startup excluded).
Prints one line per figure; `--markdown` prints a table row set for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from infra.kafka import KafkaBroker
from infra.procs import free_port, spawn, worker_command
from infra.redis import RedisServer
from streams.admin import ensure_topics
from streams.settings import Settings
from tables import keys

ORGS = [f"org{i}" for i in range(5)]


def event(i: int, now_ms: int) -> tuple[bytes, bytes]:
    session = f"s{i // 8:08d}"
    e = {
        "event_id": f"e{i:010d}",
        "org": ORGS[i % len(ORGS)],
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
            await producer.send(topic, value, key=key)
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
    env = {**os.environ, **replace(settings, data_dir=settings.data_dir / settings.app_id / name).as_env()}
    return spawn(worker_command("warn"), log=log, env=env)


async def applied(redis: Redis) -> int:
    total = 0
    for org in ORGS:
        total += int(await redis.hget(keys.meta(org), "events|chat-messages") or 0)
    return total


async def ours(settings: Settings, n: int, workers: int, tmp: Path) -> float:
    redis = Redis.from_url(settings.redis_url)
    await redis.flushall()
    procs = [start_worker(settings, f"w{i}", tmp / f"worker{i}.log") for i in range(workers)]
    first_at = None
    try:
        deadline = time.monotonic() + 900
        while True:
            done = await applied(redis)
            if done and first_at is None:
                first_at, first_count = time.perf_counter(), done
            if done >= n:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers stopped or too slow: {done}/{n} applied; see {tmp}")
            await asyncio.sleep(0.05)
        assert first_at is not None
        elapsed = time.perf_counter() - first_at
        return (n - first_count) / elapsed if elapsed > 0 else float("inf")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait(60)
        await redis.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--two-workers", action="store_true", help="also measure two workers in one group")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aia-bench-") as d:
        tmp = Path(os.environ.get("AIA_BENCH_DIR", d))
        kafka = KafkaBroker(tmp / "kafka", port=free_port(), controller_port=free_port(), partitions=args.partitions)
        redis_server = RedisServer(tmp / "redis", port=free_port(), appendonly=True)
        kafka.start()
        redis_server.start()
        try:
            base = Settings(
                kafka_bootstrap=kafka.bootstrap,
                redis_url=redis_server.url,
                topic_partitions=args.partitions,
                data_dir=tmp / "workers",
                batch_size=args.batch_size,
            )
            await ensure_topics(base)
            avg = await produce(base, args.events)
            ceil = await ceiling(base, args.events)
            print(f"ceiling  raw aiokafka getmany+orjson: {ceil:,.0f} events/s", flush=True)
            one = await ours(replace(base, app_id=f"bench-{uuid.uuid4().hex[:6]}"), args.events, 1, tmp)
            print(f"ours     one worker, first to last applied: {one:,.0f} events/s ({one / ceil:.2f} of ceiling)")
            if args.two_workers:
                two = await ours(replace(base, app_id=f"bench-{uuid.uuid4().hex[:6]}"), args.events, 2, tmp)
                print(f"ours     two workers: {two:,.0f} events/s ({two / one:.2f}x one worker)")
            print(
                f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
                f"{args.events} events of ~{avg:.0f} bytes, {args.partitions} partitions, batch {args.batch_size}"
            )
        finally:
            kafka.stop()
            redis_server.stop()


if __name__ == "__main__":
    asyncio.run(main())
