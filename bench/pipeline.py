"""The batch pipeline alone (validation, planning, one Lua apply per org), without Faust or Kafka.

    python -m bench.pipeline --events 100000 [--profile]

Starts its own Redis; feeds BatchProcessor batches of records as a worker would; prints events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from agents.pipeline import Batch, BatchProcessor
from bench.throughput import event
from infra.procs import free_port
from infra.redis import RedisServer
from streams.deadletter import Record
from streams.settings import Settings
from tables import connections


async def run(n: int, batch: int, partitions: int, redis_url: str) -> float:
    settings = replace(Settings.from_env(), redis_url=redis_url)  # AIA_APPLY_CHUNK and the like apply
    redis = connections.connect(redis_url)
    await redis.flushall()

    async def no_dead(_: list[object]) -> None:
        raise AssertionError("no dead letters expected")

    proc = BatchProcessor(settings, redis, no_dead)  # type: ignore[arg-type]
    now_ms = int(time.time() * 1000)
    offsets = [0] * partitions
    records = []
    for i in range(n):
        key, value = event(i, now_ms)
        p = hash(key) % partitions
        records.append(Record("chat-messages", p, offsets[p], key, value))
        offsets[p] += 1
    started = time.perf_counter()
    for i in range(0, n, batch):
        await proc.process(Batch.of(records[i : i + batch]))
    elapsed = time.perf_counter() - started
    await redis.aclose()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d), port=free_port(), appendonly=True)
        server.start()
        try:
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            rate = asyncio.run(run(args.events, args.batch_size, 6, server.url))
            if args.profile:
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
            print(f"pipeline alone: {rate:,.0f} events/s ({args.events} events, batches of {args.batch_size})")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
