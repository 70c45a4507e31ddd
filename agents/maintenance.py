"""Housekeeping a worker does beside applying batches: forgetting what the dedup window no longer covers
(observations that arrived before it, the event digests of conversations quiet since before it), and
collecting its garbage on a clock instead of by allocation counts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from streams.settings import Settings
from tables import queries
from tables.buckets import Grain
from tables.state import prune_conversations, prune_observations

log = logging.getLogger(__name__)


async def prune_loop(settings: Settings, stop: asyncio.Event, every_s: float = 3600.0) -> None:
    """Every hour (and at start), drop the observations that arrived before the dedup window from every
    org's observations hash, and the event digests of every conversation last written before it. Several
    workers doing it at once is harmless: a prune deletes only what nobody can still need, and a
    conversation written meanwhile (another version) is left as it is."""
    redis = Redis.from_url(settings.redis_url)
    try:
        while not stop.is_set():
            oldest_day = Grain.DAY.index(int(time.time() * 1000)) - settings.dedup_window_days
            try:
                for org in await queries.list_orgs(redis):
                    await prune_observations(redis, org, oldest_day)
                    await prune_conversations(redis, org, oldest_day)
            except (RedisError, OSError) as exc:
                log.warning("pruning past the dedup window failed, retrying later: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
    finally:
        await redis.aclose()


async def collect_loop(stop: asyncio.Event, young_every_s: float = 5.0, full_every_s: float = 60.0) -> None:
    """The worker's garbage collection. A batch allocates a few objects per event (records, events, plan
    entries) that live until the batch is applied and are then freed by reference counting; CPython's
    collector, triggered every 700 allocations, walked them again and again and cost a sixth of the worker's
    time (bench.run: 42,763 -> 51,270 events/s with a higher threshold, 56,172 with none). So: what was
    loaded at start-up is frozen out of the collections, automatic collection is off, the young generations
    are collected every second and everything every minute (reference cycles live a second, not forever)."""
    gc.freeze()
    gc.disable()
    last_full = time.monotonic()
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), young_every_s)
            if time.monotonic() - last_full >= full_every_s:
                gc.collect()
                last_full = time.monotonic()
            else:
                gc.collect(1)
    finally:
        gc.enable()
