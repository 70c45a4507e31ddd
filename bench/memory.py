"""What Redis holds per million events applied, and what each kind of key costs.

    python -m bench.memory --events 200000 [--traffic backfill]

Starts its own Redis, applies the throughput benchmark's events (bench/throughput.py: the platform traffic
model's `backfill` or `live` mode, or the earlier `chat` messages) through the batch pipeline, then sums `MEMORY USAGE` of every key by kind (the part of its name after the org) and
prints MiB per million events for each kind and for `used_memory` as a whole. bench/run.py reports the
same breakdown after its one-worker run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from redis.asyncio import Redis

from agents.pipeline import Batch, BatchProcessor
from bench.throughput import TRAFFICS, messages, records
from infra.procs import free_port
from infra.redis import RedisServer
from streams.settings import Settings
from tables import connections, keys

_DIGITS = re.compile(r"\d+")


def kind_of(key: str) -> str:
    """A key's kind: its name with the org and every number taken out (`aia:{org}:d:20261122` -> `d`)."""
    if key.startswith(f"{keys.NS}:cf:{{"):
        return "cf (changefeed marks not yet published)" + key[key.index("}") + 1 :]
    rest = key[key.index("}") + 1 :].lstrip(":") if "}" in key else key.split(":", 1)[-1]
    if rest.startswith("cx:"):  # a chat-history filter index: `cx:<field>:<value>:<bucket>`
        return f"cx:{rest.split(':')[1]}:*"
    if rest.startswith("starts:"):  # a student's session starts: `starts:<student>`
        return "starts:*"
    kind = _DIGITS.sub("#", rest.split("|", 1)[0])
    return kind or "(org root)"


async def breakdown(redis: Redis) -> tuple[int, dict[str, tuple[int, int]]]:
    """(used_memory in bytes, kind -> (keys, bytes by MEMORY USAGE))."""
    sizes: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    batch: list[str] = []

    async def flush() -> None:
        async with redis.pipeline(transaction=False) as pipe:
            for k in batch:
                pipe.memory_usage(k, samples=0)
            for k, n in zip(batch, await pipe.execute(), strict=True):
                entry = sizes[kind_of(k)]
                entry[0] += 1
                entry[1] += int(n or 0)
        batch.clear()

    async for raw in redis.scan_iter(count=1000):
        batch.append(raw.decode())
        if len(batch) >= 1000:
            await flush()
    if batch:
        await flush()
    info = await redis.info("memory")
    return int(info["used_memory"]), {k: (v[0], v[1]) for k, v in sizes.items()}


def describe(used: int, kinds: dict[str, tuple[int, int]], events: int, baseline: int = 0) -> list[str]:
    """Lines of `kind: keys, MiB per million events`, largest first, then the whole."""
    per_m = 1_000_000 / events / 2**20
    lines = [
        f"{kind:28} {n:>9,} keys  {size * per_m:8.1f} MiB per million events"
        for kind, (n, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1])
    ]
    lines.append(f"{'used_memory (all)':28} {'':>14}  {(used - baseline) * per_m:8.1f} MiB per million events")
    return lines


async def load(redis_url: str, traffic: str, n: int, batch: int) -> None:
    settings = replace(Settings.from_env(), redis_url=redis_url)
    redis = connections.connect(redis_url)

    async def no_dead(_: list[object]) -> None:
        pass  # late upserts past the window and the like: what the traffic model sends

    proc = BatchProcessor(settings, redis, no_dead)  # type: ignore[arg-type]
    recs = list(records(messages(traffic, n), partitions=6))
    for i in range(0, n, batch):
        await proc.process(Batch.of(recs[i : i + batch]))
    await redis.aclose()


async def run(traffic: str, n: int, batch: int, redis_url: str) -> None:
    redis = connections.connect(redis_url)
    await redis.flushall()
    baseline = int((await redis.info("memory"))["used_memory"])
    await load(redis_url, traffic, n, batch)
    used, kinds = await breakdown(redis)
    await redis.aclose()
    print("\n".join(describe(used, kinds, n, baseline)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--traffic", choices=TRAFFICS, default="backfill")
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d), port=free_port(), appendonly=False)
        server.start()
        try:
            asyncio.run(run(args.traffic, args.events, args.batch_size, server.url))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
