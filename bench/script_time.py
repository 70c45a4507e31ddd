"""How long each apply script holds Redis, and what the long ones wrote.

    python -m bench.script_time --events 300000 --traffic backfill [--no-publish] [--slow-ms 5]

Starts its own Redis (as bench/pipeline.py) and applies the traffic model's events through the batch
pipeline with the settings of the environment (`AIA_APPLY_SCRIPT_OPS` and the like), publishing the
changefeed's marks after each batch as a worker does (to nowhere; `--no-publish`: left to grow, as
bench/pipeline.py and bench/memory.py leave them). Twice, on an emptied Redis each time:

1. as a worker would: events/s, Redis's slow log at `--slow-ms` (`CONFIG SET slowlog-log-slower-than`,
   `SLOWLOG GET`: its commands of 5 and 10 ms and more, the apply scripts among them), INFO commandstats'
   `cmdstat_evalsha`, and a reader's PING every 10 ms meanwhile;
2. every apply script timed: the slow log keeps every command of `--log-us` (100 µs) or more and is read
   after each `Writer.apply`; its EVALSHAs of the apply script (`tables.writer.APPLY_LUA`) are matched to
   the `OrgWrite`s sent by their org (one per org in a call). Prints the distribution of the scripts'
   times and the longest ones with what their write held: `operations()`, counters, sorted-set members,
   conversations and their bytes, changefeed marks, payload bytes. (A script under `--log-us` counts as 0.)

Numbers only; a script's time in the slow log is wall time, so on a busy machine it includes the time
redis-server was descheduled (`--fifo` runs it under SCHED_FIFO, as if it had a core of its own: what is left
is Redis's own work).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agents.pipeline import Batch, BatchProcessor
from bench.pipeline import ping_meanwhile
from bench.throughput import TRAFFICS, cpu_s, messages, pct, records
from infra.procs import free_port
from infra.redis import RedisServer
from streams.deadletter import Record
from streams.settings import Settings
from tables import connections
from tables.writer import APPLY_LUA, OrgWrite

APPLY_SHA = APPLY_LUA.sha.encode()


@dataclass
class Held:
    """What one apply script's write held."""

    org: str
    events: int
    ops: int  # OrgWrite.operations()
    hincrs: int
    zincrs: int  # sorted-set members incremented
    zsets: int  # sorted sets incremented
    zadds: int
    zmins: int  # members of ZADD LT
    seen: int  # observation entries checked and written
    convs: int
    conv_bytes: int  # the conversations' new values, in all
    conv_max: int  # the largest of them
    sets: int  # HSETs
    sadds: int  # set members added and removed
    expires: int
    marks: int  # changefeed marks written
    payload: int  # bytes of every ARGV
    json: int  # bytes of ARGV[1], the JSON the script decodes
    keys: int

    @classmethod
    def of(cls, w: OrgWrite, payload: Sequence[bytes]) -> Held:
        values = [len(v) for _, v in w.convs.values()]
        return cls(
            org=w.org,
            events=len(w.items),
            ops=w.operations(),
            hincrs=len(w.hincrs),
            zincrs=sum(len(m) for m in w.zincrs.values()),
            zsets=len(w.zincrs),
            zadds=len(w.zadds),
            zmins=sum(len(m) for m in w.zmins.values()),
            seen=sum(len(ids) for ids in w.seen.values()),
            convs=len(w.convs),
            conv_bytes=sum(values),
            conv_max=max(values, default=0),
            sets=len(w.sets),
            sadds=sum(len(m) for m in w.sadds.values()) + sum(len(m) for m in w.srems.values()),
            expires=len(w.expires),
            marks=len(w.marks()) if w.publish else 0,
            payload=sum(len(a) for a in payload),
            json=len(payload[0]),
            keys=len(w.keys),
        )


COLUMNS = [
    "events", "ops", "hincrs", "zincrs", "zsets", "zadds", "zmins", "seen", "convs", "conv_bytes", "conv_max",
    "sets", "sadds", "expires", "marks", "payload", "json", "keys",
]  # fmt: skip


def processor(settings: Settings, redis: Any, publish: bool) -> BatchProcessor:
    async def nowhere(_: list[Any]) -> None:
        pass  # dead letters (the traffic's late upserts) and the changefeed's records

    return BatchProcessor(settings, redis, nowhere, nowhere if publish else None)


async def apply_all(proc: BatchProcessor, recs: list[Record], batch: int, publish: bool) -> float:
    """Apply the records in batches as a worker does (then publish each batch's marks): the seconds taken."""
    started = time.perf_counter()
    for i in range(0, len(recs), batch):
        result = await proc.process(Batch.of(recs[i : i + batch]))
        if publish:
            await proc.publish(result.orgs)
    return time.perf_counter() - started


async def as_a_worker(
    settings: Settings, recs: list[Record], batch: int, publish: bool, slow_ms: float, redis_pid: int
) -> None:
    """Pass 1: events/s (and per CPU-second of this process and redis-server: steadier than events/s on a
    shared machine), the slow log at `slow_ms`, commandstats, a reader's PING meanwhile."""
    redis = connections.connect(settings.redis_url)
    await redis.flushall()
    await redis.config_set("slowlog-log-slower-than", int(slow_ms * 1000))
    await redis.config_set("slowlog-max-len", 10_000)
    await redis.slowlog_reset()
    await redis.config_resetstat()
    pings: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.create_task(ping_meanwhile(settings.redis_url, pings, stop))
    cpu0, redis0 = time.process_time(), cpu_s(redis_pid)
    try:
        elapsed = await apply_all(processor(settings, redis, publish), recs, batch, publish)
        cpu, cpu_redis = time.process_time() - cpu0, cpu_s(redis_pid) - redis0
    finally:
        stop.set()
        await pinger
    slow = sorted(await redis.slowlog_get(10_000), key=lambda e: -int(e["duration"]))
    evalsha = (await redis.info("commandstats")).get("cmdstat_evalsha", {})
    await redis.aclose()
    scripts = [int(e["duration"]) for e in slow if _args(e)[:2] == [b"EVALSHA", APPLY_SHA]]
    print(f"  1. as a worker: {len(recs) / elapsed:,.0f} events/s; {len(recs) / (cpu + cpu_redis):,.0f} per CPU-second "
          f"(CPU in cores: pipeline {cpu / elapsed:.2f}, redis-server {cpu_redis / elapsed:.2f})")  # fmt: skip
    print(f"     slow log at {slow_ms:g} ms: {len(slow)} commands ({len(scripts)} apply scripts), "
          f"{sum(int(e['duration']) >= 10_000 for e in slow)} of 10 ms or more "
          f"({sum(t >= 10_000 for t in scripts)} apply scripts); longest: "
          + (f"{int(slow[0]['duration']) / 1000:.1f} ms {_args(slow[0])[0].decode()}"
             f"{' (apply)' if _args(slow[0])[:2] == [b'EVALSHA', APPLY_SHA] else ''}" if slow else "none"))  # fmt: skip
    if evalsha:
        print(f"     cmdstat_evalsha (every script: applies, state reads, changefeed): {int(evalsha['calls']):,} "
              f"calls, {float(evalsha['usec_per_call']):,.1f} µs per call")  # fmt: skip
    print("     a reader's PING every 10 ms meanwhile: p50 / p99 / p99.9 / max "
          + " / ".join(f"{pct(pings, q):.2f}" for q in (50, 99, 99.9, 100)) + " ms")  # fmt: skip


async def each_script(
    settings: Settings, recs: list[Record], batch: int, publish: bool, slow_ms: float, log_us: int, show: int
) -> None:
    """Pass 2: every apply script's time in Redis, with what its write held."""
    redis = connections.connect(settings.redis_url)
    await redis.flushall()
    await redis.config_set("slowlog-log-slower-than", log_us)  # the commands scripts run are logged too
    await redis.config_set("slowlog-max-len", 100_000)
    await redis.slowlog_reset()
    proc = processor(settings, redis, publish)
    original = proc.writer.apply
    timed: list[tuple[int, Held]] = []  # (µs in Redis, the write)

    async def apply(writes: list[OrgWrite]) -> dict[str, str]:
        held = {w.org: Held.of(w, w.payload()) for w in writes}  # what Writer.apply sends
        conflicts = await original(writes)
        log = await redis.slowlog_get(100_000)
        await redis.slowlog_reset()
        for e in log:
            if _args(e)[:2] == [b"EVALSHA", APPLY_SHA]:
                timed.append((int(e["duration"]), held.pop(_org(_args(e)[3].decode()))))
        timed.extend((0, h) for h in held.values())  # under the slow log's threshold
        return conflicts

    proc.writer.apply = apply  # type: ignore[method-assign]
    await apply_all(proc, recs, batch, publish)
    await redis.aclose()

    us = [float(t) for t, _ in timed]
    ops = [float(h.ops) for _, h in timed]
    print(f"  2. each apply script ({len(us):,}; the slow log read after each Writer.apply):")
    print("     ms: " + ", ".join(f"{name} {pct(us, q) / 1000:.2f}" for name, q in
                                  (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100)))
          + f"; mean {sum(us) / len(us) / 1000:.2f}; over {slow_ms:g} ms: {sum(t >= slow_ms * 1000 for t in us)}, "
          f"over 10 ms: {sum(t >= 10_000 for t in us)}")  # fmt: skip
    print(f"     operations(): p50 {pct(ops, 50):.0f}, p99 {pct(ops, 99):.0f}, max {max(ops):.0f}; "
          f"{sum(us) / max(1, sum(ops)):.2f} µs per operation")  # fmt: skip
    print(f"     the {show} longest (ms, then what their write held):")
    print("       " + " ".join(f"{c[:8]:>8}" for c in ["ms", *COLUMNS]) + "  org")
    for t, h in sorted(timed, key=lambda x: -x[0])[:show]:
        row = [f"{t / 1000:.2f}", *(getattr(h, c) for c in COLUMNS)]
        print("       " + " ".join(f"{v:>8}" for v in row) + f"  {h.org}")
    print("     the 3 largest by operations(): "
          + "; ".join(f"{h.ops} in {t / 1000:.2f} ms" for t, h in sorted(timed, key=lambda x: -x[1].ops)[:3]))  # fmt: skip


def _org(offsets_key: str) -> str:
    """The org of its offsets hash (`keys.offsets`: `aia:...{org}...`)."""
    return offsets_key[offsets_key.index("{") + 1 : offsets_key.rindex("}")]


def _args(entry: dict[str, Any]) -> list[bytes]:
    """A slow log entry's arguments (the name upper-cased; split at spaces, so only the first few, the name,
    a SHA, a key count and a first key, are to be trusted)."""
    command = entry["command"]
    args = (command if isinstance(command, bytes) else str(command).encode()).split(b" ")
    return [args[0].upper(), *args[1:]]


async def run(args: argparse.Namespace, redis_url: str, redis_pid: int) -> None:
    settings = replace(Settings.from_env(), redis_url=redis_url)
    recs = list(records(messages(args.traffic, args.events), 6))
    publish = not args.no_publish
    print(f"{args.traffic} traffic, {args.events:,} events, batches of {args.batch_size:,}; AIA_APPLY_SCRIPT_OPS "
          f"{settings.apply_script_ops}, AIA_APPLY_CHUNK {settings.apply_chunk}; the changefeed "
          f"{'published after each batch' if publish else 'not published'}"
          f"{'; redis-server under SCHED_FIFO' if args.fifo else ''}")  # fmt: skip
    await as_a_worker(settings, recs, args.batch_size, publish, args.slow_ms, redis_pid)
    await each_script(settings, recs, args.batch_size, publish, args.slow_ms, args.log_us, args.show)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--traffic", choices=TRAFFICS, default="backfill")
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--no-publish", action="store_true", help="leave the changefeed's marks in Redis")
    parser.add_argument("--slow-ms", type=float, default=5.0, help="the slow log's threshold in pass 1")
    parser.add_argument("--log-us", type=int, default=100, help="the slow log's threshold in pass 2 (µs)")
    parser.add_argument("--show", type=int, default=10, help="how many of the longest scripts to print")
    parser.add_argument("--fifo", action="store_true", help="redis-server under SCHED_FIFO (`chrt`; needs root)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d), port=free_port(), appendonly=True)
        server.start()
        assert server.proc is not None
        if args.fifo:
            subprocess.run(["chrt", "--fifo", "--pid", "10", str(server.proc.pid)], check=True)
        try:
            asyncio.run(run(args, server.url, server.proc.pid))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
