"""The aggregate families without servers: each one's stored encoding pinned to the byte (a change to a key,
a field or a value is a decision, made here, not an accident), each one's fold the same whatever the order
and the copies of the events, and the answer cache's routes read from the families' marks."""

from __future__ import annotations

import calendar
import random
from typing import Any

import msgspec
import pytest

from agents.planner import Planner
from api.app import create_app
from api.cache import answered_by, cached_routes
from streams.prices import PriceTable
from streams.schemas import ChatMessage, Conversation, Event, LlmObservation, SentimentEvent
from tables.aggregates import FAMILIES, ratings, sessions, topics
from tables.buckets import Retention
from tables.conversations import ConversationState, conversation_digest
from tables.state import OrgState
from tables.writer import OrgWrite

T0 = calendar.timegm((2026, 11, 20, 23, 30, 0)) * 1000  # 23:30 UTC, half an hour before midnight
MINUTE = 60_000
DAY = 86_400_000


def events() -> list[Event]:
    """A small batch of each kind: two messages of one session (the ai one first by time), a judgement, a
    chat-history record and a priced observation of the session."""

    def msg(eid: str, offset: int, ts: int, role: str) -> ChatMessage:
        return ChatMessage(event_id=eid, org="acme", timestamp=ts, ts_ms=ts, session_id="s1", student="ann",
                           mentor_id="m1", role=role, topics=("math",), src_topic="chat-messages",
                           src_offset=offset)  # type: ignore[arg-type]  # fmt: skip

    return [
        msg("e1", 10, T0 + MINUTE, "human"),
        msg("e2", 11, T0, "ai"),
        SentimentEvent(
            event_id="e3",
            org="acme",
            timestamp=T0,
            ts_ms=T0 + 2 * MINUTE,
            session_id="s1",
            student="ann",
            sentiment="positive",
            src_topic="sentiment",
            src_offset=3,
        ),
        Conversation(
            "e4",
            "acme",
            T0,
            "s1",
            "ann",
            "m1",
            ("algebra",),
            T0,
            {"title": "t"},
            src_topic="chat-history",
            src_offset=4,
        ),
        LlmObservation(
            "e5",
            "acme",
            T0 + 3 * MINUTE,
            "t1",
            "generation",
            "gpt-4o",
            1000,
            500,
            1_250,
            session_id="s1",
            src_topic="llm-observations",
            src_offset=5,
        ),
    ]


def plan(items: list[Event], *, transcript_days: int = 0) -> OrgWrite:
    retention = Retention(hourly_days=90, daily_days=400, dedup_days=7, transcript_days=transcript_days)
    return Planner(PriceTable.load(), retention).plan("acme", items, OrgState(), T0, 0)


def render(w: OrgWrite) -> list[tuple[str, str, str, str]]:
    """Every Redis operation of a write, as (command, key, field or member, value), sorted."""
    k = w.keys
    out = [("HINCRBY", k[i - 1], f, str(n)) for (i, f), n in w.hincrs.items() if n]
    out += [("ZINCRBY", k[i - 1], m, str(n)) for i, ms in w.zincrs.items() for m, n in ms.items() if n]
    out += [("HSET", k[i - 1], f, v) for (i, f), v in w.sets.items()]
    out += [("SADD", k[i - 1], m, "") for i, ms in w.sadds.items() for m in ms]
    out += [("SREM", k[i - 1], m, "") for i, ms in w.srems.items() for m in ms]
    out += [("ZADD", k[i - 1], m, repr(s)) for (i, m), s in w.zadds.items()]
    out += [("ZREM", k[i - 1], m, "") for (i, m) in w.zrems]
    out += [("ZADD LT", k[i - 1], m, str(s)) for i, ms in w.zmins.items() for m, s in ms.items()]
    out += [("EXPIREAT", k[i - 1], "", str(ts)) for i, ts in w.expires.items()]
    out += [("HSET", k[i - 1], f.hex(), v.hex()) for (i, f), (_, v) in w.convs.items()]
    out += [("HSET", key, eid, v.hex()) for key, ids in w.seen.items() for eid, (_, v) in ids.items()]
    out += [("HMAX", k[i - 1], f, str(v)) for (i, f), v in w.maxes.items()]
    return sorted(out)


def of(ops: list[tuple[str, str, str, str]], *, keys: tuple[str, ...] = (), fields: tuple[str, ...] = ()) -> list[str]:
    """The operations on keys containing one of `keys` or on fields starting with one of `fields`."""
    return [" ".join(op) for op in ops if any(s in op[1] for s in keys) or any(op[2].startswith(f) for f in fields)]


def test_operations_count_every_operation_of_the_script_and_the_changefeed_marks() -> None:
    """`OrgWrite.operations()` (what bounds an apply script, agents/pipeline.py) counts each counter, member,
    field, check and expiry the script runs, and each changefeed mark it writes (`marked`, which counts
    `marks()` without making them; the marks, an HSET field each, are 12 % of a backfill script's time)."""
    w = plan(events())
    w.publish = True
    w.payload()
    marks = w.marks()
    assert marks and w.marked() == len(marks)
    hincrs = sum(1 for n in w.hincrs.values() if n)
    assert len([m for m in marks if m.startswith("h")]) < hincrs  # the minute and half-hour buckets are not published
    assert w.operations() >= len(render(w)) + len(marks)


def test_sessions_encoding() -> None:
    assert of(render(plan(events())), fields=("sessions", "messages")) == [
        "HINCRBY aia:{acme}:d:20261120 messages 2",
        "HINCRBY aia:{acme}:d:20261120 messages|m|m1 2",
        "HINCRBY aia:{acme}:d:20261120 sessions 1",
        "HINCRBY aia:{acme}:d:20261120 sessions|m|m1 1",
        "HINCRBY aia:{acme}:h:2026112023 messages 2",
        "HINCRBY aia:{acme}:h:2026112023 messages|m|m1 2",
        "HINCRBY aia:{acme}:h:2026112023 sessions 1",
        "HINCRBY aia:{acme}:h:2026112023 sessions|m|m1 1",
        "HINCRBY aia:{acme}:hh:202611202330 messages 2",
        "HINCRBY aia:{acme}:hh:202611202330 messages|m|m1 2",
        "HINCRBY aia:{acme}:hh:202611202330 sessions 1",
        "HINCRBY aia:{acme}:hh:202611202330 sessions|m|m1 1",
        f"HINCRBY aia:{{acme}}:min:{T0 // MINUTE} messages 1",
        f"HINCRBY aia:{{acme}}:min:{T0 // MINUTE + 1} messages 1",
    ]


def test_sentiment_encoding() -> None:
    assert of(render(plan(events())), fields=("sentiment",)) == [
        "HINCRBY aia:{acme}:d:20261120 sentiment 1",
        "HINCRBY aia:{acme}:d:20261120 sentiment|positive 1",
        "HINCRBY aia:{acme}:h:2026112023 sentiment 1",
        "HINCRBY aia:{acme}:h:2026112023 sentiment|positive 1",
        "HINCRBY aia:{acme}:hh:202611202330 sentiment 1",
        "HINCRBY aia:{acme}:hh:202611202330 sentiment|positive 1",
        f"HINCRBY aia:{{acme}}:min:{T0 // MINUTE + 2} sentiment 1",
        f"HINCRBY aia:{{acme}}:min:{T0 // MINUTE + 2} sentiment|positive 1",
    ]


def test_llm_cost_encoding() -> None:
    assert of(
        render(plan(events())),
        keys=(":costsess:", ":ob", ":tr"),
        fields=("cost_nanos", "tokens_", "observations", "unpriced"),
    ) == [
        "EXPIREAT aia:{acme}:costsess:20261120  1829779200",
        "HINCRBY aia:{acme}:d:20261120 cost_nanos 1250",
        "HINCRBY aia:{acme}:d:20261120 cost_nanos|model|gpt-4o 1250",
        "HINCRBY aia:{acme}:d:20261120 cost_nanos|m|m1 1250",
        "HINCRBY aia:{acme}:d:20261120 cost_nanos|u|ann 1250",
        "HINCRBY aia:{acme}:d:20261120 observations 1",
        "HINCRBY aia:{acme}:d:20261120 tokens_in 1000",
        "HINCRBY aia:{acme}:d:20261120 tokens_out 500",
        "HINCRBY aia:{acme}:h:2026112023 cost_nanos 1250",
        "HINCRBY aia:{acme}:h:2026112023 cost_nanos|model|gpt-4o 1250",
        "HINCRBY aia:{acme}:h:2026112023 cost_nanos|m|m1 1250",
        "HINCRBY aia:{acme}:h:2026112023 cost_nanos|u|ann 1250",
        "HINCRBY aia:{acme}:h:2026112023 observations 1",
        "HINCRBY aia:{acme}:h:2026112023 tokens_in 1000",
        "HINCRBY aia:{acme}:h:2026112023 tokens_out 500",
        # 0x02, the arrival day 20777, then msgpack
        # [1250, 1000, 500, 0, 1795217580000, 5, "gpt-4o", "s1", "t1", 0 (a generation), true (cost given)]
        "HSET aia:{acme}:ob e5 02000051299bcd04e2cd03e8cd01f400cf000001a1fb4e5fe005a66770742d346fa27331a2743100c3",
        # listed (its day is within the observation retention): by its time, its trace by its first time
        "ZADD aia:{acme}:obi e5 1795217580000",
        "ZADD aia:{acme}:trs 2|t1|s1 0",  # the trace's session: the trace id's length, the trace, the session
        "ZADD LT aia:{acme}:tri t1 1795217580000",
        "ZINCRBY aia:{acme}:costsess:20261120 2|m1|s1 1250",
    ]


def test_transcripts_encoding_only_when_turned_on() -> None:
    """AIA_TRANSCRIPT_DAYS 0: no message content anywhere in the write; N: each message's content in its
    conversation's transcript (by the conversation's digest), expiring N days after the batch's day."""
    contents = [ev if not isinstance(ev, ChatMessage) else msgspec.structs.replace(ev, content=f"said {ev.event_id}")
                for ev in events()]  # fmt: skip
    assert not [op for op in render(plan(contents)) if "said" in op[3] or ":tx:" in op[1]]
    digest = conversation_digest("acme", "s1")
    assert of(render(plan(contents, transcript_days=30)), keys=(":tx:",)) == [
        f"EXPIREAT aia:{{acme}}:tx:{digest}  {(T0 // DAY + 1 + 30) * 86_400}",
        f'HSET aia:{{acme}}:tx:{digest} e1 [{T0 + MINUTE},"human","said e1"]',
        f'HSET aia:{{acme}}:tx:{digest} e2 [{T0},"ai","said e2"]',
    ]


def test_top_students_encoding() -> None:
    assert of(render(plan(events())), keys=(":top:",), fields=("human",)) == [
        "EXPIREAT aia:{acme}:top:20261120  1829779200",
        "EXPIREAT aia:{acme}:top:2026112023  1802995200",
        "EXPIREAT aia:{acme}:top:202611202330  1802995200",
        "EXPIREAT aia:{acme}:top:202611202330|m|m1  1802995200",
        "EXPIREAT aia:{acme}:top:2026112023|m|m1  1802995200",
        "EXPIREAT aia:{acme}:top:20261120|m|m1  1829779200",
        "EXPIREAT aia:{acme}:top:m202611  1830643200",  # the month's end (Dec 1) plus the daily retention
        "EXPIREAT aia:{acme}:top:m202611|m|m1  1830643200",
        "EXPIREAT aia:{acme}:top:w20261116  1829952000",
        "EXPIREAT aia:{acme}:top:w20261116|m|m1  1829952000",
        "HINCRBY aia:{acme}:d:20261120 human 1",
        "ZINCRBY aia:{acme}:top:20261120 ann 1",
        "ZINCRBY aia:{acme}:top:2026112023 ann 1",
        "ZINCRBY aia:{acme}:top:202611202330 ann 1",
        "ZINCRBY aia:{acme}:top:202611202330|m|m1 ann 1",
        "ZINCRBY aia:{acme}:top:2026112023|m|m1 ann 1",
        "ZINCRBY aia:{acme}:top:20261120|m|m1 ann 1",
        "ZINCRBY aia:{acme}:top:all ann 1",
        "ZINCRBY aia:{acme}:top:all|m|m1 ann 1",
        "ZINCRBY aia:{acme}:top:m202611 ann 1",
        "ZINCRBY aia:{acme}:top:m202611|m|m1 ann 1",
        "ZINCRBY aia:{acme}:top:w20261116 ann 1",
        "ZINCRBY aia:{acme}:top:w20261116|m|m1 ann 1",
    ]


def test_chat_history_encoding() -> None:
    assert of(render(plan(events())), keys=(":cx:", ":convs")) == [
        "SADD aia:{acme}:cx:mentor:m1:8 -3340393984460741368 ",
        "SADD aia:{acme}:cx:sentiment:positive:8 -3340393984460741368 ",
        "SADD aia:{acme}:cx:student:ann -3340393984460741368 ",
        "SADD aia:{acme}:cx:topic:algebra:8 -3340393984460741368 ",
        "SADD aia:{acme}:cx:topic:math:8 -3340393984460741368 ",
        "ZADD aia:{acme}:convs -3340393984460741368 1795217400000.0",
    ]


def test_distinct_students_are_no_longer_written() -> None:
    """The retired family writes nothing (its erasure still removes a student from sets written before)."""
    assert of(render(plan(events())), keys=(":ds:",)) == []


def test_first_seen_encoding() -> None:
    """A student's earliest human message (epoch ms), in the org's set and the mentor's, never expiring; the
    AI's message (a minute earlier) does not count."""
    assert of(render(plan(events())), keys=(":first",)) == [
        f"ZADD LT aia:{{acme}}:first ann {T0 + MINUTE}",
        f"ZADD LT aia:{{acme}}:first|m|m1 ann {T0 + MINUTE}",
    ]


@pytest.mark.parametrize("seed", range(10))
def test_first_seen_keeps_each_students_earliest_human_message_whatever_the_order(seed: int) -> None:
    def msg(eid: str, ts: int, student: str, mentor: str, role: str = "human") -> ChatMessage:
        return ChatMessage(event_id=eid, org="acme", timestamp=ts, ts_ms=ts, session_id=f"s-{eid}", student=student,
                           mentor_id=mentor, role=role, src_topic="chat-messages", src_offset=0)  # type: ignore[arg-type]  # fmt: skip

    items: list[Event] = [
        msg("a", T0 + 5 * MINUTE, "ann", "m1"),
        msg("b", T0 + 2 * MINUTE, "ann", "m2"),
        msg("c", T0 + 9 * MINUTE, "ann", "m1"),
        msg("d", T0 - DAY, "ann", "m2", role="ai"),
        msg("e", T0 + 3 * MINUTE, "m|x", "a|m|b"),
        msg("f", T0 + 4 * MINUTE, "\u200bann", "m1"),
    ]
    rng = random.Random(seed)
    shuffled = items + rng.sample(items, rng.randint(0, len(items)))
    rng.shuffle(shuffled)
    assert of(render(plan(shuffled)), keys=(":first",)) == [
        f"ZADD LT aia:{{acme}}:first ann {T0 + 2 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first m|x {T0 + 3 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first \u200bann {T0 + 4 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first|m|a|m|b m|x {T0 + 3 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first|m|m1 ann {T0 + 5 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first|m|m1 \u200bann {T0 + 4 * MINUTE}",
        f"ZADD LT aia:{{acme}}:first|m|m2 ann {T0 + 2 * MINUTE}",
    ]


def test_student_activity_encoding() -> None:
    """The session's member (`<conversation digest>|<mentor>`) in its first message's student's set, scored by
    its start (the AI's message, a minute before the human one, starts it: it is the student's too), and the
    student's latest human message, a maximum in the org's hash; neither expires."""
    digest = conversation_digest("acme", "s1")
    assert of(render(plan(events())), keys=(":starts:", ":last")) == [
        f"HMAX aia:{{acme}}:last ann {T0 + MINUTE}",
        f"ZADD aia:{{acme}}:starts:ann {digest}|m1 {T0}",
    ]


def test_a_session_moved_by_an_earlier_message_leaves_its_old_students_set() -> None:
    """A message of another student and mentor, earlier than the session's start, moves the session: its
    member leaves the old student's set and joins the new one's at the new start; the old student's latest
    message stays (a maximum is never lowered)."""
    held = planner_state(events())
    earlier = ChatMessage(event_id="e0", org="acme", timestamp=T0 - MINUTE, ts_ms=T0 - MINUTE, session_id="s1",
                          student="a|m|b", mentor_id="m|2", role="human", src_topic="chat-messages",
                          src_offset=9)  # type: ignore[arg-type]  # fmt: skip
    w = Planner(PriceTable.load(), Retention(90, 400, 7)).plan("acme", [earlier], OrgState(convs=held), T0, 0)
    digest = conversation_digest("acme", "s1")
    assert of(render(w), keys=(":starts:", ":last")) == [
        f"HMAX aia:{{acme}}:last a|m|b {T0 - MINUTE}",
        f"ZADD aia:{{acme}}:starts:a|m|b {digest}|m|2 {T0 - MINUTE}",
        f"ZREM aia:{{acme}}:starts:ann {digest}|m1 ",
    ]


def planner_state(items: list[Event]) -> dict[str, ConversationState]:
    """The conversations as a plan of these events leaves them."""
    return dict(plan(items).conv_after)


def test_conversation_store_encoding() -> None:
    """The conversation's value (`conversations.HEADER`: 0xC1, the version and the last day as 32-bit
    big-endian numbers; then its state in msgpack, its record deflated (`pack_record`), its event digests in
    order, whether its record holds a rating, the rating summed last and its latest human message's time), the
    mentor's served UUID, the org's meta."""
    assert of(render(plan(events())), keys=(":cv:", ":uuids", ":meta")) == [
        "HINCRBY aia:{acme}:meta events|chat-history 1",
        "HINCRBY aia:{acme}:meta events|chat-messages 2",
        "HINCRBY aia:{acme}:meta events|llm-observations 1",
        "HINCRBY aia:{acme}:meta events|sentiment 1",
        "HINCRBY aia:{acme}:meta version 1",
        "HMAX aia:{acme}:meta last_event_ms 1795217580000",
        "HSET aia:{acme}:cv:264 d1a4895e8a5da508 c10000000100005129dc001901cf000001a1fb4ba0c0a26532a26d31a3616e6e010191a46d617468a8706f73697469766593cf000001a1fb4d758003a2653393cf000001a1fb4ba0c004a26534a3616e6ea26d3191a7616c6765627261cf000001a1fb4ba0c0c281ce00079befcd04e281a27431cf000001a1fb4e5fe0c40801ab867b12e87900c4201f7e24023b50eaef49b7d57ffed16a345a80ad712e350b15916658fbd43a97b4cd5129a27331c200cf000001a1fb4c8b20",
        "HSET aia:{acme}:uuids d567aef6-027c-584d-8df3-f4671aab54ac mentor|m1",
    ]


@pytest.mark.parametrize("seed", range(20))
def test_any_order_and_any_copies_plan_the_same_write(seed: int) -> None:
    """Every family's fold is a function of the set of events: shuffled, with copies, the same write (the
    conversation's value compared as the state it holds: its sets have no order)."""
    rng = random.Random(seed)
    items = events()
    shuffled = items + rng.sample(items, rng.randint(0, len(items)))
    rng.shuffle(shuffled)
    assert comparable(plan(shuffled)) == comparable(plan(items))


def comparable(w: OrgWrite) -> list[Any]:
    out: list[Any] = []
    for op in render(w):
        if ":cv:" in op[1]:
            out.append((op[:3], ConversationState.unpack(bytes.fromhex(op[3]))))
        else:
            out.append(op)
    return out


def rated_record(eid: str, offset: int, ts: int, record: dict[str, Any], deleted: bool = False) -> Conversation:
    return Conversation(eid, "acme", ts, "s1", "ann", "m1", (), ts, record, deleted=deleted,
                        src_topic="chat-history", src_offset=offset)  # fmt: skip


def test_ratings_encoding() -> None:
    """A rated record counts once at its `inserted_at` (hour, half hour, day); 0 and non-integers do not."""
    assert of(render(plan([rated_record("r1", 1, T0, {"rating": -1})])), fields=("ratings",)) == [
        "HINCRBY aia:{acme}:d:20261120 ratings 1",
        "HINCRBY aia:{acme}:h:2026112023 ratings 1",
        "HINCRBY aia:{acme}:hh:202611202330 ratings 1",
    ]
    for rating in (0, True, "5", None, 1.0):
        assert of(render(plan([rated_record("r1", 1, T0, {"rating": rating})])), fields=("ratings",)) == []


@pytest.mark.parametrize("rating", [1, -1, 2**63 - 1, -(2**63), 2**64 - 1, 5])
def test_rating_sums_are_exact_for_any_64_bit_rating(rating: int) -> None:
    """A rating is summed as its high and low 32 bits, for the org and for the record's mentor, so no sum of
    64-bit ratings passes what a Redis counter holds; high * 2**32 + low is the rating, exactly."""
    ops = [o for o in of(render(plan([rated_record("r1", 1, T0, {"rating": rating})])), fields=("rat",)) if ":d:" in o]
    high, low = rating >> 32, rating & 0xFFFFFFFF
    assert ops == sorted(
        f"HINCRBY aia:{{acme}}:d:20261120 {f} {n}"
        for f, n in (("rated", 1), ("rated|m|m1", 1), ("rating_hi", high), ("rating_hi|m|m1", high),
                     ("rating_lo", low), ("rating_lo|m|m1", low), ("ratings", 1)) if n
    )  # fmt: skip
    assert ratings.mean(1, high, low) == float(rating)
    assert ratings.mean(3, 3 * high, 3 * low) == float(rating)  # three of them in one bucket


@pytest.mark.parametrize(
    ("newer", "want"),
    [
        ({"rating": 0}, -1),  # the rating taken back
        ({"rating": 5}, 0),  # still rated, same time
        ({"rating": 5, "deleted": True}, -1),  # deleted: counts nowhere
    ],
)
def test_a_newer_record_moves_or_takes_back_the_rating(newer: dict[str, Any], want: int) -> None:
    planner = Planner(PriceTable.load(), Retention(hourly_days=90, daily_days=400, dedup_days=7))
    first = planner.plan("acme", [rated_record("r1", 1, T0, {"rating": 1})], OrgState(), T0, 0)
    held = first.conv_after["s1"]
    deleted = bool(newer.pop("deleted", False))
    w = planner.plan("acme", [rated_record("r2", 2, T0 + 1, newer, deleted)], OrgState(convs={"s1": held}), T0, 0)
    got = sum(int(op[3]) for op in render(w) if op[2] == "ratings" and ":d:" in op[1])
    assert got == want
    summed = {op[2]: int(op[3]) for op in render(w) if op[2].startswith(("rated", "rating_")) and ":d:" in op[1]}
    if want:  # the sums taken back with the count, for the org and the mentor
        assert summed == {"rated": -1, "rated|m|m1": -1, "rating_lo": -1, "rating_lo|m|m1": -1}
    else:  # 1 replaced by 5 in place: only the sum moves
        assert summed == {"rating_lo": 4, "rating_lo|m|m1": 4}
    # A state from before ratings were counted (`rated` absent): its rating was never counted, so a newer
    # record takes nothing back.
    before = msgspec.structs.replace(held, rated=None, rating=None)
    w = planner.plan("acme", [rated_record("r2", 2, T0 + 1, {"rating": 0})], OrgState(convs={"s1": before}), T0, 0)
    assert [op for op in render(w) if op[2].startswith(("rat",))] == []
    # One counted before the sums (`rating` absent): the count is taken back, the sums are not.
    before = msgspec.structs.replace(held, rating=None)
    w = planner.plan("acme", [rated_record("r2", 2, T0 + 1, {"rating": 0})], OrgState(convs={"s1": before}), T0, 0)
    assert {op[2] for op in render(w) if op[2].startswith("rat")} == {"ratings"}


def test_the_cache_keeps_the_answers_of_the_routes_the_families_answer() -> None:
    """The answer cache's routes are those marked `answered_by` (each an org's GET): the analytics and cost
    views (users/details/ kept per role: a platform_admin's answer is never another role's), not freshness
    (the clock), chat history nor the all-orgs cost."""
    routes = cached_routes(create_app())
    patterns = [p.pattern.replace("\\", "") for p, _ in routes]
    assert [p.pattern for p, per_role in routes if per_role] == ["^/api/analytics/users/details/$"]
    tails = sorted(p.split("/users/(?P<user_id>[^/]+)/")[-1] for p in patterns)
    assert tails == sorted([
        "average-messages-per-session/$", "sentiment-count/$", "tenant-cost/$", "top-students-by-chat-messages/$",
        "user-cost/$", "mentors/(?P<mentor_unique_id>[^/]+)/cost/$", "costs/model/$", "costs/permentor/$",
        "costs/peruser/$", "costs/users/$", "conversation/$", "total-users-by-mentor/$", "rating-summary/$",
        # the org as the platform_key query parameter
        "^/api/analytics/sessions/$", "^/api/analytics/conversations/$", "^/api/analytics/ratings/$",
        "^/api/analytics/time/$", "^/api/analytics/users/$", "^/api/analytics/topics/details/$",
        "most-discussed-topics/$", "topics/summary/$", "topic-statistics/$", "topic-overview/$",
        "overview-summary/$", "^/api/analytics/topics/$", "chat-history-filter/$", "conversation-summary/$",
        "^/api/analytics/financial/$", "^/api/analytics/financial/details/$", "^/api/analytics/financial/invoice/$",
        "^/api/analytics/messages/$", "^/api/analytics/users/details/$",
        "usage-summary/$", "user-sentiment/$", "user-metrics-pie-chart/$",
        "observations/$", "observations/(?P<observation_id>[^/]+)/$", "traces/$", "traces/(?P<trace_id>[^/]+)/$",
    ])  # fmt: skip
    assert answered_by(sessions.Sessions) == {"x-answered-by": ["sessions"]}
    assert len({f.name for f in FAMILIES}) == len(FAMILIES)  # each family answers under its own name


def test_messages_count_in_their_own_hour_for_the_heatmap() -> None:
    """Every chat message counts in the hour of its own time (not its session's start), for the org and its
    mentor: what `/api/analytics/time/` reads (whole-hour zones only)."""
    assert [o for o in of(render(plan(events())), fields=("sent",)) if "sentiment" not in o] == [
        "HINCRBY aia:{acme}:h:2026112023 sent 2",
        "HINCRBY aia:{acme}:h:2026112023 sent|m|m1 2",
    ]


def test_topics_encoding() -> None:
    """A conversation counts once per topic (its record's and its messages'), with all its messages, at the
    time chat history lists it by (the record's `inserted_at`), for the org and the record's mentor."""
    ops = [o for o in of(render(plan(events())), keys=(":tp:",)) if not o.startswith("EXPIREAT")]
    assert ops == sorted(
        f"HINCRBY aia:{{acme}}:tp:{label}{whose} {kind}{topic} {n}"
        for label in ("20261120", "2026112023")  # its day and hour
        for whose in ("", "|m|m1")
        for topic in ("4:math", "7:algebra")
        for kind, n in (("c", 1), ("n", 2), ("s", 1), ("p", 1))  # a positive judgement; no rating
    )
    # When each topic was first named (its earliest message or record), for the org and with the mentor.
    assert of(render(plan(events())), keys=(":tpfirst",)) == [
        f"ZADD LT aia:{{acme}}:tpfirst{whose} {topic} {T0}" for whose in ("", "|m|m1") for topic in ("algebra", "math")
    ]


def test_look_alike_topics_and_mentors_never_share_a_count() -> None:
    """A topic's field is its length, `:` and the topic, and a mentor's counts are its own hash: a topic
    holding `|m|`, `:` or digits, or a mentor named like a topic's end, is counted apart from every other."""
    look_alike = ("a", "a|m|b", "1:a", "c1:a", "a:", "ǀa")

    def conversation(session: str, mentor: str, topic: str) -> ChatMessage:
        return ChatMessage(event_id=f"e-{session}", org="acme", timestamp=T0, ts_ms=T0, session_id=session,
                           student="ann", mentor_id=mentor, role="human", topics=(topic,),
                           src_topic="chat-messages", src_offset=1)  # type: ignore[arg-type]  # fmt: skip

    items = [conversation(f"s{i}", mentor, topic) for i, (mentor, topic) in enumerate(
        [(m, t) for t in look_alike for m in ("b", "m|m|b")])]  # fmt: skip
    ops = [op for op in render(plan(items)) if op[0] == "HINCRBY"]
    day = [op for op in ops if op[1].split("|m|", 1)[0].endswith(":tp:20261120")]
    counted = {(op[1].split("|m|", 1)[1] if "|m|" in op[1] else "", topics.parse_field(op[2])) for op in day}
    want = {(who, (kind, t)) for who in ("", "b", "m|m|b") for t in look_alike for kind in ("c", "n")}  # no judgement
    assert counted == want
    assert all(int(op[3]) == (2 if "|m|" not in op[1] else 1) for op in day)  # each its own, no two summed
    assert topics.parse_field("c2:a") is None and topics.parse_field("x1:a") is None  # not a whole field


def test_a_sessions_human_messages_count_at_its_start() -> None:
    """Beside its messages, a session's human messages count in the day of its earliest message (all-time
    answers read days only), for the org and its first mentor (conversation-summary/ reads them)."""
    assert [o for o in of(render(plan(events())), fields=("session_human",))] == [
        f"HINCRBY aia:{{acme}}:d:20261120 session_human{whose} 1" for whose in ("", "|m|m1")
    ]
