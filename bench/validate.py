"""Validation alone: µs per event of `streams.schemas.parse` (the compiled path) and of the reference
checks (`parse_checked`) on the benchmark's chat messages and on demo traffic of all four topics.

    python -m bench.validate [--events 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import orjson

from bench.throughput import event
from streams.demo import DemoConfig, DemoTraffic
from streams.producer import key_for
from streams.schemas import Limits, parse, parse_checked

LIMITS = Limits(retention_ms=None, max_future_ms=300_000)


def timed(fn: Callable[..., object], records: list[tuple[str, bytes | None, bytes]], now_ms: int) -> float:
    """Best of three passes, µs per record."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for topic, key, raw in records:
            with contextlib.suppress(Exception):  # a dead letter costs what it costs
                fn(topic, key, raw, now_ms, LIMITS)
        best = min(best, time.perf_counter() - t0)
    return best / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    n = parser.parse_args().events
    now_ms = int(time.time() * 1000)
    chats: list[tuple[str, bytes | None, bytes]] = [("chat-messages", *event(i, now_ms)) for i in range(n)]
    demo: list[tuple[str, bytes | None, bytes]] = []
    for topic, value in DemoTraffic(DemoConfig(seed=1)).sessions():
        demo.append((topic, key_for(topic, value), orjson.dumps(value)))
        if len(demo) == n:
            break
    for name, records in (("benchmark chat messages", chats), ("demo traffic, all four topics", demo)):
        fast, reference = timed(parse, records, now_ms), timed(parse_checked, records, now_ms)
        print(f"{name}: parse {fast:.2f} µs/event, reference checks {reference:.2f} µs/event ({reference / fast:.1f}x)")


if __name__ == "__main__":
    main()
