"""From a batch of validated events to the writes that apply it: the arithmetic behind every aggregate.

Pure except for the state it is handed (`OrgState`: what Redis held before the batch, read in one round
trip). Every decision is a function of the set of events applied, whatever their order and however many
times each arrives, so any worker can apply any batch and the same records always give the same numbers
(the rules are in tables/conversations.py and docs/semantics.md):
- an event counts once by its `event_id` (a chat message, sentiment judgement or chat-history record, once in
  its conversation); an observation re-sent with the same id replaces the applied one when it is newer by
  (timestamp, offset);
- a session belongs to the bucket of its earliest message by event time; a message that arrives later
  with an earlier time moves the session (its count and all its messages) to its own bucket;
- a conversation's sentiment and record are those of the latest event by (timestamp, offset, event_id).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import orjson

from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables import ids, keys
from tables.buckets import DAY_MS, HALF_MS, MINUTE_MS, Grain, Retention
from tables.conversations import ConversationState, conversation_digest, event_digest, is_newer, starts_earlier
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


@dataclass(frozen=True, slots=True)
class AppliedObservation:
    """What the observations hash records for an applied observation: its contribution, its version, the
    model and session it counts for, and the day it arrived (for pruning past the dedup window)."""

    cost: int
    input_tokens: int
    output_tokens: int
    unpriced: int
    ts_ms: int
    offset: int
    model: str
    session: str | None
    arrival_day: int

    def value(self) -> str:
        return orjson.dumps(
            [self.cost, self.input_tokens, self.output_tokens, self.unpriced, self.ts_ms, self.offset,
             self.model, self.session, self.arrival_day]
        ).decode()  # fmt: skip

    @classmethod
    def parse(cls, value: str) -> AppliedObservation:
        return cls(*orjson.loads(value))


class NeedState(Exception):
    """The plan needs conversations the batch's state read did not include (an observation re-sent with
    another session): read them too and plan again."""

    def __init__(self, conversations: set[str]) -> None:
        super().__init__(f"conversations not read: {sorted(conversations)}")
        self.conversations = conversations


class Planner:
    def __init__(self, prices: PriceTable, retention: Retention) -> None:
        self.prices = prices
        self.retention = retention

    def plan(self, org: str, items: list[Event], state: OrgState, now_ms: int, gen: int) -> OrgWrite:
        """The OrgWrite to generation `gen` for this org's events (each with where it was read from), in any
        order."""
        w = OrgWrite(org, gen)
        observations = dict(state.observations)
        arrival_day = Grain.DAY.index(now_ms)
        before: dict[str, ConversationState] = {}
        convs: dict[str, ConversationState] = {}
        last_offsets: dict[tuple[str, int], int] = {}
        counted: dict[str, int] = {}  # topic -> events that counted
        dropped = 0  # events of erased students
        newest_ms = 0
        mentors: dict[str, str] = {}  # mentor id as sent -> as kept
        by_sent_id: dict[str, ConversationState] = {}
        # Per chat message only its minute, and (human ones) its half hour, student and mentor are noted;
        # they are counted once at the end (Counter counts in C).
        minutes: list[int] = []
        humans: list[tuple[int, str, str]] = []
        # No batch planned before an erasure may write after it: the apply checks the erasures' version.
        w.guard(keys.erasures(org), keys.ERASURES_VERSION, state.erasures_version)
        for ev in items:
            tp = (ev.src_topic, ev.src_partition)
            offset = ev.src_offset
            if offset > last_offsets.get(tp, -1):
                last_offsets[tp] = offset
            if state.erased and (student := student_of(ev)) is not None and student in state.erased:
                dropped += 1
                continue
            if ev.ts_ms > newest_ms:
                newest_ms = ev.ts_ms
            if isinstance(ev, LlmObservation):
                raw = observations.get(ev.event_id)
                prev_obs = None if raw is None else AppliedObservation.parse(raw)
                new = self._observation(w, ev, offset, prev_obs, arrival_day)
                if new is None:
                    w.replayed.append(ev)
                    continue
                w.events += 1
                observations[ev.event_id] = new.value()
                w.mark_seen(
                    keys.observations(w.gen, org), ev.event_id, state.observations.get(ev.event_id), new.value()
                )
                if prev_obs is None:
                    counted[ev.src_topic] = counted.get(ev.src_topic, 0) + 1
                # The session's cost by hour: attributed to its student and mentor from its final state.
                for applied, sign in ((prev_obs, -1), (new, 1)):
                    if applied is None or applied.session is None:
                        continue
                    conv = self._conversation(applied.session, state, before, convs, must_be_read=True)
                    hour = Grain.HOUR.index(applied.ts_ms)
                    conv.costs = {**conv.costs, hour: conv.costs.get(hour, 0) + sign * applied.cost}
                    if sign > 0:  # the latest time of each trace: a maximum, whatever the order
                        conv.traces = {**conv.traces, ev.trace_id: max(ev.ts_ms, conv.traces.get(ev.trace_id, 0))}
                continue
            sent_id = ev.id if isinstance(ev, Conversation) else ev.session_id
            working = by_sent_id.get(sent_id)  # the working copy, by the id as sent (normalized once)
            if working is None:
                working = by_sent_id[sent_id] = self._conversation(ids.normalize(sent_id), state, before, convs)
            conv = working
            digest = event_digest(ev.event_id)
            if digest in conv.ids:
                w.replayed.append(ev)
                continue  # a re-sent or replayed event: it counted the first time
            conv.ids.add(digest)
            w.events += 1
            counted[ev.src_topic] = counted.get(ev.src_topic, 0) + 1
            if isinstance(ev, ChatMessage):
                self._chat_message(w, ev, conv, mentors, minutes, humans)
            elif isinstance(ev, SentimentEvent):
                self._sentiment(w, ev, offset, conv)
            else:
                self._record(w, ev, offset, conv)
        self._count_messages(w, minutes, humans)
        for cid, conv in convs.items():
            if conv != before[cid]:  # a conversation whose events were all counted before is not written
                self._write_conversation(w, cid, before[cid], conv, arrival_day)
        # The watermark records progress (and makes two writers of one partition conflict); what an
        # event contributed is decided by its event_id alone.
        for (topic, partition), offset in last_offsets.items():
            fld = keys.offset_field(topic, partition)
            mark = state.offsets.get(fld)
            w.watermark(fld, mark, offset if mark is None else max(mark, offset))
        meta = keys.meta(w.gen, org)
        w.hincr(meta, keys.DATA_VERSION, 1)  # answers cached for the version before are stale (api/cache.py)
        if newest_ms:
            w.hmax(meta, "last_event_ms", newest_ms)
        if dropped:
            w.hincr(meta, keys.ERASED_DROPPED, dropped)
        for topic, n in counted.items():
            w.hincr(meta, f"events|{topic}", n)
        self._flush_buckets(w)
        return w

    @staticmethod
    def _conversation(
        cid: str,
        state: OrgState,
        before: dict[str, ConversationState],
        convs: dict[str, ConversationState],
        *,
        must_be_read: bool = False,
    ) -> ConversationState:
        """The batch's working copy of a conversation (its state before the batch kept in `before`). The
        batch's own conversations were read; another one (`must_be_read`) may not have been."""
        conv = convs.get(cid)
        if conv is None:
            held = state.convs.get(cid)
            if held is None:
                if must_be_read:
                    raise NeedState({cid})
                held = ConversationState()
            before[cid] = held
            conv = convs[cid] = held.copy()
        return conv

    # --- aggregates --------------------------------------------------------------------------------

    @staticmethod
    def _add(w: OrgWrite, grains: tuple[Grain, ...], ts_ms: int, fields: tuple[str, ...], n: int) -> None:
        """Add n to each field of the buckets of ts_ms at these grains (summed per bucket, keyed at the end)."""
        if not n:
            return
        deltas = w.bucket_deltas
        for grain in grains:
            index = grain.index(ts_ms)
            for fld in fields:
                slot = (grain, index, fld)
                deltas[slot] = deltas.get(slot, 0) + n

    def _flush_buckets(self, w: OrgWrite) -> None:
        deltas = w.bucket_deltas
        for (half, first_mentor), (sessions, messages) in w.session_deltas.items():
            fields = [(keys.SESSIONS, sessions), (keys.MESSAGES, messages)]
            if first_mentor:
                fields += [
                    (_mentor(keys.SESSIONS, first_mentor), sessions),
                    (_mentor(keys.MESSAGES, first_mentor), messages),
                ]
            for grain, index in ((Grain.HOUR, half // 2), (Grain.HALF, half), (Grain.DAY, half * HALF_MS // DAY_MS)):
                for fld, n in fields:
                    bucket = (grain, index, fld)
                    deltas[bucket] = deltas.get(bucket, 0) + n
        bucket_keys: dict[tuple[Grain, int], str] = {}
        for (grain, index, fld), n in w.bucket_deltas.items():
            if not n:
                continue
            key = bucket_keys.get((grain, index))
            if key is None:
                key = bucket_keys[(grain, index)] = keys.bucket(w.gen, w.org, grain, index)
                w.expire_at(key, self.retention.expire_at_s(grain, index))
            w.hincr(key, fld, n)
        # The half hour's and the hour's sets (a local day's edges, for a time zone), the day's and the
        # week's, so a long range unions weeks, not days (90 days: ~25 sets, not 90); and the all-time
        # set, for a request without dates. Summed per set and student first: one ZINCRBY each.
        sums: dict[tuple[Grain, int, str | None], dict[str, int]] = {}
        alltime: dict[str | None, dict[str, int]] = {}
        sets_of_half: dict[int, list[tuple[Grain, int]]] = {}
        for (half, mentor, student), n in w.top_deltas.items():
            sets = sets_of_half.get(half)
            if sets is None:
                start_ms = half * HALF_MS
                sets = sets_of_half[half] = [(grain, grain.index(start_ms)) for grain in _TOP_GRAINS]
            for grain, index in sets:
                members = sums.get((grain, index, mentor))
                if members is None:
                    members = sums[(grain, index, mentor)] = {}
                members[student] = members.get(student, 0) + n
            members = alltime.setdefault(mentor, {})
            members[student] = members.get(student, 0) + n
        for (grain, index, mentor), members in sums.items():
            key = keys.top_students(w.gen, w.org, grain, index, mentor)
            w.expire_at(key, self.retention.expire_at_s(grain, index))
            w.zincr_members(key, members)
        for mentor, members in alltime.items():
            w.zincr_members(keys.top_students_all(w.gen, w.org, mentor), members)

    def _chat_message(
        self,
        w: OrgWrite,
        ev: ChatMessage,
        conv: ConversationState,
        mentors: dict[str, str],
        minutes: list[int],
        humans: list[tuple[int, str, str]],
    ) -> None:
        """The message's part of its conversation's state, and the counts of its minute and (a human message)
        its student (`_count_messages`); the session and message counts it moves are derived from the
        conversation's final state (`_sessions`)."""
        mentor = mentors.get(ev.mentor_id)
        if mentor is None:
            mentor = mentors[ev.mentor_id] = self._mentor(w, ev.mentor_id)
        if starts_earlier(ev.ts_ms, ev.event_id, conv.started_ms, conv.first_event):
            conv.started_ms, conv.first_event = ev.ts_ms, ev.event_id
            conv.first_mentor, conv.first_student = mentor, ev.student
        minutes.append(ev.ts_ms // MINUTE_MS)
        if ev.topics and not conv.msg_topics.issuperset(ev.topics):
            conv.msg_topics = conv.msg_topics.union(ev.topics)
        if ev.role == "human":
            conv.human += 1
            humans.append((ev.ts_ms // HALF_MS, ev.student, mentor))
        else:
            conv.ai += 1

    @staticmethod
    def _count_messages(w: OrgWrite, minutes: list[int], humans: list[tuple[int, str, str]]) -> None:
        """Chat messages per minute (what the alert rules read), human messages per day, and per student in
        each half hour (for the org and for the mentor), from what the batch's messages noted."""
        deltas = w.bucket_deltas
        for minute, n in Counter(minutes).items():
            bucket = (Grain.MINUTE, minute, keys.MESSAGES)
            deltas[bucket] = deltas.get(bucket, 0) + n
        top = w.top_deltas
        for (half, student, mentor), n in Counter(humans).items():
            day = (Grain.DAY, half * HALF_MS // DAY_MS, keys.HUMAN)
            deltas[day] = deltas.get(day, 0) + n
            for slot in ((half, None, student), (half, mentor, student)):
                top[slot] = top.get(slot, 0) + n

    @staticmethod
    def _sessions(w: OrgWrite, conv: ConversationState, sign: int, *, messages_only: int = 0) -> None:
        """What a conversation adds to the session and message counts: one session and all its messages, in
        the hour, half hour (for the days of zones half an hour off UTC) and day of its earliest message, for
        the org and for its first mentor.
        `messages_only`: just that many more messages of the same session."""
        if conv.started_ms is None:
            return
        # Summed per half hour and mentor first (a batch's sessions start in a few of them); spread over the
        # grains and fields at the end (`_flush_buckets`).
        slot = (conv.started_ms // HALF_MS, conv.first_mentor or "")
        counts = w.session_deltas.get(slot)
        if counts is None:
            counts = w.session_deltas[slot] = [0, 0]
        if messages_only:
            counts[1] += messages_only
        else:
            counts[0] += sign
            counts[1] += sign * (conv.human + conv.ai)

    def _sentiment(self, w: OrgWrite, ev: SentimentEvent, offset: int, conv: ConversationState) -> None:
        fields = (keys.SENTIMENT, keys.sentiment_field(ev.sentiment))
        self._add(w, (Grain.HOUR, Grain.HALF, Grain.DAY, Grain.MINUTE), ev.ts_ms, fields, 1)
        version = (ev.ts_ms, offset, ev.event_id)
        if is_newer(version, conv.sentiment_version):
            conv.sentiment, conv.sentiment_version = ev.sentiment, version

    def _record(self, w: OrgWrite, ev: Conversation, offset: int, conv: ConversationState) -> None:
        version = (ev.ts_ms, offset, ev.event_id)
        if is_newer(version, conv.record_version):
            conv.record_version = version
            conv.student, conv.mentor, conv.topics = ev.student, self._mentor(w, ev.mentor), ev.topics
            conv.inserted_ms = ev.inserted_at_ms
            conv.deleted = ev.deleted
            conv.record_json = orjson.dumps(ev.record).decode()

    @staticmethod
    def _mentor(w: OrgWrite, mentor: str) -> str:
        """A mentor id as kept; one that is not a UUID gets its served UUID mapped back to it."""
        kept = ids.normalize(mentor)
        if ids.needs_mapping(kept):
            w.hset(keys.uuids(w.gen, w.org), ids.served(w.org, ids.MENTOR, kept), ids.mapping_value(ids.MENTOR, kept))
        return kept

    def _write_conversation(
        self, w: OrgWrite, cid: str, before: ConversationState, after: ConversationState, arrival_day: int
    ) -> None:
        """Write the conversation's new state, guarded by the version it was planned on, and what changed in
        the indexes and in the cost attributed to the session's student and mentor (derived from the final
        state, so the order of its events does not matter). The state it will hold goes to `w.conv_after`,
        for a next batch planned before this one is applied."""
        retention = self.retention
        digest = conversation_digest(w.org, cid)
        if (before.started_ms, before.first_mentor) != (after.started_ms, after.first_mentor):
            self._sessions(w, before, -1)  # the session moved: all of it leaves its old buckets
            self._sessions(w, after, 1)
        elif after.started_ms is not None and (n := after.human + after.ai - before.human - before.ai):
            self._sessions(w, after, 1, messages_only=n)  # the same session, more messages
        after.version = (before.version or 0) + 1
        after.last_day = arrival_day
        after.cid = cid
        w.put_conversation(
            keys.conversation_bucket(w.gen, w.org, digest),
            keys.conversation_field(digest),
            before.version,
            after.pack(),
        )
        w.conv_after[cid] = after
        if before.costs != after.costs or before.attribution() != after.attribution():
            old_cost, new_cost = _attributed(w.org, cid, before), _attributed(w.org, cid, after)
            for slot in old_cost.keys() | new_cost.keys():
                n = new_cost.get(slot, 0) - old_cost.get(slot, 0)
                if not n:
                    continue
                kind, grain, index, member = slot
                if kind == "z":
                    key = keys.session_costs(w.gen, w.org, index)
                    w.zincr(key, member, n)
                    w.expire_at(key, retention.expire_at_s(Grain.DAY, index))
                else:
                    w.bucket_deltas[(grain, index, member)] = w.bucket_deltas.get((grain, index, member), 0) + n
        if before.listing() != after.listing():
            old, new = before.index_entries(), after.index_entries()
            member = str(digest)
            for kind, value in old.keys() - new.keys():
                if kind:
                    w.srem(keys.conversations_by(w.gen, w.org, kind, value, digest), member)
                else:
                    w.zrem(keys.conversations(w.gen, w.org), member)
            for (kind, value), score in new.items():
                if (kind, value) in old and (kind or old[(kind, value)] == score):
                    continue
                if kind:
                    w.sadd(keys.conversations_by(w.gen, w.org, kind, value, digest), member)
                else:
                    w.zadd(keys.conversations(w.gen, w.org), member, score)

    def _observation(
        self, w: OrgWrite, ev: LlmObservation, offset: int, prev: AppliedObservation | None, arrival_day: int
    ) -> AppliedObservation | None:
        """Apply (or replace) an observation's cost and tokens in the org's and its model's buckets; return
        what the observations hash now records for it, or None when nothing changes (a copy, or an older
        version than the one applied)."""
        if prev is not None and not is_newer((ev.ts_ms, offset, ev.event_id), (prev.ts_ms, prev.offset, ev.event_id)):
            return None
        cost = ev.cost_nanos
        unpriced = 0
        if cost is None:
            cost = self.prices.cost_nanos(ev.model, ev.input_tokens, ev.output_tokens)
            if cost is None:
                cost, unpriced = 0, 1
        new = AppliedObservation(
            cost, ev.input_tokens, ev.output_tokens, unpriced, ev.ts_ms, offset, ev.model,
            None if ev.session_id is None else ids.normalize(ev.session_id), arrival_day,
        )  # fmt: skip
        for applied, sign in ((prev, -1), (new, 1)):
            if applied is None:
                continue
            counts = (applied.cost, applied.input_tokens, applied.output_tokens, 1, applied.unpriced)
            for fld, n in zip(_COST_FIELDS, counts, strict=True):
                self._add(w, _HOUR_DAY, applied.ts_ms, (fld,), sign * n)
            self._add(w, _HOUR_DAY, applied.ts_ms, (keys.cost_field("model", applied.model),), sign * applied.cost)
        return new


_HOUR_DAY = (Grain.HOUR, Grain.DAY)  # LLM costs
_TOP_GRAINS = (Grain.HALF, Grain.HOUR, Grain.DAY, Grain.WEEK)
_COST_FIELDS = (keys.COST, keys.TOKENS_IN, keys.TOKENS_OUT, keys.OBSERVATIONS, keys.UNPRICED)


def _mentor(fld: str, mentor: str | None) -> str:
    return keys.mentor_field(fld, mentor or "")


def _session_fields(mentor: str) -> tuple[str, ...]:
    return (keys.SESSIONS, keys.MESSAGES, _mentor(keys.SESSIONS, mentor), _mentor(keys.MESSAGES, mentor))


def _attributed(org: str, cid: str, conv: ConversationState) -> dict[tuple[str, Grain, int, str], int]:
    """What a session's cost adds to its student's and mentor's buckets (hour and day), and to the day's
    per-mentor session costs: a function of the conversation's state alone."""
    who = conv.attribution()
    out: dict[tuple[str, Grain, int, str], int] = {}
    if who is None:
        return out
    student, mentor = who
    fields = (keys.cost_field("u", student), keys.cost_field("m", mentor))
    for hour, n in conv.costs.items():
        day = hour // 24
        for grain, index in ((Grain.HOUR, hour), (Grain.DAY, day)):
            for fld in fields:
                slot = ("h", grain, index, fld)
                out[slot] = out.get(slot, 0) + n
        zslot = ("z", Grain.DAY, day, keys.session_cost_member(mentor, cid))
        out[zslot] = out.get(zslot, 0) + n
    return out
