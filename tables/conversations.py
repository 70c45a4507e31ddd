"""A conversation as kept in Redis, and the rules that make it a function of the set of its events.

A conversation (a field of a bucket `aia:{org}:cv:<n>`, tables/keys.py; stored as `HEADER` then msgpack)
gathers what the events of one session say: where the session starts (its earliest message), how many
messages of each role it has, the latest sentiment judgement, the latest chat-history record, and which
events it has counted. Each rule below is order-free:
applying the same events in any order, any number of times, leaves the same state, so any worker can apply
any batch.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import orjson
from xxhash import xxh3_64_digest, xxh3_64_intdigest

from streams.schemas import ChatMessage, Conversation, SentimentEvent
from tables import ids

# A conversation's stored value (`ConversationState.pack`) starts with this header, fixed fields the Lua
# scripts read without decoding the rest (`tables/lua/conversation.lua`): byte 0 the format, FORMAT (0xC1,
# a byte msgpack never uses and no digit); bytes 1-4 the version, bytes 5-8 the last day written (an epoch
# day index, 0: nothing to prune), each an unsigned 32-bit big-endian integer. Then the state in msgpack.
# A value written before the header is `<version>:<last_day>:` in decimal digits, then msgpack: it starts
# with a digit, and is still read (`unpack`, `prefix`, and conversation.lua); the next write of the
# conversation stores it with the header.
HEADER = struct.Struct(">BII")
FORMAT = 0xC1

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


class Digests:
    """The 8-byte digests of the events a conversation counted: a set, stored as one string of 8-byte
    pieces (a few bytes less per event than a list of strings)."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[bytes] = ()) -> None:
        self.items = set(items)

    def __contains__(self, digest: object) -> bool:
        return digest in self.items

    def add(self, digest: bytes) -> None:
        self.items.add(digest)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digests) and self.items == other.items

    def __repr__(self) -> str:
        return f"Digests({len(self.items)})"

    def packed(self) -> bytes:
        """The digests in order: one set is always the same bytes (whatever order they were counted in)."""
        return b"".join(sorted(self.items))

    @classmethod
    def unpacked(cls, raw: bytes) -> Digests:
        return cls(raw[i : i + 8] for i in range(0, len(raw), 8))


class ConversationState(msgspec.Struct, array_like=True):
    """What a conversation holds (its field's value: a fixed header, then msgpack; `pack`), parsed.

    `version` is bumped by every batch that writes the conversation: the scripts' guards read it from the
    value's header without decoding the rest (`tables/lua/conversation.lua`). `ids` are the digests (`event_digest`) of the events
    counted in the conversation: a chat message, sentiment judgement or chat-history record counts once in
    its conversation, so the batch's state read of its conversations is also its dedup read. `last_day` is
    the day (an epoch day index) the conversation was last written: once it is older than the dedup window
    the worker drops `ids` (`pruned`), and an event re-sent after that counts again."""

    version: int | None = None
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
    costs: dict[int, int] = {}
    traces: dict[str, int] = {}  # trace_id -> its latest observation time (ms)
    # The newest chat-history record: `pack_record`'s bytes, or its JSON text as kept before (msgpack tells
    # them apart; msgspec takes no union of the two, hence Any).
    record_data: Any = None
    ids: Digests = msgspec.field(default_factory=Digests)
    last_day: int = 0  # 0: nothing left to prune
    cid: str | None = None  # the conversation's id as kept (tables/ids.py)
    # Whether the newest record holds a rating (an integer other than 0, as served) that the ratings
    # family counted; None in a state written before that family (its rating counted nowhere until a newer
    # record, or `ai-analytics rebuild`, counts it).
    rated: bool | None = None
    # The newest record's rating (as served: an integer, 0 for none) that the ratings family summed for its
    # means; None in a state written before those sums (summed nowhere until a newer record or a rebuild).
    rating: int | None = None
    # The latest time of the session's human messages (ms, a maximum: any order gives it), for a student's
    # last activity (`/api/analytics/users/details/`); None in a state written before it was kept, and
    # until a human message counts.
    last_human_ms: int | None = None

    def pack(self) -> bytes:
        """The stored value: `HEADER` (the format byte, `version`, `last_day`), then the state in msgpack."""
        return HEADER.pack(FORMAT, self.version or 0, self.last_day) + _ENCODER.encode(self)

    @classmethod
    def unpack(cls, raw: Any) -> ConversationState:
        """The state a stored value holds (either form, see `HEADER`); a new, empty one for None (no
        conversation yet)."""
        if raw is None:
            return cls()
        state: ConversationState = _DECODER.decode(memoryview(raw)[_body(raw) :])
        return state

    # --- the rules, each a function of the set of the events applied -------------------------------------
    def add_message(self, ev: ChatMessage, mentor: str) -> None:
        """A chat message (counted once, `mentor` as kept): the session starts at its earliest message
        (`starts_earlier`), with that message's mentor and student; its count per role; its topics."""
        if starts_earlier(ev.ts_ms, ev.event_id, self.started_ms, self.first_event):
            self.started_ms, self.first_event = ev.ts_ms, ev.event_id
            self.first_mentor, self.first_student = mentor, ev.student
        if ev.role == "human":
            self.human += 1
            if self.last_human_ms is None or ev.ts_ms > self.last_human_ms:
                self.last_human_ms = ev.ts_ms
        else:
            self.ai += 1
        if ev.topics and not self.msg_topics.issuperset(ev.topics):
            self.msg_topics = self.msg_topics.union(ev.topics)

    def add_judgement(self, ev: SentimentEvent) -> None:
        """A sentiment judgement: the conversation's sentiment is the latest by (time, offset, event_id)."""
        version = (ev.ts_ms, ev.src_offset, ev.event_id)
        if is_newer(version, self.sentiment_version):
            self.sentiment, self.sentiment_version = ev.sentiment, version

    def add_record(self, ev: Conversation, mentor: str) -> None:
        """A chat-history record (`mentor` as kept): the latest by (time, offset, event_id) is the
        conversation's record, its student, mentor, topics, insertion time and deletion."""
        version = (ev.ts_ms, ev.src_offset, ev.event_id)
        if is_newer(version, self.record_version):
            self.record_version = version
            self.student, self.mentor, self.topics = ev.student, mentor, ev.topics
            self.inserted_ms = ev.inserted_at_ms
            self.deleted = ev.deleted
            self.record_data = pack_record(ev.record)
            self.rating = _rating_of(ev.record)
            self.rated = self.rating != 0

    def record(self) -> dict[str, Any]:
        """The newest chat-history record, as the API serves it ({} when none)."""
        data = self.record_data
        if not data:
            return {}
        record: dict[str, Any] = orjson.loads(data if isinstance(data, str) else unpack_record(data))
        return record

    def rating_slot(self) -> int | None:
        """The epoch millisecond the conversation's rating counts at (its newest record's `inserted_at`), or
        None when it counts nowhere: no rating (a served `rating` of 0; a thumbs down is a rating too), the
        conversation deleted, or a state from before ratings were counted (`rated` None)."""
        if not self.rated or self.deleted or self.inserted_ms is None:
            return None
        return self.inserted_ms

    def rating_sum(self) -> tuple[int, str, int] | None:
        """(epoch millisecond, mentor as kept or "", rating) the conversation's rating is summed at for the
        mean ratings: as `rating_slot`, for a state whose rating was summed (`rating` not None)."""
        if not self.rating or self.deleted or self.inserted_ms is None:
            return None
        return self.inserted_ms, self.mentor or "", self.rating

    def copy(self) -> ConversationState:
        """A working copy whose `ids` can grow without touching this one."""
        return msgspec.structs.replace(self, ids=Digests(self.ids))

    def pruned(self) -> ConversationState:
        """The state once the dedup window has passed: the same, a version on, without the event digests."""
        return msgspec.structs.replace(self, version=(self.version or 0) + 1, ids=Digests(), last_day=0)

    def attribution(self) -> tuple[str, str] | None:
        """(student, mentor) the session's LLM cost counts for: those of its earliest message (observations
        name only the session); None until a message of the session is known."""
        if self.started_ms is None:
            return None
        return self.first_student or "", self.first_mentor or ""

    def listing(self) -> tuple[object, ...]:
        """Everything `index_entries` depends on: where two states list a conversation differs only if this does."""
        return (
            self.deleted, self.record_version is not None, self.inserted_ms, self.started_ms, self.student,
            self.mentor, self.first_student, self.first_mentor, self.msg_topics, self.topics, self.sentiment,
        )  # fmt: skip

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


def _rating_of(record: dict[str, Any]) -> int:
    """A record's rating as the API serves it: an integer (not a boolean), else 0 (none)."""
    r = record.get("rating")
    return r if isinstance(r, int) and not isinstance(r, bool) else 0


# A chat-history record is kept as its JSON compressed with raw DEFLATE against this dictionary: the field
# names and frequent values of the platform's record (`Conversations` in its SDK), so the ~540 bytes of a
# record take ~160 (the ids and free text are what is left). Stored records are read with it, so it never
# changes: another dictionary would take another format byte (RECORD_FORMAT).
RECORD_DICTIONARY = (
    b'"lti_email":"","lti_username":"","messages":"[]","sentiment":"neutral","positive","negative",'
    b'"rating":0,"tools":[],"metadata":{},"llm_provider":"anthropic","llm_name":"claude-3-5-sonnet","gemini",'
    b'"google","title":"","model":"gpt-4o-mini","platform":"web","mobile","has_document":false,'
    b'"memory_tracked":false,"enable_artifacts":false,"is_shared":false,"is_authenticated":true,'
    b'"llm_name":"gpt-4o","llm_provider":"openai","metadata":{"source":"chat"},"tools":[],"title":"",'
    b'"rating":null,"inserted_at":"2026-01-01T00:00:00.000000Z"}{"id":"00000000-0000-4000-8000-000000000000",'
    b'"student":"","email":"@students.example.edu","mentor":"","topics":[{"name":""}],"model":"gpt-4o",'
    b'"platform":"web",'
)
RECORD_FORMAT = b"\x01"


def pack_record(record: dict[str, Any]) -> bytes:
    """A chat-history record as kept: `RECORD_FORMAT`, then its JSON deflated against `RECORD_DICTIONARY`."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, RECORD_DICTIONARY)
    return RECORD_FORMAT + deflate.compress(orjson.dumps(record)) + deflate.flush()


def unpack_record(data: bytes) -> bytes:
    """The JSON of a record `pack_record` kept."""
    if data[:1] != RECORD_FORMAT:
        raise ValueError(f"a kept record of unknown format {data[:1]!r}")
    inflate = zlib.decompressobj(-15, zdict=RECORD_DICTIONARY)
    return inflate.decompress(data[1:]) + inflate.flush()


def conversation_digest(org: str, cid: str) -> int:
    """The 64-bit number a conversation is addressed by (its bucket, its field, its index entries): XXH3-64
    of the id it is served under (`ids.served`, a UUID), so a served UUID and the kept id find it alike.
    Signed, as Redis keeps integers in compact sets."""
    value: int = xxh3_64_intdigest(ids.served(org, ids.CONVERSATION, cid).encode())
    return value - 2**64 if value >= 2**63 else value


def addressed_digest(org: str, value: str) -> int:
    """The digest of the conversation a client names: by the UUID it is served under (any UUID a client
    sends is taken for one), or by its kept id when that is not a UUID."""
    uid = ids.canonical(value)
    if uid is None:
        return conversation_digest(org, value)
    digest: int = xxh3_64_intdigest(uid.encode())
    return digest - 2**64 if digest >= 2**63 else digest


def event_digest(event_id: str) -> bytes:
    """The 8 bytes a conversation keeps of an event id it counted: XXH3-64 of its UTF-8 (fixed by the
    algorithm's specification, so stored digests stay valid; two different ids of one conversation collide
    with a probability of about n²/2⁶⁵ for n events)."""
    return xxh3_64_digest(event_id.encode())


def _encode(obj: Any) -> Any:
    if isinstance(obj, Digests):
        return obj.packed()
    raise NotImplementedError(f"cannot pack {type(obj).__name__}")


def _decode(kind: type, obj: Any) -> Any:
    if kind is Digests and isinstance(obj, bytes):
        return Digests.unpacked(obj)
    raise NotImplementedError(f"cannot unpack {kind.__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode)
_DECODER = msgspec.msgpack.Decoder(ConversationState, dec_hook=_decode)


def prefix(raw: bytes) -> tuple[int, int]:
    """(version, last_day) of a stored value (either form, see `HEADER`), from its first bytes alone."""
    if raw[0] == FORMAT:
        _, version, last_day = HEADER.unpack_from(raw)
        return version, last_day
    version, last_day, _ = raw.split(b":", 2)  # the form before the header
    return int(version), int(last_day)


def _body(raw: bytes) -> int:
    """Where the msgpack of a stored value starts (either form)."""
    return HEADER.size if raw[0] == FORMAT else raw.index(b":", raw.index(b":") + 1) + 1
