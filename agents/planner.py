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

from dataclasses import dataclass, field

import orjson

from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables import keys
from tables.buckets import DAY_MS, HOUR_MS, MINUTE_MS, day_label, day_of, hour_label, week_start
from tables.writer import OrgWrite

SENTIMENT_FIELDS = ("sentiment", "sentiment_ts")
RECORD_FIELDS = ("record_ts", "student", "mentor", "topics")
# The session's first message: its offset, event time (the session's bucket) and mentor.
SESSION_FIELDS = ("first_offset", "started_ms", "first_mentor")
CONV_FIELDS = SENTIMENT_FIELDS + RECORD_FIELDS + SESSION_FIELDS
# Minute counts serve the alert rules' rolling hours (and the hour before, for the volume rule).
MINUTES_KEPT_S = 3 * 3600


@dataclass(slots=True)  # not frozen: built per event, and a frozen __init__ costs 5x
class Item:
    """A valid event and where it was read from (topic named without prefix)."""

    event: Event
    topic: str
    partition: int
    offset: int


@dataclass
class OrgState:
    """What Redis held for one org before the batch: the planner's preconditions."""

    offsets: dict[str, int | None] = field(default_factory=dict)
    seen: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (day, event_id) -> value
    convs: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Retention:
    hourly_ms: int
    daily_ms: int
    dedup_ms: int


def state_reads(org: str, items: list[Item]) -> tuple[list[str], dict[str, list[str]], list[str]]:
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
    return offset_fields, seen, convs


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
                w.expire_at(seen_key, (now_ms + self.retention.dedup_ms) // 1000)
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
                self._guard_conv(w, ev.session_id, SESSION_FIELDS, state, guarded)
                self._chat_message(w, ev, item, convs)
            elif isinstance(ev, SentimentEvent):
                self._guard_conv(w, ev.session_id, SENTIMENT_FIELDS, state, guarded)
                self._sentiment(w, ev, convs)
            elif isinstance(ev, Conversation):
                self._guard_conv(w, ev.id, RECORD_FIELDS, state, guarded)
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

    def _incr_both(self, w: OrgWrite, ts_ms: int, fields: tuple[str, ...], n: int = 1) -> None:
        """Add n to each field of the hour and the day of ts_ms (summed per bucket, keyed at the end)."""
        deltas = w.bucket_deltas
        hour, day = ts_ms // HOUR_MS, ts_ms // DAY_MS
        for fld in fields:
            deltas[(0, hour, fld)] = deltas.get((0, hour, fld), 0) + n
            deltas[(1, day, fld)] = deltas.get((1, day, fld), 0) + n

    @staticmethod
    def _incr_minute(w: OrgWrite, ts_ms: int, fields: tuple[str, ...]) -> None:
        """Count by the event's own minute (for the alert rules' rolling hour)."""
        deltas = w.bucket_deltas
        index = ts_ms // MINUTE_MS
        for fld in fields:
            deltas[(2, index, fld)] = deltas.get((2, index, fld), 0) + 1

    def _flush_buckets(self, w: OrgWrite) -> None:
        hourly_s, daily_s = self.retention.hourly_ms // 1000, self.retention.daily_ms // 1000
        bucket_keys: dict[tuple[int, int], str] = {}
        for (grain, index, fld), n in w.bucket_deltas.items():
            key = bucket_keys.get((grain, index))
            if key is None:
                if grain == 0:
                    key = keys.hourly(w.org, hour_label(index))
                    w.expire_at(key, (index + 1) * 3600 + hourly_s)
                elif grain == 2:
                    key = keys.minute(w.org, index)
                    w.expire_at(key, (index + 1) * 60 + MINUTES_KEPT_S)
                else:
                    key = keys.daily(w.org, day_label(index))
                    w.expire_at(key, (index + 1) * 86400 + daily_s)
                bucket_keys[(grain, index)] = key
            w.hincr(key, fld, n)
        for (day, mentor, student), n in w.top_deltas.items():
            key = keys.top_students(w.org, day_label(day), mentor)
            w.zincr(key, student, n)
            w.expire_at(key, (day + 1) * 86400 + daily_s)
            # The week's set too, so a long range unions weeks, not days (90 days: ~25 sets, not 90).
            monday = week_start(day)
            key = keys.top_students(w.org, keys.week_label(day_label(monday)), mentor)
            w.zincr(key, student, n)
            w.expire_at(key, (monday + 7) * 86400 + daily_s)

    def _chat_message(self, w: OrgWrite, ev: ChatMessage, item: Item, convs: dict[str, dict[str, str | None]]) -> None:
        conv_state = convs.setdefault(ev.session_id, dict.fromkeys(CONV_FIELDS))
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
            day_index = ev.ts_ms // DAY_MS
            w.bucket_deltas[(1, day_index, keys.HUMAN)] = w.bucket_deltas.get((1, day_index, keys.HUMAN), 0) + 1
            top = w.top_deltas
            for slot in ((day_index, None, ev.student), (day_index, ev.mentor_id, ev.student)):
                top[slot] = top.get(slot, 0) + 1

    def _sentiment(self, w: OrgWrite, ev: SentimentEvent, convs: dict[str, dict[str, str | None]]) -> None:
        self._incr_both(w, ev.ts_ms, (keys.SENTIMENT, keys.sentiment_field(ev.sentiment)))
        self._incr_minute(w, ev.ts_ms, (keys.SENTIMENT, keys.sentiment_field(ev.sentiment)))
        conv = convs.setdefault(ev.session_id, dict.fromkeys(CONV_FIELDS))
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
        conv = convs.setdefault(ev.id, dict.fromkeys(CONV_FIELDS))
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
