"""One batch, start to end: validate, dead-letter the bad, plan and apply the good atomically per org.

Independent of Kafka clients, so it can be driven by the worker (agents/worker.py), a benchmark or a tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from agents.planner import Planner, state_query
from streams.deadletter import DeadLetter, Record
from streams.exceptions import InvalidEvent
from streams.prices import PriceTable
from streams.schemas import Event, Limits, parse
from streams.settings import Settings
from tables import keys
from tables.aggregates.base import NeedState
from tables.buckets import Retention
from tables.changefeed import Changefeed, orgs_with_marks
from tables.connections import Replication, wait_replicas
from tables.erase import PublicationFence
from tables.faults import is_data_fault
from tables.generations import Generations, GenerationsChanged
from tables.queries import list_orgs
from tables.state import OrgState, StateQuery, StateReader, as_after
from tables.writer import OrgWrite, Writer

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 50


def fault_reason(exc: BaseException) -> str:
    """The dead-letter reason of a record its batch's processing failed on."""
    return f"processing it failed ({type(exc).__name__}: {str(exc)[:300]}); the rest of its batch was applied"


@dataclass
class BatchResult:
    applied: int = 0  # events that changed an aggregate (new, or a replacing observation)
    skipped: int = 0  # already applied (replay) or duplicates
    dead: int = 0
    orgs: set[str] = field(default_factory=set)
    attempts: int = 1


@dataclass
class Prepared:
    """A validated batch: its valid events by org, its dead letters, how many records it had."""

    by_org: dict[str, list[Event]]
    dead: list[DeadLetter]
    n_records: int
    now_ms: int


# A part's apply in flight, and the writes it applies
Inflight = tuple["asyncio.Task[dict[str, str]]", list[OrgWrite]]


@dataclass
class Pending:
    """A batch `start` applied all but its last part of (in flight); `finish` completes it."""

    prepared: Prepared
    started: bool = False  # False: a rebuild runs or the generations changed: `finish` applies it whole
    gens: Generations = field(default_factory=lambda: Generations(0, None, None))
    result: BatchResult = field(default_factory=BatchResult)
    done: list[tuple[OrgWrite, OrgState]] = field(default_factory=list)
    inflight: Inflight | None = None


class RawRecord(Protocol):
    """What validation reads of a record: ours (streams.deadletter.Record) or aiokafka's ConsumerRecord."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


# A partition's records: (topic named without prefix, partition, records in offset order, each once)
Group = tuple[str, int, Sequence[RawRecord]]
# The state queries of a batch's orgs and what Redis answered (BatchProcessor.read)
Read = tuple[dict[str, StateQuery], dict[str, OrgState]]
SendDeadLetters = Callable[[list[DeadLetter]], Awaitable[None]]
# (record key, record value) pairs for the compacted analytics-aggregates topic
Publish = Callable[[list[tuple[bytes, bytes]]], Awaitable[None]]


class BatchProcessor:
    def __init__(
        self, settings: Settings, redis: Redis, send_dead_letters: SendDeadLetters, publish: Publish | None = None
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.send_dead_letters = send_dead_letters
        self.publish = publish
        self.writer = Writer(redis)
        self.fence = PublicationFence(redis, settings.erasure_secret)
        self.changefeed = Changefeed(redis, self.fence)
        self.reader = StateReader(redis)
        replicas = wait_replicas(settings.redis_url, settings.redis_wait_replicas)
        self.replication = Replication(redis, replicas, settings.redis_wait_timeout_ms)
        self.limits = Limits.from_settings(settings)
        self.planner = Planner(PriceTable.load(settings.price_table), Retention.from_settings(settings))

    def validate(
        self, records: Sequence[Record], now_ms: int, *, ordered: bool = False
    ) -> tuple[dict[str, list[Event]], list[DeadLetter]]:
        """Valid events by org, and dead letters. The planner wants each record once, in offset order per
        partition: `ordered` says the records already are (as the kafka worker reads them)."""
        if not ordered:
            records = _in_offset_order(records)
        groups: dict[tuple[str, int], list[Record]] = {}
        for r in records:
            groups.setdefault((r.topic, r.partition), []).append(r)
        return self.validate_groups([(topic, partition, rs) for (topic, partition), rs in groups.items()], now_ms)

    def validate_groups(self, groups: Iterable[Group], now_ms: int) -> tuple[dict[str, list[Event]], list[DeadLetter]]:
        """`validate` of records grouped by partition, each group's in offset order and each record once."""
        by_org: dict[str, list[Event]] = {}
        dead: list[DeadLetter] = []
        limits = self.limits
        for topic, partition, records in groups:
            for r in records:
                try:
                    ev = parse(topic, r.key, r.value, now_ms, limits)
                except InvalidEvent as exc:
                    dead.append(DeadLetter(Record(topic, partition, r.offset, r.key, r.value), exc.reason))
                    continue
                except Exception as exc:  # a bug must not stop the stream: the event is kept, with why
                    log.exception("validating %s[%d]@%d failed", topic, partition, r.offset)
                    dead.append(
                        DeadLetter(
                            Record(topic, partition, r.offset, r.key, r.value), f"could not be validated: {exc!r}"
                        )
                    )
                    continue
                ev.src_topic, ev.src_partition, ev.src_offset = topic, partition, r.offset
                org_events = by_org.get(ev.org)
                if org_events is None:
                    org_events = by_org[ev.org] = []
                org_events.append(ev)
        return by_org, dead

    async def process(self, records: Sequence[Record], *, ordered: bool = False) -> BatchResult:
        """Apply a batch; `ordered`: each record once, in offset order per partition (see `validate`). A
        data fault (`is_data_fault`) isolates the record(s) causing it (`isolate`)."""
        if not ordered:
            records = _in_offset_order(records)
        try:
            return await self._process(records)
        except Exception as exc:
            if not is_data_fault(exc):
                raise
            return await self.isolate(list(records), exc)

    async def _process(self, records: Sequence[Record]) -> BatchResult:
        now_ms = int(time.time() * 1000)
        by_org, dead = self.validate(records, now_ms, ordered=True)
        return await self.finish(await self.start(Prepared(by_org, dead, len(records), now_ms)))

    async def process_groups(self, groups: Sequence[Group]) -> BatchResult:
        """Apply a batch of records grouped by partition (each group in offset order, each record once).
        A data fault isolates the record(s) causing it (`isolate`)."""
        try:
            return await self.finish(await self.start(await self.prepare(groups)))
        except Exception as exc:
            if not is_data_fault(exc):
                raise
            records = [
                Record(topic, partition, r.offset, r.key, r.value) for topic, partition, rs in groups for r in rs
            ]
            return await self.isolate(records, exc)

    async def isolate(
        self,
        records: list[Record],
        exc: Exception,
        apply: Callable[[list[Record]], Awaitable[BatchResult]] | None = None,
        *,
        dead_letter: bool = True,
    ) -> BatchResult:
        """Apply a batch whose processing failed on a data fault: in halves, and halves of the halves that fail
        again, until each record that still fails is alone; those are dead-lettered with the exception as
        reason (and counted, `aia_records_quarantined`), the rest applied. The records are in offset order
        per partition, and the parts are applied in that order. A record that cannot be processed never
        stops the worker. `apply`: how a part is applied (a rebuild's: to its generation, `dead_letter`
        False, as the live worker dead-lettered the record already)."""
        apply_part = apply or self._process
        log.error(
            "a batch of %d record(s) failed (%s: %s); applying it in parts to isolate the record(s) causing it",
            len(records), type(exc).__name__, str(exc)[:300],
        )  # fmt: skip
        total = BatchResult(dead=0)

        async def attempt(part: list[Record]) -> None:
            try:
                result = await apply_part(part)
            except Exception as exc:
                if not is_data_fault(exc):
                    raise
                if len(part) > 1:
                    half = len(part) // 2
                    await attempt(part[:half])
                    await attempt(part[half:])
                    return
                (record,) = part
                log.error(
                    "record %s[%d]@%d isolated and dead-lettered: %s: %s",
                    record.topic, record.partition, record.offset, type(exc).__name__, str(exc)[:300],
                )  # fmt: skip
                if dead_letter:
                    await self.send_dead_letters([DeadLetter(record, fault_reason(exc))])
                    await self.redis.hincrby(keys.quarantined(), record.topic, 1)
                total.dead += 1
                return
            total.applied += result.applied
            total.skipped += result.skipped
            total.dead += result.dead
            total.orgs |= result.orgs
            total.attempts = max(total.attempts, result.attempts)

        half = len(records) // 2
        for part in (records[:half], records[half:]) if half else (records,):
            await attempt(part)
        return total

    async def prepare(self, groups: Sequence[Group], *, step: int = 2000) -> Prepared:
        """Validate a batch of records grouped by partition (see `process_groups`): the work `start` and
        `finish` take over, which a worker does while Redis applies the last part of the batch before. It
        yields every `step` records, so the apply in flight is sent out and its reply read meanwhile."""
        now_ms = int(time.time() * 1000)
        by_org: dict[str, list[Event]] = {}
        dead: list[DeadLetter] = []
        for topic, partition, records in groups:
            for i in range(0, len(records), step):
                some, letters = self.validate_groups([(topic, partition, records[i : i + step])], now_ms)
                for org, events in some.items():
                    by_org.setdefault(org, []).extend(events)
                dead += letters
                await asyncio.sleep(0)
        return Prepared(by_org, dead, sum(len(rs) for _, _, rs in groups), now_ms)

    async def start(self, prepared: Prepared) -> Pending:
        """Send the batch's dead letters and apply it, all but its last part, which is left in flight;
        `finish` completes it. A batch applied while a rebuild runs is applied whole here."""
        if prepared.dead:
            # Before the batch's offsets can be committed, so no bad event is ever lost.
            await self.send_dead_letters(prepared.dead)
        await self._register(prepared.by_org)
        pending = Pending(prepared)
        gens = await Generations.read(self.redis)
        if gens.building is None:
            pending.gens, pending.result = gens, BatchResult(dead=len(prepared.dead), orgs=set(prepared.by_org))
            try:
                pending.inflight = await self._apply_overlapped(
                    prepared.by_org, prepared.now_ms, gens, pending.result, pending.done
                )
                pending.started = True
            except GenerationsChanged:
                log.info("the generations changed while applying a batch: applying it again")
        return pending

    async def finish(self, pending: Pending) -> BatchResult:
        """Settle the part `start` left in flight (re-planning what met a conflict), and wait for the batch's
        writes to be on replicas. Its counters are published by `publish_changes`, from the marks its apply
        left."""
        p = pending.prepared
        gens, result = pending.gens, pending.result
        try:
            if not pending.started:
                raise GenerationsChanged
            if pending.inflight is not None:
                task, writes = pending.inflight
                pending.inflight = None
                await self._settle(await task, writes, p.now_ms, gens, result, pending.done)
        except GenerationsChanged:
            gens, result, _ = await self._apply_whole(p)
        result.skipped = p.n_records - len(p.dead) - result.applied
        if p.by_org:
            # On replicas before anyone records the batch as applied (tables/connections.py)
            await self.replication.wait(p.by_org)
        return result

    async def _apply_whole(self, p: Prepared) -> tuple[Generations, BatchResult, list[tuple[OrgWrite, OrgState]]]:
        """Apply the batch serially to the generations that are there (both, while a rebuild runs)."""
        while True:
            gens = await Generations.read(self.redis)
            result = BatchResult(dead=len(p.dead), orgs=set(p.by_org))  # counts of the served generation's apply
            try:
                # While a rebuild runs, the batch is applied to the generation being built too (keys.py).
                if gens.building is not None:
                    await self._apply(p.by_org, p.now_ms, gens, BatchResult(), gens.building)
                done = await self._apply(p.by_org, p.now_ms, gens, result, gens.current)
                return gens, result, done
            except GenerationsChanged:
                log.info("the generations changed while applying a batch: applying it again")

    async def _apply_overlapped(
        self,
        by_org: dict[str, list[Event]],
        now_ms: int,
        gens: Generations,
        result: BatchResult,
        done: list[tuple[OrgWrite, OrgState]],
    ) -> Inflight | None:
        """Apply the batch in parts of about `apply_chunk` events, each part read and planned while Redis
        applies the one before: planned on what Redis will hold after it (`tables.state.as_after`). The
        last part's apply is returned in flight (`finish` settles it); the applied ones go to `done`.

        A part whose predecessor met a conflict is not trusted: it is planned again once that one is
        through (`_apply`, serially). So the guards, not the overlap, decide what is written."""
        parts = _parts(by_org, self.settings.apply_chunk)
        inflight: Inflight | None = None
        read: Read | None = None
        try:
            for k, part in enumerate(parts):
                after = {w.org: w for w in inflight[1]} if inflight else None
                writes = await self.plan(part, now_ms, gens.current, after=after, read=read)
                read = None
                if inflight is not None:
                    task, previous = inflight
                    inflight = None
                    if not await self._settle(await task, previous, now_ms, gens, result, done):
                        done += await self._apply(part, now_ms, gens, result, gens.current)  # planned again
                        continue
                for w in writes:
                    _guard_generations(w, gens)
                # The next part's state is read before this part's apply reaches Redis, so the read does
                # not wait behind it; the next plan assumes this part's writes (`as_after`).
                next_read = asyncio.create_task(self.read(parts[k + 1], gens.current)) if k + 1 < len(parts) else None
                await asyncio.sleep(0)
                inflight = (asyncio.create_task(self.writer.apply(writes)), writes)
                if next_read is not None:
                    read = await next_read
            # The last part's apply starts (its script is built and sent) before the caller goes on.
            await asyncio.sleep(0)
            last, inflight = inflight, None
            return last
        finally:
            if inflight is not None:  # an error while planning: let the apply in flight finish first
                with contextlib.suppress(Exception):
                    await inflight[0]

    async def _settle(
        self,
        conflicts: dict[str, str],
        writes: list[OrgWrite],
        now_ms: int,
        gens: Generations,
        result: BatchResult,
        done: list[tuple[OrgWrite, OrgState]],
    ) -> bool:
        """Count an applied part; re-plan and apply the orgs that met a conflict. False when there were any."""
        if _generations_changed(conflicts):
            raise GenerationsChanged
        for w in writes:
            if w.org not in conflicts:
                result.applied += w.events
                done.append((w, w.state))
        if not conflicts:
            return True
        log.debug("re-planning %d org(s) after conflicts: %s", len(conflicts), conflicts)
        items = {w.org: w.items for w in writes if w.org in conflicts}
        done += await self._apply(items, now_ms, gens, result, gens.current)
        return False

    async def publish_changes(self, orgs: Iterable[str]) -> int:
        """Publish the orgs' counters that applies marked and nobody has published yet, to the compacted
        analytics-aggregates topic (tables/changefeed.py): the records sent. Called after each batch for its
        orgs, and by the sweep for every org with marks."""
        if self.publish is None:
            return 0
        return await self.changefeed.publish(orgs, self.publish)

    async def publish_all_changes(self) -> int:
        """The sweep: publish every org's marked counters (those a dead worker left, those a busy lock left)."""
        if self.publish is None:
            return 0
        return await self.publish_changes(await orgs_with_marks(self.redis, await list_orgs(self.redis)))

    async def apply_to(self, records: list[Record], generation: int) -> BatchResult:
        """Apply records to one generation only (a rebuild's): invalid ones are skipped, not sent again; a
        data fault isolates its record (`isolate`), which is skipped too."""
        ordered = _in_offset_order(records)
        try:
            return await self._apply_to(ordered, generation)
        except Exception as exc:
            if not is_data_fault(exc):
                raise
            return await self.isolate(ordered, exc, lambda part: self._apply_to(part, generation), dead_letter=False)

    async def _apply_to(self, records: list[Record], generation: int) -> BatchResult:
        now_ms = int(time.time() * 1000)
        by_org, dead = self.validate(records, now_ms, ordered=True)
        result = BatchResult(dead=len(dead), orgs=set(by_org))
        gens = await Generations.read(self.redis)
        await self._register(by_org)
        await self._apply(by_org, now_ms, gens, result, generation)
        if by_org:
            await self.replication.wait(by_org)
        return result

    async def _register(self, orgs: Iterable[str]) -> None:
        """Add the orgs of a batch to the set of orgs before any of their data is written, so no reader
        sees data of an org the org list lacks (an org whose events all fail later is an org with zeros,
        as a registered one is)."""
        named = list(orgs)
        if named:
            await self.redis.sadd(keys.orgs(), *named)

    async def _apply(
        self, by_org: dict[str, list[Event]], now_ms: int, gens: Generations, result: BatchResult, gen: int
    ) -> list[tuple[OrgWrite, OrgState]]:
        """Plan and apply every org's write to generation `gen`, re-planning the orgs that conflict."""
        pending = by_org
        done: list[tuple[OrgWrite, OrgState]] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts = attempt
            writes = await self.plan(pending, now_ms, gen)
            for w in writes:
                _guard_generations(w, gens)
            states = {w.org: w.state for w in writes}
            conflicts = await self.writer.apply(writes)
            if _generations_changed(conflicts):
                raise GenerationsChanged
            for w in writes:
                if w.org not in conflicts:
                    result.applied += w.events
                    done.append((w, states[w.org]))
            if not conflicts:
                return done
            log.debug("re-planning %d org(s) after conflicts: %s", len(conflicts), conflicts)
            pending = {org: pending[org] for org in conflicts}
            await asyncio.sleep(0.002 * attempt)  # let the other writer finish before re-reading
        raise RuntimeError(f"gave up applying a batch after {MAX_ATTEMPTS} conflicting attempts: {conflicts}")

    async def read(self, by_org: dict[str, list[Event]], gen: int) -> Read:
        """Every org's state in generation `gen`, in one round trip."""
        tombstones = await self.fence.tombstones()
        queries = {org: state_query(items, tombstones) for org, items in by_org.items()}
        return queries, await self.reader.read(queries, gen)

    async def plan(
        self,
        by_org: dict[str, list[Event]],
        now_ms: int,
        gen: int,
        after: dict[str, OrgWrite] | None = None,
        read: Read | None = None,
    ) -> list[OrgWrite]:
        """Read every org's state in one round trip (or take `read`, done before) and plan its write; an org
        whose plan needs more conversations (an observation moved to another session) is read again with
        them. `after`: writes applied meanwhile, whose result the plan assumes (`as_after`)."""
        queries, states = read or await self.read(by_org, gen)
        pending = dict(by_org)
        writes: list[OrgWrite] = []
        while pending:
            for org, state in states.items():
                if after and org in after:
                    as_after(state, org, after[org])
            retry: dict[str, list[Event]] = {}
            for org, items in pending.items():
                try:
                    w = self.planner.plan(org, items, states[org], now_ms, gen)
                except NeedState as need:
                    queries[org].convs += sorted(need.conversations - set(queries[org].convs))
                    retry[org] = items
                    continue
                writes.append(w)
            pending = retry
            if pending:
                states = await self.reader.read({org: queries[org] for org in pending}, gen)
        return writes


def _in_offset_order(records: Sequence[Record]) -> list[Record]:
    """Each record once, in offset order per partition (what the planner wants; a record delivered twice
    counts as one)."""
    unique = {(r.topic, r.partition, r.offset): r for r in reversed(records)}
    return sorted(unique.values(), key=lambda r: (r.topic, r.partition, r.offset))


def _guard_generations(w: OrgWrite, gens: Generations) -> None:
    """Applied only if the org's copy of the generations' version is still what the plan read: a rebuild's
    start or switch in between makes the batch apply again, to the generations there are then. A write to
    the generation served marks its counters for the changefeed (one a rebuild builds is not published)."""
    w.guard(keys.org_generations(w.org), "v", w.state.generations_version)
    w.publish = w.gen == gens.current


def _generations_changed(conflicts: dict[str, str]) -> bool:
    return any(keys.org_generations(org) in reason for org, reason in conflicts.items())


def _parts(by_org: dict[str, list[Event]], size: int) -> list[dict[str, list[Event]]]:
    """The batch in parts of about `size` events (0: one part), each org's items kept in their order, so
    every partition's records stay in offset order from part to part."""
    total = sum(len(items) for items in by_org.values())
    if size <= 0 or total <= size:
        return [by_org]
    n = -(-total // size)
    return [
        parts
        for k in range(n)
        if (
            parts := {
                org: chunk
                for org, items in by_org.items()
                if (chunk := items[k * len(items) // n : (k + 1) * len(items) // n])
            }
        )
    ]
