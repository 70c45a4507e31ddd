"""The one retry helper of both engines: work is tried again, with backoff, while Redis, Kafka or the network
is away (a restart, a failover), instead of stopping the worker.

A retry is safe because what a failed attempt applied is recognised by event id and not counted again, and
nothing is committed (or acked) until the work is through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a retry outlives: Redis, Kafka or the network away (a data fault is isolated, agents/pipeline.py)
PASSING = (RedisError, KafkaError, OSError)


class Stopped(Exception):
    """The worker stops with the work not done: nothing of it is committed, the next owner replays it."""


async def retry(
    attempt: Callable[[bool], Awaitable[T]], *, what: str, stop: asyncio.Event, max_delay: float = 10.0
) -> T:
    """`attempt(redis_failed)` until it returns, waiting 0.5 s, then twice as long each time (up to
    `max_delay`), after a failure of Redis, Kafka or the network. `redis_failed`: an earlier attempt failed
    on Redis or the network, so Redis may have come back without its last writes (the attempt checks that
    first: `agents.progress.ProgressStore.recover`). Raises `Stopped` when a failure finds `stop` set."""
    delay = 0.5
    redis_failed = False
    while True:
        try:
            return await attempt(redis_failed)
        except PASSING as exc:
            redis_failed = redis_failed or isinstance(exc, (RedisError, OSError))
            if stop.is_set():
                raise Stopped(f"{what} ({exc!r})") from exc
            log.warning("%s (%r); retrying in %.1fs", what, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, max_delay)
