"""The changefeed: publishing the org's marked counters to the compacted `analytics-aggregates` topic.

The apply script marks every published counter it changes (`keys.changefeed_marks`: the counter ->
the number of the apply that last changed it), in the same atomic step as the change. Publishing an
org's marks (`Changefeed.publish`), by whichever worker, at any time:

1. take the org's publication lock (`keys.changefeed_lock`; one publisher per org at a time);
2. read, in one script, a chunk of marks with the hash counters' current values, then the marked
   sets' members (each value read after its mark's number);
3. send a record per counter holding that value, and wait for Kafka's acknowledgement;
4. clear each mark that still holds the apply number read in 2 (one re-marked meanwhile stays);
5. release the lock.

So for every counter the newest record holds a value read after every apply whose change an earlier
record reflected, and no record can overtake a later one: the lock orders the sends, and a change made
after a read leaves a mark that a later publication (after this one's acknowledgement) sends. A worker
that dies between its apply and its publication leaves its marks behind: the next publication of the
org, or the workers' sweep (`orgs_with_marks`, every second), sends them. Nothing depends on which
worker applied what, on replays, or on the order of batches.

A lock whose holder died expires after `LOCK_MS`; a publisher that finds the lock held leaves the org to
the holder and to the sweep (it never waits behind it). The erasure fence (tables/erase.PublicationFence)
wraps every send, as before. A counter whose record cannot be made or sent (a bug; a top-students set
over the broker's message size) is left out alone, logged and counted, and its mark cleared: no counter
can stop the publications.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from redis.asyncio import Redis

from streams.topics import AGGREGATES
from tables import keys
from tables.erase import PublicationFence
from tables.faults import is_publication_fault
from tables.scripts import Script, load

log = logging.getLogger(__name__)

# A lock older than this is a dead publisher's (sends are acknowledged well within it).
LOCK_MS = 30_000
CHUNK = 1000  # marks per snapshot: a script reading about this many counters takes a millisecond or two

SNAPSHOT_LUA = load("tables", "changefeed_snapshot")  # step 2 (tables/lua/changefeed_snapshot.lua)
CLEAR_LUA = load("tables", "changefeed_clear")  # step 4
UNLOCK_LUA = load("tables", "unlock")  # step 5

Send = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]


class Changefeed:
    def __init__(self, redis: Redis, fence: PublicationFence) -> None:
        self.redis = redis
        self.fence = fence
        self._snapshot = Script(redis, SNAPSHOT_LUA)
        self._clear = Script(redis, CLEAR_LUA)
        self._unlock = Script(redis, UNLOCK_LUA)

    async def publish(self, orgs: Iterable[str], send: Send) -> int:
        """Publish the marked counters of the orgs whose lock is free (see the module); the number of
        records sent. An org whose lock is held is left to its holder and to the sweep."""
        token = uuid.uuid4().hex
        wanted = sorted(set(orgs))
        if not wanted:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for org in wanted:
                pipe.set(keys.changefeed_lock(org), token, nx=True, px=LOCK_MS)
            locked = [org for org, ok in zip(wanted, await pipe.execute(), strict=True) if ok]
        sent = 0
        try:
            cursors = dict.fromkeys(locked, 0)
            while cursors:  # each round one chunk of every org's marks, every step one round trip for all
                async with self.redis.pipeline(transaction=False) as pipe:
                    for org, cursor in cursors.items():
                        pipe.hscan(keys.changefeed_marks(org), cursor, count=CHUNK)
                    scanned = await pipe.execute()
                chunks: dict[str, list[str]] = {}
                for org, (cursor, chunk) in zip(list(cursors), scanned, strict=True):
                    names = (m.decode() if isinstance(m, bytes) else str(m) for m in chunk)  # mark -> apply
                    if marks := [m for m in names if m != keys.MARK_SEQUENCE]:
                        chunks[org] = marks
                    if cursor == 0:
                        del cursors[org]
                    else:
                        cursors[org] = cursor
                if chunks:
                    sent += await self._publish_marks(chunks, send)
        finally:
            await self._script_all(self._unlock, [([keys.changefeed_lock(org)], [token]) for org in locked])
        return sent

    async def _publish_marks(self, chunks: dict[str, list[str]], send: Send) -> int:
        """Steps 2 to 4 for a chunk of marks of each org."""
        calls = []
        parsed: dict[str, list[tuple[str, str, str]]] = {}
        for org, marks in chunks.items():
            key_list = [keys.changefeed_marks(org)]
            index: dict[str, int] = {}
            parsed[org] = [keys.parse_counter_mark(m) for m in marks]
            for key, _, _ in parsed[org]:
                if key not in index:
                    key_list.append(key)
                    index[key] = len(key_list)
            calls.append((key_list, [*marks, *(index[k] for k, _, _ in parsed[org])]))
        snapshots = await self._snapshot.run_many(calls)
        sets = [key for org in chunks for key, _, kind in parsed[org] if kind == "z"]
        members: Any = iter(())
        if sets:  # after the marks' numbers were read: a value at least as new as they say
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in sets:
                    pipe.zrange(key, 0, -1, withscores=True)
                members = iter(await pipe.execute())
        now_ms = int(time.time() * 1000)
        records: list[tuple[bytes, bytes]] = []
        clears = []
        for org, (seqs, values) in zip(chunks, snapshots, strict=True):
            for (key, member, kind), value in zip(parsed[org], values, strict=True):
                held = next(members) if kind == "z" else value
                try:
                    record = _record(key, member, kind, held, now_ms)
                except Exception as exc:  # a counter no record can be made of is left out, not retried forever
                    await self._quarantine(key, exc)
                    continue
                if record is not None:
                    records.append(record)
            marks = chunks[org]
            if cleared := [
                arg for mark, seq in zip(marks, seqs, strict=True) if seq is not None for arg in (mark, seq)
            ]:
                clears.append(([keys.changefeed_marks(org)], cleared))
        if records:
            try:
                await self._send(records, send)
            except Exception as exc:
                if not is_publication_fault(exc):
                    raise
                for record in records:  # one at a time, to leave out only the one(s) that cannot be sent
                    try:
                        await self._send([record], send)
                    except Exception as exc:
                        if not is_publication_fault(exc):
                            raise
                        await self._quarantine(record[0].decode(errors="replace"), exc)
        await self._script_all(self._clear, clears)
        return len(records)

    async def _send(self, records: list[tuple[bytes, bytes]], send: Send) -> None:
        out, orgs, token = await self.fence.begin(records)
        try:
            if out:
                await send(out)
        finally:
            await self.fence.end(orgs, token)

    async def _quarantine(self, what: str, exc: Exception) -> None:
        """A counter whose record cannot be made or sent (a bug, or a set over the broker's message size):
        logged and counted (`aia_records_quarantined{topic="analytics-aggregates"}`); its mark is cleared,
        so it cannot stop the publications (the API still serves it)."""
        log.error("changefeed: %s not published: %s: %s", what[:200], type(exc).__name__, str(exc)[:300])
        await self.redis.hincrby(keys.quarantined(), AGGREGATES, 1)

    async def _script_all(self, script: Script, calls: list[Any]) -> None:
        if calls:
            await script.run_many(calls)


def _record(key: str, member: str, kind: str, value: Any, now_ms: int) -> tuple[bytes, bytes] | None:
    """The record of a marked counter holding `value` (a hash counter's, or a set's members and scores);
    None for a hash counter there is none of (expired, or an erased student's field: the erasure
    tombstones it)."""
    if kind == "h":
        return None if value is None else keys.counter_record(key, member, "h", int(value), now_ms)
    counts = {m.decode(): int(score) for m, score in value}
    return keys.counter_record(key, "", "z", counts, now_ms)


async def orgs_with_marks(redis: Redis, orgs: list[str]) -> list[str]:
    """The orgs (of those given) with counters marked but not yet published."""
    if not orgs:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for org in orgs:
            pipe.hlen(keys.changefeed_marks(org))
        counts = await pipe.execute()
    return [org for org, n in zip(orgs, counts, strict=True) if n > 1]  # `#` (the apply count) stays
