"""Which exceptions a retry outlives and which it would meet again (a record the code cannot handle)."""

from __future__ import annotations

from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from redis.exceptions import NoScriptError, RedisError, ResponseError

# Error replies of a Redis that is away, busy, full or failing over: a retry outlives them.
_PASSING_REPLIES = ("BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK",
                    "NOREPLICAS")  # fmt: skip


def is_data_fault(exc: BaseException) -> bool:
    """True for an exception that applying the same records again would meet again: a record the code
    cannot handle (a bug, a value a script refuses). False for Redis, Kafka or the network being away, or
    Redis busy or full, which a retry outlives. A data fault isolates its records
    (agents/pipeline.BatchProcessor.process)."""
    if isinstance(exc, ResponseError) and not isinstance(exc, NoScriptError):
        text = str(exc)
        return "script" in text and not text.startswith(_PASSING_REPLIES)
    return isinstance(exc, Exception) and not isinstance(exc, (RedisError, KafkaError, OSError))


def is_publication_fault(exc: BaseException) -> bool:
    """A changefeed record that can never be sent: a data fault, or a record over the broker's size."""
    return is_data_fault(exc) or isinstance(exc, MessageSizeTooLargeError)
