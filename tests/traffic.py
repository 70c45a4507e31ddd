"""Demo traffic for the integration tests: a fixed list of events, and sending it at a steady pace."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from streams.demo import DemoConfig, DemoTraffic
from streams.producer import AnalyticsProducer
from streams.settings import Settings


def demo_events(n: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    traffic = DemoTraffic(DemoConfig(seed=seed, late_share=0.1, resend_share=0.02))
    now = datetime.now(UTC)
    out: list[tuple[str, dict[str, Any]]] = []
    while len(out) < n:
        out.extend(traffic.session(now))
    return out


async def produce(settings: Settings, events: list[tuple[str, dict[str, Any]]], seconds: float) -> None:
    """Send the events spread over about `seconds`, in order."""
    chunks = max(1, int(seconds * 10))
    size = -(-len(events) // chunks)
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for i in range(0, len(events), size):
            for topic, e in events[i : i + size]:
                await producer.send(topic, e, wait=False)
            await producer.flush()
            await asyncio.sleep(0.1)
