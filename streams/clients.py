"""Kafka clients, configured in one place: the reliable producer, group and whole-topic consumers, topic creation.

Every part of the service (worker, alert engine, forwarder, API, producer client, CLI) gets its clients
here, so acknowledgement, idempotence and timeouts are decided once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from streams.settings import Settings
from streams.topics import ALL_TOPICS, COMPACTED_TOPICS, DEAD_LETTER

log = logging.getLogger(__name__)


def producer(bootstrap: str, *, client_id: str = "ai-analytics", **overrides: Any) -> AIOKafkaProducer:
    """A producer whose sends are acknowledged by every in-sync replica and idempotent on the broker:
    what a send that must not be lost (an event, a dead letter, an aggregate, an alert) needs."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
    }
    return AIOKafkaProducer(**{**config, **overrides})


def group_consumer(bootstrap: str, group: str, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer in a group that commits only when told to (after the work is done), new groups from the start."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group,
        "client_id": group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }
    return AIOKafkaConsumer(*topics, **{**config, **overrides})


def admin(bootstrap: str, **overrides: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**{"bootstrap_servers": bootstrap, "client_id": "ai-analytics-admin", **overrides})


async def partitions(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Each existing topic's partition numbers (a topic that does not exist is left out)."""
    client = admin(bootstrap)
    await client.start()
    try:
        described = await client.describe_topics(topics)
    finally:
        await client.close()
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if t["error_code"] == 0}


async def whole_topic(bootstrap: str, topic: str, start: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer, in no group, holding every partition of the topic (none if it does not exist),
    each read from `start` ("earliest" or "latest").

    Positions come from `auto_offset_reset`, not from seeks: a metadata update right after the start can
    hand the consumer its partitions again, which resets them (and would undo a seek)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset=start
    )
    await consumer.start()
    for _ in range(50):  # the partitions arrive with the topic's metadata
        if consumer.assignment():
            break
        await asyncio.sleep(0.1)
    return consumer, sorted(consumer.assignment())


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """A contract topic's own configuration: the aggregates and erasures compacted; the dead letters kept
    `AIA_DEAD_LETTER_RETENTION_DAYS` (their raw values may name a student an erasure must forget)."""
    if name in COMPACTED_TOPICS:
        return {"cleanup.policy": "compact"}
    if name == DEAD_LETTER:
        return {"retention.ms": str(settings.dead_letter_retention_days * 86_400_000)}
    return {}


async def ensure_topics(settings: Settings, *, attempts: int = 10) -> list[str]:
    """Create every contract topic that is missing (`topic_configs`), set the dead letters' retention on an
    existing topic too; return the names created."""
    for attempt in range(1, attempts + 1):
        client = admin(settings.kafka_bootstrap)
        try:
            await client.start()
            existing = set(await client.list_topics())
            new = [
                NewTopic(
                    settings.topic(name),
                    num_partitions=settings.topic_partitions,
                    replication_factor=settings.topic_replication,
                    topic_configs=topic_configs(settings, name),
                )
                for name in ALL_TOPICS
                if settings.topic(name) not in existing
            ]
            if new:
                with contextlib.suppress(TopicAlreadyExistsError):  # another process created it first
                    await client.create_topics(new)
            if settings.topic(DEAD_LETTER) in existing:  # its retention follows the setting
                resource = ConfigResource(
                    ConfigResourceType.TOPIC, settings.topic(DEAD_LETTER), topic_configs(settings, DEAD_LETTER)
                )
                await client.alter_configs([resource])
            return [t.name for t in new]
        except KafkaConnectionError:
            if attempt == attempts:
                raise
            log.warning("Kafka at %s not reachable (attempt %d/%d)", settings.kafka_bootstrap, attempt, attempts)
            await asyncio.sleep(1.0)
        finally:
            await client.close()
    return []
