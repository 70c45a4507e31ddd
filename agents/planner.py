"""From a batch of validated events to the writes that apply it: the arithmetic behind every aggregate.

Pure except for the state it is handed: what Redis held before the batch (`OrgState`, read in one round
trip), including each session's state (its first message), which lives in the conversation hash so
that it is written in the same atomic step as the counts it decides.

Rules (see docs/semantics.md):
- an event at or below its org's watermark for its topic-partition is already applied: skipped;
- an event whose `event_id` was applied before counts once; an observation re-sent with the same id
  replaces its earlier cost and tokens;
- a session's bucket is the event time of its first message, "first" meaning first applied, which is
  first in its partition because every worker applies a partition's records in offset order.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables import keys
from tables.buckets import Grain, Retention, day_of
from tables.keys import CONV_RECORD, CONV_SENTIMENT, CONV_SESSION, CONV_STATE
from tables.state import OrgState, StateQuery
from tables.writer import OrgWrite


@dataclass(slots=True)  # not frozen: built per event, and a frozen __init__ costs 5x
class Item:
    """A valid event and where it was read from (topic named without prefix)."""

    event: Event
    topic: str
    partition: int
    offset: int


def state_query(items: list[Item]) -> StateQuery:
    """What to read before planning: offset fields, event ids by their day, conversation ids."""
    offset_fields = sorted({keys.offset_field(i.topic, i.partition) for i in items})
    seen: dict[str, list[str]] = {}
    for day, event_id in dict.fromkeys((day_of(i.event.ts_ms), i.event.event_id) for i in items):
        seen.setdefault(day, []).append(event_id)
    convs = list(
        dict.fromkeys(
            i.event.id if isinstance(i.event, Conversation) else i.event.session_id
            for i in items
            if isinstance(i.event, (ChatMessage, SentimentEvent, Conversation))
        )
    )
    return StateQuery(offset_fields, seen, convs)


class Planner:
    def __init__(self, prices: PriceTable, retention: Retention) -> None:
        self.prices = prices
        self.retention = retention

    def plan(
        self,
        org: str,
        items: list[Item],
        state: OrgState,
        now_ms: int,
    ) -> OrgWrite:
        """The OrgWrite for this org's items (in offset order within each partition)."""
        w = OrgWrite(org)
        seen_keys: dict[str, str] = {}
        seen = dict(state.seen)
        convs = {cid: dict(v) for cid, v in state.convs.items()}
        last_offsets: dict[tuple[str, int], int] = {}
        guarded: set[tuple[str, tuple[str, ...]]] = set()
        counted: dict[str, int] = {}  # topic -> events that counted
        newest_ms = 0
        for item in items:
            ev = item.event
            tp = (item.topic, item.partition)
            last_offsets[tp] = max(item.offset, last_offsets.get(tp, item.offset))
            newest_ms = max(newest_ms, ev.ts_ms)
            day = day_of(ev.ts_ms)
            seen_key = seen_keys.get(day)
            if seen_key is None:
                seen_key = seen_keys[day] = keys.seen(org, day)
                w.expire_at(seen_key, self.retention.dedup_expire_at_s(now_ms))
            prev = seen.get((day, ev.event_id))
            if isinstance(ev, LlmObservation):
                new = self._observation(w, ev, prev)
                if new != prev:
                    w.events += 1
                else:
                    w.replayed.append(item)
                seen[(day, ev.event_id)] = new
                w.mark_seen(seen_key, ev.event_id, state.seen.get((day, ev.event_id)), new)
                if prev is None:
                    counted[item.topic] = counted.get(item.topic, 0) + 1
                continue
            if prev is not None:
                w.replayed.append(item)
                continue  # a re-sent or replayed event: it counted the first time
            seen[(day, ev.event_id)] = "1"
            w.mark_seen(seen_key, ev.event_id, state.seen.get((day, ev.event_id)), "1")
            w.events += 1
            counted[item.topic] = counted.get(item.topic, 0) + 1
            if isinstance(ev, ChatMessage):
                self._guard_conv(w, ev.session_id, CONV_SESSION, state, guarded)
                self._chat_message(w, ev, item, convs)
            elif isinstance(ev, SentimentEvent):
                self._guard_conv(w, ev.session_id, CONV_SENTIMENT, state, guarded)
                self._sentiment(w, ev, convs)
            elif isinstance(ev, Conversation):
                self._guard_conv(w, ev.id, CONV_RECORD, state, guarded)
                self._conversation(w, ev, convs)
        # The watermark records progress (and makes two writers of one partition conflict); what an
        # event contributed is decided by its event_id alone, so a replayed or re-sent event still
        # counts exactly once.
        for (topic, partition), offset in last_offsets.items():
            fld = keys.offset_field(topic, partition)
            mark = state.offsets.get(fld)
            w.watermark(fld, mark, offset if mark is None else max(mark, offset))
        meta = keys.meta(org)
        if items:
            w.hmax(meta, "last_event_ms", newest_ms)
        for topic, n in counted.items():
            w.hincr(meta, f"events|{topic}", n)
        self._flush_buckets(w)
        return w

    def touched_by(self, org: str, items: list[Item], state: OrgState, now_ms: int) -> OrgWrite:
        """What these (already applied) items wrote, planned as if new: to re-publish those counters.

        `state` is what Redis held before the batch: it has the sessions of these items, which were
        applied before, so each message finds its session's bucket and whether it was the first."""
        return self.plan(org, items, OrgState(convs=state.convs), now_ms)

    @staticmethod
    def _guard_conv(
        w: OrgWrite, conv_id: str, fields: tuple[str, ...], state: OrgState, guarded: set[tuple[str, tuple[str, ...]]]
    ) -> None:
        """The conversation fields this event's decision reads must still hold their pre-batch values."""
        if (conv_id, fields) in guarded:
            return
        guarded.add((conv_id, fields))
        ckey = keys.conversation(w.org, conv_id)
        before = state.convs.get(conv_id, {})
        for fld in fields:
            w.guard(ckey, fld, before.get(fld))

    # --- aggregates --------------------------------------------------------------------------------

    @staticmethod
    def _incr_both(w: OrgWrite, ts_ms: int, fields: tuple[str, ...], n: int = 1) -> None:
        """Add n to each field of the hour and the day of ts_ms (summed per bucket, keyed at the end)."""
        deltas = w.bucket_deltas
        hour, day = Grain.HOUR.index(ts_ms), Grain.DAY.index(ts_ms)
        for fld in fields:
            deltas[(Grain.HOUR, hour, fld)] = deltas.get((Grain.HOUR, hour, fld), 0) + n
            deltas[(Grain.DAY, day, fld)] = deltas.get((Grain.DAY, day, fld), 0) + n

    @staticmethod
    def _incr_minute(w: OrgWrite, ts_ms: int, fields: tuple[str, ...]) -> None:
        """Count by the event's own minute (for the alert rules' rolling hour)."""
        deltas = w.bucket_deltas
        index = Grain.MINUTE.index(ts_ms)
        for fld in fields:
            deltas[(Grain.MINUTE, index, fld)] = deltas.get((Grain.MINUTE, index, fld), 0) + 1

    def _flush_buckets(self, w: OrgWrite) -> None:
        bucket_keys: dict[tuple[Grain, int], str] = {}
        for (grain, index, fld), n in w.bucket_deltas.items():
            key = bucket_keys.get((grain, index))
            if key is None:
                key = bucket_keys[(grain, index)] = keys.bucket(w.org, grain, index)
                w.expire_at(key, self.retention.expire_at_s(grain, index))
            w.hincr(key, fld, n)
        for (day, mentor, student), n in w.top_deltas.items():
            # The week's set too, so a long range unions weeks, not days (90 days: ~25 sets, not 90).
            for grain, index in ((Grain.DAY, day), (Grain.WEEK, Grain.WEEK.index(Grain.DAY.start_ms(day)))):
                key = keys.top_students(w.org, grain, index, mentor)
                w.zincr(key, student, n)
                w.expire_at(key, self.retention.expire_at_s(grain, index))

    def _chat_message(self, w: OrgWrite, ev: ChatMessage, item: Item, convs: dict[str, dict[str, str | None]]) -> None:
        conv_state = convs.setdefault(ev.session_id, dict.fromkeys(CONV_STATE))
        if conv_state["started_ms"] is None:  # no message of this session was applied before: the first
            conv_state.update(first_offset=str(item.offset), started_ms=str(ev.ts_ms), first_mentor=ev.mentor_id)
        start_ms = int(conv_state["started_ms"] or 0)
        mentor = conv_state["first_mentor"] or ""
        is_first = conv_state["first_offset"] == str(item.offset)
        fields = [keys.MESSAGES, keys.mentor_field(keys.MESSAGES, mentor)]
        if is_first:
            fields += [keys.SESSIONS, keys.mentor_field(keys.SESSIONS, mentor)]
        self._incr_both(w, start_ms, tuple(fields))
        self._incr_minute(w, ev.ts_ms, (keys.MESSAGES,))
        conv = keys.conversation(w.org, ev.session_id)
        w.hincr(conv, "messages_human" if ev.role == "human" else "messages_ai")
        if is_first:
            w.hset(conv, "started_ms", str(start_ms))
            w.hset(conv, "first_offset", str(item.offset))
            w.nx_zadd(keys.conversations(w.org), ev.session_id, float(start_ms))
            w.nx_zadd(keys.conversations_by(w.org, "student", ev.student), ev.session_id, 0.0)
            w.nx_zadd(keys.conversations_by(w.org, "mentor", ev.mentor_id), ev.session_id, 0.0)
            # Not `student`/`mentor`: those belong to the chat-history record, which may differ.
            w.hset(conv, "first_student", ev.student)
            w.hset(conv, "first_mentor", ev.mentor_id)
        for topic in ev.topics:
            w.nx_zadd(keys.conversations_by(w.org, "topic", topic), ev.session_id, 0.0)
        if ev.role == "human":
            day_index = Grain.DAY.index(ev.ts_ms)
            human = (Grain.DAY, day_index, keys.HUMAN)
            w.bucket_deltas[human] = w.bucket_deltas.get(human, 0) + 1
            top = w.top_deltas
            for slot in ((day_index, None, ev.student), (day_index, ev.mentor_id, ev.student)):
                top[slot] = top.get(slot, 0) + 1

    def _sentiment(self, w: OrgWrite, ev: SentimentEvent, convs: dict[str, dict[str, str | None]]) -> None:
        self._incr_both(w, ev.ts_ms, (keys.SENTIMENT, keys.sentiment_field(ev.sentiment)))
        self._incr_minute(w, ev.ts_ms, (keys.SENTIMENT, keys.sentiment_field(ev.sentiment)))
        conv = convs.setdefault(ev.session_id, dict.fromkeys(CONV_STATE))
        cur_ts = conv.get("sentiment_ts")
        ckey = keys.conversation(w.org, ev.session_id)
        if cur_ts is not None and int(cur_ts) > ev.ts_ms:
            return  # an older judgement arriving late does not replace the latest one
        old = conv.get("sentiment")
        if old is not None and old != ev.sentiment:
            w.zrem(keys.conversations_by(w.org, "sentiment", old), ev.session_id)
        w.zadd(keys.conversations_by(w.org, "sentiment", ev.sentiment), ev.session_id, 0.0)
        w.hset(ckey, "sentiment", ev.sentiment)
        w.hset(ckey, "sentiment_ts", str(ev.ts_ms))
        conv["sentiment"] = ev.sentiment
        conv["sentiment_ts"] = str(ev.ts_ms)

    def _conversation(self, w: OrgWrite, ev: Conversation, convs: dict[str, dict[str, str | None]]) -> None:
        conv = convs.setdefault(ev.id, dict.fromkeys(CONV_STATE))
        cur_ts = conv.get("record_ts")
        if cur_ts is not None and int(cur_ts) > ev.ts_ms:
            return  # a stale version of the record
        ckey = keys.conversation(w.org, ev.id)
        topics_before = conv.get("topics")
        old_topics = set(orjson.loads(topics_before)) if topics_before else set()
        for kind, old, new in (("student", conv.get("student"), ev.student), ("mentor", conv.get("mentor"), ev.mentor)):
            if old is not None and old != new:
                w.zrem(keys.conversations_by(w.org, kind, old), ev.id)
            w.zadd(keys.conversations_by(w.org, kind, new), ev.id, 0.0)
        for topic in old_topics - set(ev.topics):
            w.zrem(keys.conversations_by(w.org, "topic", topic), ev.id)
        for topic in ev.topics:
            w.zadd(keys.conversations_by(w.org, "topic", topic), ev.id, 0.0)
        w.zadd(keys.conversations(w.org), ev.id, float(ev.inserted_at_ms))
        topics_json = orjson.dumps(list(ev.topics)).decode()
        w.hset(ckey, "record", orjson.dumps(ev.record).decode())
        w.hset(ckey, "record_ts", str(ev.ts_ms))
        w.hset(ckey, "student", ev.student)
        w.hset(ckey, "mentor", ev.mentor)
        w.hset(ckey, "topics", topics_json)
        conv.update(record_ts=str(ev.ts_ms), student=ev.student, mentor=ev.mentor, topics=topics_json)

    def _observation(self, w: OrgWrite, ev: LlmObservation, prev: str | None) -> str:
        """Apply (or replace) an observation's cost and tokens; return what `seen` now records for it."""
        cost = ev.cost_nanos
        unpriced = 0
        if cost is None:
            cost = self.prices.cost_nanos(ev.model, ev.input_tokens, ev.output_tokens)
            if cost is None:
                cost, unpriced = 0, 1
        new = f"{cost},{ev.input_tokens},{ev.output_tokens},{unpriced},{ev.ts_ms}"
        if prev == new:
            return new
        if prev is not None:
            p_cost, p_in, p_out, p_unpriced, p_ts = (int(x) for x in prev.split(","))
            self._obs_delta(w, p_ts, -p_cost, -p_in, -p_out, -p_unpriced, count=-1)
        self._obs_delta(w, ev.ts_ms, cost, ev.input_tokens, ev.output_tokens, unpriced, count=1)
        return new

    def _obs_delta(self, w: OrgWrite, ts_ms: int, cost: int, t_in: int, t_out: int, unpriced: int, count: int) -> None:
        self._incr_both(w, ts_ms, (keys.COST,), cost)
        self._incr_both(w, ts_ms, (keys.TOKENS_IN,), t_in)
        self._incr_both(w, ts_ms, (keys.TOKENS_OUT,), t_out)
        self._incr_both(w, ts_ms, (keys.OBSERVATIONS,), count)
        self._incr_both(w, ts_ms, (keys.UNPRICED,), unpriced)
