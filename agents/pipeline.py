"""One batch, start to end, behind a small interface: validate → apply (plan and write) → publish.

    batch = Batch.of(records)                  # or Batch(groups): each partition's records in offset order, once
    validated = await processor.validate(batch)    # parsed; the bad ones become dead letters (not sent yet)
    applying = await processor.apply(validated)    # dead letters sent, orgs registered; planned and written
                                                   # per org, in parts; the last part left in flight
    result = await processor.complete(applying)    # conflicts re-planned; on replicas
    await processor.publish(result.orgs)           # the changefeed, from the marks the apply left

`process(batch)` is all but the publish in one call, and isolates a record a data fault comes from (it is
dead-lettered, the rest applied); `process(batch, generation=g)` applies to one generation only (a
rebuild's). `validate` and `apply` apart let a worker validate a batch while Redis writes the last part of
the one before (agents/worker.py). Independent of Kafka clients, so it can be driven by either engine, a
rebuild, a benchmark or a tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
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
from tables import generations, keys
from tables.aggregates.base import NeedState
from tables.buckets import Retention
from tables.changefeed import Changefeed, orgs_with_marks
from tables.connections import replication
from tables.erase import PublicationFence
from tables.faults import is_data_fault
from tables.generations import Generations, GenerationsChanged
from tables.queries import list_orgs
from tables.state import OrgState, StateQuery, StateReader, as_after
from tables.writer import OrgWrite, Writer

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 50
# The bound never cuts an org's part into slices of fewer events than about this (`BatchProcessor._parts`), and a
# write of no more events is applied even over it (a chat-history record of the backfill plans ~40 operations).
MIN_SCRIPT_EVENTS = 20
# The operations per event a topic is first estimated at (`BatchProcessor._learn`): high, so a worker's first
# parts are small rather than over the bound.
FIRST_RATE = 25.0
# Parts are cut to this share of `apply_script_ops` by the estimate, so that an estimate a little short (a
# topic's operations per event vary by a fifth or so) rarely makes a write over the bound, planned again.
FILL = 0.8


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
class Validated:
    """A validated batch: its valid events by org, its dead letters, how many records it had."""

    by_org: dict[str, list[Event]]
    dead: list[DeadLetter]
    n_records: int
    now_ms: int


# A part's apply in flight, and the writes it applies
Inflight = tuple["asyncio.Task[dict[str, str]]", list[OrgWrite]]


@dataclass
class Applying:
    """A batch `apply` wrote all but its last part of (in flight); `complete` completes it."""

    validated: Validated
    started: bool = False  # False: a rebuild runs or the generations changed: `complete` applies it whole
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


@dataclass
class Batch:
    """What the processor takes: records grouped by partition, each group in offset order, each record once
    (as a kafka consumer's `getmany` gives them: the worker wraps its groups without copying)."""

    groups: Sequence[Group]

    @classmethod
    def of(cls, records: Iterable[Record]) -> Batch:
        """Records in any order, a record possibly more than once (a delivery twice counts as one)."""
        groups: dict[tuple[str, int], list[Record]] = {}
        for r in _in_offset_order(records):
            groups.setdefault((r.topic, r.partition), []).append(r)
        return cls([(topic, partition, rs) for (topic, partition), rs in groups.items()])

    def __len__(self) -> int:
        return sum(len(rs) for _, _, rs in self.groups)

    def records(self) -> list[Record]:
        return [Record(topic, partition, r.offset, r.key, r.value) for topic, partition, rs in self.groups for r in rs]


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
        self.send_changes = publish
        self.writer = Writer(redis)
        self.replication = replication(redis, settings)
        self.fence = PublicationFence(redis, settings.erasure_secret, self.replication)
        self.changefeed = Changefeed(redis, self.fence)
        self.reader = StateReader(redis)
        self.limits = Limits.from_settings(settings)
        self.planner = Planner(PriceTable.load(settings.price_table), Retention.from_settings(settings))
        # Redis operations per event of each topic in the writes planned lately (`_learn`): what the parts
        # are cut by (`_parts`). On the backfill a chat-history record plans ~40, a judgement ~27, an
        # observation ~12, a chat message ~8 (its changefeed marks counted).
        self._rates: dict[str, float] = {}
        self._generations_marked = False  # generations.mark_generations, before the first apply

    async def validate(self, batch: Batch, *, step: int = 2000) -> Validated:
        """Parse every record: valid events by org, and dead letters. It yields every `step` records, so an
        apply in flight is sent out and its reply read meanwhile."""
        now_ms = int(time.time() * 1000)
        by_org: dict[str, list[Event]] = {}
        dead: list[DeadLetter] = []
        for topic, partition, records in batch.groups:
            for i in range(0, len(records), step):
                self._validate_part(topic, partition, records[i : i + step], now_ms, by_org, dead)
                await asyncio.sleep(0)
        return Validated(by_org, dead, len(batch), now_ms)

    def _validate_part(
        self,
        topic: str,
        partition: int,
        records: Sequence[RawRecord],
        now_ms: int,
        by_org: dict[str, list[Event]],
        dead: list[DeadLetter],
    ) -> None:
        limits = self.limits
        for r in records:
            try:
                ev = parse(topic, r.key, r.value, now_ms, limits)
            except InvalidEvent as exc:
                dead.append(DeadLetter(Record(topic, partition, r.offset, r.key, r.value), exc.reason))
                continue
            except Exception as exc:  # a bug must not stop the stream: the event is kept, with why
                log.exception("validating %s[%d]@%d failed", topic, partition, r.offset)
                dead.append(
                    DeadLetter(Record(topic, partition, r.offset, r.key, r.value), f"could not be validated: {exc!r}")
                )
                continue
            ev.src_topic, ev.src_partition, ev.src_offset = topic, partition, r.offset
            org_events = by_org.get(ev.org)
            if org_events is None:
                org_events = by_org[ev.org] = []
            org_events.append(ev)

    async def process(self, batch: Batch, *, generation: int | None = None) -> BatchResult:
        """Validate, apply and complete a batch (its publication is the caller's: `publish`). A data fault
        (`is_data_fault`) isolates the record(s) causing it (`_isolate`). `generation`: apply to that
        generation only (a rebuild's): invalid records are skipped, not dead-lettered again, and a record
        isolated is skipped too."""

        async def once(part: Batch) -> BatchResult:
            validated = await self.validate(part)
            if generation is not None:
                return await self._apply_to(validated, generation)
            return await self.complete(await self.apply(validated))

        try:
            return await once(batch)
        except Exception as exc:
            if not is_data_fault(exc):
                raise
            return await self._isolate(batch.records(), exc, once, dead_letter=generation is None)

    async def _isolate(
        self,
        records: list[Record],
        exc: Exception,
        apply_part: Callable[[Batch], Awaitable[BatchResult]],
        *,
        dead_letter: bool = True,
    ) -> BatchResult:
        """Apply a batch whose processing failed on a data fault: in halves, and halves of the halves that fail
        again, until each record that still fails is alone; those are dead-lettered with the exception as
        reason (and counted, `aia_records_quarantined`), the rest applied. The records are in offset order
        per partition, and the parts are applied in that order. A record that cannot be processed never
        stops the worker. `apply_part`: how a part is applied (a rebuild's: to its generation, `dead_letter`
        False, as the live worker dead-lettered the record already)."""
        log.error(
            "a batch of %d record(s) failed (%s: %s); applying it in parts to isolate the record(s) causing it",
            len(records), type(exc).__name__, str(exc)[:300],
        )  # fmt: skip
        total = BatchResult(dead=0)

        async def attempt(part: list[Record]) -> None:
            try:
                result = await apply_part(Batch.of(part))
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

    async def apply(self, validated: Validated) -> Applying:
        """Send the batch's dead letters and apply it, all but its last part, which is left in flight;
        `complete` completes it. A batch applied while a rebuild runs is applied whole there."""
        if validated.dead:
            # Before the batch's offsets can be committed, so no bad event is ever lost.
            await self.send_dead_letters(validated.dead)
        if not self._generations_marked:
            await generations.mark_generations(self.redis)
            self._generations_marked = True
        await self._register(validated.by_org)
        pending = Applying(validated)
        gens = await Generations.read(self.redis)
        if gens.building is None:
            pending.gens, pending.result = gens, BatchResult(dead=len(validated.dead), orgs=set(validated.by_org))
            try:
                pending.inflight = await self._apply_overlapped(
                    validated.by_org, validated.now_ms, gens, pending.result, pending.done
                )
                pending.started = True
            except GenerationsChanged:
                log.info("the generations changed while applying a batch: applying it again")
        return pending

    async def complete(self, pending: Applying) -> BatchResult:
        """Settle the part `apply` left in flight (re-planning what met a conflict), and wait for the batch's
        writes to be on replicas. Its counters are published by `publish`, from the marks its apply left."""
        p = pending.validated
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

    async def _apply_whole(self, p: Validated) -> tuple[Generations, BatchResult, list[tuple[OrgWrite, OrgState]]]:
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
        last part's apply is returned in flight (`complete` settles it); the applied ones go to `done`.

        A part whose predecessor met a conflict is not trusted: it is planned again once that one is
        through (`_apply`, serially). So the guards, not the overlap, decide what is written."""
        parts = self._parts(by_org)
        inflight: Inflight | None = None
        read: Read | None = None
        try:
            k = -1
            while (k := k + 1) < len(parts):
                part = parts[k]
                after = {w.org: w for w in inflight[1]} if inflight else None
                writes, rest = await self._plan_within(part, now_ms, gens.current, after=after, read=read)
                read = None
                if inflight is not None:
                    task, previous = inflight
                    inflight = None
                    if not await self._settle(await task, previous, now_ms, gens, result, done):
                        done += await self._apply(part, now_ms, gens, result, gens.current)  # planned again
                        continue
                if rest:  # the events an org's write could not hold: applied next, before its next events
                    parts[k + 1 : k + 1] = self._parts(rest, events=0)
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

    async def publish(self, orgs: Iterable[str]) -> int:
        """Publish the orgs' counters that applies marked and nobody has published yet, to the compacted
        analytics-aggregates topic (tables/changefeed.py): the records sent. Called after each batch for its
        orgs, and by the sweep for every org with marks."""
        if self.send_changes is None:
            return 0
        return await self.changefeed.publish(orgs, self.send_changes)

    async def publish_all(self) -> int:
        """The sweep: publish every org's marked counters (those a dead worker left, those a busy lock left)."""
        if self.send_changes is None:
            return 0
        return await self.publish(await orgs_with_marks(self.redis, await list_orgs(self.redis)))

    async def _apply_to(self, v: Validated, generation: int) -> BatchResult:
        """Apply a validated batch to one generation only (a rebuild's); its dead letters are not sent."""
        result = BatchResult(dead=len(v.dead), orgs=set(v.by_org))
        gens = await Generations.read(self.redis)
        await self._register(v.by_org)
        await self._apply(v.by_org, v.now_ms, gens, result, generation)
        if v.by_org:
            await self.replication.wait(v.by_org)
        result.skipped = v.n_records - len(v.dead) - result.applied
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
        """Plan and apply every org's write to generation `gen`, re-planning the orgs that conflict: in parts
        of at most `apply_script_ops` operations per org's script (`_parts`, `_plan_within`), one after the
        other."""
        done: list[tuple[OrgWrite, OrgState]] = []
        parts = self._parts(by_org, events=0)
        k = -1
        while (k := k + 1) < len(parts):
            applied, rest = await self._apply_part(parts[k], now_ms, gens, result, gen)
            done += applied
            if rest:  # the events an org's write could not hold: applied next, before its next events
                parts[k + 1 : k + 1] = self._parts(rest, events=0)
        return done

    async def _apply_part(
        self, by_org: dict[str, list[Event]], now_ms: int, gens: Generations, result: BatchResult, gen: int
    ) -> tuple[list[tuple[OrgWrite, OrgState]], dict[str, list[Event]]]:
        """Plan and apply one part (`_plan_within`), re-planning the orgs that conflict: what was applied, and
        the events of the orgs whose writes could not hold them all (to apply next)."""
        pending = by_org
        done: list[tuple[OrgWrite, OrgState]] = []
        left: dict[str, list[Event]] = {}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result.attempts = attempt
            writes, rest = await self._plan_within(pending, now_ms, gen)
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
            left.update((org, items) for org, items in rest.items() if org not in conflicts)
            if not conflicts:
                return done, left
            log.debug("re-planning %d org(s) after conflicts: %s", len(conflicts), conflicts)
            pending = {org: pending[org] for org in conflicts}  # all of their events, cut again
            await asyncio.sleep(0.002 * attempt)  # let the other writer finish before re-reading
        raise RuntimeError(f"gave up applying a batch after {MAX_ATTEMPTS} conflicting attempts: {conflicts}")

    def _parts(self, by_org: dict[str, list[Event]], events: int | None = None) -> list[dict[str, list[Event]]]:
        """The batch's parts: about `apply_chunk` events each (`events`: instead), and no org's script
        estimated over `apply_script_ops` operations, by the operations per event of each topic in the writes
        planned lately (`_cost`); `_plan_within` holds a write that is over it anyway to the bound."""
        budget = self.settings.apply_script_ops
        size = self.settings.apply_chunk if events is None else events
        return _parts(by_org, size, budget * FILL, self._cost if budget else None, MIN_SCRIPT_EVENTS)

    def _cost(self, ev: Event) -> float:
        """The operations an event is estimated to add to its org's script (`_learn`)."""
        return self._rates.get(ev.src_topic, FIRST_RATE)

    def _learn(self, w: OrgWrite, ops: int) -> None:
        """Follow the operations per event of each topic in the writes planned: a write's operations against
        what the rates predicted for its events, each topic's rate corrected by its share of the prediction
        (a write of one topic, the usual one, moves that topic's rate 0.3 of the way to what it did: a moving
        average)."""
        rates = self._rates
        counts: dict[str, int] = {}
        for ev in w.items:
            counts[ev.src_topic] = counts.get(ev.src_topic, 0) + 1
        predicted = {topic: n * rates.get(topic, FIRST_RATE) for topic, n in counts.items()}
        total = sum(predicted.values())
        if total:
            error = ops / total - 1
            for topic, p in predicted.items():
                rates[topic] = max(0.1, rates.get(topic, FIRST_RATE) * (1 + 0.3 * p / total * error))

    async def _plan_within(
        self,
        by_org: dict[str, list[Event]],
        now_ms: int,
        gen: int,
        after: dict[str, OrgWrite] | None = None,
        read: Read | None = None,
    ) -> tuple[list[OrgWrite], dict[str, list[Event]]]:
        """`plan`, with every org's write held to `apply_script_ops` operations: an org whose write would do
        more (with more than `MIN_SCRIPT_EVENTS` events) is planned again on its first events only, as many
        as its write's operations spread by the rates say fit (again until it fits). Returns the writes, and
        per such org the events left over, to be applied after these writes and before its next events. Each
        write planned teaches the rates (`_learn`)."""
        budget = self.settings.apply_script_ops
        writes: list[OrgWrite] = []
        rest: dict[str, list[Event]] = {}
        planned = await self.plan(by_org, now_ms, gen, after=after, read=read)
        while planned:
            heads: dict[str, list[Event]] = {}
            for w in planned:
                ops = w.operations() + 1  # and the guard of the generations' version (`_guard_generations`)
                self._learn(w, ops)
                if budget and ops > budget and len(w.items) > MIN_SCRIPT_EVENTS:
                    n = self._fitting(w.items, ops, budget * FILL)
                    heads[w.org] = w.items[:n]
                    rest[w.org] = w.items[n:] + rest.get(w.org, [])
                else:
                    writes.append(w)
            if heads:
                log.debug("%d org(s) planned over %d operations: planned again on fewer events", len(heads), budget)
            planned = await self.plan(heads, now_ms, gen, after=after) if heads else []
        return writes, rest

    def _fitting(self, items: list[Event], ops: int, target: float) -> int:
        """How many of the first items a write of `ops` operations for all of them holds within `target`: its
        operations spread over the items by their rates (`_cost`); at least `MIN_SCRIPT_EVENTS`, never all."""
        costs = [self._cost(ev) for ev in items]
        scale = ops / sum(costs)
        n, acc = 0, 0.0
        for c in costs:
            acc += c * scale
            if acc > target:
                break
            n += 1
        return min(len(items) - 1, max(MIN_SCRIPT_EVENTS, n))

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


def _in_offset_order(records: Iterable[Record]) -> list[Record]:
    """Each record once, in offset order per partition (what the planner wants; a record delivered twice
    counts as one)."""
    unique = {(r.topic, r.partition, r.offset): r for r in reversed(list(records))}
    return sorted(unique.values(), key=lambda r: (r.topic, r.partition, r.offset))


def _guard_generations(w: OrgWrite, gens: Generations) -> None:
    """Applied only if the org's copy of the generations' version is still what the plan read: a rebuild's
    start or switch in between makes the batch apply again, to the generations there are then. A write to
    the generation served marks its counters for the changefeed (one a rebuild builds is not published)."""
    w.guard(keys.org_generations(w.org), "v", w.state.generations_version)
    w.publish = w.gen == gens.current


def _generations_changed(conflicts: dict[str, str]) -> bool:
    return any(keys.org_generations(org) in reason for org, reason in conflicts.items())


def _parts(
    by_org: dict[str, list[Event]],
    size: int,
    budget: float = 0,
    cost: Callable[[Event], float] | None = None,
    least: int = 1,
) -> list[dict[str, list[Event]]]:
    """The batch in parts of about `size` events (0: no bound) and no org's slice estimated at more than
    `budget` (0: no bound) by `cost`, an event's estimated operations (None: each event 1, so `budget` is
    a number of events), though the budget never cuts an org into more slices than one per `least` events;
    each org's items kept in their order, so every partition's records stay in offset order from part to
    part. An org is cut into as few slices as both bounds allow (its share of the `size` parts, and what
    `budget` needs), of about equal estimated cost, spread evenly over the parts: an org with few events is
    not cut into many small scripts because a large one is."""
    total = sum(len(items) for items in by_org.values())
    by_size = -(-total // size) if size > 0 else 1
    slices: dict[str, int] = {}
    costs: dict[str, list[float]] = {}
    for org, items in by_org.items():
        k = -(-len(items) * by_size // total) if by_size > 1 else 1
        if budget > 0:
            if cost is None:
                need = -(-len(items) // int(budget))
            else:
                c = costs[org] = [cost(ev) for ev in items]
                need = math.ceil(sum(c) / budget)
            k = max(k, min(need, max(1, len(items) // least)))
        slices[org] = k
    n = max(slices.values(), default=1)
    if n <= 1:
        return [by_org]
    parts: list[dict[str, list[Event]]] = [{} for _ in range(n)]
    for org, items in by_org.items():
        k = slices[org]
        for j, chunk in enumerate(_cut(items, k, costs.get(org))):
            if chunk:
                parts[j * n // k][org] = chunk
    return [part for part in parts if part]


def _cut(items: list[Event], k: int, costs: list[float] | None) -> list[list[Event]]:
    """The items in k slices in their order: of about equal cost (None: of equal numbers)."""
    if costs is None or k <= 1:
        return [items[j * len(items) // k : (j + 1) * len(items) // k] for j in range(k)]
    total = sum(costs)
    out: list[list[Event]] = []
    start, acc = 0, 0.0
    for i, c in enumerate(costs):
        acc += c
        if len(out) < k - 1 and acc >= total * (len(out) + 1) / k:
            out.append(items[start : i + 1])
            start = i + 1
    out.append(items[start:])
    return out
