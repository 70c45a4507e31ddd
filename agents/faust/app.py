"""The Faust app: one `faust.App` for the project, configured from settings, and the input topics.

Its agents (agents/faust/engine.py, and any a team adds in agents/: docs/faust.md shows how) are found by
autodiscovery, so `faust -A agents.faust.app worker -l info` runs them, as does `ai-analytics worker
--engine faust`. Faust is not trusted for delivery: the agents hand every batch to the same batch
processor as the kafka engine, which is exact whatever the order and number of copies, and the engine
fills any gap in a partition's offsets itself (agents/faust/engine.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faust

from agents.faust.transport import SCHEME, FastStream, register
from streams.settings import get_settings
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT

settings = get_settings()
register()

app = faust.App(
    settings.app_id,
    # Faust's aiokafka transport and streams without per-message scheduling (agents/faust/transport.py,
    # docs/faust.md); `kafka://` and the stock Stream work too, at about a third of the speed.
    broker=f"{SCHEME}://{settings.kafka_bootstrap}",
    Stream=FastStream,
    autodiscover=["agents"],
    origin="agents",
    # The app keeps no tables; Faust still wants a folder of its own.
    datadir=str(Path(tempfile.gettempdir()) / f"ai-analytics-faust-{settings.app_id}"),
    web_enabled=False,
    web_host="127.0.0.1",  # should a web server start anyway, it listens on loopback only
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    topic_partitions=settings.topic_partitions,
    topic_replication_factor=settings.topic_replication,
    broker_max_poll_records=settings.batch_size,
    stream_buffer_maxsize=4 * settings.batch_size,
    broker_session_timeout=settings.session_timeout,
    broker_heartbeat_interval=settings.heartbeat_interval,
    broker_commit_every=settings.batch_size,
)


def _topic(name: str) -> Any:
    return app.topic(settings.topic(name), key_type=bytes, value_type=bytes)


chat_messages_topic = _topic(CHAT_MESSAGES)
sentiment_topic = _topic(SENTIMENT)
llm_observations_topic = _topic(LLM_OBSERVATIONS)
chat_history_topic = _topic(CHAT_HISTORY)
