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
logged with the worker's progress. Start-up, retries, the progress store, the recovery and the progress log
are the kafka engine's too (agents/engine.py, agents/retry.py, agents/progress.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from mode import Service

from agents.engine import Engine
from agents.faust.app import (
    app,
    chat_history_topic,
    chat_messages_topic,
    llm_observations_topic,
    sentiment_topic,
    settings,
)
from agents.pipeline import Batch, BatchResult
from agents.progress import TP, PartitionProgress
from agents.retry import PASSING, retry
from streams import clients
from streams.deadletter import Record
from streams.settings import Settings

log = logging.getLogger(__name__)

GAP_GRACE_S = 1.0  # a gap this old is fetched again (Faust delivers a partition in order when it works)


class FaustEngine(Engine):
    """Everything the agents share: the engine's parts (agents/engine.py) and per-partition progress."""

    refetcher: AIOKafkaConsumer

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "faust", extra_counts=("gaps", "refetched", "out_of_order"), stats=True)
        self.progress: dict[TP, PartitionProgress] = {}
        self.gap_seen: dict[TP, float] = {}
        self.unreconciled: set[TP] = set()
        self.last_delivered: dict[TP, int] = {}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._refetch_lock = asyncio.Lock()

    async def startup(self) -> None:
        self._tasks = await self.start(self._stop)
        self.refetcher = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{self.settings.app_id}-refetch",
        )
        await self.refetcher.start()
        self._tasks.append(asyncio.create_task(self._fill_gaps(self._stop), name="fill-gaps"))
        self.ready.set()
        log.info("Faust engine started: group %s, topics %s", self.settings.app_id, ", ".join(self.names))

    async def shutdown(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 10.0)
        if self.ready.is_set():
            await self.refetcher.stop()
            await self.close()

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
        """Apply records, retrying while Redis or Kafka is away (agents/retry.py); then advance each
        partition's progress."""

        async def attempt(redis_failed: bool) -> BatchResult:
            if redis_failed:
                await self._check_redis_progress({(r.topic, r.partition) for r in records})
            result = await self.processor.process(Batch.of(records))
            await self.processor.publish(result.orgs)
            return result

        self.counts.batch(len(records), await retry(attempt, what="batch not applied", stop=self._stop))
        await self._advance(records)

    def _note_order(self, records: Iterable[Record]) -> None:
        for r in records:
            tp = (r.topic, r.partition)
            last = self.last_delivered.get(tp)
            if last is not None and r.offset <= last:
                self.counts.add("out_of_order")
            self.last_delivered[tp] = r.offset if last is None else max(last, r.offset)

    async def _advance(self, records: Iterable[Record], holes: dict[TP, range] | None = None) -> None:
        by_tp: dict[TP, list[int]] = {}
        for r in records:
            by_tp.setdefault((r.topic, r.partition), []).append(r.offset)
        for tp, span in (holes or {}).items():
            by_tp.setdefault(tp, []).extend(span)
        moved: dict[TP, int] = {}
        for tp, offsets in by_tp.items():
            track = self.progress.get(tp)
            if track is None:
                continue  # a partition this worker no longer holds
            before = track.next
            track.add(offsets)
            if track.next is not None and track.next != before:
                moved[tp] = track.next - 1
            if track.gaps():
                self.gap_seen.setdefault(tp, time.monotonic())
            else:
                self.gap_seen.pop(tp, None)
        await self.store.save(moved)

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
        kafka_tps = [self.ktp(tp) for tp in tps]
        starts = await self.refetcher.beginning_offsets(kafka_tps)
        admin = clients.admin(self.settings.kafka_bootstrap)
        try:
            await admin.start()
            committed = await admin.list_consumer_group_offsets(self.settings.app_id, partitions=kafka_tps)
        finally:
            await admin.close()
        ends: dict[TP, int | None] = {}
        for tp, ktp in zip(tps, kafka_tps, strict=True):
            meta = committed.get(ktp)
            ends[tp] = meta.offset if meta is not None and meta.offset > 0 else None
        floors = {tp: starts[ktp] for tp, ktp in zip(tps, kafka_tps, strict=True)}
        held = (await self.store.recover(ends, "Kafka's commit", floors)).held
        for tp in tps:
            track = self.progress.get(tp)
            self.unreconciled.discard(tp)
            if track is None:
                continue
            track.start_at(held[tp])
            end = ends[tp]
            if end is not None:
                track.expect(end)
            if track.gaps():
                self.gap_seen[tp] = 0.0  # known at assignment: fill at once

    async def _check_redis_progress(self, tps: set[TP]) -> None:
        """After Redis was away: if it came back behind what this worker applied (it lost its last writes),
        move the progress back to what Redis holds; the gap is then read again."""
        applied = {tp: t.next for tp in tps if (t := self.progress.get(tp)) is not None and t.next is not None}
        behind = (await self.store.recover(applied, "what this worker applied")).behind
        for tp, start in behind.items():
            track = self.progress.get(tp)
            if track is not None and track.next is not None and start < track.next:
                track.expect(track.next)
                track.next = start
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
            except PASSING as exc:
                log.warning("filling gaps failed, retrying: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _refetch(self, tp: TP, first: int, end: int) -> None:
        """Read [first, end) of a partition directly and apply it; offsets passed without a record are holes."""
        self.counts.add("gaps")
        log.warning("gap in %s[%d]: offsets %d..%d not delivered; reading them directly", tp[0], tp[1], first, end - 1)
        ktp = self.ktp(tp)
        async with self._refetch_lock:
            self.refetcher.assign([ktp])
            self.refetcher.seek(ktp, first)
            position = first
            while position < end:
                batch = await self.refetcher.getmany(ktp, timeout_ms=1000, max_records=self.settings.batch_size)
                records = [Record(tp[0], tp[1], m.offset, m.key, m.value) for m in batch.get(ktp, []) if m.offset < end]
                position = await self.refetcher.position(ktp)
                if records:
                    self.counts.add("refetched", len(records))
                    await self.apply(records)
                if not batch and position < end and position >= (await self.refetcher.end_offsets([ktp]))[ktp]:
                    break  # the range ends past the log's end: nothing more to read now
            await self._advance([], {tp: range(first, min(position, end))})


engine = FaustEngine(settings)


@app.service
class EngineService(Service):
    """Starts the engine with the Faust worker and stops it with it."""

    async def on_start(self) -> None:
        await engine.startup()

    async def on_stop(self) -> None:
        await engine.shutdown()


async def on_partitions_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
    engine.on_assigned(args[0] if args else kwargs["assigned"])


app.on_partitions_assigned.connect(cast(Any, on_partitions_assigned))


def _agent(topic: Any, name: str, doc: str) -> Any:
    """An agent that hands each batch of its topic to the engine."""

    async def agent(stream: Any) -> None:
        async for events in stream.take_events(engine.settings.batch_size, within=engine.settings.batch_within):
            await engine.apply_events(events)

    agent.__name__ = agent.__qualname__ = name
    agent.__doc__ = doc
    return app.agent(topic, name=f"{__name__}.{name}")(agent)


count_messages = _agent(chat_messages_topic, "count_messages", "Sessions, messages and per-student counts.")
track_sentiment = _agent(sentiment_topic, "track_sentiment", "Sentiment counts, each conversation's latest judgement.")
track_costs = _agent(
    llm_observations_topic, "track_costs", "LLM cost and tokens, replaced when an observation is re-sent."
)
keep_conversations = _agent(chat_history_topic, "keep_conversations", "Conversation records for chat history.")
