"""What every aggregate family shares: the `Family` interface, and the `Batch` a family folds one org's
events into.

A batch of one org is planned in three steps (agents/planner.py), each a loop over the families:
1. `fold`: the events that count (`Counted`: each once, with its conversation's working copy) go to every
   family at once; a family adds to the batch's sums and to the conversations' state what its rule says.
2. `changed`: each conversation the batch changed, before and after, goes to every family; what is
   derived from a conversation's final state (where its session starts, whom its cost counts for, where
   chat history lists it) is written here, so the order of its events does not matter.
3. `flush`: each family writes its sums (`OrgWrite`), with the expiry of what it keeps.

Every family's rule is a function of the set of its events (docs/semantics.md): sums of counts, maxima,
the latest version by (event time, offset, event_id). Buckets of counters (`keys.bucket`) are shared:
a family names its fields, the batch sums them per bucket (`Batch.add`) and writes each once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from redis.asyncio import Redis

from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables import ids, keys
from tables.buckets import Grain, Retention
from tables.conversations import ConversationState, conversation_digest
from tables.writer import OrgWrite

if TYPE_CHECKING:
    from tables.state import OrgState

S = TypeVar("S")


class NeedState(Exception):
    """The plan needs conversations the batch's state read did not include (an observation re-sent with
    another session): read them too and plan again."""

    def __init__(self, conversations: set[str]) -> None:
        super().__init__(f"conversations not read: {sorted(conversations)}")
        self.conversations = conversations


@dataclass(slots=True)
class Counted:
    """The batch's events that count, by kind: each chat message, sentiment judgement and chat-history
    record once in its conversation (with the conversation's working copy, which the conversation's own
    rules have updated already: tables/conversations.py); the observations as they came (their rule is by
    version: `llm_cost`)."""

    messages: list[tuple[ChatMessage, ConversationState, str]] = field(default_factory=list)  # and its mentor as kept
    sentiments: list[tuple[SentimentEvent, ConversationState]] = field(default_factory=list)
    records: list[tuple[Conversation, ConversationState]] = field(default_factory=list)
    observations: list[LlmObservation] = field(default_factory=list)


@dataclass
class Batch:
    """One org's batch being planned: the write it becomes, the state it was planned on, and the sums the
    families gather before writing them."""

    w: OrgWrite
    state: OrgState
    retention: Retention
    prices: PriceTable  # what a model's tokens cost, for an observation that does not say
    arrival_day: int  # the day (epoch day index) the batch is applied: conversations and observations note it
    # (grain, bucket index, field) -> delta: the counters of every family, written per bucket at the end
    buckets: dict[tuple[Grain, int, str], int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)  # topic -> events that counted for the first time
    before: dict[str, ConversationState] = field(default_factory=dict)  # conversation -> as read
    convs: dict[str, ConversationState] = field(default_factory=dict)  # conversation -> the working copy
    _mentors: dict[str, str] = field(default_factory=dict)  # mentor id as sent -> as kept
    _digests: dict[str, int] = field(default_factory=dict)  # conversation id -> `conversation_digest`

    @property
    def org(self) -> str:
        return self.w.org

    @property
    def gen(self) -> int:
        return self.w.gen

    def count(self, ev: Event) -> None:
        """The event counts for the first time (`meta`'s `events|<topic>`)."""
        self.counted[ev.src_topic] = self.counted.get(ev.src_topic, 0) + 1

    def add(self, grains: tuple[Grain, ...], ts_ms: int, fields: tuple[str, ...], n: int) -> None:
        """Add n to each field of the buckets of ts_ms at these grains."""
        if not n:
            return
        buckets = self.buckets
        for grain in grains:
            index = grain.index(ts_ms)
            for fld in fields:
                slot = (grain, index, fld)
                buckets[slot] = buckets.get(slot, 0) + n

    def add_at(self, grain: Grain, index: int, fld: str, n: int) -> None:
        """Add n to one field of one bucket."""
        slot = (grain, index, fld)
        self.buckets[slot] = self.buckets.get(slot, 0) + n

    def mentor(self, mentor: str) -> str:
        """A mentor id as kept; one that is not a UUID gets its served UUID mapped back to it."""
        kept = self._mentors.get(mentor)
        if kept is None:
            kept = self._mentors[mentor] = ids.normalize(mentor)
            if ids.needs_mapping(kept):
                w = self.w
                w.hset(
                    keys.uuids(w.gen, w.org), ids.served(w.org, ids.MENTOR, kept), ids.mapping_value(ids.MENTOR, kept)
                )
        return kept

    def digest(self, cid: str) -> int:
        """The conversation's digest (what addresses it in Redis), computed once per batch."""
        digest = self._digests.get(cid)
        if digest is None:
            digest = self._digests[cid] = conversation_digest(self.w.org, cid)
        return digest

    def conversation(self, cid: str, *, must_be_read: bool = False) -> ConversationState:
        """The batch's working copy of a conversation (as read kept in `before`). The batch's own
        conversations were read; another one (`must_be_read`) may not have been: `NeedState`."""
        conv = self.convs.get(cid)
        if conv is None:
            held = self.state.convs.get(cid)
            if held is None:
                if must_be_read:
                    raise NeedState({cid})
                held = ConversationState()
            self.before[cid] = held
            conv = self.convs[cid] = held.copy()
        return conv

    def write_buckets(self) -> None:
        """Every family's counters, one HINCRBY per field and bucket, each bucket with its expiry."""
        w, retention = self.w, self.retention
        bucket_keys: dict[tuple[Grain, int], str] = {}
        for (grain, index, fld), n in self.buckets.items():
            if not n:
                continue
            key = bucket_keys.get((grain, index))
            if key is None:
                key = bucket_keys[(grain, index)] = keys.bucket(w.gen, w.org, grain, index)
                w.expire_at(key, retention.expire_at_s(grain, index))
            w.hincr(key, fld, n)


@dataclass
class Erased:
    """What a family's erasure of a student removed: the hash counters (key, field) and sorted sets whose
    published value changed (the changefeed hears of them: tables/erase.publications), and what the
    erasure's audit record says of it (`what`: a count by name)."""

    counters: list[tuple[str, str]] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    audit: dict[str, int] = field(default_factory=dict)


SCAN_CHUNK = 500


async def scan_batches(redis: Redis, pattern: str) -> AsyncIterator[list[bytes]]:
    """The keys matching pattern, a few hundred at a time (SCAN: never blocks Redis; on a cluster, every
    primary's)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=SCAN_CHUNK):
        batch.append(key)
        if len(batch) >= SCAN_CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


async def remove_everywhere(redis: Redis, pattern: str, command: str, *args: str) -> list[tuple[str, int]]:
    """Run `command key *args` (HDEL, ZREM, SREM) on every key matching the pattern (`scan_batches`), one
    pipeline per batch: (key, what it removed) for each key it removed something from."""
    out: list[tuple[str, int]] = []
    async for batch in scan_batches(redis, pattern):
        async with redis.pipeline(transaction=False) as pipe:
            for key in batch:
                getattr(pipe, command.lower())(key, *args)
            removed = await pipe.execute()
        out.extend((key.decode(), int(n)) for key, n in zip(batch, removed, strict=True) if n)
    return out


class Family(Protocol[S]):
    """An aggregate family: what it takes from the events, how it folds them (its order-free rule), what
    it writes. Its keys, its stored encoding and the reads the API makes of it are in its module. `S` is
    what it gathers over one batch (its sums), made by `fold` and handed back to `changed` and `flush`."""

    name: str

    def fold(self, b: Batch, counted: Counted) -> S:
        """Take the batch's counted events: start the batch's sums, add to the conversations' working copies."""
        ...

    def changed(self, b: Batch, sums: S, cid: str, before: ConversationState, after: ConversationState) -> None:
        """A conversation the batch changed: add or write what is derived from its state."""
        ...

    def flush(self, b: Batch, sums: S) -> None:
        """Write the batch's sums."""
        ...

    async def erase(self, redis: Redis, gen: int, org: str, student: str) -> Erased:
        """Remove everything of generation `gen` that names the student (tables/erase.py, step 2; the
        conversations themselves go by the erasure's own step)."""
        ...
