"""Local days: `tz=` answers equal an independent computation in that zone, across daylight-saving changes.

Events around the 2026 clock changes of Los Angeles (a 23-hour 8 March, a 25-hour 1 November), Berlin
(29 March, 25 October), Sydney (5 April, 4 October), and of two zones half an hour off UTC, Adelaide
(+10:30/+09:30, the same days as Sydney) and St. John's (-02:30/-03:30, the same days as Los Angeles), plus
Kolkata (+05:30, no changes), go through the BatchProcessor on a real Redis in a
random order with copies; every tz answer (hourly, daily and weekly sessions, sentiment per day, top students
over ranges and per mentor) must equal tests/reference.py's `local`, which converts each event's timestamp
with zoneinfo and shares no code with tables/.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from infra.redis import RedisServer
from streams.settings import Settings
from tables import queries
from tables.aggregates import sentiment, sessions, top_students
from tables.buckets import Grain, cover, local_days, time_zone
from tables.exceptions import QueryError
from tests import reference
from tests.support import apply_batches, as_records

ORG = "tzorg"
MENTORS = ("m1", "m2")
ZONES = (
    "America/Los_Angeles", "Europe/Berlin", "Australia/Sydney", "Australia/Adelaide", "America/St_Johns", "Asia/Kolkata"
)  # fmt: skip
# UTC windows around the clock changes, and the local days asked about: whole ISO weeks around each window
# (the weekly rows of a range cover only its days).
WINDOWS = [(datetime(2026, 3, 5, tzinfo=UTC), 38), (datetime(2026, 10, 1, tzinfo=UTC), 35)]  # (start, days)
RANGES = [(date(2026, 3, 2), date(2026, 4, 12)), (date(2026, 9, 28), date(2026, 11, 8))]


# --- local days, pure ---------------------------------------------------------------------------------------


def test_a_local_day_is_23_24_or_25_utc_hours() -> None:
    la = time_zone("America/Los_Angeles")
    assert la is not None
    hours = {d.isoformat(): (e - f) // 3600 for d, f, e in local_days(date(2026, 3, 7), date(2026, 3, 9), la)}
    assert hours == {"2026-03-07": 24, "2026-03-08": 23, "2026-03-09": 24}
    hours = {d.isoformat(): (e - f) // 3600 for d, f, e in local_days(date(2026, 10, 31), date(2026, 11, 2), la)}
    assert hours == {"2026-10-31": 24, "2026-11-01": 25, "2026-11-02": 24}
    days = local_days(date(2026, 11, 1), date(2026, 11, 1), la)
    assert days[0][1] == datetime(2026, 11, 1, 7, tzinfo=UTC).timestamp()  # midnight PDT


def test_utc_is_the_daily_buckets_and_other_offsets_are_refused() -> None:
    assert time_zone("UTC") is None and time_zone("Etc/UTC") is None
    for bad in ("Mars/Olympus", "America", "", "../etc/passwd"):
        with pytest.raises(QueryError) as e:
            time_zone(bad)
        assert e.value.param == "tz"
    kathmandu = time_zone("Asia/Kathmandu")
    assert kathmandu is not None
    with pytest.raises(QueryError, match=r"UTC\+05:45"):
        local_days(date(2026, 1, 1), date(2026, 1, 2), kathmandu)
    kolkata = time_zone("Asia/Kolkata")
    assert kolkata is not None
    (_, first, end), *_ = local_days(date(2026, 1, 1), date(2026, 1, 1), kolkata)
    assert datetime.fromtimestamp(first, UTC) == datetime(2025, 12, 31, 18, 30, tzinfo=UTC) and end - first == 86400


def test_cover_uses_whole_utc_days_inside_and_half_hours_at_the_edges() -> None:
    hour, half, day = 3600, 1800, 86400
    hours = [(Grain.HOUR, h) for h in range(8, 24)] + [(Grain.HOUR, h) for h in range(72, 80)]
    assert cover(8 * hour, 3 * day + 8 * hour) == ([1, 2], hours)
    assert cover(day, 2 * day) == ([1], [])
    days, edges = cover(18 * hour + half, day + 18 * hour + half)  # a Kolkata day
    assert days == [] and edges[0] == (Grain.HALF, 37) and edges[-1] == (Grain.HALF, 2 * 42)
    assert sum(half if g is Grain.HALF else hour for g, _ in edges) == day


# --- against the reference, on a real Redis -----------------------------------------------------------------


def events_around_clock_changes(seed: int) -> list[tuple[str, dict[str, Any]]]:
    """Sessions of a few messages each, in the windows, some stamped within minutes of a change."""
    rng = random.Random(seed)
    changes = [datetime(2026, 3, 8, 10, tzinfo=UTC), datetime(2026, 11, 1, 9, tzinfo=UTC),
               datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC),
               datetime(2026, 4, 4, 16, tzinfo=UTC), datetime(2026, 10, 3, 16, tzinfo=UTC),
               datetime(2026, 4, 4, 16, 30, tzinfo=UTC), datetime(2026, 10, 3, 16, 30, tzinfo=UTC),
               datetime(2026, 3, 8, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 4, 30, tzinfo=UTC),
               datetime(2026, 3, 10, 18, 30, tzinfo=UTC)]  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = []
    for s in range(160):
        if s % 4 == 0:
            base = rng.choice(changes) + timedelta(minutes=rng.randint(-90, 90))
        else:
            start, days = rng.choice(WINDOWS)
            base = start + timedelta(minutes=rng.randint(0, days * 24 * 60))
        session, student = f"s{s}", f"stu{rng.randint(0, 9)}"
        for i in range(rng.randint(1, 4)):
            t = base + timedelta(minutes=rng.randint(0, 150))
            events.append(("chat-messages", {
                "event_id": f"m{s}-{i}", "org": ORG, "timestamp": t.isoformat(), "session_id": session,
                "student": student, "mentor_id": rng.choice(MENTORS), "role": rng.choice(("human", "ai")),
                "topics": [],
            }))  # fmt: skip
        if rng.random() < 0.5:
            events.append(("sentiment", {
                "event_id": f"j{s}", "org": ORG, "timestamp": (base + timedelta(minutes=rng.randint(0, 60))).isoformat(),
                "session_id": session, "student": student, "sentiment": rng.choice(("positive", "negative")),
            }))  # fmt: skip
    return events + rng.sample(events, 40)  # producers' retries: copies


async def apply_shuffled(url: str, events: list[tuple[str, dict[str, Any]]], seed: int) -> None:
    records = as_records(events)
    random.Random(seed).shuffle(records)
    redis = Redis.from_url(url)
    try:
        # Hourly buckets from March must still be there whenever this runs.
        batches = [records[i : i + 50] for i in range(0, len(records), 50)]
        await apply_batches(redis, batches, Settings(hourly_retention_days=36500))
    finally:
        await redis.aclose()


@pytest.mark.integration
def test_local_days_equal_an_independent_computation_across_clock_changes(redis_server: RedisServer) -> None:
    events = events_around_clock_changes(seed=7)
    asyncio.run(apply_shuffled(redis_server.url, events, seed=8))
    asyncio.run(check_zones(redis_server.url, events))


async def check_zones(url: str, events: list[tuple[str, dict[str, Any]]]) -> None:
    redis = Redis.from_url(url)
    try:
        for name in ZONES:
            zone = time_zone(name)
            want = reference.local(events, name)
            checked = 0
            for first, last in RANGES:
                for agg, table in (("hourly", want.hourly), ("daily", want.daily), ("weekly", want.weekly)):
                    for mentor in (None, *MENTORS):
                        rows = await sessions.average_messages_per_session(
                            queries.View(redis, 0), ORG, first, last, agg, mentor, zone
                        )
                        for row in rows:
                            expected = table.get((row["time"], mentor or ""), [0, 0])
                            assert [row["total_sessions"], row["total_messages"]] == expected, (name, agg, row)
                            checked += row["total_sessions"]
                        if agg == "daily":
                            assert len(rows) == (last - first).days + 1
                for row in await sentiment.sentiment_counts(queries.View(redis, 0), ORG, first, last, zone):
                    assert row["sentiment_count"] == want.sentiment[row["date"]], (name, row)
                # Top students over the whole range, over each single day, and per mentor.
                spans = [(first, last)] + [
                    (d, d) for d, _, _ in local_days(first, min(last, first + timedelta(9)), zone)
                ]
                for a, b in spans:
                    for mentor in ("", *MENTORS):
                        got = await top_students.top_students(
                            queries.View(redis, 0), ORG, a, b, mentor or None, limit=1000, zone=zone
                        )
                        top = want.top(a.isoformat(), b.isoformat(), mentor, limit=1000)
                        assert [(r["username"], r["chat_message_count"]) for r in got] == top, (name, a, b, mentor)
            assert checked > 0, name
            # The hours of 1 November in Los Angeles: 25 rows, 01:00 twice (PDT, then PST).
            if name == "America/Los_Angeles":
                day = date(2026, 11, 1)
                rows = await sessions.average_messages_per_session(
                    queries.View(redis, 0), ORG, day, day, "hourly", None, zone
                )
                labels = [r["time"] for r in rows]
                assert len(labels) == 25 and "2026-11-01T01:00:00-07:00" in labels
                assert "2026-11-01T01:00:00-08:00" in labels
    finally:
        await redis.aclose()
