"""`ai-analytics rebuild`: recompute every aggregate from the retained topics into a new generation while
the served one keeps answering and keeps being updated, then switch to it atomically and drop the old one.

1. Refuse when the topics no longer hold what the aggregates count: a partition whose log no longer starts
   at offset 0 has lost records by retention (for the events the daily retention still covers), and a
   rebuild would lose them too; the message names each partition and the time from which it still holds
   events.
2. Mark generation n+1 as being built (`aia:generations`: `building`, and `v` bumped, and copied to every
   org's `aia:gens:{org}`). Every live batch's apply is guarded on its org's copy of `v`, so from then on
   every batch applied is applied to both generations
   (agents/pipeline.py). Then record each input partition's end offset (`until`): records below it are
   read by the rebuild, records from it on are applied by the live workers, to both.
3. Read every input partition from its start to `until` and apply it to generation n+1 (the same
   BatchProcessor, so the same rules and the same dedup: what both the rebuild and a live worker apply
   counts once). Progress is kept per partition (`aia:rebuild:g<n+1>`): an interrupted rebuild run again
   resumes there. Dead letters are not sent again (they were when the events first arrived).
4. When every partition is read to `until`, switch: `current` = n+1, `building` gone, `v` bumped, in one
   script (and `v` copied to the orgs again). Each API request reads `current` once and builds every key of its answer for it, so an answer
   is the old generation's or the new one's, never a mix. After a grace period (in-flight requests and
   batches of the old generation) the old generation's keys are unlinked.

Erased students' tombstones, API keys, orgs, time zones and alert state are outside the generations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis

from agents.pipeline import Batch, BatchProcessor
from streams import clients
from streams.deadletter import DeadLetter, Record
from streams.settings import Settings
from streams.topics import INPUT_TOPICS
from tables import generations, keys, queries
from tables.generations import Generations, status
from tables.scripts import Script, load

log = logging.getLogger(__name__)
DAY_MS = 86_400_000

START_LUA = load("agents", "rebuild_start")  # agents/lua/rebuild_start.lua
SWITCH_LUA = load("agents", "rebuild_switch")  # agents/lua/rebuild_switch.lua


class RebuildRefused(Exception):
    """The topics no longer hold what a rebuild needs; the message says which range would be lost."""


class Rebuild:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        *,
        rate: float | None = None,
        grace_s: float = 10.0,
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.rate = rate
        self.grace_s = grace_s
        self.say = say

        async def no_dead_letters(_: list[DeadLetter]) -> None:
            return None  # sent when the events first arrived

        self.processor = BatchProcessor(settings, redis, no_dead_letters)

    async def run(self) -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.app_id}-rebuild",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        try:
            names = {self.settings.topic(t): t for t in INPUT_TOPICS}
            found = await clients.partitions(self.settings.kafka_bootstrap, list(names))
            tps = {TopicPartition(name, p): keys.offset_field(names[name], p) for name, ps in found.items() for p in ps}
            if len(found) < len(INPUT_TOPICS):
                raise RebuildRefused(
                    "the input topics are missing: run `ai-analytics topics` (nothing to rebuild from)"
                )
            gens = await Generations.read(self.redis)
            if gens.building is None:
                await self._check_retained(consumer, tps)
                target = gens.current + 1
                version = await Script(self.redis, START_LUA).run([keys.generations()], [target])
                if not version:
                    raise RebuildRefused("another rebuild started at the same time")
                # Every known org's apply is guarded on its copy of the version: from here on, every batch
                # applied is applied to both generations. Only then are the end offsets taken.
                await copy_version(self.redis, int(version))
                ends = await consumer.end_offsets(list(tps)) if tps else {}
                until = {fld: ends[tp] for tp, fld in tps.items()}
                fields: dict[str, bytes | int] = {"until": orjson.dumps(until), "started_ms": int(time.time() * 1000)}
                # built from the topics by this code: its monthly sets and its student activity whole
                fields.update(generations.whole_marks(target))
                await self.redis.hset(keys.generations(), mapping=fields)  # type: ignore[arg-type]
                self.say(
                    f"rebuild: building generation {target} (serving {gens.current}) from {sum(until.values()):,} records"
                )
            else:
                target = gens.building
                current = await status(self.redis)
                assert current is not None
                until = current.until
                self.say(f"rebuild: resuming generation {target} ({current.remaining():,} records left)")
            await self._read(consumer, tps, target, until)
        finally:
            await consumer.stop()
        version = await Script(self.redis, SWITCH_LUA).run([keys.generations()], [target])
        if not version:
            raise RebuildRefused(f"generation {target} is no longer the one being built")
        await copy_version(self.redis, int(version))
        self.say(f"rebuild: serving generation {target}; dropping generation {target - 1} in {self.grace_s:g}s")
        await asyncio.sleep(self.grace_s)
        dropped = await drop_generation(self.redis, target - 1)
        await self.redis.delete(keys.rebuild_progress(target))
        self.say(f"rebuild: done, {dropped:,} keys of generation {target - 1} dropped")
        return 0

    async def _check_retained(self, consumer: AIOKafkaConsumer, tps: dict[TopicPartition, str]) -> None:
        """Refuse when a partition lost records by retention that the aggregates still cover."""
        if not tps:
            return
        starts = await consumer.beginning_offsets(list(tps))
        days = self.settings.daily_retention_days
        covered_from = int(time.time() * 1000) - days * DAY_MS if days else None
        lost = []
        for tp, first in sorted(starts.items()):
            if first == 0:
                continue
            consumer.assign([tp])
            consumer.seek(tp, first)
            batch = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
            records = batch.get(tp, [])
            oldest_ms = records[0].timestamp if records else None
            if covered_from is not None and oldest_ms is not None and oldest_ms <= covered_from:
                continue  # what was deleted is older than the aggregates keep anyway
            since = "now" if oldest_ms is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest_ms / 1000))
            lost.append(f"{tps[tp]} begins at offset {first:,}: its events before {since} are gone")
        consumer.assign([])
        if lost:
            raise RebuildRefused(
                "refusing to rebuild: the topics no longer hold everything the aggregates count, and a rebuild "
                "would lose it:\n  " + "\n  ".join(lost) + "\n(keep the input topics with retention.ms=-1, "
                "or set AIA_DAILY_RETENTION_DAYS to what they hold)"
            )

    async def _read(
        self, consumer: AIOKafkaConsumer, tps: dict[TopicPartition, str], target: int, until: dict[str, int]
    ) -> None:
        done: Any = await self.redis.hgetall(keys.rebuild_progress(target))
        applied = {k.decode(): int(v) for k, v in done.items()}
        todo = {tp: fld for tp, fld in tps.items() if applied.get(fld, -1) + 1 < until.get(fld, 0)}
        if not todo:
            return
        consumer.assign(list(todo))
        for tp, fld in todo.items():
            consumer.seek(tp, applied.get(fld, -1) + 1)
        total = sum(until.get(f, 0) - (applied.get(f, -1) + 1) for f in todo.values())
        started = last_said = time.monotonic()
        read = 0
        names = {self.settings.topic(t): t for t in INPUT_TOPICS}
        while todo:
            batch = await consumer.getmany(timeout_ms=1000, max_records=self.settings.batch_size)
            records: list[Record] = []
            moved: dict[str, int] = {}
            for tp, msgs in batch.items():
                if tp not in todo:
                    continue
                name = todo[tp]
                start, end = applied.get(name, -1) + 1, until[name]
                keep = [m for m in msgs if start <= m.offset < end]
                records += [Record(names[tp.topic], tp.partition, m.offset, m.key, m.value) for m in keep]
                if keep:
                    moved[name] = keep[-1].offset
            if records:
                await self.processor.process(Batch.of(records), generation=target)
                await self.redis.hset(keys.rebuild_progress(target), mapping=moved)  # type: ignore[arg-type]
                applied.update(moved)
                read += len(records)
            for tp, fld in list(todo.items()):
                if applied.get(fld, -1) + 1 >= until[fld] or await consumer.position(tp) >= until[fld]:
                    del todo[tp]
                    consumer.pause(tp)
            if self.rate:
                await asyncio.sleep(max(0.0, read / self.rate - (time.monotonic() - started)))
            now = time.monotonic()
            if now - last_said >= 2.0 or not todo:
                last_said = now
                rate = read / max(now - started, 1e-6)
                left = max(0, total - read)
                self.say(
                    f"rebuild: {read:,}/{total:,} records, {rate:,.0f}/s, {left:,} left, about {left / max(rate, 1):.0f}s"
                )


async def copy_version(redis: Redis, version: int) -> None:
    """Write the generations' new version into every known org's copy (`keys.org_generations`): an apply
    planned before the change then conflicts and is made again for the generations there are now. An org
    that appears later has no copy; its batches' events were fetched after the change, or are read by the
    rebuild (their offsets are below its end offsets, taken after this)."""
    orgs = await queries.list_orgs(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for org in orgs:
            pipe.hset(keys.org_generations(org), "v", version)
        if orgs:
            await pipe.execute()


async def drop_generation(redis: Redis, n: int, chunk: int = 1000) -> int:
    """Unlink every key of generation n (SCAN, never blocking Redis)."""
    dropped, batch = 0, []
    await redis.hdel(keys.generations(), *generations.marks(n))
    async for key in redis.scan_iter(match=keys.generation_prefix(n) + "*", count=chunk):
        batch.append(key)
        if len(batch) >= chunk:
            dropped += await redis.unlink(*batch)
            batch = []
    if batch:
        dropped += await redis.unlink(*batch)
    return dropped
