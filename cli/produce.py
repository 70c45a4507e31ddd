"""`ai-analytics produce`: send events from a JSON-lines file (or stdin), or seeded demo traffic.

A JSON-lines input line is either an event with a `"topic"` field naming its topic, or an event of the
topic given by `--topic`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import orjson

from streams.producer import AnalyticsProducer
from streams.settings import Settings
from streams.topics import INPUT_TOPICS
from streams.traffic import PlatformTraffic, TrafficConfig


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    produce = sub.add_parser("produce", help="send events: from a JSON-lines file or stdin, or demo traffic")
    kinds = produce.add_subparsers(dest="source", required=True)
    f = kinds.add_parser("file", help="send each line of a JSON-lines file ('-' for stdin)")
    f.add_argument("path", help="path of the file, or - for stdin")
    f.add_argument("--topic", choices=INPUT_TOPICS, help='topic of lines that carry no "topic" field')
    d = kinds.add_parser("demo", help="seeded traffic shaped like a tutoring platform's (docs/TRAFFIC.md)")
    d.add_argument("--rate", type=float, default=50.0, help="events per second (0: as fast as possible)")
    d.add_argument("--count", type=int, default=0, help="stop after this many events (0: run until stopped)")
    d.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.source == "file":
            if args.path == "-":
                return asyncio.run(_send_lines(sys.stdin, args.topic, settings))
            with open(args.path) as fh:
                return asyncio.run(_send_lines(fh, args.topic, settings))
        return asyncio.run(_send_demo(settings, rate=args.rate, count=args.count, seed=args.seed))
    except KeyboardInterrupt:
        return 130


def _lines(fh: TextIO, default_topic: str | None) -> Iterator[tuple[int, str, dict[str, Any]]]:
    for n, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SystemExit(f"line {n}: not JSON: {exc}") from None
        if not isinstance(event, dict):
            raise SystemExit(f"line {n}: an event must be a JSON object")
        topic = event.pop("topic", default_topic)
        if topic not in INPUT_TOPICS:
            raise SystemExit(f"line {n}: topic {topic!r} is not one of {', '.join(INPUT_TOPICS)} (or use --topic)")
        yield n, topic, event


async def _send_lines(fh: TextIO, topic: str | None, settings: Settings) -> int:
    sent = 0
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for _, t, event in _lines(fh, topic):
            await producer.send(t, event, wait=False)
            sent += 1
        await producer.flush()
    print(f"sent {sent} events", file=sys.stderr)
    return 0


async def _send_demo(settings: Settings, *, rate: float, count: int, seed: int) -> int:
    """The traffic model's live sessions (streams/traffic.py, docs/TRAFFIC.md): what a platform sends."""
    traffic = PlatformTraffic(TrafficConfig(seed=seed))
    sent = 0
    started = time.monotonic()
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for topic, event in traffic.live():
            await producer.send(topic, event, wait=False)
            sent += 1
            if count and sent >= count:
                break
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await producer.flush()
                    await asyncio.sleep(ahead)
            if sent % 1000 == 0:
                print(f"sent {sent} events", file=sys.stderr, flush=True)
        await producer.flush()
    print(f"sent {sent} events", file=sys.stderr)
    return 0
