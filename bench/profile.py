"""Where one worker's time goes: py-spy on a real worker applying the throughput benchmark's events.

    python -m bench.profile --events 300000 [--traffic backfill|live|chat] [--engine kafka|faust] [--out /tmp/worker.txt]

Starts its own Kafka and Redis, produces the events (bench/throughput.py), then runs one worker under
`py-spy record` (250 samples a second) until every event is applied, and prints the functions with the
largest share of the samples, by their own time and with what they call. The raw samples stay in `--out`
for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from bench.throughput import TRAFFICS, consumed, produce_messages, stream
from infra.kafka import KafkaBroker
from infra.procs import free_port, spawn, worker_command
from infra.redis import RedisServer
from streams.clients import ensure_topics
from streams.settings import ENGINES, Settings
from tables import connections


def summarize(raw: Path, top: int) -> list[str]:
    """The functions with the most samples: own time, then including what they call."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [_name(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    out = [f"{total:,} samples; own time:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    out.append("including what they call:")
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return out


def _name(frame: str) -> str:
    """`function (path/module.py:line)` -> `function module.py`."""
    name, _, where = frame.partition(" (")
    return f"{name} {where.rsplit('/', 1)[-1].split(':', 1)[0]}".strip()


async def run(args: argparse.Namespace, tmp: Path) -> None:
    kafka = KafkaBroker(tmp / "kafka", port=free_port(), controller_port=free_port(), partitions=6)
    redis_server = RedisServer(tmp / "redis", port=free_port(), appendonly=True)
    kafka.start()
    redis_server.start()
    try:
        settings = replace(
            Settings(), kafka_bootstrap=kafka.bootstrap, redis_url=redis_server.url, engine=args.engine,
            alert_interval=0,
        )  # fmt: skip
        await ensure_topics(settings)
        counts, _ = await produce_messages(settings, stream(args.traffic, args.events))
        n = sum(counts.values())
        beside = Path(sys.executable).parent / "py-spy"
        py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
        assert py_spy, "py-spy is a dev dependency: pip install -e '.[dev]'"
        env = {**os.environ, **settings.as_env()}
        idle = ["--idle"] if args.idle else []
        cmd = [py_spy, "record", "-r", "250", *idle, "-f", "raw", "-o", str(args.out), "--", *worker_command("warn")]
        proc = spawn(cmd, log=tmp / "worker.log", env=env)
        redis = connections.connect(settings.redis_url)
        started = None
        try:
            while (done := await consumed(redis, settings.app_id)) < n:
                if done and started is None:
                    started = time.perf_counter()
                assert proc.poll() is None, (tmp / "worker.log").read_text()[-3000:]
                await asyncio.sleep(0.2)
            rate = n / (time.perf_counter() - (started or time.perf_counter()))
        finally:
            await redis.aclose()
            os.killpg(proc.pid, signal.SIGINT)  # py-spy writes its samples when its child ends
            proc.wait(60)
        print(f"{args.engine} engine: {rate:,.0f} events/s under the profiler")
        print("\n".join(summarize(args.out, args.top)))
    finally:
        kafka.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--engine", choices=ENGINES, default="kafka")
    parser.add_argument("--traffic", choices=TRAFFICS, default="backfill", help="bench/throughput.py's kinds")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--idle", action="store_true", help="sample waiting threads too: where the worker waits")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "aia-worker-profile.txt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aia-profile-") as d:
        asyncio.run(run(args, Path(d)))


if __name__ == "__main__":
    main()
