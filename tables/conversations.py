"""A conversation as kept in Redis, and the rules that make it a function of the set of its events.

A conversation (`aia:{org}:conv:<id>`, one hash) gathers what the events of one session say: where the
session starts (its earliest message), how many messages of each role it has, the latest sentiment
judgement, the latest chat-history record. Each rule below is order-free: applying the same events in any
order, any number of times, leaves the same hash, so any worker can apply any batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from tables import keys

# A version of something that can be replaced (a judgement, a record, an observation): its event time,
# the offset of its record in its partition, and its event_id.
Version = tuple[int, int, str]


def starts_earlier(ts_ms: int, event_id: str, start_ms: int | None, start_event: str | None) -> bool:
    """A session starts at its **earliest message by event time**; of two messages stamped in the same
    millisecond, the one with the smaller event_id is the earlier. True when the message (ts_ms, event_id)
    is earlier than the session's current start (or the session has none yet)."""
    if start_ms is None:
        return True
    return (ts_ms, event_id) < (start_ms, start_event or "")


def is_newer(candidate: Version, current: Version | None) -> bool:
    """Of two versions of a replaceable value (a conversation's sentiment, its chat-history record, an
    observation re-sent with the same event_id), the one with the **latest event time** wins; at equal
    times the higher offset in the partition (the later send), then the greater event_id. An older
    version arriving later changes nothing; the same version again changes nothing."""
    return current is None or candidate > current


def format_version(version: Version) -> str:
    ts_ms, offset, event_id = version
    return f"{ts_ms}:{offset}:{event_id}"


def parse_version(raw: str | None) -> Version | None:
    if not raw:
        return None
    ts_ms, offset, event_id = raw.split(":", 2)
    return int(ts_ms), int(offset), event_id


@dataclass
class ConversationState:
    """The fields of a conversation hash the planner decides from (`keys.CONV_STATE`), parsed."""

    version: int | None = None  # bumped by every batch that writes the conversation: its guard
    started_ms: int | None = None
    first_event: str | None = None
    first_mentor: str | None = None
    first_student: str | None = None
    human: int = 0
    ai: int = 0
    msg_topics: frozenset[str] = frozenset()
    sentiment: str | None = None
    sentiment_version: Version | None = None
    record_version: Version | None = None
    student: str | None = None  # as the newest chat-history record says
    mentor: str | None = None
    topics: tuple[str, ...] = ()
    inserted_ms: int | None = None
    deleted: bool = False  # the newest record is a deletion: the conversation is listed nowhere
    # LLM cost of the session's observations by hour (epoch hours -> nano-dollars), attributed to its
    # student and mentor (`attribution`) whenever those are known.
    costs: dict[int, int] = field(default_factory=dict)
    traces: dict[str, int] = field(default_factory=dict)  # trace_id -> its latest observation time (ms)
    record_json: str | None = field(default=None, compare=False)  # written, never read back by the planner

    @classmethod
    def from_fields(cls, fields: dict[str, str | None]) -> ConversationState:
        f = fields.get
        return cls(
            version=_int(f("v")),
            started_ms=_int(f("started_ms")),
            first_event=f("first_event"),
            first_mentor=f("first_mentor"),
            first_student=f("first_student"),
            human=_int(f(keys.MESSAGES_HUMAN)) or 0,
            ai=_int(f(keys.MESSAGES_AI)) or 0,
            msg_topics=frozenset(orjson.loads(f("msg_topics") or "[]")),
            sentiment=f("sentiment"),
            sentiment_version=parse_version(f("sentiment_ver")),
            record_version=parse_version(f("record_ver")),
            student=f("student"),
            mentor=f("mentor"),
            topics=tuple(orjson.loads(f("topics") or "[]")),
            inserted_ms=_int(f("inserted_ms")),
            deleted=f("deleted") == "1",
            costs={int(h): n for h, n in orjson.loads(f("costs") or "{}").items()},
            traces=orjson.loads(f("traces") or "{}"),
        )

    def to_fields(self) -> dict[str, str]:
        """The hash fields this state writes (absent values are not written)."""
        out: dict[str, str] = {keys.MESSAGES_HUMAN: str(self.human), keys.MESSAGES_AI: str(self.ai)}
        if self.started_ms is not None:
            out["started_ms"] = str(self.started_ms)
            out["first_event"] = self.first_event or ""
            out["first_mentor"] = self.first_mentor or ""
            out["first_student"] = self.first_student or ""
        if self.costs:
            out["costs"] = orjson.dumps({str(h): n for h, n in sorted(self.costs.items()) if n}).decode()
        if self.traces:
            out["traces"] = orjson.dumps(self.traces, option=orjson.OPT_SORT_KEYS).decode()
        if self.msg_topics:
            out["msg_topics"] = orjson.dumps(sorted(self.msg_topics)).decode()
        if self.sentiment is not None and self.sentiment_version is not None:
            out["sentiment"] = self.sentiment
            out["sentiment_ver"] = format_version(self.sentiment_version)
        if self.record_version is not None:
            out["record_ver"] = format_version(self.record_version)
            out["student"] = self.student or ""
            out["mentor"] = self.mentor or ""
            out["topics"] = orjson.dumps(list(self.topics)).decode()
            out["inserted_ms"] = str(self.inserted_ms or 0)
            out["deleted"] = "1" if self.deleted else "0"
            if self.record_json is not None:
                out[keys.RECORD] = self.record_json
        return out

    def attribution(self) -> tuple[str, str] | None:
        """(student, mentor) the session's LLM cost counts for: those of its earliest message (observations
        name only the session); None until a message of the session is known."""
        if self.started_ms is None:
            return None
        return self.first_student or "", self.first_mentor or ""

    def index_entries(self) -> dict[tuple[str, str], float]:
        """Where the conversation is listed: (index kind, value) -> score; kind "" is the main index.

        The newest record's student, mentor and insertion time win over the earliest message's; topics
        are those of the record and of every message; sentiment is the latest judgement."""
        out: dict[tuple[str, str], float] = {}
        if self.deleted:
            return out
        score = self.inserted_ms if self.record_version is not None else self.started_ms
        if score is not None:
            out[("", "")] = float(score)
        student = self.student if self.record_version is not None else self.first_student
        mentor = self.mentor if self.record_version is not None else self.first_mentor
        if student:
            out[("student", student)] = 0.0
        if mentor:
            out[("mentor", mentor)] = 0.0
        for topic in self.msg_topics | set(self.topics):
            out[("topic", topic)] = 0.0
        if self.sentiment:
            out[("sentiment", self.sentiment)] = 0.0
        return out


def _int(value: str | None) -> int | None:
    return None if value is None or value == "" else int(value)
