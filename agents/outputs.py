"""What a worker writes to Kafka besides the aggregates in Redis: dead letters and the aggregates changefeed.

Both engines use it; each send is awaited before the batch's offsets can be committed, so no bad event
and no published value is lost with a crash.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer

from streams.deadletter import DeadLetter
from streams.settings import Settings
from streams.topics import AGGREGATES, DEAD_LETTER

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
