"""Validation of raw events: every kind of bad event gets a readable reason; good ones become records."""

from __future__ import annotations

import calendar
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.exceptions import InvalidEvent
from streams.schemas import ChatMessage, Conversation, Limits, LlmObservation, SentimentEvent, parse, parse_cost

NOW = 1_795_000_000_000  # 2026-11-18T11:06:40Z
DAY = 86_400_000
LIMITS = Limits(retention_ms=400 * DAY, max_future_ms=300_000)


def chat(**over: Any) -> dict[str, Any]:
    base = {
        "event_id": "e1",
        "org": "acme",
        "timestamp": "2026-11-18T10:00:00Z",
        "session_id": "s1",
        "student": "ann",
        "mentor_id": "m1",
        "role": "human",
        "topics": ["algebra"],
    }
    base.update(over)
    return base


def run(topic: str, event: Any, key: bytes | None = b"s1") -> Any:
    raw = event if isinstance(event, bytes) else orjson.dumps(event)
    return parse(topic, key, raw, NOW, LIMITS)


def test_good_chat_message() -> None:
    ev = run("chat-messages", chat())
    assert isinstance(ev, ChatMessage)
    assert ev.ts_ms == calendar.timegm((2026, 11, 18, 10, 0, 0)) * 1000
    assert ev.topics == ("algebra",)


def test_epoch_millis_and_offsets_are_the_same_instant() -> None:
    a = run("chat-messages", chat(timestamp="2026-11-18T12:00:00+02:00"))
    b = run("chat-messages", chat(timestamp=a.ts_ms))
    assert a.ts_ms == b.ts_ms
    assert a.ts_ms % 86_400_000 // 3_600_000 == 10


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{nope", "not JSON"),
        (b"[1, 2]", "an event must be a JSON object, got list"),
        (orjson.dumps(chat(event_id=None)), "missing field 'event_id'"),
        (orjson.dumps({k: v for k, v in chat().items() if k != "student"}), "missing field 'student'"),
        (orjson.dumps(chat(student=7)), "field 'student' must be a string, got int"),
        (orjson.dumps(chat(role="robot")), "field 'role' is 'robot'; expected one of ai, human"),
        (orjson.dumps(chat(timestamp="yesterday")), "timestamp 'yesterday' is not RFC 3339"),
        (orjson.dumps(chat(timestamp="2026-11-18T10:00:00")), "has no UTC offset"),
        (orjson.dumps(chat(timestamp=NOW - 401 * DAY)), "is beyond retention (older than 400 days)"),
        (orjson.dumps(chat(timestamp=NOW + 3_600_000)), "is more than 300s in the future"),
        (orjson.dumps(chat(org="a{b}")), "org 'a{b}' must be"),
        (orjson.dumps(chat(topics="algebra")), "field 'topics' must be a list"),
    ],
)
def test_bad_chat_messages_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        run("chat-messages", raw)
    assert reason in err.value.reason


def test_chat_message_key_must_be_the_session() -> None:
    with pytest.raises(InvalidEvent, match="message key b'other' must equal the event's session_id 's1'"):
        run("chat-messages", chat(), key=b"other")
    with pytest.raises(InvalidEvent, match=r"message key \(none\)"):
        run("chat-messages", chat(), key=None)


def test_sentiment() -> None:
    ev = run("sentiment", {**chat(), "sentiment": "negative", "score": 0.9})
    assert isinstance(ev, SentimentEvent)
    assert (ev.sentiment, ev.score) == ("negative", 0.9)
    with pytest.raises(InvalidEvent, match="field 'sentiment' is 'meh'"):
        run("sentiment", {**chat(), "sentiment": "meh"})


def obs(**over: Any) -> dict[str, Any]:
    base = {
        "event_id": "o1",
        "org": "acme",
        "timestamp": NOW,
        "trace_id": "t1",
        "type": "generation",
        "model": "gpt-4o",
        "usage": {"input": 10, "output": 20},
    }
    base.update(over)
    return base


def test_observation_cost_is_exact_nanos() -> None:
    ev = run("llm-observations", obs(cost="0.000000123"))
    assert isinstance(ev, LlmObservation)
    assert ev.cost_nanos == 123
    assert run("llm-observations", obs(cost=0.1)).cost_nanos == 100_000_000
    assert run("llm-observations", obs()).cost_nanos is None


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"cost": "-1"}, "cost must not be negative"),
        ({"cost": "abc"}, "is not a decimal number"),
        ({"cost": [1]}, "cost must be a decimal string or a number"),
        ({"usage": {"input": -1}}, "usage.input must be a non-negative integer"),
        ({"usage": "lots"}, "field 'usage' must be an object"),
        ({"model": None}, "missing field 'model'"),
    ],
)
def test_bad_observations(over: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidEvent) as err:
        run("llm-observations", obs(**over))
    assert reason in err.value.reason


def test_conversation_record() -> None:
    ev = run(
        "chat-history",
        {"event_id": "c1", "org": "acme", "timestamp": NOW, "id": "s1", "student": "ann", "mentor": "m1",
         "topics": [{"name": "algebra"}, {"name": "algebra"}], "title": "Fractions", "inserted_at": "2026-11-18T09:00:00Z"},
    )  # fmt: skip
    assert isinstance(ev, Conversation)
    assert ev.topics == ("algebra",)
    assert ev.record["title"] == "Fractions"
    assert ev.record["inserted_at"] == "2026-11-18T09:00:00Z"
    assert "org" not in ev.record


def test_parse_cost_rounds_half_even_to_nanos() -> None:
    assert parse_cost("0.0000000005") == 0
    assert parse_cost("0.0000000015") == 2
    assert parse_cost(3) == 3_000_000_000


# --- the compiled path equals the reference ----------------------------------------------------------------

_BASES = {
    "chat-messages": chat(content="hi"),
    "sentiment": {"event_id": "e2", "org": "acme", "timestamp": NOW - 5000, "session_id": "s1", "student": "ann",
                  "sentiment": "negative", "mentor_id": "m1", "score": 0.4},
    "llm-observations": {"event_id": "e3", "org": "acme", "timestamp": "2026-11-18T10:00:00.250+02:00",
                         "trace_id": "t1", "type": "generation", "model": "gpt-4o", "session_id": "s1",
                         "usage": {"input": 10, "output": 20}, "cost": "0.000123", "provider": "openai"},
}  # fmt: skip
_ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(NOW - 500 * DAY, NOW + DAY),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["", "x" * 1025, "x" * 1024, "human", "ai",
    "positive", "acme\n", "a b", "2026-11-18T10:00:00", "2026-11-18T10:00:00Z", "1e3", "-1", "s1", "0.5"]),
    st.text(max_size=5), st.just(["algebra", "algebra", "essays"]), st.lists(st.one_of(st.text(max_size=3), st.just({"name": "t"})), max_size=3),
    st.fixed_dictionaries({}, optional={"input": st.integers(-1, 5) | st.none() | st.booleans(), "output": st.integers(0, 5)}),
)  # fmt: skip


@st.composite
def _raw_events(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid event of a topic with a few fields dropped, replaced by odd values, or added."""
    topic = draw(st.sampled_from(sorted(_BASES)))
    event = dict(_BASES[topic])
    fields = [*sorted(event), "usage", "topics", "cost", "content", "extra"]
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(fields))
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(_ODD_VALUES)
    raw = orjson.dumps(event)
    if draw(st.booleans()) and raw.endswith(b"}"):  # the same key twice: the last one counts
        raw = raw[:-1] + b',"student":"bob"}'
    return topic, raw


@settings(max_examples=3000, deadline=None)
@given(_raw_events(), st.sampled_from([b"s1", b"s2", None]))
def test_the_compiled_path_accepts_what_the_reference_accepts_and_builds_the_same(
    event: tuple[str, bytes], key: bytes | None
) -> None:
    from streams.schemas import _FAST, parse_checked

    topic, raw = event
    try:
        fast: Any = _FAST[topic](key, raw, NOW, LIMITS)
    except Exception as exc:  # refused: parse() asks the reference, which then says why
        fast = exc
    try:
        reference: Any = parse_checked(topic, key, raw, NOW, LIMITS)
    except InvalidEvent as exc:
        reference = exc
    if not isinstance(fast, Exception):
        assert fast == reference, (raw, fast, reference)
    try:
        got: Any = parse(topic, key, raw, NOW, LIMITS)
    except InvalidEvent as exc:
        got = exc
    assert repr(got) == repr(reference)
