"""Records of the input topics, and what the dead-letter topic holds for one that cannot be processed."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import orjson


@dataclass(slots=True)  # not frozen: built per event, and a frozen __init__ costs 5x
class Record:
    """A Kafka record of an input topic (named without prefix)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    reason: str

    def key(self) -> bytes:
        # Unique per source record, so a consumer can drop the copies a replay sends again.
        return f"{self.record.topic}:{self.record.partition}:{self.record.offset}".encode()

    def value(self, now_ms: int) -> bytes:
        raw = self.record.value
        text: str | None
        try:
            text = None if raw is None else raw.decode()
        except UnicodeDecodeError:
            text = None
        return orjson.dumps(
            {
                "topic": self.record.topic,
                "partition": self.record.partition,
                "offset": self.record.offset,
                "key": None if self.record.key is None else base64.b64encode(self.record.key).decode(),
                "raw": None if raw is None else base64.b64encode(raw).decode(),
                "raw_text": text,
                "reason": self.reason,
                "dead_at_ms": now_ms,
            }
        )
