"""Topic names of the contract (before the optional `AIA_TOPIC_PREFIX`)."""

CHAT_MESSAGES = "chat-messages"
SENTIMENT = "sentiment"
LLM_OBSERVATIONS = "llm-observations"
CHAT_HISTORY = "chat-history"
AGGREGATES = "analytics-aggregates"  # compacted: the latest value per org/metric/bucket
ALERTS = "analytics-alerts"
DEAD_LETTER = "analytics-dead-letter"
ERASURES = "analytics-erasures"  # compacted: the audit record of each erased student (who, when, what)

INPUT_TOPICS = (CHAT_MESSAGES, SENTIMENT, LLM_OBSERVATIONS, CHAT_HISTORY)
ALL_TOPICS = (*INPUT_TOPICS, AGGREGATES, ALERTS, DEAD_LETTER, ERASURES)
COMPACTED_TOPICS = (AGGREGATES, ERASURES)
