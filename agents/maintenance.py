"""Housekeeping a worker does beside applying batches: forgetting what the dedup window no longer covers
(observations that arrived before it, the event digests of conversations quiet since before it), the
observations and traces past the observation retention (AIA_OBSERVATION_RETENTION_DAYS), and the chat
history past its retention (AIA_HISTORY_RETENTION_DAYS, when set)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.exceptions import RedisError

from streams.settings import Settings
from tables import connections, generations, queries
from tables.buckets import Grain, Retention
from tables.state import expire_conversations, prune_conversations, prune_observations
from tables.traces import prune_traces

log = logging.getLogger(__name__)


async def prune_loop(settings: Settings, stop: asyncio.Event, every_s: float = 3600.0) -> None:
    """Every hour (and at start), drop the observations that arrived before the dedup window (or the
    observation retention, when longer) from every org's observations hash, the observations and traces
    listed whose time is past the observation retention, and the event digests of every conversation last written before it. Several
    workers doing it at once is harmless: a prune deletes only what nobody can still need, and a
    conversation written meanwhile (another version) is left as it is. With a history retention, the
    conversations listed before it are deleted too."""
    redis = connections.connect(settings.redis_url)
    try:
        while not stop.is_set():
            today = Grain.DAY.index(int(time.time() * 1000))
            oldest_day = today - settings.dedup_window_days
            # The observations hash also holds what the observations endpoints list.
            oldest_observation = today - max(settings.dedup_window_days, settings.observation_retention_days)
            oldest_listed = Retention.from_settings(settings).oldest_observation_day(today)
            try:
                gen = await generations.current(redis)  # a rebuild's generation starts with nothing to prune
                for org in await queries.list_orgs(redis):
                    await prune_observations(redis, gen, org, oldest_observation)
                    await prune_traces(redis, gen, org, oldest_listed)
                    await prune_conversations(redis, gen, org, oldest_day)
                    if settings.history_retention_days:
                        cutoff_ms = int(time.time() * 1000) - settings.history_retention_days * 86_400_000
                        if n := await expire_conversations(redis, gen, org, cutoff_ms):
                            log.info("%s: %d conversation(s) past the history retention deleted", org, n)
            except (RedisError, OSError) as exc:
                log.warning("pruning past the dedup window failed, retrying later: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await redis.aclose()
