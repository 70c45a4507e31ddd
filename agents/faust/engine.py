"""The Faust engine: one agent per input topic hands its batches to the same BatchProcessor as the kafka engine.

Faust is not trusted for delivery (around rebalances it has handed partitions over with gaps and out of
order: faust-streaming #216, #221, #605). That is safe because the apply is order-free and idempotent; what
remains is to make sure every record is applied at least once:
- each partition's applied offsets are tracked (agents/progress.py), and Redis's progress for it
  (`keys.progress`) advances only over contiguous ones;
- a gap below the highest applied offset is fetched again directly from Kafka (a small aiokafka consumer
  outside the group) and applied; offsets the fetch passes without a record (transaction markers,
  compaction, retention) are holes and count as done;
- at assignment, where Faust's committed offset is beyond Redis's progress (Faust skipped records, or
  Redis lost its last writes), the range between them is such a gap too.
Gaps, refetched records and out-of-order deliveries are counted (`keys.engine_stats`, in /metrics) and
logged with the worker's progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.faust.app import (
    app,
    chat_history_topic,
    chat_messages_topic,
    llm_observations_topic,
    sentiment_topic,
    settings,
)
from agents.outputs import Outputs, sweep_changefeed
from agents.pipeline import BatchProcessor, BatchResult
from agents.progress import PartitionProgress
from streams import clients
from streams.deadletter import Record
from streams.settings import Settings
from streams.topics import INPUT_TOPICS
from tables import connections, keys
from tables.state import save_progress

log = logging.getLogger(__name__)

GAP_GRACE_S = 1.0  # a gap this old is fetched again (Faust delivers a partition in order when it works)

TP = tuple[str, int]  # (topic named without prefix, partition)


class FaustEngine:
    """Everything the agents share: Redis, the batch processor, the outputs, and per-partition progress."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = {settings.topic(name): name for name in INPUT_TOPICS}
        self.progress: dict[TP, PartitionProgress] = {}
        self.gap_seen: dict[TP, float] = {}
        self.unreconciled: set[TP] = set()
        self.last_delivered: dict[TP, int] = {}
        self.stats = {"read": 0, "applied": 0, "skipped": 0, "dead": 0, "gaps": 0, "refetched": 0, "out_of_order": 0}
        self._ready: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def ready(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    async def start(self) -> None:
        from agents.alerts import AlertEngine
        from agents.maintenance import prune_loop
        from infra.runtime import collect_loop

        settings = self.settings
        alerts = AlertEngine(settings) if settings.alert_interval > 0 else None  # a bad rules file stops us here
        await clients.ensure_topics(settings)
        self.redis: Redis = connections.connect(settings.redis_url)
        self.producer = clients.producer(settings.kafka_bootstrap, client_id=f"{settings.app_id}-faust")
        await self.producer.start()
        outputs = Outputs(settings, self.producer)
        self.processor = BatchProcessor(settings, self.redis, outputs.dead_letters, outputs.aggregates)
        self.refetcher = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{settings.app_id}-refetch",
        )
        await self.refetcher.start()
        self._refetch_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._fill_gaps(self._stop), name="fill-gaps"),
            asyncio.create_task(prune_loop(settings, self._stop), name="prune"),
            asyncio.create_task(collect_loop(self._stop), name="gc"),
            asyncio.create_task(self._log_progress(self._stop), name="progress-log"),
            asyncio.create_task(sweep_changefeed(self.processor, self._stop), name="changefeed"),
        ]
        if alerts is not None:
            self._tasks.append(asyncio.create_task(alerts.run(self._stop), name="alerts"))
        self.ready.set()
        log.info("Faust engine started: group %s, topics %s", settings.app_id, ", ".join(self.names))

    async def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10.0)
        if self._ready is not None and self._ready.is_set():
            await self.refetcher.stop()
            await self.producer.stop()
            await self.redis.aclose()

    # --- batches from the agents -------------------------------------------------------------------

    async def apply_events(self, events: Sequence[Any]) -> None:
        """Apply one agent batch (Faust events); Faust acks them once this returns."""
        await self.ready.wait()
        records = []
        for event in events:
            m = event.message
            records.append(Record(self.names[m.topic], m.partition, m.offset, m.key, m.value))
        self._note_order(records)
        await self.apply(records)

    async def apply(self, records: list[Record]) -> None:
        """Apply records, retrying while Redis or Kafka is away; then advance each partition's progress."""
        delay = 0.5
        redis_failed = False
        while True:
            try:
                if redis_failed:
                    await self._check_redis_progress({(r.topic, r.partition) for r in records})
                result = await self.processor.process(records)
                await self.processor.publish_changes(result.orgs)
                break
            except (RedisError, KafkaError, OSError) as exc:
                redis_failed = redis_failed or isinstance(exc, (RedisError, OSError))
                if self._stop is not None and self._stop.is_set():
                    raise
                log.warning("batch not applied (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._count(len(records), result)
        await self._advance(records)

    def _note_order(self, records: Iterable[Record]) -> None:
        for r in records:
            tp = (r.topic, r.partition)
            last = self.last_delivered.get(tp)
            if last is not None and r.offset <= last:
                self.stats["out_of_order"] += 1
            self.last_delivered[tp] = r.offset if last is None else max(last, r.offset)

    def _count(self, read: int, result: BatchResult) -> None:
        self.stats["read"] += read
        self.stats["applied"] += result.applied
        self.stats["skipped"] += result.skipped
        self.stats["dead"] += result.dead

    async def _advance(self, records: Iterable[Record], holes: dict[TP, range] | None = None) -> None:
        by_tp: dict[TP, list[int]] = {}
        for r in records:
            by_tp.setdefault((r.topic, r.partition), []).append(r.offset)
        for tp, span in (holes or {}).items():
            by_tp.setdefault(tp, []).extend(span)
        moved: dict[str, int] = {}
        for tp, offsets in by_tp.items():
            track = self.progress.get(tp)
            if track is None:
                continue  # a partition this worker no longer holds
            before = track.next
            track.add(offsets)
            if track.next is not None and track.next != before:
                moved[keys.offset_field(*tp)] = track.next - 1
            if track.gaps():
                self.gap_seen.setdefault(tp, time.monotonic())
            else:
                self.gap_seen.pop(tp, None)
        if moved:
            await save_progress(self.redis, self.settings.app_id, moved)

    # --- rebalances and gaps -----------------------------------------------------------------------

    def on_assigned(self, assigned: Iterable[Any]) -> None:
        mine = {(self.names[tp.topic], tp.partition) for tp in assigned if tp.topic in self.names}
        for tp in list(self.progress):
            if tp not in mine:
                del self.progress[tp]
                self.gap_seen.pop(tp, None)
                self.last_delivered.pop(tp, None)
        self.unreconciled |= mine - set(self.progress)
        for tp in mine:
            self.progress.setdefault(tp, PartitionProgress())
        log.info("partitions assigned: %s", ", ".join(f"{t}[{p}]" for t, p in sorted(mine)) or "none")

    async def _reconcile(self) -> None:
        """For newly assigned partitions: start from Redis's progress, and expect everything below Faust's
        committed offset (where it starts reading) to be applied."""
        tps = sorted(self.unreconciled)
        if not tps:
            return
        fields = [keys.offset_field(*tp) for tp in tps]
        held = await self.redis.hmget(keys.progress(self.settings.app_id), fields)
        kafka_tps = [TopicPartition(self.settings.topic(t), p) for t, p in tps]
        starts = await self.refetcher.beginning_offsets(kafka_tps)
        admin = clients.admin(self.settings.kafka_bootstrap)
        try:
            await admin.start()
            committed = await admin.list_consumer_group_offsets(self.settings.app_id, partitions=kafka_tps)
        finally:
            await admin.close()
        for tp, ktp, value in zip(tps, kafka_tps, held, strict=True):
            track = self.progress.get(tp)
            self.unreconciled.discard(tp)
            if track is None:
                continue
            track.start_at(starts[ktp] if value is None else int(value) + 1)
            meta = committed.get(ktp)
            if meta is not None and meta.offset > 0:
                track.expect(meta.offset)
                if track.next is not None and track.next < meta.offset:
                    log.warning(
                        "Redis holds %s[%d] only below %d but Kafka's commit is %d: reading again from %d",
                        tp[0], tp[1], track.next, meta.offset, track.next,
                    )  # fmt: skip
            if track.gaps():
                self.gap_seen[tp] = 0.0  # known at assignment: fill at once

    async def _check_redis_progress(self, tps: set[TP]) -> None:
        """After Redis was away: if it came back behind what this worker applied (it lost its last writes),
        move the progress back to what Redis holds; the gap is then read again."""
        fields = [keys.offset_field(*tp) for tp in sorted(tps)]
        held = await self.redis.hmget(keys.progress(self.settings.app_id), fields)
        for tp, value in zip(sorted(tps), held, strict=True):
            track = self.progress.get(tp)
            redis_next = 0 if value is None else int(value) + 1
            if track is not None and track.next is not None and redis_next < track.next:
                log.warning("Redis holds %s[%d] only below %d: reading again from there", *tp, redis_next)
                track.expect(track.next)
                track.next = redis_next
                self.gap_seen[tp] = 0.0

    async def _fill_gaps(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._reconcile()
                now = time.monotonic()
                for tp, since in list(self.gap_seen.items()):
                    track = self.progress.get(tp)
                    if track is None or now - since < GAP_GRACE_S:
                        continue
                    for first, end in track.gaps():
                        await self._refetch(tp, first, end)
            except (RedisError, KafkaError, OSError) as exc:
                log.warning("filling gaps failed, retrying: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _refetch(self, tp: TP, first: int, end: int) -> None:
        """Read [first, end) of a partition directly and apply it; offsets passed without a record are holes."""
        self.stats["gaps"] += 1
        log.warning("gap in %s[%d]: offsets %d..%d not delivered; reading them directly", tp[0], tp[1], first, end - 1)
        ktp = TopicPartition(self.settings.topic(tp[0]), tp[1])
        async with self._refetch_lock:
            self.refetcher.assign([ktp])
            self.refetcher.seek(ktp, first)
            position = first
            while position < end:
                batch = await self.refetcher.getmany(ktp, timeout_ms=1000, max_records=self.settings.batch_size)
                records = [Record(tp[0], tp[1], m.offset, m.key, m.value) for m in batch.get(ktp, []) if m.offset < end]
                position = await self.refetcher.position(ktp)
                if records:
                    self.stats["refetched"] += len(records)
                    await self.apply(records)
                if not batch and position < end and position >= (await self.refetcher.end_offsets([ktp]))[ktp]:
                    break  # the range ends past the log's end: nothing more to read now
            await self._advance([], {tp: range(first, min(position, end))})

    async def _log_progress(self, stop: asyncio.Event, every_s: float = 10.0) -> None:
        last = dict(self.stats)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            delta = {k: v - last[k] for k, v in self.stats.items()}
            last = dict(self.stats)
            if any(delta.values()):
                log.info(
                    "last %.0fs: %d read, %d applied, %d skipped, %d dead; %d gaps, %d refetched, %d out of order",
                    every_s, *(delta[k] for k in ("read", "applied", "skipped", "dead", "gaps", "refetched", "out_of_order")),
                )  # fmt: skip
                with contextlib.suppress(RedisError, OSError):  # summed over the group's workers
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name, n in delta.items():
                            pipe.hincrby(keys.engine_stats(self.settings.app_id), name, n)
                        await pipe.execute()


engine = FaustEngine(settings)


@app.service
class EngineService(Service):
    """Starts the engine with the Faust worker and stops it with it."""

    async def on_start(self) -> None:
        await engine.start()

    async def on_stop(self) -> None:
        await engine.stop()


async def on_partitions_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
    engine.on_assigned(args[0] if args else kwargs["assigned"])


app.on_partitions_assigned.connect(cast(Any, on_partitions_assigned))


async def _each_batch(stream: Any) -> None:
    async for events in stream.take_events(engine.settings.batch_size, within=engine.settings.batch_within):
        await engine.apply_events(events)


@app.agent(chat_messages_topic)
async def count_messages(stream: Any) -> None:
    """Sessions, messages and per-student counts from chat messages."""
    await _each_batch(stream)


@app.agent(sentiment_topic)
async def track_sentiment(stream: Any) -> None:
    """Sentiment counts, and each conversation's latest judgement."""
    await _each_batch(stream)


@app.agent(llm_observations_topic)
async def track_costs(stream: Any) -> None:
    """LLM cost and tokens, replaced when an observation is re-sent."""
    await _each_batch(stream)


@app.agent(chat_history_topic)
async def keep_conversations(stream: Any) -> None:
    """Conversation records for chat history."""
    await _each_batch(stream)
