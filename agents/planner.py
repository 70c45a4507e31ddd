"""From a batch of validated events to the writes that apply it: a loop over the aggregate families.

Pure except for the state it is handed (`OrgState`: what Redis held before the batch, read in one round
trip). Every decision is a function of the set of events applied, whatever their order and however many
times each arrives, so any worker can apply any batch and the same records always give the same numbers.
What is common to every family is here: an event of an erased student is dropped; a chat message,
sentiment judgement or chat-history record counts once by its `event_id` in its conversation (whose state,
read with the batch, holds the digests of the events it counted) and updates that state by the
conversation's own rules (`ConversationState.add_message`, `add_judgement`, `add_record`: where the session
starts, its counts, its latest sentiment and record, which several families read); each conversation the
batch changed is written once, guarded by the version it was read at; the watermarks and the org's `meta`. What each
family does with the events is in its module (tables/aggregates/; the rules: docs/semantics.md).
"""

from __future__ import annotations

from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables import ids, keys
from tables.aggregates import FAMILIES
from tables.aggregates.base import Batch, Counted
from tables.buckets import Grain, Retention
from tables.conversations import ConversationState, event_digest
from tables.erase import Tombstones
from tables.state import OrgState, StateQuery
from tables.writer import OrgWrite


def state_query(items: list[Event], tombstones: Tombstones) -> StateQuery:
    """What to read before planning: offset fields, observation ids, conversation ids (a conversation's
    state says which of its events it has counted), the tombstones of the batch's students."""
    partitions: dict[tuple[str, int], None] = {}
    observations: dict[str, None] = {}
    convs: dict[str, None] = {}
    students: dict[str, None] = {}
    for ev in items:
        partitions[(ev.src_topic, ev.src_partition)] = None
        if isinstance(ev, LlmObservation):
            observations[ev.event_id] = None
            if ev.session_id is not None:
                convs[ev.session_id] = None
            continue
        convs[ev.id if isinstance(ev, Conversation) else ev.session_id] = None  # as sent: normalized once, below
        students[ev.student] = None
    org = items[0].org if items else ""
    return StateQuery(
        sorted(keys.offset_field(topic, partition) for topic, partition in partitions),
        list(observations),
        list(dict.fromkeys(map(ids.normalize, convs))),
        [field for student in students for field in tombstones.fields(org, student)],
        list(students),
    )


def student_of(event: Event) -> str | None:
    """The student an event names (an observation names none: it reaches a student through its session)."""
    if isinstance(event, (ChatMessage, SentimentEvent, Conversation)):
        return event.student
    return None


class Planner:
    def __init__(self, prices: PriceTable, retention: Retention) -> None:
        self.prices = prices
        self.retention = retention

    def plan(self, org: str, items: list[Event], state: OrgState, now_ms: int, gen: int) -> OrgWrite:
        """The OrgWrite to generation `gen` for this org's events (each with where it was read from), in any
        order."""
        w = OrgWrite(org, gen, state, items)
        b = Batch(w, state, self.retention, self.prices, Grain.DAY.index(now_ms))
        # No batch planned before an erasure may write after it: the apply checks the erasures' version.
        w.guard(keys.erasures(org), keys.ERASURES_VERSION, state.erasures_version)
        counted = Counted()
        last_offsets: dict[tuple[str, int], int] = {}
        dropped = 0  # events of erased students
        newest_ms = 0
        by_sent_id: dict[str, ConversationState] = {}  # conversation id as sent -> its working copy (normalized once)
        erased = state.erased
        for ev in items:
            tp = (ev.src_topic, ev.src_partition)
            if ev.src_offset > last_offsets.get(tp, -1):
                last_offsets[tp] = ev.src_offset
            if erased and (student := student_of(ev)) is not None and student in erased:
                dropped += 1
                continue
            if ev.ts_ms > newest_ms:
                newest_ms = ev.ts_ms
            if isinstance(ev, LlmObservation):
                counted.observations.append(ev)  # counted by version, not by id (tables/aggregates/llm_cost.py)
                continue
            sent_id = ev.id if isinstance(ev, Conversation) else ev.session_id
            conv = by_sent_id.get(sent_id)
            if conv is None:
                conv = by_sent_id[sent_id] = b.conversation(ids.normalize(sent_id))
            digest = event_digest(ev.event_id)
            if digest in conv.ids:
                continue  # a re-sent or replayed event: it counted the first time
            conv.ids.add(digest)
            w.events += 1
            b.count(ev)
            # The conversation's own rules (tables/conversations.py), which the families read its state by.
            if isinstance(ev, ChatMessage):
                mentor = b.mentor(ev.mentor_id)
                conv.add_message(ev, mentor)
                counted.messages.append((ev, conv, mentor))
            elif isinstance(ev, SentimentEvent):
                conv.add_judgement(ev)
                counted.sentiments.append((ev, conv))
            else:
                conv.add_record(ev, b.mentor(ev.mentor))
                counted.records.append((ev, conv))
        sums = [(family, family.fold(b, counted)) for family in FAMILIES]
        for cid, after in b.convs.items():
            before = b.before[cid]
            if after == before:  # a conversation whose events were all counted before is not written
                continue
            for family, its_sums in sums:
                family.changed(b, its_sums, cid, before, after)
            self._write_conversation(b, cid, after)
        # The watermark records progress (and makes two writers of one partition conflict); what an
        # event contributed is decided by its event_id alone.
        for (topic, partition), offset in last_offsets.items():
            fld = keys.offset_field(topic, partition)
            mark = state.offsets.get(fld)
            w.watermark(fld, mark, offset if mark is None else max(mark, offset))
        meta = keys.meta(gen, org)
        w.hincr(meta, keys.DATA_VERSION, 1)  # answers cached for the version before are stale (api/cache.py)
        if newest_ms:
            w.hmax(meta, "last_event_ms", newest_ms)
        if dropped:
            w.hincr(meta, keys.ERASED_DROPPED, dropped)
        for topic, n in b.counted.items():
            w.hincr(meta, f"events|{topic}", n)
        for family, its_sums in sums:
            family.flush(b, its_sums)
        b.write_buckets()
        return w

    @staticmethod
    def _write_conversation(b: Batch, cid: str, after: ConversationState) -> None:
        """Write the conversation's new state, guarded by the version it was planned on. The state it will
        hold goes to `w.conv_after`, for a next batch planned before this one is applied."""
        w, before = b.w, b.before[cid]
        digest = b.digest(cid)
        after.version = (before.version or 0) + 1
        after.last_day = b.arrival_day
        after.cid = cid
        w.put_conversation(
            keys.conversation_bucket(w.gen, w.org, digest),
            keys.conversation_field(digest),
            before.version,
            after.pack(),
        )
        w.conv_after[cid] = after
