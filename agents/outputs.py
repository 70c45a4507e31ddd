"""What a worker writes to Kafka besides the aggregates in Redis: dead letters and the aggregates changefeed.

Both engines use it. Dead letters are awaited before the batch's offsets can be committed, so no bad event
is lost with a crash; the changefeed is sent from marks the applies leave in Redis (tables/changefeed.py),
so no change is lost with a crash either, whenever it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streams.deadletter import DeadLetter
from streams.settings import Settings
from streams.topics import AGGREGATES, DEAD_LETTER

if TYPE_CHECKING:
    from agents.pipeline import BatchProcessor

log = logging.getLogger(__name__)


class Outputs:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer

    async def dead_letters(self, dead: list[DeadLetter]) -> None:
        now_ms = int(time.time() * 1000)
        topic = self.settings.topic(DEAD_LETTER)
        futures = [await self.producer.send(topic, key=d.key(), value=d.value(now_ms)) for d in dead]
        await asyncio.gather(*futures)
        for d in dead:
            log.warning("dead letter %s[%d]@%d: %s", d.record.topic, d.record.partition, d.record.offset, d.reason)

    async def aggregates(self, records: list[tuple[bytes, bytes]]) -> None:
        topic = self.settings.topic(AGGREGATES)
        futures = [await self.producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)


async def sweep_changefeed(processor: BatchProcessor, stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Every second, publish every org's counters that were marked and not published: those a worker that
    died after its apply left, and those whose publication lock was held when their batch ended
    (tables/changefeed.py). So once the workers have caught up, the changefeed holds what Redis holds."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        try:
            await processor.publish_all()
        except (RedisError, KafkaError, OSError) as exc:
            log.warning("publishing marked counters failed, retrying: %r", exc)
