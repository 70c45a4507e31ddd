"""The API's Kafka side: a lazily started producer for chat-history writes, readiness, and consumer lag."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from api.errors import ApiError
from streams import clients
from streams.settings import Settings
from streams.topics import DEAD_LETTER, INPUT_TOPICS


class KafkaGateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._lag_cache: tuple[float, dict[str, int], int] | None = None

    async def _ensure(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                producer = clients.producer(
                    self.settings.kafka_bootstrap, client_id=f"{self.settings.app_id}-api", request_timeout_ms=5000
                )
                await asyncio.wait_for(producer.start(), 5.0)
                self._producer = producer
            return self._producer

    async def send(self, topic: str, value: bytes | None, key: bytes) -> None:
        try:
            producer = await self._ensure()
            await asyncio.wait_for(producer.send_and_wait(self.settings.topic(topic), value, key=key), 10.0)
        except Exception as exc:  # a broker away, a timeout, a refused send: nothing was stored
            raise ApiError(503, f"Kafka is unavailable, nothing was stored ({type(exc).__name__}); retry") from None

    async def check(self) -> str:
        try:
            producer = await self._ensure()
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
            return "ok"
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"

    async def lag(self) -> tuple[dict[str, int], int]:
        """(consumer lag per input topic, messages in the dead-letter topic), cached for 5 seconds."""
        now = time.monotonic()
        if self._lag_cache and now - self._lag_cache[0] < 5.0:
            return self._lag_cache[1], self._lag_cache[2]
        admin = clients.admin(self.settings.kafka_bootstrap, request_timeout_ms=3000)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, request_timeout_ms=3000)
        try:
            await asyncio.wait_for(admin.start(), 3.0)
            await asyncio.wait_for(consumer.start(), 3.0)
            committed = await admin.list_consumer_group_offsets(self.settings.app_id)
            names = [self.settings.topic(t) for t in (*INPUT_TOPICS, DEAD_LETTER)]
            tps = [TopicPartition(n, p) for n in names for p in (consumer.partitions_for_topic(n) or ())]
            ends = await consumer.end_offsets(tps) if tps else {}
            lag: dict[str, int] = {}
            for t in INPUT_TOPICS:
                name = self.settings.topic(t)
                total = 0
                for tp, end in ends.items():
                    if tp.topic == name:
                        meta = committed.get(tp)
                        total += end - (meta.offset if meta is not None and meta.offset >= 0 else 0)
                lag[t] = total
            dead = sum(end for tp, end in ends.items() if tp.topic == self.settings.topic(DEAD_LETTER))
        finally:
            await consumer.stop()
            await admin.close()
        self._lag_cache = (now, lag, dead)
        return lag, dead

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
