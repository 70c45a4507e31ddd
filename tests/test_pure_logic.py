"""Pure logic without servers: cost inference, buckets, range planning, and the planner's decisions."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from agents.planner import Item, Planner
from streams.prices import PriceTable
from streams.schemas import ChatMessage, LlmObservation
from tables import keys
from tables.buckets import Grain, Retention, day_of, days_between, hour_of, hours_between, split_weeks
from tables.keys import CONV_STATE
from tables.queries import cost_buckets
from tables.state import OrgState

DAY = 86_400_000
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
    got = cost_buckets("acme", start, end)
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


def msg(event_id: str, offset: int, ts: int, session: str = "s1", role: str = "human") -> Item:
    ev = ChatMessage(event_id, "acme", ts, session, "ann", "m1", role, ())
    return Item(ev, "chat-messages", 0, offset)


def daily(w: object, field: str, ts: int) -> int:
    return w.bucket_deltas.get((Grain.DAY, ts // DAY, field), 0)  # type: ignore[attr-defined]


def test_session_belongs_to_the_day_of_its_first_message() -> None:
    p = planner()
    items = [msg("a", 10, T0), msg("b", 11, T0 + 60 * 60 * 1000, role="ai")]  # the second is the next day
    w = p.plan("acme", items, OrgState(), T0)
    assert daily(w, keys.SESSIONS, T0) == 1
    assert daily(w, keys.MESSAGES, T0) == 2  # both messages count where the session started
    assert daily(w, keys.MESSAGES, T0 + DAY) == 0
    assert w.top_deltas == {(T0 // DAY, None, "ann"): 1, (T0 // DAY, "m1", "ann"): 1}


def test_replayed_events_count_nothing_and_a_session_started_before_keeps_its_bucket() -> None:
    p = planner()
    first = msg("a", 10, T0)
    seen = {(day_of(T0), "a"): "1"}  # "a" was applied before a crash; its session state is in Redis
    session = {"first_offset": "10", "started_ms": str(T0 - 2 * 3_600_000), "first_mentor": "m0"}
    state = OrgState(seen=seen, convs={"s1": dict.fromkeys(CONV_STATE) | session})
    w = p.plan("acme", [first, msg("b", 11, T0)], state, T0)
    assert daily(w, keys.SESSIONS, T0) == 0  # the session was counted with "a" already
    assert daily(w, keys.MESSAGES, T0) == 1  # only "b" is new, counted where the session started...
    assert w.bucket_deltas.get((Grain.DAY, T0 // DAY, keys.mentor_field(keys.MESSAGES, "m0"))) == 1  # ...for its mentor
    assert w.replayed == [first]
    assert w.guards[(w.k(keys.conversation("acme", "s1")), "started_ms")] == session["started_ms"]
    shadow = p.touched_by("acme", w.replayed, state, T0)  # what "a" wrote, to publish again
    assert daily(shadow, keys.SESSIONS, T0) == 1


def test_the_first_applied_message_starts_the_session_and_is_guarded() -> None:
    p = planner()
    w = p.plan("acme", [msg("a", 10, T0), msg("b", 12, T0 + 1000)], OrgState(), T0)
    conv = keys.conversation("acme", "s1")
    assert w.sets[(w.k(conv), "first_offset")] == "10"
    assert w.sets[(w.k(conv), "started_ms")] == str(T0)
    # Applied only if no other writer started the session meanwhile.
    assert w.guards[(w.k(conv), "started_ms")] is None


def test_resent_observation_replaces_its_cost() -> None:
    p = planner()
    obs = LlmObservation("o1", "acme", T0, "t1", "generation", "x", 10, 10, 300)
    prev = f"500,10,10,0,{T0}"
    w = p.plan("acme", [Item(obs, "llm-observations", 0, 5)], OrgState(seen={(day_of(T0), "o1"): prev}), T0)
    assert daily(w, keys.COST, T0) == -200
    assert daily(w, keys.OBSERVATIONS, T0) == 0


@pytest.mark.parametrize("dup_in_batch", [True, False])
def test_an_event_id_counts_once(dup_in_batch: bool) -> None:
    p = planner()
    items = [msg("a", 1, T0), msg("a", 2, T0)] if dup_in_batch else [msg("a", 2, T0)]
    seen = {} if dup_in_batch else {(day_of(T0), "a"): "1"}
    w = p.plan("acme", items, OrgState(seen=seen), T0)
    assert daily(w, keys.MESSAGES, T0) == (1 if dup_in_batch else 0)


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


def test_a_human_message_counts_in_its_day_and_its_week() -> None:
    w = planner().plan("acme", [msg("a", 1, T0)], OrgState(), T0)
    w.payload()
    assert datetime.fromtimestamp(T0 / 1000, UTC).date() == date(2026, 11, 20)  # a Friday: week of the 16th
    assert w.sorted_sets() == {
        "aia:{acme}:top:20261120",
        "aia:{acme}:top:20261120|m|m1",
        "aia:{acme}:top:w20261116",
        "aia:{acme}:top:w20261116|m|m1",
    }
