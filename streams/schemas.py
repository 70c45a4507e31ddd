"""Event schemas (typed records, times as epoch milliseconds in UTC: `ts_ms`) and the validation that builds
them from raw bytes.

`parse(topic, key, raw, now_ms, limits)` returns a record or raises `InvalidEvent` whose reason is what the
dead-letter record says. Validation is pure: no broker, no Redis. Besides each field's type and format,
every value is bounded to what the worker can store and sum exactly (`MIN_TIME_MS`, `MAX_TOKENS`,
`MAX_TOPICS`, `MAX_DEPTH`, `MAX_TEXT`, the `Limits` of the settings); crossing a bound is a dead letter
naming it (docs/contract.md).

Two paths give the same answers: a compiled one (msgspec decoders of typed structs carrying the same
constraints, `_fast`) for chat messages, sentiment and observations, and the hand-written checks
(`parse_checked`), which are the reference, handle chat-history records and write every reason: an event
the compiled path refuses for any reason is checked again by the reference, so a dead letter's reason
never depends on the path (tests/test_schemas.py holds the two paths equal on generated events).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any, Literal

import msgspec
import orjson

from streams.exceptions import InvalidEvent
from streams.settings import Settings
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT

ROLES = frozenset({"human", "ai"})
# The sentiment labels, in the order the API and the dashboard show them.
SENTIMENTS = ("positive", "neutral", "negative")
# Orgs name Redis hash tags ({org}) and URL path segments: keep braces, colons, slashes and spaces out.
ORG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}\Z")  # \Z: "$" would let a final newline in
NANOS = Decimal(1_000_000_000)
MAX_TEXT = 1024  # longest id, username or label we accept
# The bounds below keep every value within what the worker can store and encode (Redis's 64-bit integers,
# datetime's years, orjson's nesting); each one crossed is a dead letter naming it (docs/contract.md).
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: no earlier `timestamp` or `inserted_at`
MAX_TOKENS = 10**12  # tokens of one observation, per direction: sums of them stay far inside 64 bits
MAX_TOPICS = 64  # topics of one chat message or chat-history record
MAX_DEPTH = 32  # how deeply a chat-history record's JSON may nest (orjson writes at most 254 levels)


@dataclass(frozen=True)
class Limits:
    """The time window an event's timestamp must fall in, relative to now (milliseconds)."""

    retention_ms: int | None  # None: no event is too old (daily aggregates are kept forever)
    max_future_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """Older than the daily retention (when one is set), or further ahead than the clock-skew
        allowance: refused."""
        days = settings.daily_retention_days
        return cls(days * 86_400_000 if days else None, settings.max_future_seconds * 1000)


_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TEXT)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]


class ChatMessage(msgspec.Struct, kw_only=True):
    """A chat message. The compiled path decodes the JSON straight into this struct (the annotations carry
    the checks); `ts_ms` and the record's position (`src_*`) are set after. `timestamp` is as sent."""

    event_id: _Text
    org: _Text
    timestamp: int | float | str
    session_id: _Text
    student: _Text
    mentor_id: _Text
    role: Literal["human", "ai"]
    topics: Annotated[tuple[_Text, ...], msgspec.Meta(max_length=MAX_TOPICS)] | None = None
    content: str | None = None
    ts_ms: int = 0
    # Where it was read from: topic (without prefix), partition, offset. Set after decoding (the names JSON
    # would need are not ones a producer sends).
    src_topic: str = msgspec.field(default="", name="@aia:src_topic")
    src_partition: int = msgspec.field(default=0, name="@aia:src_partition")
    src_offset: int = msgspec.field(default=0, name="@aia:src_offset")


class SentimentEvent(msgspec.Struct, kw_only=True):
    """A sentiment judgement of a session (decoded like ChatMessage)."""

    event_id: _Text
    org: _Text
    timestamp: int | float | str
    session_id: _Text
    student: _Text
    sentiment: Literal["positive", "neutral", "negative"]
    mentor_id: _Text | None = None
    score: float | None = None
    ts_ms: int = 0
    src_topic: str = msgspec.field(default="", name="@aia:src_topic")
    src_partition: int = msgspec.field(default=0, name="@aia:src_partition")
    src_offset: int = msgspec.field(default=0, name="@aia:src_offset")


@dataclass(slots=True)
class LlmObservation:
    event_id: str
    org: str
    ts_ms: int
    trace_id: str
    type: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int | None  # None: infer from the price table
    session_id: str | None = None
    provider: str | None = None
    src_topic: str = ""
    src_partition: int = 0
    src_offset: int = 0


@dataclass(slots=True)
class Conversation:
    """A chat-history record; `record` is the conversation as the API serves it."""

    event_id: str
    org: str
    ts_ms: int
    id: str
    student: str
    mentor: str
    topics: tuple[str, ...]
    inserted_at_ms: int
    record: dict[str, Any]
    deleted: bool = False  # `"deleted": true`: the platform deleted the conversation
    src_topic: str = ""
    src_partition: int = 0
    src_offset: int = 0


Event = ChatMessage | SentimentEvent | LlmObservation | Conversation


def parse_timestamp(value: object, field: str = "timestamp") -> int:
    """RFC 3339 with an offset, or epoch milliseconds -> epoch milliseconds (UTC)."""
    if isinstance(value, bool):
        raise InvalidEvent(f"{field} must be an RFC 3339 string with offset or epoch milliseconds, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidEvent(f"{field} must be a finite number")
        return int(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidEvent(f"{field} {value[:64]!r} is not RFC 3339 (e.g. 2026-11-22T10:00:00Z)") from None
        if dt.tzinfo is None:
            raise InvalidEvent(f"{field} {value[:64]!r} has no UTC offset; add Z or +HH:MM")
        return int(dt.timestamp() * 1000)
    raise InvalidEvent(
        f"{field} must be an RFC 3339 string with offset or epoch milliseconds, got {type(value).__name__}"
    )


def format_timestamp(value: int | datetime) -> str:
    """Epoch milliseconds (or an aware datetime) -> RFC 3339 in UTC ending in `Z`: how every time we write
    reads. Milliseconds no datetime can hold come back as `<n>ms`, so a reason can still name them."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    try:
        return datetime.fromtimestamp(value / 1000, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{value}ms"


def parse_cost(value: object) -> int:
    """USD as a decimal string or number -> integer nano-dollars, exactly."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InvalidEvent(f"cost must be a decimal string or a number, got {type(value).__name__}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidEvent(f"cost {str(value)[:64]!r} is not a decimal number") from None
    if not amount.is_finite():
        raise InvalidEvent("cost must be finite")
    if amount < 0:
        raise InvalidEvent(f"cost must not be negative, got {value}")
    if amount > Decimal(1_000_000):
        raise InvalidEvent(f"cost {value} USD for one observation is beyond belief (limit 1000000)")
    return int((amount * NANOS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


class _Fields:
    """Typed access to a decoded event object, raising InvalidEvent naming the field."""

    __slots__ = ("data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def text(self, name: str) -> str:
        if name not in self.data or self.data[name] is None:
            raise InvalidEvent(f"missing field {name!r}")
        return self._text(name, self.data[name])

    def opt_text(self, name: str) -> str | None:
        value = self.data.get(name)
        return None if value is None else self._text(name, value)

    @staticmethod
    def _text(name: str, value: object) -> str:
        if not isinstance(value, str):
            raise InvalidEvent(f"field {name!r} must be a string, got {type(value).__name__}")
        if not value or len(value) > MAX_TEXT:
            raise InvalidEvent(f"field {name!r} must be 1 to {MAX_TEXT} characters")
        return value

    def choice(self, name: str, allowed: Collection[str]) -> str:
        value = self.text(name)
        if value not in allowed:
            raise InvalidEvent(f"field {name!r} is {value[:64]!r}; expected one of {', '.join(sorted(allowed))}")
        return value

    def count(self, obj: dict[str, Any], name: str, where: str) -> int:
        value = obj.get(name, 0)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidEvent(f"{where}.{name} must be a non-negative integer, got {str(value)[:64]}")
        if value > MAX_TOKENS:
            raise InvalidEvent(f"{where}.{name} must be at most {MAX_TOKENS}, got {str(value)[:64]}")
        return value

    def str_list(self, name: str, *, dedupe: bool = True) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise InvalidEvent(f"field {name!r} must be a list")
        out = []
        for item in value:
            # chat-history topics come as [{"name": ...}], chat messages as [str]
            if isinstance(item, dict):
                item = item.get("name")
            if not isinstance(item, str) or not item or len(item) > MAX_TEXT:
                raise InvalidEvent(f'field {name!r} must hold non-empty strings (or {{"name": str}} objects)')
            out.append(item)
        if len(set(out)) > MAX_TOPICS:
            raise InvalidEvent(f"field {name!r} holds more than {MAX_TOPICS} distinct topics")
        return tuple(dict.fromkeys(out)) if dedupe else tuple(out)


def decode(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent("empty message (no value)")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(data).__name__}")
    return data


def parse(topic: str, key: bytes | None, raw: bytes | None, now_ms: int, limits: Limits) -> Event:
    """Validate one Kafka record of an input topic (named without prefix)."""
    fast = _FAST.get(topic)
    if fast is not None and raw is not None:
        try:
            return fast(key, raw, now_ms, limits)
        except (msgspec.ValidationError, msgspec.DecodeError, InvalidEvent, ValueError):
            pass  # the reference below says why (or, if it accepts the event after all, builds it)
    return parse_checked(topic, key, raw, now_ms, limits)


def parse_checked(topic: str, key: bytes | None, raw: bytes | None, now_ms: int, limits: Limits) -> Event:
    """The reference validation: hand-written checks, each refusal with its reason."""
    data = decode(raw)
    f = _Fields(data)
    event_id = f.text("event_id")
    org = f.text("org")
    if not ORG_RE.match(org):
        raise InvalidEvent(f"org {org[:64]!r} must be 1-128 letters, digits, '.', '_', '@' or '-'")
    if "timestamp" not in data or data["timestamp"] is None:
        raise InvalidEvent("missing field 'timestamp'")
    ts_ms = parse_timestamp(data["timestamp"])
    if ts_ms < MIN_TIME_MS:
        raise InvalidEvent(f"timestamp {format_timestamp(ts_ms)} is before {format_timestamp(MIN_TIME_MS)}")
    if limits.retention_ms is not None and ts_ms < now_ms - limits.retention_ms:
        raise InvalidEvent(
            f"timestamp {format_timestamp(ts_ms)} is beyond retention (older than {limits.retention_ms // 86_400_000} days)"
        )
    if ts_ms > now_ms + limits.max_future_ms:
        raise InvalidEvent(
            f"timestamp {format_timestamp(ts_ms)} is more than {limits.max_future_ms // 1000}s in the future"
        )

    if topic == CHAT_MESSAGES:
        session_id = f.text("session_id")
        _check_key(key, session_id, "session_id")
        content = data.get("content")
        if content is not None and not isinstance(content, str):
            raise InvalidEvent("field 'content' must be a string")
        topics = f.str_list("topics", dedupe=False)
        return ChatMessage(
            event_id=event_id,
            org=org,
            timestamp=data["timestamp"],
            ts_ms=ts_ms,
            session_id=session_id,
            student=f.text("student"),
            mentor_id=f.text("mentor_id"),
            role=f.choice("role", ROLES),  # type: ignore[arg-type]
            topics=topics if "topics" in data and data["topics"] is not None else None,
            content=content,
        )
    if topic == SENTIMENT:
        session_id = f.text("session_id")
        score = data.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise InvalidEvent("field 'score' must be a number")
        return SentimentEvent(
            event_id=event_id,
            org=org,
            timestamp=data["timestamp"],
            ts_ms=ts_ms,
            session_id=session_id,
            student=f.text("student"),
            sentiment=f.choice("sentiment", SENTIMENTS),  # type: ignore[arg-type]
            mentor_id=f.opt_text("mentor_id"),
            score=None if score is None else float(score),
        )
    if topic == LLM_OBSERVATIONS:
        usage = data.get("usage")
        if usage is None:
            usage = {}
        if not isinstance(usage, dict):
            raise InvalidEvent('field \'usage\' must be an object like {"input": 10, "output": 20}')
        cost = data.get("cost")
        return LlmObservation(
            event_id=event_id,
            org=org,
            ts_ms=ts_ms,
            trace_id=f.text("trace_id"),
            type=f.text("type"),
            model=f.text("model"),
            input_tokens=f.count(usage, "input", "usage"),
            output_tokens=f.count(usage, "output", "usage"),
            cost_nanos=None if cost is None else parse_cost(cost),
            session_id=f.opt_text("session_id"),
            provider=f.opt_text("provider"),
        )
    if topic == CHAT_HISTORY:
        conv_id = f.text("id")
        if (depth := json_depth(data)) > MAX_DEPTH:
            raise InvalidEvent(f"the record nests {depth} levels deep; at most {MAX_DEPTH}")
        inserted = data.get("inserted_at")
        inserted_ms = ts_ms if inserted is None else parse_timestamp(inserted, "inserted_at")
        if not MIN_TIME_MS <= inserted_ms <= now_ms + limits.max_future_ms:
            raise InvalidEvent(
                f"inserted_at {format_timestamp(inserted_ms)} is before {format_timestamp(MIN_TIME_MS)} or more "
                f"than {limits.max_future_ms // 1000}s in the future"
            )
        topics = f.str_list("topics")
        student = f.text("student")
        mentor = f.text("mentor")
        deleted = data.get("deleted", False)
        if not isinstance(deleted, bool):
            raise InvalidEvent("field 'deleted' must be true or false")
        record = {k: v for k, v in data.items() if k not in ("event_id", "org", "timestamp")}
        record["topics"] = [{"name": t} for t in topics]
        record["inserted_at"] = format_timestamp(inserted_ms)
        return Conversation(
            event_id=event_id,
            org=org,
            ts_ms=ts_ms,
            id=conv_id,
            student=student,
            mentor=mentor,
            topics=topics,
            inserted_at_ms=inserted_ms,
            record=record,
            deleted=deleted,
        )
    raise InvalidEvent(f"no schema for topic {topic!r}")


def json_depth(value: Any) -> int:
    """How many levels of arrays and objects a decoded JSON value nests (a scalar: 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                return deepest  # deep enough to refuse: no need to walk the rest
        stack.extend((child, depth) for child in children)
    return deepest


def _check_key(key: bytes | None, expected: str, field: str) -> None:
    # Per-session state is partitioned by key: an event keyed otherwise would meet its session's
    # state on another worker, so it is refused rather than miscounted.
    if key != expected.encode():
        shown = "(none)" if key is None else repr(key[:64])
        raise InvalidEvent(f"message key {shown} must equal the event's {field} {expected[:64]!r}")


# --- the compiled path ------------------------------------------------------------------------------------

_GOOD_ORGS: set[str] = set()  # orgs that passed ORG_RE: a few, seen again and again (a regex per event costs)


class _Common(msgspec.Struct):
    event_id: _Text
    org: _Text
    timestamp: int | float | str


class _Usage(msgspec.Struct):
    input: _Count | None = None
    output: _Count | None = None


class _ObservationIn(_Common):
    trace_id: _Text
    type: _Text
    model: _Text
    usage: _Usage | None = None
    cost: str | int | float | None = None
    session_id: _Text | None = None
    provider: _Text | None = None


_CHAT = msgspec.json.Decoder(ChatMessage)
_SENTIMENT = msgspec.json.Decoder(SentimentEvent)
_OBSERVATION = msgspec.json.Decoder(_ObservationIn)


def _when(e: _Common | ChatMessage | SentimentEvent, now_ms: int, limits: Limits) -> int:
    """The event's time, once its org is known to be well formed and the time within the window."""
    if e.org not in _GOOD_ORGS:
        if not ORG_RE.match(e.org):
            raise InvalidEvent("org")  # the reference says how
        if len(_GOOD_ORGS) < 100_000:
            _GOOD_ORGS.add(e.org)
    value = e.timestamp
    ts_ms = value if type(value) is int else parse_timestamp(value)
    if (
        ts_ms < MIN_TIME_MS
        or (limits.retention_ms is not None and ts_ms < now_ms - limits.retention_ms)
        or ts_ms > now_ms + limits.max_future_ms
    ):
        raise InvalidEvent("out of the time window")  # the reference says which way
    return ts_ms


def _fast_chat(key: bytes | None, raw: bytes, now_ms: int, limits: Limits) -> Event:
    e = _CHAT.decode(raw)
    if key != e.session_id.encode():
        raise InvalidEvent("key")
    e.ts_ms = _when(e, now_ms, limits)
    return e


def _fast_sentiment(key: bytes | None, raw: bytes, now_ms: int, limits: Limits) -> Event:
    e = _SENTIMENT.decode(raw)
    e.ts_ms = _when(e, now_ms, limits)
    return e


def _fast_observation(key: bytes | None, raw: bytes, now_ms: int, limits: Limits) -> Event:
    e = _OBSERVATION.decode(raw)
    usage = e.usage or _Usage()
    return LlmObservation(
        e.event_id, e.org, _when(e, now_ms, limits), e.trace_id, e.type, e.model, usage.input or 0,
        usage.output or 0, None if e.cost is None else parse_cost(e.cost), e.session_id, e.provider,
    )  # fmt: skip


_FAST = {CHAT_MESSAGES: _fast_chat, SENTIMENT: _fast_sentiment, LLM_OBSERVATIONS: _fast_observation}
