"""What both engines are built on: one start-up and the tasks every worker runs beside its batches.

`Engine.start` checks the contract's topics (the compacted aggregates topic above all: left to the broker's
auto-creation, it would be created without compaction on the first publish), connects to Redis, starts the
producer, and builds the batch processor (agents/pipeline.py) with its outputs (agents/outputs.py), the
progress store and the progress log (agents/progress.py); then it starts the background tasks: the
changefeed sweep, housekeeping (agents/maintenance.py), the garbage collector (infra/runtime.py), the
progress log and, unless turned off, the alert rules (agents/alerts.py). The kafka engine (agents/worker.py)
and the Faust engine (agents/faust/engine.py) add how they read; both retry with agents/retry.py.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer, TopicPartition
from redis.asyncio import Redis

from agents.alerts import AlertEngine
from agents.maintenance import prune_loop
from agents.outputs import Outputs, sweep_changefeed
from agents.pipeline import BatchProcessor
from agents.progress import TP, ProgressLog, ProgressStore
from infra.runtime import collect_loop
from streams import clients
from streams.settings import Settings
from streams.topics import INPUT_TOPICS
from tables import connections, keys


class Engine:
    """The parts an engine shares with the other; `start` makes them (inside the event loop)."""

    redis: Redis
    producer: AIOKafkaProducer
    processor: BatchProcessor
    store: ProgressStore
    counts: ProgressLog

    def __init__(self, settings: Settings, name: str, extra_counts: tuple[str, ...] = (), stats: bool = False) -> None:
        self.settings = settings
        self.name = name
        self.names = {settings.topic(topic): topic for topic in INPUT_TOPICS}  # Kafka's topic name -> ours
        self._extra_counts = extra_counts
        self._stats = stats

    def tp(self, ktp: TopicPartition) -> TP:
        return self.names[ktp.topic], ktp.partition

    def ktp(self, tp: TP) -> TopicPartition:
        return TopicPartition(self.settings.topic(tp[0]), tp[1])

    async def start(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        """Start the shared parts and the background tasks, which end once `stop` is set."""
        settings = self.settings
        alerts = AlertEngine(settings) if settings.alert_interval > 0 else None  # a bad rules file stops us here
        await clients.ensure_topics(settings)
        self.redis = connections.connect(settings.redis_url)
        self.producer = clients.producer(settings.kafka_bootstrap, client_id=f"{settings.app_id}-{self.name}")
        await self.producer.start()
        outputs = Outputs(settings, self.producer)
        self.processor = BatchProcessor(settings, self.redis, outputs.dead_letters, outputs.aggregates)
        self.store = ProgressStore(self.redis, settings.app_id)
        stats_key = keys.engine_stats(settings.app_id) if self._stats else None
        self.counts = ProgressLog(self.redis, self._extra_counts, stats_key)
        tasks = [
            asyncio.create_task(sweep_changefeed(self.processor, stop), name="changefeed"),
            asyncio.create_task(prune_loop(settings, stop), name="prune"),
            asyncio.create_task(collect_loop(stop), name="gc"),
            asyncio.create_task(self.counts.run(stop), name="progress-log"),
        ]
        if alerts is not None:
            tasks.append(asyncio.create_task(alerts.run(stop), name="alerts"))
        return tasks

    async def close(self) -> None:
        """Stop the producer and close Redis (after the background tasks ended: the sweep uses both)."""
        await self.producer.stop()
        await self.redis.aclose()
