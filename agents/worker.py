"""The kafka engine, the default worker: reads the four input topics with aiokafka's `getmany` in one consumer
group (several workers share the partitions) and applies each batch with the BatchProcessor
(agents/pipeline.py), on the scaffolding it shares with the Faust engine (agents/engine.py).

What it guarantees (docs/semantics.md says why each holds):
- **Exact aggregates from at-least-once delivery.** Kafka may hand a record over again (a crash before a
  commit, a rebalance, a replay after Redis lost writes); the apply is guarded per org (the versions and
  watermarks the plan read must still hold, else it is planned again) and counts an event by its id, so a
  record applied twice counts once.
- **Progress in Redis ahead of Kafka's commit.** A batch's offsets are committed only after its writes
  are applied (and on replicas, on a cluster), its dead letters acknowledged, its orgs' changed counters
  published and its progress recorded in Redis (agents/progress.ProgressStore, never lowered). Where
  Redis is behind Kafka's commit (it lost its last writes, or was emptied), at an assignment or when
  Redis comes back after failing, the worker seeks back to what Redis holds and reads again
  (`ProgressStore.recover`).
- **The changefeed.** The apply marks the published counters it changes in Redis; a batch's tail publishes
  its orgs' marked counters to analytics-aggregates before committing (an org whose publication another
  worker holds is left to it), and the sweep (`sweep_changefeed`, every second) publishes what any worker
  left marked (tables/changefeed.py). So once the workers have caught up, the topic holds what Redis holds.
- **Poison records go to the dead-letter topic.** An invalid event is dead-lettered with its reason; a
  record the batch's processing fails on (a data fault, not Redis or Kafka being away) is isolated by
  applying the batch in halves and dead-lettered alone, the rest applied (`BatchProcessor.process`). While
  Redis or Kafka is away the batch is retried with backoff (agents/retry.py), never skipped.

How: what follows a batch's apply (publishing, recording progress, committing: its "tail") runs while the
next batch is read and applied, one tail after the other, in order; and the next batch is read and
validated while Redis applies the last part of the one before. A rebalance waits for the batch in flight
and every tail. Why this engine is the default: README, "Engines".
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from agents.engine import Engine
from agents.pipeline import Applying, Batch, BatchResult, Validated
from agents.progress import TP
from agents.retry import Stopped, retry
from streams import clients
from streams.settings import Settings

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # The batch in flight finishes (and commits) before its partitions can move.
        async with self.worker.batch_lock:
            await self.worker.complete_pending()
            await self.worker.drain()
        if revoked:
            log.info("partitions revoked: %s", _tps(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.worker.last_offset.clear()
        log.info("partitions assigned: %s", _tps(assigned))
        await self.worker.resume_from_redis(assigned)


def _tps(tps: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"


class Worker(Engine):
    consumer: AIOKafkaConsumer

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "worker")
        self.batch_lock = asyncio.Lock()
        self.last_offset: dict[tuple[str, int], int] = {}
        self._tail: asyncio.Task[None] | None = None  # the last batch's publish, progress and commit
        self._pending: tuple[Applying, dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]] | None = None
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Read and apply until `stop` is set or a part fails (then the others finish what they hold, stop
        too, and the failure is raised)."""
        self._stop = stop
        tasks = await self.start(stop)
        try:
            tasks.append(asyncio.create_task(self._consume(stop), name="worker"))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()
            log.info("worker stopped")
        for result in results:
            if isinstance(result, Exception):
                raise result

    async def _consume(self, stop: asyncio.Event) -> None:
        settings = self.settings
        self.consumer = clients.group_consumer(
            settings.kafka_bootstrap,
            settings.app_id,
            client_id=f"{settings.app_id}-worker",
            max_poll_records=settings.batch_size,
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        self.consumer.subscribe(list(self.names), listener=_Rebalance(self))
        await self.consumer.start()
        try:
            log.info("worker started: group %s, topics %s", settings.app_id, ", ".join(self.names))
            await self._loop(stop)
            await self.complete_pending()
            await self.drain()
        finally:
            stop.set()
            await self.consumer.stop()  # leaves the group, so its partitions move at once

    async def _loop(self, stop: asyncio.Event) -> None:
        timeout_ms = int(self.settings.batch_within * 1000)
        while not stop.is_set():
            batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=self.settings.batch_size)
            if self._tail is not None and self._tail.done():
                self._tail.result()  # a tail that failed otherwise than by Kafka or Redis being away stops us
            async with self.batch_lock:  # taken without yielding: no rebalance slips in after the fetch
                if not batch:
                    await self.complete_pending()
                    continue
                for tp, msgs in batch.items():
                    self._check_continuity(self.names[tp.topic], tp.partition, msgs[0].offset, msgs[-1].offset)
                # Validated while Redis applies the last part of the batch before, then that one is settled
                # and this one applied, all but its own last part.
                validated = await self.processor.validate(self._batch(batch))
                await self.complete_pending()
                await self._start(batch, validated, stop)

    def _batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> Batch:
        # getmany gives each partition's records once, in offset order: validated as they are.
        return Batch([(self.names[tp.topic], tp.partition, msgs) for tp, msgs in batch.items()])

    async def _start(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], validated: Validated, stop: asyncio.Event
    ) -> None:
        try:
            self._pending = (await self.processor.apply(validated), batch)
        except Exception:  # Redis or Kafka away, or a data fault: the serial way, which retries and isolates
            await self._apply_until_done(batch, stop)

    async def complete_pending(self) -> None:
        """Settle the batch whose last part is in flight, and leave its tail running."""
        if self._pending is None:
            return
        pending, batch = self._pending
        self._pending = None
        try:
            result = await self.processor.complete(pending)
        except Exception:  # as in `_start`
            await self._apply_until_done(batch, self._stop)
            return
        self._applied(batch, result)

    async def _apply_until_done(
        self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], stop: asyncio.Event
    ) -> None:
        """Apply the batch, retrying while Redis or Kafka is away (a restart, a failover); a record the batch's
        processing fails on is isolated and dead-lettered (`BatchProcessor.process`).

        A retry is safe (agents/retry.py); nothing is committed until the batch is through; stopping meanwhile
        leaves it to the next run."""

        async def attempt(redis_failed: bool) -> None:
            if redis_failed:
                await self.drain()  # the tails before record their progress first (Redis is back)
                if await self._redis_lost_writes(batch):
                    return  # read again from what Redis holds; this batch is not committed
            await self.apply(batch)

        try:
            await retry(attempt, what="batch not applied", stop=stop)
        except Stopped as exc:
            log.warning("stopping with a batch not applied (%s); the next owner replays it", exc)

    async def _redis_lost_writes(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> bool:
        """After Redis was away: if it came back without some earlier batches (a crash that lost its
        last writes), seek every partition of the batch back to what Redis holds and report True."""
        first = {self.tp(ktp): msgs[0].offset for ktp, msgs in batch.items()}
        behind = (await self.store.recover(first, "the batch's first offset")).behind
        if not behind:
            return False
        for ktp, msgs in batch.items():
            self.consumer.seek(ktp, behind.get(self.tp(ktp), msgs[0].offset))
        self.last_offset.clear()
        return True

    async def apply(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Apply the batch whole, then leave its tail (publish, progress, commit) running after the last one's."""
        self._applied(batch, await self.processor.process(self._batch(batch)))

    def _applied(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]], result: BatchResult) -> None:
        n_records = sum(len(msgs) for msgs in batch.values())
        progress = {self.tp(ktp): msgs[-1].offset for ktp, msgs in batch.items()}
        commit = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
        self._tail = asyncio.create_task(self._finish(self._tail, result.orgs, progress, commit))
        if self.settings.trace_batches:
            log.warning("batch: %d records applied", n_records)
        self.counts.batch(n_records, result)

    async def _finish(
        self,
        before: asyncio.Task[None] | None,
        orgs: set[str],
        progress: dict[TP, int],
        commit: dict[TopicPartition, int],
    ) -> None:
        """A batch's tail, once the one before is through: publish its orgs' changed counters (from the marks
        its apply left: tables/changefeed.py), record in Redis that it is wholly applied (after the org
        scripts), then commit to Kafka. Retried while Kafka or Redis is away; given up when the worker stops
        (the next owner replays the batch; marks left behind are published by the next publication of the
        org or by the sweep)."""
        if before is not None:
            await before
        published = False

        async def attempt(_: bool) -> None:
            nonlocal published
            if not published:
                await self.processor.publish(orgs)
                published = True
            await self.store.save(progress)

        try:
            await retry(attempt, what="publishing or recording a batch failed", stop=self._stop)
        except Stopped as exc:
            log.warning("stopping with a batch's tail not done (%s); the next owner replays it", exc)
            return
        await self._commit(commit)

    async def drain(self) -> None:
        """Wait until every batch applied so far has published, recorded its progress and committed."""
        if self._tail is not None:
            await self._tail

    async def resume_from_redis(self, assigned: set[TopicPartition]) -> None:
        """Where Redis is behind Kafka's committed offset (it lost its last writes in a crash, or was
        emptied), read again from what Redis holds; the events it still has count once by their ids."""
        ends = {self.tp(ktp): await self.consumer.committed(ktp) for ktp in sorted(assigned)}
        for tp, start in (await self.store.recover(ends, "Kafka's commit")).behind.items():
            self.consumer.seek(self.ktp(tp), start)  # no commit (a new group): it starts at the beginning anyway

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on (a rebalance, or this worker was too slow): the next owner re-reads from
            # the last commit and the applied events are recognised by their event ids.
            log.warning("offsets not committed (%s); the next owner replays them", exc)
        except KafkaError as exc:
            log.warning("offsets not committed (%r); a replay will recognise the applied events", exc)

    def _check_continuity(self, topic: str, partition: int, first: int, last: int) -> None:
        """A tripwire: within one assignment a partition's records must come without a gap."""
        key = (topic, partition)
        prev = self.last_offset.get(key)
        if prev is not None and first != prev + 1:
            log.warning("continuity: %s[%d] jumped from %d to %d", topic, partition, prev, first)
        self.last_offset[key] = last


def install_task_dump(loop: asyncio.AbstractEventLoop) -> None:
    """SIGUSR1 logs every asyncio task's stack: how to see where a live worker is waiting."""

    def dump() -> None:
        out = io.StringIO()
        for task in asyncio.all_tasks(loop):
            task.print_stack(limit=12, file=out)
        log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())

    loop.add_signal_handler(signal.SIGUSR1, dump)


async def serve(settings: Settings) -> None:
    """Run a worker (and the alert engine, housekeeping: agents/engine.py) until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    install_task_dump(loop)
    await Worker(settings).run(stop)
