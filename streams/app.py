"""The one Faust app of the project, configured from settings; agents and tables are autodiscovered."""

from __future__ import annotations

import faust

from streams.settings import get_settings

settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store="rocksdb://",  # faust-streaming's RocksDB store, backed by rocksdict
    datadir=str(settings.data_dir),
    autodiscover=["agents", "tables"],
    origin="streams",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    web_enabled=settings.worker_web_port > 0,
    web_port=settings.worker_web_port or 6066,
    web_host="127.0.0.1",
    value_serializer="raw",
    key_serializer="raw",
    consumer_auto_offset_reset="earliest",
    # Batches are applied to Redis with their offsets, so a large poll is safe and fast.
    broker_max_poll_records=settings.batch_size,
    stream_buffer_maxsize=max(4096, settings.batch_size * 2),
    broker_commit_interval=1.0,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    producer_acks=-1,
    logging_config=None,
)
