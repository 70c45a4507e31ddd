"""The producer client for the platform's services: send contract events to the right topic with the right key.

    async with AnalyticsProducer.connect("127.0.0.1:9092") as producer:
        await producer.chat_message(org="acme", session_id="s1", student="ann", mentor_id="m1", role="human")

Every event gets an `event_id` (uuid4) and a `timestamp` (now, UTC) unless given. Sends are idempotent
on the broker (enable_idempotence) and acknowledged by all in-sync replicas.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from streams.schemas import format_timestamp
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT

KEY_FIELD = {CHAT_MESSAGES: "session_id", SENTIMENT: "session_id", LLM_OBSERVATIONS: "trace_id", CHAT_HISTORY: "id"}


def complete(event: dict[str, Any]) -> dict[str, Any]:
    """Fill in `event_id` and `timestamp` when absent."""
    out = dict(event)
    out.setdefault("event_id", uuid.uuid4().hex)
    out.setdefault("timestamp", format_timestamp(datetime.now(UTC)))
    return out


def key_for(topic: str, event: dict[str, Any]) -> bytes | None:
    value = event.get(KEY_FIELD[topic])
    return value.encode() if isinstance(value, str) else None


class AnalyticsProducer:
    def __init__(self, producer: AIOKafkaProducer, topic_prefix: str = "") -> None:
        self._producer = producer
        self._prefix = topic_prefix

    @classmethod
    def connect(cls, bootstrap: str, *, topic_prefix: str = "", linger_ms: int = 5) -> AnalyticsProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            compression_type=None,
        )
        return cls(producer, topic_prefix)

    async def __aenter__(self) -> AnalyticsProducer:
        await self._producer.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._producer.stop()

    async def send(self, topic: str, event: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        """Send one event (completed with id and timestamp) to a contract topic; returns what was sent."""
        if topic not in KEY_FIELD:
            raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(KEY_FIELD)}")
        event = complete(event)
        fut = await self._producer.send(self._prefix + topic, orjson.dumps(event), key=key_for(topic, event))
        if wait:
            await fut
        return event

    async def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are (tools and tests that need malformed events)."""
        await (await self._producer.send(self._prefix + topic, value, key=key))

    async def flush(self) -> None:
        await self._producer.flush()

    async def chat_message(self, **fields: Any) -> dict[str, Any]:
        return await self.send(CHAT_MESSAGES, fields)

    async def sentiment(self, **fields: Any) -> dict[str, Any]:
        return await self.send(SENTIMENT, fields)

    async def observation(self, **fields: Any) -> dict[str, Any]:
        return await self.send(LLM_OBSERVATIONS, fields)

    async def conversation(self, **fields: Any) -> dict[str, Any]:
        return await self.send(CHAT_HISTORY, fields)
