"""The batch pipeline alone (validation, planning, the Lua applies per org), without Faust or Kafka.

    python -m bench.pipeline --events 200000 --traffic backfill [--profile]

Starts its own Redis; feeds BatchProcessor batches of records as a worker would (`--traffic`: the platform
traffic model's `live` or `backfill` mode, or the earlier `chat` messages; bench/throughput.py); prints
events/s, the CPU the benchmark and redis-server used, Redis's memory per million events, and what Redis's
own statistics say of the commands it ran (calls and time per event, the longest command of its slow log):
the quick loop for planning and Redis work.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from agents.pipeline import Batch, BatchProcessor
from bench.throughput import TRAFFICS, cpu_s, messages, pct, records, slowlog_longest, slowlog_start
from infra.procs import free_port
from infra.redis import RedisServer
from streams.settings import Settings
from tables import connections


@dataclass
class Result:
    rate: float  # events/s
    cpu_self: float  # cores, this process
    cpu_redis: float  # cores, redis-server
    mib_per_m: float  # Redis used_memory per million events
    commands: list[tuple[str, int, float]]  # (command, calls, total µs), most time first
    slowest_us: int  # the longest command of the slow log (µs)
    slowest: list[str]  # the five longest commands of the slow log, (µs) and their first arguments
    ping_ms: tuple[float, float, float, float]  # a reader's PING meanwhile, every 10 ms: p50, p99, p99.9, max


async def run(traffic: str, n: int, batch: int, partitions: int, redis_url: str, redis_pid: int) -> Result:
    settings = replace(Settings.from_env(), redis_url=redis_url)  # AIA_APPLY_CHUNK and the like apply
    redis = connections.connect(redis_url)
    await redis.flushall()
    await slowlog_start(redis)
    await redis.config_resetstat()
    base = int((await redis.info("memory"))["used_memory"])

    dead: list[object] = []

    async def to_dead(d: list[object]) -> None:
        dead.extend(d)

    proc = BatchProcessor(settings, redis, to_dead)  # type: ignore[arg-type]
    recs = list(records(messages(traffic, n), partitions))
    pings: list[float] = []
    stop = asyncio.Event()
    cpu0, redis0 = time.process_time(), cpu_s(redis_pid)
    started = time.perf_counter()
    pinger = asyncio.create_task(ping_meanwhile(redis_url, pings, stop))
    for i in range(0, n, batch):
        await proc.process(Batch.of(recs[i : i + batch]))
    elapsed = time.perf_counter() - started
    stop.set()
    await pinger
    cpu_self, cpu_redis = (time.process_time() - cpu0) / elapsed, (cpu_s(redis_pid) - redis0) / elapsed
    used = int((await redis.info("memory"))["used_memory"]) - base
    stats = await redis.info("commandstats")
    commands = sorted(
        ((k.removeprefix("cmdstat_"), int(v["calls"]), float(v["usec"])) for k, v in stats.items()),
        key=lambda c: -c[2],
    )
    slow = await slowlog_longest(redis, 5)
    await redis.aclose()
    if dead:
        print(f"({len(dead)} dead letters)")
    return Result(n / elapsed, cpu_self, cpu_redis, used / 2**20 / (n / 1e6), commands,
                  slow[0][0] if slow else 0, [f"{us} µs: {command}" for us, command in slow],
                  (pct(pings, 50), pct(pings, 99), pct(pings, 99.9), max(pings, default=0.0)))  # fmt: skip


async def ping_meanwhile(redis_url: str, out: list[float], stop: asyncio.Event) -> None:
    """A reader in a process of its own (the pipeline's Python cannot delay it): PING every 10 ms until
    `stop`; its latencies (ms) into `out`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PINGER, redis_url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    await stop.wait()
    stdout, _ = await proc.communicate(b"stop\n")
    out.extend(float(x) for x in stdout.split())


_PINGER = """
import sys, threading, time, redis
client, out, done = redis.Redis.from_url(sys.argv[1]), [], threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
while not done.is_set():
    t0 = time.perf_counter()
    client.ping()
    out.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.01)
print(" ".join(f"{x:.3f}" for x in out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--traffic", choices=TRAFFICS, default="backfill")
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d), port=free_port(), appendonly=True)
        server.start()
        assert server.proc is not None
        try:
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
            r = asyncio.run(run(args.traffic, args.events, args.batch_size, 6, server.url, server.proc.pid))
            if args.profile:
                prof.disable()
                pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
                pstats.Stats(prof).sort_stats("tottime").print_stats(30)
            n = args.events
            print(f"pipeline alone, {args.traffic} traffic, {n:,} events, batches of {args.batch_size:,}:")
            print(f"  {r.rate:,.0f} events/s; CPU in cores: pipeline {r.cpu_self:.2f}, redis-server {r.cpu_redis:.2f}")
            print(f"  Redis used_memory {r.mib_per_m:,.1f} MiB per million events")
            print(f"  longest command (slow log): {r.slowest_us / 1000:,.1f} ms")
            print(
                "  a reader's PING meanwhile: p50 / p99 / p99.9 / max "
                + " / ".join(f"{x:.2f}" for x in r.ping_ms)
                + " ms"
            )
            for line in r.slowest:
                print(f"    {line}")
            for name, calls, usec in r.commands[:8]:
                print(
                    f"  {name:14} {calls / n:8.3f} calls/event  {usec / n:7.2f} µs/event  {usec / calls:9.1f} µs/call"
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
