"""The traffic model (streams/traffic.py) makes what docs/TRAFFIC.md says it makes: checked on its output,
measured, not on its parameters."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT
from streams.traffic import DAY_MS, HOUR_WEIGHTS, PlatformTraffic, TrafficConfig, describe

END = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def backfill() -> list[tuple[str, dict[str, object]]]:
    return list(PlatformTraffic(TrafficConfig(seed=3)).backfill(120_000, days=90, end=END))


def test_the_mix_of_topics_and_what_sessions_carry(backfill: list[tuple[str, dict[str, object]]]) -> None:
    d = describe(backfill)
    shares = {t: n / d["events"] for t, n in d["by_topic"].items()}
    assert 0.44 < shares[CHAT_MESSAGES] < 0.54 and 0.35 < shares[LLM_OBSERVATIONS] < 0.45, shares
    assert 0.03 < shares[SENTIMENT] < 0.07 and 0.03 < shares[CHAT_HISTORY] < 0.07, shares
    assert 0.77 < d["judged_share"] < 0.83 and 0.82 < d["recorded_share"] < 0.88, d
    assert 0.97 < d["generations_per_ai_reply"] <= 1.0, d  # one generation per AI reply (the last session cut)


def test_sessions_are_mostly_short_with_a_long_tail(backfill: list[tuple[str, dict[str, object]]]) -> None:
    d = describe(backfill)
    assert d["session_median"] in (5, 6, 7), d
    assert 0.005 < d["sessions_over_30"] / d["sessions"] < 0.04, d
    messages = list({e["event_id"]: e for t, e in backfill if t == CHAT_MESSAGES}.values())  # copies once
    by_session: dict[object, list[dict[str, object]]] = {}
    for e in messages:
        by_session.setdefault(e["session_id"], []).append(e)
    for turns in list(by_session.values())[:500]:  # the student first, then the AI
        turns.sort(key=lambda e: str(e["timestamp"]))
        assert [e["role"] for e in turns[:2]] == ["human", "ai"][: len(turns[:2])]


def test_orgs_are_unequal_and_students_many(backfill: list[tuple[str, dict[str, object]]]) -> None:
    d = describe(backfill)
    assert d["orgs"] == 20
    assert d["largest_org_share"] > 0.25 and d["smallest_org_share"] < 0.02, d
    assert d["students"] > 5_000, d


def test_ids_are_uuids_and_usernames_the_platforms(backfill: list[tuple[str, dict[str, object]]]) -> None:
    for topic, e in backfill[:2000]:
        uuid.UUID(str(e["event_id"]))
        if topic == CHAT_MESSAGES:
            uuid.UUID(str(e["session_id"]))
            uuid.UUID(str(e["mentor_id"]))
            assert re.fullmatch(r"[a-z]+\.[a-z]+\d{1,4}", str(e["student"])), e["student"]


def test_duplicates_upserts_and_late_events(backfill: list[tuple[str, dict[str, object]]]) -> None:
    d = describe(backfill)
    assert 0.007 < d["duplicate_share"] < 0.013, d  # 1 % sent twice
    assert 0.003 < d["upsert_share"] < 0.012, d  # 3 % of generations' costs sent again
    stamps = [datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")) for _, e in backfill]
    running, late = stamps[0], 0
    for t in stamps:  # sent after an event stamped more than 5 minutes later: late
        if t < running - timedelta(minutes=5):
            late += 1
        running = max(running, t)
    assert 0.005 < late / len(stamps) < 0.04, late / len(stamps)


def test_the_history_spans_the_days_with_a_school_rhythm(backfill: list[tuple[str, dict[str, object]]]) -> None:
    traffic = PlatformTraffic(TrafficConfig(seed=3))  # the same seed: the same orgs and offsets
    offsets = {o.name: o.utc_offset_h for o in traffic.orgs}
    stamps = sorted(str(e["timestamp"]) for _, e in backfill)
    assert datetime.fromisoformat(stamps[0].replace("Z", "+00:00")) < END - timedelta(days=80)
    assert datetime.fromisoformat(stamps[-1].replace("Z", "+00:00")) <= END  # nothing in the future
    local: Counter[int] = Counter()
    weekday, weekend = Counter[int](), Counter[int]()
    for t, e in backfill:
        if t == CHAT_MESSAGES:
            at = datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")) + timedelta(
                hours=offsets[str(e["org"])]
            )
            local[at.hour] += 1
            (weekend if at.weekday() >= 5 else weekday)[at.toordinal()] += 1
    school = sum(local[h] for h in range(9, 16)) / 7
    night = sum(local[h] for h in range(1, 6)) / 5
    assert school > 8 * night, (school, night)  # the weights say about 20x; messages spill past starts
    per_weekend_day = sum(weekend.values()) / max(1, len(weekend))
    per_weekday = sum(weekday.values()) / max(1, len(weekday))
    assert 0.2 < per_weekend_day / per_weekday < 0.55, (per_weekend_day, per_weekday)
    assert HOUR_WEIGHTS[10] > 10 * HOUR_WEIGHTS[3]


def test_the_same_seed_makes_the_same_traffic() -> None:
    one = list(PlatformTraffic(TrafficConfig(seed=9)).backfill(3_000, days=7, end=END))
    two = list(PlatformTraffic(TrafficConfig(seed=9)).backfill(3_000, days=7, end=END))
    other = list(PlatformTraffic(TrafficConfig(seed=10)).backfill(3_000, days=7, end=END))
    assert one == two and one != other


def test_live_sessions_happen_now() -> None:
    now = END
    events = [ev for _, ev in zip(range(2_000), PlatformTraffic(TrafficConfig(seed=4)).live(now), strict=False)]
    stamps = [datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")) for _, e in events]
    assert all(now - timedelta(hours=8) < t <= now for t in stamps)  # nothing in the future
    assert sum(t > now - timedelta(hours=1) for t in stamps) > 0.9 * len(stamps)  # most within the hour
    assert {t for t, _ in events} == {CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT, CHAT_HISTORY}
    assert DAY_MS == 86_400_000
