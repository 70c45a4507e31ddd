"""Creating the contract's topics on a broker (idempotent), without importing the Faust app."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.names import AGGREGATES, ALL_TOPICS
from streams.settings import Settings

log = logging.getLogger(__name__)


async def ensure_topics(settings: Settings, *, attempts: int = 10) -> list[str]:
    """Create every contract topic that is missing; return the names created."""
    for attempt in range(1, attempts + 1):
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="ai-analytics-admin")
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            new = [
                NewTopic(
                    settings.topic(name),
                    num_partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication,
                    topic_configs={"cleanup.policy": "compact"} if name == AGGREGATES else {},
                )
                for name in ALL_TOPICS
                if settings.topic(name) not in existing
            ]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process created it first
                    await admin.create_topics(new)
            return [t.name for t in new]
        except KafkaConnectionError:
            if attempt == attempts:
                raise
            log.warning("Kafka at %s not reachable (attempt %d/%d)", settings.kafka_bootstrap, attempt, attempts)
            await asyncio.sleep(1.0)
        finally:
            await admin.close()
    return []
