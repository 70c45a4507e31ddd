"""Progress, for both engines: where it is kept, how a worker recovers from it, how it is logged, and (for
an engine not trusted to deliver in order) which offsets of a partition are applied.

- `ProgressStore`: Redis's progress of a consumer group (`keys.progress`): per partition, the last offset
  below which every record is applied. Written after a batch's org scripts (and their replica wait), never
  lowered (`tables.state.save_progress`): a worker that lost a partition may still finish a batch of it.
- `ProgressStore.recover`: the one recovery. Where Redis's progress is behind where a worker would go on
  from (Kafka's committed offset at an assignment: Redis lost its last writes in a crash, or was emptied;
  what the worker applied, when Redis comes back after failing), the range between is read again; the
  events Redis still holds count once by their ids.
- `ProgressLog`: what a worker did, logged every ten seconds.
- `PartitionProgress`: applied offsets of one partition. An engine that hands over records with gaps
  (Faust did, around rebalances) or out of order has its applied offsets collected here; the progress
  advances only over contiguous ones, and what is missing below the highest applied offset (or below where
  the engine's committed offset says it will start) is a gap the worker fetches again directly. Pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.pipeline import BatchResult
from tables import keys
from tables.state import save_progress

log = logging.getLogger(__name__)

TP = tuple[str, int]  # (topic named without prefix, partition)


class Recovery(NamedTuple):
    held: dict[TP, int]  # per partition, the first offset Redis does not hold as applied
    behind: dict[TP, int]  # the partitions where that is below where the worker would go on: read again from it


class ProgressStore:
    """A consumer group's progress in Redis, as both engines keep it."""

    def __init__(self, redis: Redis, group: str) -> None:
        self.redis = redis
        self.group = group

    async def save(self, last_applied: Mapping[TP, int]) -> None:
        """Record, per partition, the last offset below which every record is applied (never lowered)."""
        if last_applied:
            await save_progress(self.redis, self.group, {keys.offset_field(*tp): o for tp, o in last_applied.items()})

    async def recover(
        self, ends: Mapping[TP, int | None], than: str, floors: Mapping[TP, int] | None = None
    ) -> Recovery:
        """Where Redis holds each partition up to (`floors`, else 0, where it holds none of it), and where
        that is below `ends` (what the worker would go on from; `than` names it in the warning logged)."""
        tps = sorted(ends)
        if not tps:
            return Recovery({}, {})
        values = await self.redis.hmget(keys.progress(self.group), [keys.offset_field(*tp) for tp in tps])
        held = {tp: (floors or {}).get(tp, 0) if v is None else int(v) + 1 for tp, v in zip(tps, values, strict=True)}
        behind: dict[TP, int] = {}
        for tp in tps:
            end = ends[tp]
            if end is not None and held[tp] < end:
                log.warning(
                    "Redis holds %s[%d] only below %d but %s is %d: reading again from %d",
                    tp[0], tp[1], held[tp], than, end, held[tp],
                )  # fmt: skip
                behind[tp] = held[tp]
        return Recovery(held, behind)


class ProgressLog:
    """Counts what a worker did (read, applied, skipped, dead, and the engine's own `extra` counts), logged
    every `every_s` seconds: enough to see a worker is alive and working. With `stats_key` the counts are
    also summed over the group's workers in Redis (the Faust engine's, in /metrics)."""

    def __init__(self, redis: Redis, extra: tuple[str, ...] = (), stats_key: str | None = None) -> None:
        self.redis = redis
        self.extra = extra
        self.stats_key = stats_key
        self.counts = dict.fromkeys(("read", "applied", "skipped", "dead", *extra), 0)

    def batch(self, read: int, result: BatchResult) -> None:
        self.counts["read"] += read
        self.counts["applied"] += result.applied
        self.counts["skipped"] += result.skipped
        self.counts["dead"] += result.dead

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    async def run(self, stop: asyncio.Event, every_s: float = 10.0) -> None:
        last = dict(self.counts)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            delta = {k: v - last[k] for k, v in self.counts.items()}
            last = dict(self.counts)
            if not any(delta.values()):
                continue
            extra = "".join(
                f"{'; ' if i == 0 else ', '}{delta[k]} {k.replace('_', ' ')}" for i, k in enumerate(self.extra)
            )
            log.info(
                "last %.0fs: %d read, %d applied, %d skipped, %d dead%s",
                every_s, delta["read"], delta["applied"], delta["skipped"], delta["dead"], extra,
            )  # fmt: skip
            if self.stats_key is not None:
                with contextlib.suppress(RedisError, OSError):  # summed over the group's workers
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for name, n in delta.items():
                            pipe.hincrby(self.stats_key, name, n)
                        await pipe.execute()


def runs(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged [first, end) runs of the offsets (duplicates allowed)."""
    out: list[tuple[int, int]] = []
    for offset in sorted(set(offsets)):
        if out and out[-1][1] == offset:
            out[-1] = (out[-1][0], offset + 1)
        else:
            out.append((offset, offset + 1))
    return out


class PartitionProgress:
    """Applied offsets of one partition. `next` is the first offset not known to be applied (None until
    the worker has read where Redis's progress stands); applied runs above it wait there until the gap
    below them is filled."""

    def __init__(self, next_offset: int | None = None) -> None:
        self.next = next_offset
        self._above: list[tuple[int, int]] = []  # sorted, disjoint [first, end) runs
        self._expected_end = 0  # offsets below this exist (the engine said it starts there, or delivered)

    def start_at(self, next_offset: int) -> None:
        """Where the progress stands (from Redis); runs already collected are kept."""
        self.next = next_offset
        self._settle()

    def expect(self, end: int) -> None:
        """Every offset below `end` exists (e.g. the engine's committed offset): a gap if not applied."""
        self._expected_end = max(self._expected_end, end)

    def add(self, offsets: Iterable[int]) -> None:
        """Mark offsets applied (or known not to hold an event: transaction markers, compacted away)."""
        for first, end in runs(offsets):
            self._expected_end = max(self._expected_end, end)
            self._above.append((first, end))
        self._above.sort()
        merged: list[tuple[int, int]] = []
        for first, end in self._above:
            if merged and first <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((first, end))
        self._above = merged
        self._settle()

    def gaps(self) -> list[tuple[int, int]]:
        """[first, end) ranges below the highest known offset that are not applied."""
        if self.next is None:
            return []
        out = []
        cursor = self.next
        for first, end in self._above:
            if first > cursor:
                out.append((cursor, first))
            cursor = max(cursor, end)
        if self._expected_end > cursor:
            out.append((cursor, self._expected_end))
        return out

    def _settle(self) -> None:
        if self.next is None:
            return
        while self._above and self._above[0][0] <= self.next:
            self.next = max(self.next, self._above.pop(0)[1])
