"""End to end: events sent to the real broker, a real worker, aggregates read back through the queries the API
serves, and every kind of bad event in the dead-letter topic with its reason."""

from __future__ import annotations

import asyncio
import base64
import random
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from streams.producer import AnalyticsProducer
from streams.settings import Settings
from tables import keys, queries
from tables.aggregates import sessions, top_students
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """With a daily retention, so that an event can be too old (by default daily aggregates are kept forever)."""
    return replace(settings, daily_retention_days=400)


def make_traffic(seed: int, now: datetime) -> list[dict[str, Any]]:
    """Sessions of several messages from both roles, across orgs, days and mentors."""
    rng = random.Random(seed)
    events = []
    for s in range(40):
        org = rng.choice(["acme", "globex"])
        mentor = rng.choice(["m1", "m2", "m3"])
        student = rng.choice(["ann", "bob", "cyd", "dee", "eve"])
        start = now - timedelta(days=rng.randint(0, 3), minutes=rng.randint(0, 600))
        for i in range(rng.randint(1, 6)):
            events.append(
                {
                    "event_id": f"e-{s}-{i}",
                    "org": org,
                    "timestamp": (start + timedelta(seconds=30 * i)).isoformat(),
                    "session_id": f"sess-{s}",
                    "student": student,
                    "mentor_id": mentor,
                    "role": "human" if i % 2 == 0 else "ai",
                    "topics": ["algebra"],
                }
            )
    return events


def reference(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Expected aggregates, computed straight from the events (first message = first sent)."""
    seen: set[str] = set()
    start_day: dict[tuple[str, str], date] = {}
    sessions: Counter[tuple[str, date]] = Counter()
    messages: Counter[tuple[str, date]] = Counter()
    human: dict[tuple[str, date], Counter[str]] = defaultdict(Counter)
    for e in events:
        if e["event_id"] in seen:
            continue
        seen.add(e["event_id"])
        day = datetime.fromisoformat(e["timestamp"]).astimezone(UTC).date()
        sk = (e["org"], e["session_id"])
        if sk not in start_day:
            start_day[sk] = day
            sessions[(e["org"], day)] += 1
        messages[(e["org"], start_day[sk])] += 1
        if e["role"] == "human":
            human[(e["org"], day)][e["student"]] += 1
    return {"sessions": sessions, "messages": messages, "human": human, "unique": len(seen)}


async def test_worker_applies_events_exactly_and_dead_letters_bad_ones(
    settings: Settings, redis: Redis, topics: list[str], workers: Any
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    events = make_traffic(7, now)
    resent = events[::9]  # producers retry: the same event_id again must count once
    async with AnalyticsProducer.connect(settings.kafka_bootstrap, topic_prefix=settings.topic_prefix) as producer:
        for e in events + resent:
            await producer.send("chat-messages", e, wait=False)
        for topic, raw, key in bad_events(events[0], now):
            await producer.send_raw(topic, raw, key=key)
        await producer.flush()

    worker = workers("w1")
    expected = reference(events)

    async def applied() -> bool:
        total = 0
        for org in ("acme", "globex"):
            total += int(await redis.hget(keys.meta(0, org), "events|chat-messages") or 0)
        return total == expected["unique"]

    await eventually(applied, timeout=90, what=f"all events applied (worker log:\n{worker.log_tail()})")

    for org, day in set(expected["sessions"]) | set(expected["messages"]):
        (row,) = await sessions.average_messages_per_session(queries.View(redis, 0), org, day, day)
        want = (expected["sessions"][(org, day)], expected["messages"][(org, day)])
        assert (row["total_sessions"], row["total_messages"]) == want, (org, day)
    for (org, day), counts in expected["human"].items():
        got = {
            r["username"]: r["chat_message_count"]
            for r in await top_students.top_students(queries.View(redis, 0), org, day, day)
        }
        assert got == dict(counts), (org, day)
    assert await queries.list_orgs(redis) == sorted({e["org"] for e in events})

    bad = bad_events(events[0], now)
    dead = await read_topic(settings, "analytics-dead-letter", len(bad))
    assert len(dead) == len(bad)
    by_raw = {base64.b64decode(d["raw"]): d for d in dead}
    for (topic, raw, _), expected_reason in zip(bad, BAD_REASONS, strict=True):
        letter = by_raw[raw]
        assert letter["topic"] == topic
        assert expected_reason in letter["reason"], (expected_reason, letter["reason"])
        assert isinstance(letter["partition"], int) and isinstance(letter["offset"], int)
    assert worker.alive(), worker.log_tail()


BAD_REASONS = [
    "not JSON",
    "an event must be a JSON object, got list",
    "missing field 'student'",
    "field 'student' must be a string, got int",
    "field 'role' is 'bot'",
    "is beyond retention",
    "in the future",
    "field 'sentiment' is 'meh'",
    "cost must not be negative",
    "missing field 'mentor'",
]


def bad_events(good: dict[str, Any], now: datetime) -> list[tuple[str, bytes, bytes | None]]:
    """One event of each kind of bad, in the order of BAD_REASONS."""
    key = good["session_id"].encode()
    no_student = {k: v for k, v in good.items() if k != "student"}
    old = (now - timedelta(days=401)).isoformat()
    future = (now + timedelta(hours=2)).isoformat()
    return [
        ("chat-messages", b"{not json", key),
        ("chat-messages", b"[1, 2, 3]", key),
        ("chat-messages", orjson.dumps({**no_student, "event_id": "bad-1"}), key),
        ("chat-messages", orjson.dumps({**good, "event_id": "bad-2", "student": 42}), key),
        ("chat-messages", orjson.dumps({**good, "event_id": "bad-3", "role": "bot"}), key),
        ("chat-messages", orjson.dumps({**good, "event_id": "bad-4", "timestamp": old}), key),
        ("chat-messages", orjson.dumps({**good, "event_id": "bad-5", "timestamp": future}), key),
        ("sentiment", orjson.dumps({**good, "event_id": "bad-6", "sentiment": "meh"}), key),
        (
            "llm-observations",
            orjson.dumps(
                {
                    "event_id": "bad-7",
                    "org": "acme",
                    "timestamp": good["timestamp"],
                    "trace_id": "t",
                    "type": "generation",
                    "model": "gpt-4o",
                    "cost": "-1",
                }
            ),
            b"t",
        ),
        (
            "chat-history",
            orjson.dumps(
                {"event_id": "bad-8", "org": "acme", "timestamp": good["timestamp"], "id": "c1", "student": "ann"}
            ),
            b"c1",
        ),
    ]


async def read_topic(settings: Settings, name: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        settings.topic(name), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(out) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    out.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return out
