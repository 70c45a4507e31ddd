"""The topics of the contract: names, the Faust topic objects, and creating them on a broker."""

from __future__ import annotations

from streams.app import app, settings
from streams.names import AGGREGATES, ALERTS, CHAT_HISTORY, CHAT_MESSAGES, DEAD_LETTER, LLM_OBSERVATIONS, SENTIMENT

chat_messages_topic = app.topic(settings.topic(CHAT_MESSAGES), partitions=settings.topic_partitions)
sentiment_topic = app.topic(settings.topic(SENTIMENT), partitions=settings.topic_partitions)
llm_observations_topic = app.topic(settings.topic(LLM_OBSERVATIONS), partitions=settings.topic_partitions)
chat_history_topic = app.topic(settings.topic(CHAT_HISTORY), partitions=settings.topic_partitions)
dead_letter_topic = app.topic(settings.topic(DEAD_LETTER), partitions=settings.topic_partitions)
aggregates_topic = app.topic(
    settings.topic(AGGREGATES),
    partitions=settings.topic_partitions,
    compacting=True,
)
alerts_topic = app.topic(settings.topic(ALERTS), partitions=settings.topic_partitions)
