"""Property-based fuzzing of events through a real worker (hypothesis): every generated bad event lands
in the dead-letter topic with a reason, and every good one is counted (against the reference)."""

from __future__ import annotations

import asyncio
import base64
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from streams.settings import Settings
from tests import reference
from tests.support import mismatches, read_topic, worker_and_producer

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
_ids = itertools.count()
_orgs = itertools.count()

names = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=24)
ZONES = [UTC, *(timezone(timedelta(hours=h)) for h in (-8, 5, 9))]
timestamps = st.one_of(
    st.integers(0, 3 * 86_400_000).map(lambda back: int(NOW.timestamp() * 1000) - back),  # epoch ms
    st.builds(
        lambda back, tz: (NOW - timedelta(seconds=back)).astimezone(tz).isoformat(),  # RFC 3339, any offset
        st.integers(0, 3 * 86_400),
        st.sampled_from(ZONES),
    ),
)


@st.composite
def good_event(draw: Any, org: str) -> tuple[str, dict[str, Any]]:
    topic = draw(st.sampled_from(["chat-messages", "sentiment", "llm-observations"]))
    base = {"event_id": f"fz-{next(_ids)}", "org": org, "timestamp": draw(timestamps)}
    if topic == "chat-messages":
        extra: dict[str, Any] = {
            "session_id": draw(st.sampled_from(["s1", "s2", "s3"]) | names),
            "student": draw(names),
            "mentor_id": draw(names),
            "role": draw(st.sampled_from(["human", "ai"])),
            "topics": draw(st.lists(names, max_size=3)),
        }
        if draw(st.booleans()):
            extra["content"] = draw(st.text(max_size=200))
    elif topic == "sentiment":
        extra = {
            "session_id": draw(names),
            "student": draw(names),
            "sentiment": draw(st.sampled_from(["positive", "neutral", "negative"])),
        }
    else:
        extra = {
            "trace_id": draw(names),
            "type": draw(st.sampled_from(["generation", "span"])),
            "model": draw(st.sampled_from(["gpt-4o", "gpt-4o-mini", "gemini-1.5-flash", "unpriced-x"])),
            "usage": {"input": draw(st.integers(0, 10**6)), "output": draw(st.integers(0, 10**6))},
        }
        cost = draw(st.none() | st.decimals(0, 1000, places=9, allow_nan=False).map(str) | st.integers(0, 50))
        if cost is not None:
            extra["cost"] = cost
    return topic, {**base, **extra}


REQUIRED = {
    "chat-messages": ["event_id", "org", "timestamp", "session_id", "student", "mentor_id", "role"],
    "sentiment": ["event_id", "org", "timestamp", "session_id", "student", "sentiment"],
    "llm-observations": ["event_id", "org", "timestamp", "trace_id", "type", "model"],
}
ENUMS = {"chat-messages": "role", "sentiment": "sentiment"}


@st.composite
def bad_record(draw: Any, org: str) -> tuple[str, bytes | None, bytes]:
    """(topic, key, raw value) of an event that must be refused, built from a good one."""
    topic, event = draw(good_event(org))
    key = event.get("session_id", event.get("trace_id", "k")).encode()
    kind = draw(st.sampled_from(["missing", "mistyped", "empty", "enum", "old", "future", "json", "object", "key"]))
    if kind == "missing":
        del event[draw(st.sampled_from(REQUIRED[topic]))]
    elif kind == "mistyped":
        event[draw(st.sampled_from(REQUIRED[topic]))] = draw(st.sampled_from([[], {}, True, 1.5, [1]]))
    elif kind == "empty":
        event[draw(st.sampled_from([f for f in REQUIRED[topic] if f != "timestamp"]))] = ""
    elif kind == "enum" and topic in ENUMS:
        event[ENUMS[topic]] = draw(names.filter(lambda s: s not in ("human", "ai", "positive", "neutral", "negative")))
    elif kind == "enum":
        event["usage"] = {"input": -1}
    elif kind == "old":
        event["timestamp"] = (NOW - timedelta(days=draw(st.integers(401, 5000)))).isoformat()
    elif kind == "future":
        event["timestamp"] = int((NOW + timedelta(hours=draw(st.integers(1, 10_000)))).timestamp() * 1000)
    elif kind == "json":
        return topic, key, draw(st.binary(max_size=40).filter(_not_a_json_object))
    elif kind == "object":
        return (
            topic,
            key,
            orjson.dumps(
                draw(st.one_of(st.lists(st.integers(-(2**63), 2**63 - 1)), st.integers(-(2**63), 2**63 - 1), names))
            ),
        )
    elif topic == "chat-messages":  # "key": a chat message keyed by something other than its session
        key = key + b"-other"
    else:
        del event["org"]
    return topic, key, orjson.dumps(event)


def _not_a_json_object(raw: bytes) -> bool:
    try:
        return not isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return True


@st.composite
def traffic(draw: Any) -> tuple[str, list[tuple[str, dict[str, Any]]], list[tuple[str, bytes | None, bytes]]]:
    org = f"fuzz-{next(_orgs)}"
    good = draw(st.lists(good_event(org), min_size=1, max_size=25))
    bad = draw(st.lists(bad_record(org), min_size=1, max_size=10))
    return org, good, bad


@pytest.fixture
async def fuzz_worker(settings: Settings, topics: list[str], redis: Redis) -> Any:
    settings = replace(settings, daily_retention_days=400)  # so that an event can be too old
    async with worker_and_producer(settings, "fuzz") as (worker, producer):
        yield settings, producer, redis, worker


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=traffic())
async def test_fuzzed_events_are_counted_or_dead_lettered_with_a_reason(fuzz_worker: Any, case: Any) -> None:
    cfg, producer, redis, worker = fuzz_worker
    _org, good, bad = case
    sent_bad: dict[tuple[str, int, int], bytes] = {}
    for topic, event in good:
        key = (event.get("session_id") or event.get("trace_id")).encode()
        await producer.send_and_wait(cfg.topic(topic), orjson.dumps(event), key=key)
    for topic, key, raw in bad:
        meta = await producer.send_and_wait(cfg.topic(topic), raw, key=key)
        sent_bad[(topic, meta.partition, meta.offset)] = raw
    exp = reference.expected(good)
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        dead = {
            (d["topic"], d["partition"], d["offset"]): d
            for _, d in await read_topic(cfg, "analytics-dead-letter", idle_s=0.3)
            if (d["topic"], d["partition"], d["offset"]) in sent_bad
        }
        diff = await mismatches(redis, exp)
        if len(dead) == len(sent_bad) and not diff:
            break
        assert asyncio.get_running_loop().time() < deadline, (diff[:5], len(dead), len(sent_bad), worker.log_tail())
        await asyncio.sleep(0.3)
    for where, raw in sent_bad.items():
        assert dead[where]["reason"], where
        assert base64.b64decode(dead[where]["raw"]) == raw
