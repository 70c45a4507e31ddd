"""The Faust agents: one per input topic, each a short loop over batches handed to the BatchProcessor."""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
import weakref
from collections import OrderedDict
from typing import Any

import faust
from faust import streams as faust_streams
from redis.asyncio import Redis

from agents.pipeline import BatchProcessor, DeadLetter, Record
from agents.planner import Item
from streams.app import app, settings
from streams.names import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT
from streams.topics import (
    aggregates_topic,
    chat_history_topic,
    chat_messages_topic,
    dead_letter_topic,
    llm_observations_topic,
    sentiment_topic,
)

log = logging.getLogger(__name__)

# session key -> [first offset, start ms, mentor]; on RocksDB, changelog-backed, co-partitioned with
# chat-messages (keyed by session_id), so a session's messages always meet its state on one worker.
session_starts = app.Table(
    "session-starts",
    partitions=settings.topic_partitions,
    schema=faust.Schema(key_serializer="json", value_serializer="json"),
)


class FaustSessions:
    """The session table, read and written under the event that owns the key's partition.

    Reads go through a bounded in-memory cache that spares a RocksDB read per message. An entry changes
    only when a replay finds an earlier first message, which can happen on another worker while a
    partition is away, so the cache is dropped at every rebalance.
    """

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self.cache: OrderedDict[str, list[Any]] = OrderedDict()

    def _remember(self, key: str, value: list[Any]) -> None:
        self.cache[key] = value
        if len(self.cache) > self.size:
            self.cache.popitem(last=False)

    @staticmethod
    def _enter(item: Item) -> None:
        # RocksDB reads and changelog writes pick their partition from the "current event"; in a
        # batch that must be the event of this key, not the batch's last one.
        faust_streams._current_event.set(weakref.ref(item.source))

    def get(self, item: Item, key: str) -> list[Any] | None:
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self._enter(item)
        value: list[Any] | None = session_starts.get(key)
        if value is not None:
            self._remember(key, value)
        return value

    def put(self, item: Item, key: str, value: list[Any]) -> None:
        self._enter(item)
        session_starts[key] = value
        self._remember(key, value)


_sessions = FaustSessions()


@app.on_partitions_revoked.connect  # type: ignore[arg-type]
async def _forget_sessions(sender: Any, *args: Any, **kwargs: Any) -> None:
    _sessions.cache.clear()


@app.task  # type: ignore[untyped-decorator]
async def _install_task_dump() -> None:
    """SIGUSR1 logs every asyncio task's stack: how to see where a live worker is waiting."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        out = io.StringIO()
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=out)
        log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())

    loop.add_signal_handler(signal.SIGUSR1, dump)


async def send_dead_letters(dead: list[DeadLetter]) -> None:
    now_ms = int(time.time() * 1000)
    futures = [await dead_letter_topic.send(key=d.key(), value=d.value(now_ms)) for d in dead]
    await asyncio.gather(*futures)  # delivered before the batch's offsets may be committed
    for d in dead:
        log.warning("dead letter %s[%d]@%d: %s", d.record.topic, d.record.partition, d.record.offset, d.reason)


async def publish_aggregates(records: list[tuple[bytes, bytes]]) -> None:
    futures = [await aggregates_topic.send(key=k, value=v) for k, v in records]
    await asyncio.gather(*futures)  # published before the batch's offsets may be committed


_processor: BatchProcessor | None = None


def processor() -> BatchProcessor:
    global _processor
    if _processor is None:  # created lazily, inside the worker's event loop
        _processor = BatchProcessor(settings, Redis.from_url(settings.redis_url), send_dead_letters, publish_aggregates)
    return _processor


_last_offset: dict[tuple[str, int], int] = {}


def _check_continuity(topic: str, records: list[Record]) -> None:
    """Log what should never happen inside one batch stream: a record twice, or offsets going backwards
    or skipping within a partition (a rebalance may legitimately restart a partition elsewhere)."""
    seen: set[tuple[int, int]] = set()
    for r in records:
        tp = (topic, r.partition)
        if (r.partition, r.offset) in seen:
            log.warning("continuity: %s[%d]@%d twice in one batch", topic, r.partition, r.offset)
        seen.add((r.partition, r.offset))
        last = _last_offset.get(tp)
        if last is not None and r.offset != last + 1:
            log.warning("continuity: %s[%d] jumped from %d to %d", topic, r.partition, last, r.offset)
        _last_offset[tp] = r.offset


async def _apply(topic: str, events: list[Any]) -> None:
    records = [Record(topic, e.message.partition, e.message.offset, e.message.key, e.message.value, e) for e in events]
    _check_continuity(topic, records)
    t0 = time.perf_counter()
    result = await processor().process(records, _sessions)
    if settings.trace_batches:
        log.warning("batch %s: %d records in %.1f ms", topic, len(records), (time.perf_counter() - t0) * 1000)
    _progress.add(topic, len(records), result.applied, result.skipped, result.dead)


class Progress:
    """Counts what the agents did, logged every few seconds: enough to see a worker is alive and working."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.last = time.monotonic()
        self.counts: dict[str, list[int]] = {}

    def add(self, topic: str, read: int, applied: int, skipped: int, dead: int) -> None:
        acc = self.counts.setdefault(topic, [0, 0, 0, 0])
        for i, n in enumerate((read, applied, skipped, dead)):
            acc[i] += n
        now = time.monotonic()
        if now - self.last >= self.every:
            summary = "; ".join(
                f"{t}: {r} read, {a} applied, {s} skipped, {d} dead" for t, (r, a, s, d) in self.counts.items()
            )
            log.info("last %.0fs: %s", now - self.last, summary)
            self.counts.clear()
            self.last = now


_progress = Progress()


@app.agent(chat_messages_topic, name="apply-chat-messages")
async def apply_chat_messages(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
        await _apply(CHAT_MESSAGES, events)


@app.agent(sentiment_topic, name="apply-sentiment")
async def apply_sentiment(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
        await _apply(SENTIMENT, events)


@app.agent(llm_observations_topic, name="apply-llm-observations")
async def apply_llm_observations(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
        await _apply(LLM_OBSERVATIONS, events)


@app.agent(chat_history_topic, name="apply-chat-history")
async def apply_chat_history(stream: Any) -> None:
    async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
        await _apply(CHAT_HISTORY, events)
