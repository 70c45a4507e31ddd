"""Pure logic without servers: cost inference, buckets, range planning, and the planner's decisions."""

from __future__ import annotations

import calendar
import itertools
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agents.planner import Planner
from agents.progress import PartitionProgress, runs
from streams.prices import PriceTable
from streams.schemas import ChatMessage, LlmObservation
from tables import keys, queries
from tables.aggregates import chat_history, llm_cost, sessions, top_students
from tables.aggregates.llm_cost import AppliedObservation, cost_buckets
from tables.buckets import (
    Grain,
    Retention,
    day_of,
    days_between,
    hour_of,
    hours_between,
    month_first,
    month_index,
    split_months,
    split_weeks,
)
from tables.conversations import ConversationState, Digests, conversation_digest, event_digest, is_newer, starts_earlier
from tables.generations import NO_MONTHS
from tables.state import OrgState
from tables.writer import OrgWrite

DAY = 86_400_000
HOUR = 3_600_000
HALF = HOUR // 2
T0 = calendar.timegm((2026, 11, 20, 23, 30, 0)) * 1000  # 23:30 UTC, half an hour before midnight


def test_inferred_cost_is_exact_and_override_wins(tmp_path: Path) -> None:
    table = PriceTable.load()
    # gpt-4o-mini: $0.15 / $0.60 per million tokens -> 150 and 600 nano-dollars per thousand tokens
    assert table.cost_nanos("gpt-4o-mini-2024-07-18", 1000, 1000) == 150_000 + 600_000
    assert table.cost_nanos("GPT-4O", 1, 0) == 2_500  # case-insensitive; gpt-4o after gpt-4o-mini
    assert table.cost_nanos("my-own-model", 10, 10) is None
    override = tmp_path / "prices.toml"
    override.write_text('[[model]]\nmatch = "^gpt-4o"\ninput = "1"\noutput = "1"\n')
    assert PriceTable.load(override).cost_nanos("gpt-4o", 1_000_000, 0) == 1_000_000_000


def test_buckets_are_utc() -> None:
    assert hour_of(T0) == "2026112023"
    assert day_of(T0) == "20261120"
    assert day_of(T0 + 30 * 60 * 1000) == "20261121"
    assert len(hours_between(date(2026, 11, 20), date(2026, 11, 21))) == 48


def test_cost_range_uses_days_inside_and_hours_at_the_edges() -> None:
    start = datetime(2026, 11, 20, 22, 15, tzinfo=UTC)
    end = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    got = cost_buckets(0, "acme", start, end)
    assert got == [
        "aia:{acme}:h:2026112022",
        "aia:{acme}:h:2026112023",
        "aia:{acme}:d:20261121",
        "aia:{acme}:d:20261122",
        "aia:{acme}:h:2026112300",
        "aia:{acme}:h:2026112301",
    ]


def planner() -> Planner:
    return Planner(PriceTable.load(), Retention(hourly_days=90, daily_days=400, dedup_days=7))


def msg(event_id: str, offset: int, ts: int, session: str = "s1", role: str = "human") -> ChatMessage:
    return ChatMessage(
        event_id=event_id, org="acme", timestamp=ts, ts_ms=ts, session_id=session, student="ann", mentor_id="m1",
        role=role, src_topic="chat-messages", src_offset=offset,
    )  # type: ignore[arg-type]  # fmt: skip


def daily(w: OrgWrite, field: str, ts: int) -> int:
    """What the write adds to a field of the day's bucket."""
    return w.hincrs.get((w.k(keys.bucket(0, "acme", Grain.DAY, ts // DAY)), field), 0)


def test_session_belongs_to_the_day_of_its_first_message() -> None:
    p = planner()
    items = [msg("a", 10, T0), msg("b", 11, T0 + 60 * 60 * 1000, role="ai")]  # the second is the next day
    w = p.plan("acme", items, OrgState(), T0, 0)
    assert daily(w, sessions.SESSIONS, T0) == 1
    assert daily(w, sessions.MESSAGES, T0) == 2  # both messages count where the session started
    assert daily(w, sessions.MESSAGES, T0 + DAY) == 0
    for mentor in (None, "m1"):  # by its half hour, for the org and for the mentor
        assert w.zincrs[w.k(top_students.key(0, "acme", Grain.HALF, T0 // HALF, mentor))] == {"ann": 1}


def test_replayed_events_count_nothing_and_a_later_message_counts_where_the_session_started() -> None:
    p = planner()
    first = msg("a", 10, T0)
    # "a" was applied before a crash: its session's state in Redis counted it
    session = ConversationState(version=3, started_ms=T0 - 2 * 3_600_000, first_event="a0", first_mentor="m0",
                                human=2, ids=Digests([event_digest("a0"), event_digest("a")]))  # fmt: skip
    state = OrgState(convs={"s1": session})
    w = p.plan("acme", [first, msg("b", 11, T0)], state, T0, 0)
    assert daily(w, sessions.SESSIONS, T0) == 0  # the session was counted already
    assert daily(w, sessions.MESSAGES, T0) == 1  # only "b" is new, counted where the session started...
    assert daily(w, sessions.mentor_field(sessions.MESSAGES, "m0"), T0) == 1  # ...for its mentor
    assert w.events == 1  # "a" counted before the crash
    # Applied only if no other writer changed the conversation meanwhile.
    digest = conversation_digest("acme", "s1")
    assert w.convs[(w.k(keys.conversation_bucket(0, "acme", digest)), keys.conversation_field(digest))][0] == 3


def test_an_earlier_message_arriving_later_moves_the_session_with_all_its_messages() -> None:
    p = planner()
    later = T0 + DAY
    session = ConversationState(version=1, started_ms=later, first_event="b", first_mentor="m2", human=1, ai=1,
                                ids=Digests([event_digest("b"), event_digest("b2")]))  # fmt: skip
    state = OrgState(convs={"s1": session})
    w = p.plan("acme", [msg("a", 10, T0)], state, T0, 0)
    assert (daily(w, sessions.SESSIONS, later), daily(w, sessions.MESSAGES, later)) == (-1, -2)
    assert (daily(w, sessions.SESSIONS, T0), daily(w, sessions.MESSAGES, T0)) == (1, 3)
    assert daily(w, sessions.mentor_field(sessions.MESSAGES, "m2"), later) == -2
    assert daily(w, sessions.mentor_field(sessions.SESSIONS, "m1"), T0) == 1  # the earliest message's mentor
    after = w.conv_after["s1"]
    assert (after.started_ms, after.first_event, after.version) == (T0, "a", 2)
    digest = conversation_digest("acme", "s1")
    assert w.convs[(w.k(keys.conversation_bucket(0, "acme", digest)), keys.conversation_field(digest))] == (
        1,
        after.pack(),
    )
    assert w.zadds[(w.k(chat_history.index_key(0, "acme")), str(digest))] == float(T0)  # listed by its new start


def test_session_start_and_latest_version_rules() -> None:
    assert starts_earlier(5, "b", None, None)
    assert starts_earlier(4, "z", 5, "a")
    assert starts_earlier(5, "a", 5, "b")  # the same millisecond: the smaller event_id
    assert not starts_earlier(5, "b", 5, "a")
    assert not starts_earlier(5, "a", 5, "a")  # the same message again moves nothing
    assert is_newer((2, 0, "x"), (1, 9, "y"))
    assert is_newer((2, 7, "x"), (2, 6, "y"))  # the same time: the later offset
    assert is_newer((2, 7, "y"), (2, 7, "x"))
    assert not is_newer((2, 7, "x"), (2, 7, "x"))
    assert not is_newer((1, 9, "x"), (2, 0, "x"))


def test_resent_observation_replaces_its_cost_unless_it_is_older() -> None:
    p = planner()
    obs = LlmObservation(
        "o1", "acme", T0, "t1", "generation", "x", 10, 10, 300, src_topic="llm-observations", src_offset=5
    )
    prev = AppliedObservation(500, 10, 10, 0, T0, 4, "x", None, T0 // DAY).value()
    w = p.plan("acme", [obs], OrgState(observations={"o1": prev}), T0, 0)
    assert daily(w, llm_cost.COST, T0) == -200
    assert daily(w, llm_cost.OBSERVATIONS, T0) == 0
    newer = AppliedObservation(500, 10, 10, 0, T0 + 1, 3, "x", None, T0 // DAY).value()
    w = p.plan("acme", [obs], OrgState(observations={"o1": newer}), T0, 0)
    assert daily(w, llm_cost.COST, T0) == 0  # an older version arriving late changes nothing
    assert w.events == 0


@pytest.mark.parametrize("dup_in_batch", [True, False])
def test_an_event_id_counts_once(dup_in_batch: bool) -> None:
    p = planner()
    items = [msg("a", 1, T0), msg("a", 2, T0)] if dup_in_batch else [msg("a", 2, T0)]
    held = (
        ConversationState()
        if dup_in_batch
        else ConversationState(version=1, started_ms=T0, ids=Digests([event_digest("a")]))
    )
    w = p.plan("acme", items, OrgState(convs={"s1": held}), T0, 0)
    assert daily(w, sessions.MESSAGES, T0) == (1 if dup_in_batch else 0)


@pytest.mark.parametrize(
    ("start", "end"),
    [(date(2026, 11, 1), date(2026, 11, 30)), (date(2026, 11, 16), date(2026, 11, 22)),
     (date(2026, 11, 17), date(2026, 11, 22)), (date(2026, 8, 25), date(2026, 11, 22)), (date(2026, 11, 22), date(2026, 11, 22))],
)  # fmt: skip
def test_a_range_is_covered_by_whole_weeks_and_days_exactly_once(start: date, end: date) -> None:
    mondays, days = split_weeks(start, end)
    covered = [m + timedelta(days=i) for m in mondays for i in range(7)] + days
    assert sorted(covered) == days_between(start, end)
    assert all(m.weekday() == 0 for m in mondays)
    assert len(mondays) + len(days) <= (end - start).days // 7 + 12


@pytest.mark.parametrize(
    ("start", "end", "first_month", "whole"),
    [(date(2026, 11, 1), date(2026, 11, 30), 0, ["202611"]), (date(2026, 11, 1), date(2026, 11, 29), 0, []),
     (date(2026, 9, 8), date(2026, 12, 6), 0, ["202610", "202611"]),
     (date(2025, 12, 1), date(2026, 2, 28), 0, ["202512", "202601", "202602"]),
     (date(2024, 2, 1), date(2024, 2, 29), 0, ["202402"]),  # a leap year's February
     (date(2026, 9, 8), date(2026, 12, 6), month_index(date(2026, 11, 1)), ["202611"]),
     (date(2026, 9, 1), date(2026, 12, 31), NO_MONTHS, []), (date(2026, 11, 22), date(2026, 11, 22), 0, [])],
)  # fmt: skip
def test_a_range_is_covered_by_whole_months_and_spans_exactly_once(
    start: date, end: date, first_month: int, whole: list[str]
) -> None:
    """Whole calendar months (from `first_month` on) and the spans left over cover the range exactly once;
    each month's grain index, label and bounds agree."""
    months, rest = split_months(start, end, first_month)
    assert [Grain.MONTH.label(m) for m in months] == [f"m{w}" for w in whole]
    covered = [d for m in months for d in days_between(month_first(m), month_first(m + 1) - timedelta(days=1))]
    covered += [d for a, b in rest for d in days_between(a, b)]
    assert sorted(covered) == days_between(start, end)
    assert len(rest) <= len(months) + 1
    for m in months:
        first = month_first(m)
        ms = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
        assert Grain.MONTH.index(ms) == m == Grain.MONTH.index(ms + 27 * 86_400_000) == month_index(first)
        assert Grain.MONTH.index(ms - 1) == m - 1 and Grain.MONTH.start_ms(m) == ms
        assert Grain.MONTH.end_s(m) * 1000 == Grain.MONTH.start_ms(m + 1)


def test_a_human_message_counts_in_its_half_hour_hour_day_week_and_month() -> None:
    w = planner().plan("acme", [msg("a", 1, T0)], OrgState(), T0, 0)
    w.payload()
    at = datetime.fromtimestamp(T0 / 1000, UTC)
    assert at.date() == date(2026, 11, 20)  # a Friday: week of the 16th
    hour = at.strftime("%Y%m%d%H")
    assert {w.keys[k - 1] for k, members in w.zincrs.items() if any(members.values())} == {
        f"aia:{{acme}}:top:{hour}",  # the edges of a time zone's days
        f"aia:{{acme}}:top:{hour}|m|m1",
        f"aia:{{acme}}:top:{hour}30",  # 23:30: the second half of the hour
        f"aia:{{acme}}:top:{hour}30|m|m1",
        "aia:{acme}:top:20261120",
        "aia:{acme}:top:20261120|m|m1",
        "aia:{acme}:top:w20261116",
        "aia:{acme}:top:w20261116|m|m1",
        "aia:{acme}:top:m202611",
        "aia:{acme}:top:m202611|m|m1",
        "aia:{acme}:top:all",
        "aia:{acme}:top:all|m|m1",
    }
    # What the changefeed publishes of them (marked by the apply): the daily and weekly sets only.
    w.publish = True
    w.payload()
    assert {m for m in w.marks() if m.startswith("z")} == {
        "zaia:{acme}:top:20261120",
        "zaia:{acme}:top:20261120|m|m1",
        "zaia:{acme}:top:w20261116",
        "zaia:{acme}:top:w20261116|m|m1",
    }
    assert "haia:{acme}:d:20261120\0human" in w.marks() and not any(":min:" in m or ":hh:" in m for m in w.marks())


def test_progress_advances_only_over_contiguous_offsets_and_names_the_gaps() -> None:
    p = PartitionProgress()
    p.add([5, 6, 7, 10, 11])  # before Redis's progress is known: collected, no gaps yet
    assert p.gaps() == []
    p.start_at(5)
    assert p.next == 8
    assert p.gaps() == [(8, 10)]
    p.add([9, 8, 9])  # out of order, with a copy
    assert (p.next, p.gaps()) == (12, [])
    p.expect(20)  # the engine's committed offset: it will start there
    assert p.gaps() == [(12, 20)]
    p.add(range(12, 20))
    assert (p.next, p.gaps()) == (20, [])
    p.add([3, 4])  # below the progress: already applied, nothing moves
    assert p.next == 20
    assert runs([4, 1, 2, 2, 7]) == [(1, 3), (4, 5), (7, 8)]


def test_a_kafka_cluster_id_never_starts_with_a_dash() -> None:
    from infra.kafka import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]  # 1 in 64 random ids starts with '-'
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_served_ids_are_the_name_based_uuids_they_always_were() -> None:
    """A served id is forever: the fast name_uuid must give exactly uuid.uuid5 of the same name."""
    import uuid

    from tables import ids

    for name in ("acme|conv|s1", "org0|mentor|mentor 7", "ü|conv|" + "x" * 300, ""):
        assert ids.name_uuid(name) == str(uuid.uuid5(ids.NAMESPACE, name))
    assert ids.served("acme", ids.CONVERSATION, "s1") == str(uuid.uuid5(ids.NAMESPACE, "acme|conv|s1"))


def test_a_conversation_is_stored_behind_a_fixed_header_and_the_form_before_it_still_reads() -> None:
    """`HEADER` (docs/semantics.md): the format byte, the version and the last day, 32-bit big-endian, then
    msgpack. A value stored before it (`<version>:<last_day>:` then msgpack) reads the same."""
    from tables.conversations import prefix

    state = ConversationState(version=3, started_ms=T0, first_event="a", last_day=20_000, ids=Digests([b"8 bytes."]))
    stored = state.pack()
    assert stored[:9] == b"\xc1\x00\x00\x00\x03\x00\x00\x4e\x20"
    body = stored[9:]
    assert ConversationState.unpack(stored) == state and prefix(stored) == (3, 20_000)
    before = b"3:20000:" + body
    assert ConversationState.unpack(before) == state and prefix(before) == (3, 20_000)


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"title": "Fractions", "rating": 5, "email": "a@b.example", "tools": [1, 2], "is_shared": True},
        {"title": "\u0000|cv|\u202e\ufeff", "metadata": {"k": [[[[[[[[{"deep": None}]]]]]]]]}, "rating": -(2**63)},
        {"title": "x" * 100_000, "n": 1.5e308, "topics": [{"name": "ü" * 300}]},
    ],
)
def test_a_kept_record_is_its_json_deflated_and_the_text_form_before_it_still_reads(record: dict[str, Any]) -> None:
    """`pack_record` (docs/semantics.md): a format byte then raw DEFLATE against a fixed dictionary; the
    state serves the record it was given, whatever it holds, and a record kept as JSON text still reads."""
    import orjson

    from tables.conversations import RECORD_FORMAT, pack_record

    packed = pack_record(record)
    assert packed[:1] == RECORD_FORMAT and packed == pack_record(record)  # one record, one stored form
    state = ConversationState.unpack(ConversationState(version=1, record_data=packed).pack())
    assert state.record() == record
    before = ConversationState.unpack(ConversationState(version=1, record_data=orjson.dumps(record).decode()).pack())
    assert before.record() == record
    assert ConversationState().record() == {}


@pytest.mark.parametrize(("size", "per_org"), [(0, 0), (0, 30), (20, 0), (20, 30), (1, 0), (5, 7), (1000, 1)])
def test_a_batch_is_cut_into_parts_that_keep_each_orgs_order_within_both_bounds(size: int, per_org: int) -> None:
    """`_parts` (agents/pipeline.py): every org's items in their order over the parts; no part of an org over
    `per_org` items; no more parts than the two bounds need, each about `size` (an org's share of it); an org
    that fits is not cut because another is (one script for a small org, however many the large one needs)."""
    from agents.pipeline import _parts

    by_org: dict[str, list[Any]] = {"big": list(range(100)), "mid": list(range(10)), "small": list(range(3))}
    parts = _parts(by_org, size, per_org)
    for org, items in by_org.items():
        assert [x for part in parts for x in part.get(org, [])] == items, org
        if per_org:
            assert max(len(part.get(org, [])) for part in parts) <= per_org, org
    total = sum(len(items) for items in by_org.values())
    needed = max(-(-total // size) if size else 1, -(-100 // per_org) if per_org else 1)
    assert len(parts) <= needed
    if size:  # about `size`: each org's slice is its share of a part of `size`
        assert max(sum(len(items) for items in part.values()) for part in parts) <= size * len(by_org), parts
    if size == 0 and per_org >= 10:
        assert sum("small" in part for part in parts) == 1 and sum("mid" in part for part in parts) == 1


@pytest.mark.parametrize(("size", "budget", "least"), [(0, 50, 1), (0, 50, 30), (30, 50, 1), (0, 25, 1), (0, 500, 1)])
def test_a_batch_is_cut_by_the_estimated_cost_of_its_events(size: int, budget: int, least: int) -> None:
    """`_parts` with a cost per event (agents/pipeline.py: the learned operations per event of its topic):
    every org's items in their order over the parts; an org's slices of about equal cost, none over the
    budget by more than one item's; as few as the budget needs (no more than one per `least` items), or
    its share of the `size` parts; an org within both bounds is one slice."""
    from agents.pipeline import _parts

    def cost(item: Any) -> float:
        return 10.0 if item < 10 else 1.0  # heavy events first (chat-history records, ~40 operations), then light

    by_org: dict[str, list[Any]] = {"big": list(range(110)), "light": list(range(10, 40))}  # costs 200 and 30
    parts = _parts(by_org, size, budget, cost, least)
    for org, items in by_org.items():
        assert [x for part in parts for x in part.get(org, [])] == items, org
    by_size = -(-140 // size) if size else 1
    for org, total in (("big", 200), ("light", 30)):
        n = len(by_org[org])
        share = -(-n * by_size // 140) if by_size > 1 else 1
        slices = [part[org] for part in parts if org in part]
        assert len(slices) == max(share, min(-(-total // budget), max(1, n // least))), (org, slices)
        if least == 1:
            assert all(sum(map(cost, s)) <= budget + 10 for s in slices), (org, slices)


def test_an_observation_is_kept_under_a_field_no_other_id_shares_and_its_value_reads_back() -> None:
    """`keys.observation_field`: a canonical UUID as its 16 bytes; any other id as its UTF-8 (0xFF after
    it when that is 16 bytes long), so look-alikes (the UUID's bytes spelled as text, another spelling of
    it, an id ending in ÿ) never share an entry. `AppliedObservation` values read back whatever they hold."""
    uid = "4a4a4a4a-4a4a-4a4a-4a4a-4a4a4a4a4a4a"  # its 16 bytes are "J" * 16
    look_alikes = [uid, uid.upper(), uid.replace("-", ""), "J" * 16, "J" * 15 + "ÿ", "J" * 15, "J" * 17, "", "ü" * 8]
    fields = [keys.observation_field(x) for x in look_alikes]
    assert len(set(fields)) == len(look_alikes) and fields[0] == b"J" * 16
    for session in (None, uid, "s|1", uid.upper(), "", "x" * 1000):
        applied = AppliedObservation(2**63 - 1, 10**12, 0, 1, -(2**63), 2**63 - 1, "m|\u202e", session, 0)
        assert AppliedObservation.parse(applied.value()) == applied
    # The trace (lowercase hex kept as its bytes) and type (the usual ones as a number) read back as sent.
    traces = ["7a2bee8ab76a490fbbdbd6e4288cd909", "7A2BEE8A", "0", "00", "", "abc", uid, "t|1", "ff" * 64, "ff" * 65]
    for trace, kind in itertools.product(traces, ("generation", "span", "event", "Generation", "", "0")):
        for given in (True, False):
            applied = AppliedObservation(1, 2, 3, 0, 5, 6, "m", uid, 7, trace, kind, given)
            assert AppliedObservation.parse(applied.value()) == applied, (trace, kind)
    legacy = b'[1,2,3,0,5,6,"gpt-4o","s1",20777]'
    assert AppliedObservation.parse(legacy) == AppliedObservation(1, 2, 3, 0, 5, 6, "gpt-4o", "s1", 20777)


def test_a_rating_past_64_bits_is_no_rating_and_its_record_is_kept() -> None:
    """A record whose rating is an integer past 64 bits (orjson reads it as a float) or deep JSON: parsed,
    kept (pack_record), served back, and not counted as rated; a 64-bit extreme is a rating."""
    import time

    from streams.schemas import Limits, parse
    from tables.conversations import pack_record

    now = int(time.time() * 1000)
    deep = "[" * 30 + "]" * 30
    for rating, rated in ((2**70, False), (-(2**63), True), (2**63 - 1, True)):
        raw = (
            b'{"event_id":"e","org":"o","timestamp":%d,"id":"s|m|x","student":"a","mentor":"m","rating":%d,'
            b'"metadata":%s}' % (now, rating, deep.encode())
        )
        ev = parse("chat-history", b"o", raw, now, Limits(None, 300_000))
        state = ConversationState()
        state.add_record(ev, "m")  # type: ignore[arg-type]
        assert state.rated is rated
        assert ConversationState.unpack(state.pack()).record() == ev.record  # type: ignore[union-attr]
        assert pack_record(ev.record)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("counts", "shares"),
    [
        ([1, 1, 1], [33.34, 33.33, 33.33]),  # the hundredth left over goes to the first of equal remainders
        ([2, 1], [66.67, 33.33]),
        ([1, 0, 0], [100.0, 0.0, 0.0]),
        ([0, 0, 0], [0.0, 0.0, 0.0]),  # nothing to share: no division by zero
        ([1, 2, 3], [16.67, 33.33, 50.0]),
        ([1, 1, 1, 1, 1, 1, 1], [14.29, 14.29, 14.29, 14.29, 14.28, 14.28, 14.28]),
        ([9_999, 1], [99.99, 0.01]),
        ([999_999, 1], [100.0, 0.0]),  # 0.0001 %: less than a hundredth, and the smaller remainder
    ],
)
def test_shares_are_percentages_of_two_decimals_that_add_up_to_100(counts: list[int], shares: list[float]) -> None:
    got = queries.percentages(counts)
    assert got == shares
    total = sum(counts)
    assert sum(round(p * 100) for p in got) == (10_000 if total else 0)
    for n, p in zip(counts, got, strict=True):  # each within a hundredth of its exact share
        assert not total or abs(p * total - 100 * n) < total / 100


def test_this_month_and_the_month_before() -> None:
    """The month overviews compare this month so far with the whole month before, across a year's end and
    a leap February; a change is a percentage of two places, 0 when there was nothing before."""
    from datetime import date

    from api.analytics import change_percent, month_bounds

    assert month_bounds(date(2026, 1, 1)) == (
        (date(2026, 1, 1), date(2026, 1, 1)),
        (date(2025, 12, 1), date(2025, 12, 31)),
    )
    assert month_bounds(date(2028, 3, 31)) == (
        (date(2028, 3, 1), date(2028, 3, 31)),
        (date(2028, 2, 1), date(2028, 2, 29)),
    )
    assert [change_percent(*p) for p in ((3, 0), (0, 0), (3, 3), (4, 3), (2, 3), (1, 8), (0, 7))] == [
        0.0, 0.0, 0.0, 33.33, -33.33, -87.5, -100.0]  # fmt: skip
    # Whole percents (/api/analytics/users/): half to even, -12.5 to -12 and 62.5 to 62, -87.5 to -88.
    assert [change_percent(*p, places=0) for p in ((7, 8), (13, 8), (1, 8))] == [-12.0, 62.0, -88.0]


@pytest.mark.parametrize(
    ("numerator", "denominator", "places", "text"),
    [
        (5, 2, 0, "2"),  # a tie goes to the even neighbour
        (7, 2, 0, "4"),
        (-7, 2, 0, "-4"),
        (-1_500, 1_000_000, 3, "-0.002"),
        (-1, 1_000_000, 3, "0.000"),  # no "-0.000"
        (1, 3, 5, "0.33333"),
        (2, 3, 5, "0.66667"),
        (10**30 + 1, 10**9, 2, "1000000000000000000000.00"),  # beyond a double's digits
        (10**40 + 1, 1, 0, "1" + "0" * 39 + "1"),  # and beyond a default Decimal context's 28
    ],
)
def test_decimal_text_rounds_exactly_half_to_even(numerator: int, denominator: int, places: int, text: str) -> None:
    assert queries.decimal_text(numerator, denominator, places) == text


@pytest.mark.parametrize(
    ("nanos", "places", "text"),
    [
        (0, 5, "0.00000"),
        (1_234_567, 5, "0.00123"),
        (12_345, 5, "0.00001"),
        (15_000, 5, "0.00002"),  # 0.000015: the tie goes to the even 2
        (25_000, 5, "0.00002"),
        (1_500_000, 3, "0.002"),
        (2_500_000, 3, "0.002"),
        (123_456_789_012, 3, "123.457"),
        (10**9, 1, "1.0"),
    ],
)
def test_usd_text_is_nano_dollars_as_a_decimal_string(nanos: int, places: int, text: str) -> None:
    assert llm_cost.usd_text(nanos, places) == text
    assert re.fullmatch(rf"-?\d+\.\d{{{places}}}", text)


def test_a_sessions_cost_over_a_range_is_its_hours_in_it() -> None:
    """A listed conversation's cost (`/api/analytics/messages/`): the session's cost by hour, the hours of
    [start, end) only, both ends rounded down to their hour."""
    hour = T0 // HOUR  # 23:00 UTC
    state = ConversationState(costs={hour - 1: 5, hour: 7, hour + 1: 11})
    at = lambda ms: datetime.fromtimestamp(ms / 1000, UTC)  # noqa: E731
    assert llm_cost.session_cost(state, at(T0 - DAY), at(T0 + DAY)) == 23
    assert llm_cost.session_cost(state, at(T0), at(T0 + HALF)) == 7  # 23:30 to 00:00: the 23:00 hour
    assert llm_cost.session_cost(state, at(T0 + HALF), at(T0 + DAY)) == 11
    assert llm_cost.session_cost(state, at(T0), at(T0)) == 0


def test_a_zones_days_bound_the_chat_history_index() -> None:
    """The listing's days are UTC's, or a zone's (its midnights, in ms; the end's last millisecond)."""
    d = date(2026, 11, 20)
    utc_lo, utc_hi = chat_history.index_range(chat_history.HistoryFilter(start=d, end=d))
    assert (utc_lo, utc_hi) == (T0 - 23 * HOUR - HALF, T0 + HALF - 1)
    ny = chat_history.index_range(chat_history.HistoryFilter(start=d, end=d, zone=ZoneInfo("America/New_York")))
    assert ny == (utc_lo + 5 * HOUR, utc_hi + 5 * HOUR)
    assert chat_history.index_range(chat_history.HistoryFilter()) == ("-inf", "+inf")


def test_cluster_health_names_failing_nodes_and_primaries_short_of_replicas() -> None:
    """What /readyz and /metrics say of a Redis Cluster whose primary 7003 died: its replica 7007 was
    promoted and kept the other replica; 7002 had lost one before."""
    from redis._parsers.helpers import parse_cluster_nodes

    from tables.connections import ClusterHealth

    nodes = """\
id1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
id2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922
id3 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected
id4 127.0.0.1:7004@17004 slave id1 0 0 1 connected
id5 127.0.0.1:7005@17005 slave id1 0 0 1 connected
id6 127.0.0.1:7006@17006 slave id2 0 0 2 connected
id7 127.0.0.1:7007@17007 master - 0 0 4 connected 10923-16383
id8 127.0.0.1:7008@17008 slave id7 0 0 4 connected
id9 127.0.0.1:7009@17009 slave,fail id2 0 0 2 disconnected
"""
    health = ClusterHealth.parse(parse_cluster_nodes(nodes))  # type: ignore[no-untyped-call]
    assert health.failed == ("127.0.0.1:7003", "127.0.0.1:7009")
    assert health.replicas == {"127.0.0.1:7001": 2, "127.0.0.1:7002": 1, "127.0.0.1:7007": 1}
    assert health.summary(1) == (
        "degraded: 2 node(s) failing: 127.0.0.1:7003, 127.0.0.1:7009; every primary has at least 1 replica(s)"
    )
    assert "fewer than 2 replica(s), its orgs not applied until one is back: 127.0.0.1:7002, 127.0.0.1:7007" in (
        health.summary(2)
    )
    healthy = ClusterHealth.parse(parse_cluster_nodes(nodes.replace(",fail", "")))  # type: ignore[no-untyped-call]
    assert healthy.summary(1) == "ok" and healthy.failed == ()
