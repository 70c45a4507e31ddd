"""An independent model of what the aggregates must be, computed in batch straight from the produced events.

It shares no code with agents/ or tables/: its own timestamp parsing, its own prices for the demo's
models, plain dictionaries. It reads the events as a set: a session starts at its earliest message by
event time (ties: smaller event_id), the latest sentiment and record win (by time, then send order, then
event_id), and of an observation's copies the newest by (time, send order) counts. `events` are given in
send order, which within a partition is offset order.
"""

from __future__ import annotations

import math
import re
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

# USD per million tokens, for the demo's models (the shipped table's published prices).
PRICES = [
    (r"^gpt-4o-mini", "0.15", "0.60"),
    (r"^gpt-4o", "2.50", "10.00"),
    (r"^claude-3-(5|7)-sonnet", "3.00", "15.00"),
    (r"^gemini-1\.5-flash", "0.10", "0.40"),
]


def ts_ms(ts: Any) -> int:
    if isinstance(ts, int):
        return ts
    return int(datetime.fromisoformat(ts).timestamp() * 1000)


def day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def hour(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def week(ms: int) -> str:
    d = datetime.fromtimestamp(ms / 1000, UTC).date()
    return (d - timedelta(days=d.weekday())).isoformat()


def _cost_nanos(obs: dict[str, Any]) -> int:
    if obs.get("cost") is not None:
        return int((Decimal(str(obs["cost"])) * 1_000_000_000).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    usage = obs.get("usage") or {}
    for pattern, pin, pout in PRICES:
        if re.search(pattern, obs["model"], re.IGNORECASE):
            total = (Decimal(pin) * usage.get("input", 0) + Decimal(pout) * usage.get("output", 0)) * 1000
            return int(total.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
    return 0


@dataclass
class Expected:
    sessions: Counter[tuple[str, str]] = field(default_factory=Counter)  # (org, day) -> sessions started
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (org, start day) -> their messages
    # (org, period, mentor or "") -> [sessions, messages], for hourly/weekly/per-mentor answers
    hourly: dict[tuple[str, str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    daily: dict[tuple[str, str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    weekly: dict[tuple[str, str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    human: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    sentiment: Counter[tuple[str, str]] = field(default_factory=Counter)
    labels: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (org, day, sentiment) -> judgements
    cost: Counter[tuple[str, str]] = field(default_factory=Counter)  # nano-dollars
    conversations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (org, conversation id) -> the latest sentiment label
    latest_sentiment: dict[tuple[str, str], str] = field(default_factory=dict)
    # (org, day, mentor or "" for the org's) -> the students who chatted that day
    students: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    # (org, hour or day as the API labels it in UTC, mentor or "") -> the students who sent a (human) message
    active: dict[tuple[str, str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    # (org, mentor or "") -> (student, time in ms) of each human message (copies once)
    humans: dict[tuple[str, str], set[tuple[str, int]]] = field(default_factory=lambda: defaultdict(set))
    orgs: set[str] = field(default_factory=set)

    def days(self) -> set[tuple[str, str]]:
        return set(self.sessions) | set(self.messages) | set(self.human) | set(self.sentiment) | set(self.cost)


def expected(events: list[tuple[str, dict[str, Any]]]) -> Expected:
    out = Expected()
    seen: set[tuple[str, str]] = set()
    session_messages: dict[tuple[str, str], list[tuple[int, str, str]]] = defaultdict(list)
    observations: dict[tuple[str, str], tuple[tuple[int, int], int]] = {}
    sentiments: dict[tuple[str, str], tuple[tuple[int, int, str], str]] = {}
    for index, (topic, e) in enumerate(events):
        org = e["org"]
        out.orgs.add(org)
        ident = (org, e["event_id"])
        t = ts_ms(e["timestamp"])
        if topic == "llm-observations":
            version = (t, index)  # newest by (time, send order) replaces
            if ident not in observations or version > observations[ident][0]:
                observations[ident] = (version, _cost_nanos(e))
            continue
        if ident in seen:
            continue
        seen.add(ident)
        if topic == "chat-messages":
            session_messages[(org, e["session_id"])].append((t, e["event_id"], e["mentor_id"]))
            out.conversations[org].add(e["session_id"])
            for who in ("", e["mentor_id"]):
                out.students[(org, day(t), who)].add(e["student"])
            if e["role"] == "human":
                out.human[(org, day(t))][e["student"]] += 1
                for who in ("", e["mentor_id"]):
                    out.humans[(org, who)].add((e["student"], t))
                    for period in (hour(t), day(t)):
                        out.active[(org, period, who)].add(e["student"])
        elif topic == "sentiment":
            out.sentiment[(org, day(t))] += 1
            out.labels[(org, day(t), e["sentiment"])] += 1
            key = (org, e["session_id"])
            version = (t, index, e["event_id"])
            if key not in sentiments or version > sentiments[key][0]:
                sentiments[key] = (version, e["sentiment"])
        elif topic == "chat-history":
            out.conversations[org].add(e["id"])
    for (org, _), msgs in session_messages.items():
        start, _, mentor = min(msgs)  # the earliest by (time, event_id)
        n = len(msgs)
        out.sessions[(org, day(start))] += 1
        out.messages[(org, day(start))] += n
        for table, period in ((out.hourly, hour(start)), (out.daily, day(start)), (out.weekly, week(start))):
            for who in ("", mentor):
                table[(org, period, who)][0] += 1
                table[(org, period, who)][1] += n
    for (org, _), (version, nanos) in observations.items():
        out.cost[(org, day(version[0]))] += nanos
    out.latest_sentiment = {key: label for key, (_, label) in sentiments.items()}
    return out


# --- per-observation and per-conversation detail, for the cost family and chat history -------------------


@dataclass(frozen=True)
class Observation:
    """One observation as it counts: its newest version, attributed through its session to the student and
    mentor of the session's earliest message (None without a session_id or without a known session)."""

    org: str
    event_id: str
    trace_id: str
    ts_ms: int
    model: str
    session_id: str | None
    nanos: int
    student: str | None
    mentor: str | None


@dataclass
class Conversation:
    org: str
    id: str
    student: str | None = None
    mentor: str | None = None
    title: str | None = None
    topics: set[str] = field(default_factory=set)
    inserted_ms: int | None = None
    sentiment: str = ""
    record: dict[str, Any] | None = None


def session_starts(events: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], tuple[int, str, str, str]]:
    """(org, session_id) -> (time, event_id, student, mentor) of the session's earliest message (copies once)."""
    seen: set[tuple[str, str]] = set()
    first: dict[tuple[str, str], tuple[int, str, str, str]] = {}
    for topic, e in events:
        if topic != "chat-messages" or (e["org"], e["event_id"]) in seen:
            continue
        seen.add((e["org"], e["event_id"]))
        cand = (ts_ms(e["timestamp"]), e["event_id"], e["student"], e["mentor_id"])
        key = (e["org"], e["session_id"])
        if key not in first or cand[:2] < first[key][:2]:
            first[key] = cand
    return first


def observations(events: list[tuple[str, dict[str, Any]]]) -> list[Observation]:
    """Every observation once (the newest copy by (time, send order)), with its cost and attribution."""
    starts = session_starts(events)
    newest: dict[tuple[str, str], tuple[tuple[int, int], dict[str, Any]]] = {}
    for index, (topic, e) in enumerate(events):
        if topic != "llm-observations":
            continue
        ident = (e["org"], e["event_id"])
        version = (ts_ms(e["timestamp"]), index)
        if ident not in newest or version > newest[ident][0]:
            newest[ident] = (version, e)
    out = []
    for (org, event_id), ((t, _), e) in newest.items():
        sid = e.get("session_id")
        start = starts.get((org, sid)) if sid else None
        out.append(
            Observation(
                org=org,
                event_id=event_id,
                trace_id=e["trace_id"],
                ts_ms=t,
                model=e["model"],
                session_id=sid,
                nanos=_cost_nanos(e),
                student=start[2] if start else None,
                mentor=start[3] if start else None,
            )
        )
    return out


def canonical_id(value: str) -> str:
    """An id as the service keeps it: a UUID in its canonical spelling, anything else as given."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return value


def traces(
    events: list[tuple[str, dict[str, Any]]], org: str, oldest_day: int
) -> list[tuple[str, int, str | None, str | None]]:
    """(trace id, first time, session, student) of every trace of the org listed when `oldest_day` (an epoch
    day index) is the first day kept, oldest first, ties by id: the first time and the sessions over every
    version and copy of its observations received on a listed day (the least session, kept canonical,
    counts), the student that of the session's earliest message."""
    starts = session_starts(events)
    first: dict[str, int] = {}
    named: dict[str, set[str]] = defaultdict(set)
    for topic, e in events:
        t = ts_ms(e["timestamp"])
        if topic != "llm-observations" or e["org"] != org or t // 86_400_000 < oldest_day:
            continue
        first[e["trace_id"]] = min(t, first.get(e["trace_id"], t))
        if e.get("session_id"):
            named[e["trace_id"]].add(e["session_id"])
    out = []
    for trace_id, t in first.items():
        session = min(((canonical_id(s), s) for s in named[trace_id]), default=None)
        start = starts.get((org, session[1])) if session is not None else None
        out.append((trace_id, t, session and session[0], start[2] if start else None))
    return sorted(out, key=lambda r: (r[1], r[0]))


def cost_nanos(
    obs: list[Observation],
    start_ms: int,
    end_ms: int,
    *,
    org: str | None = None,
    student: str | None = None,
    mentor: str | None = None,
    model: str | None = None,
) -> int:
    """The exact cost (nano-dollars) of the observations in [start_ms, end_ms) matching every given filter."""
    return sum(
        o.nanos
        for o in obs
        if start_ms <= o.ts_ms < end_ms
        and (org is None or o.org == org)
        and (student is None or o.student == student)
        and (mentor is None or o.mentor == mentor)
        and (model is None or o.model == model)
    )


def conversations(events: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], Conversation]:
    """(org, conversation id) -> what chat history serves: the newest record's fields (by time, send order,
    event_id), the earliest message's student and mentor where no record names them, the topics of the
    record and of the messages, and the latest sentiment label ("" when none)."""
    seen: set[tuple[str, str, str]] = set()
    out: dict[tuple[str, str], Conversation] = {}
    records: dict[tuple[str, str], tuple[tuple[int, int, str], dict[str, Any]]] = {}
    msg_topics: dict[tuple[str, str], set[str]] = defaultdict(set)
    latest: dict[tuple[str, str], tuple[tuple[int, int, str], str]] = {}
    for index, (topic, e) in enumerate(events):
        org = e["org"]
        if topic == "llm-observations" or (topic, org, e["event_id"]) in seen:
            continue
        seen.add((topic, org, e["event_id"]))
        t = ts_ms(e["timestamp"])
        if topic == "chat-messages":
            key = (org, e["session_id"])
            out.setdefault(key, Conversation(org, e["session_id"]))
            msg_topics[key].update(e.get("topics") or ())
        elif topic == "chat-history":
            key = (org, e["id"])
            out.setdefault(key, Conversation(org, e["id"]))
            version = (t, index, e["event_id"])
            if key not in records or version > records[key][0]:
                records[key] = (version, e)
        elif topic == "sentiment":
            key = (org, e["session_id"])
            version = (t, index, e["event_id"])
            if key not in latest or version > latest[key][0]:
                latest[key] = (version, e["sentiment"])
    starts = session_starts(events)
    for key, conv in out.items():
        rec = records.get(key, (None, None))[1]
        start = starts.get(key)
        conv.record = rec
        conv.student = (rec or {}).get("student") or (start[2] if start else None)
        conv.mentor = (rec or {}).get("mentor") or (start[3] if start else None)
        conv.title = (rec or {}).get("title")
        names = [x["name"] if isinstance(x, dict) else x for x in (rec or {}).get("topics") or ()]
        conv.topics = set(names) | msg_topics.get(key, set())
        if rec is not None:
            conv.inserted_ms = ts_ms(rec.get("inserted_at") or rec["timestamp"])
        elif start is not None:
            conv.inserted_ms = start[0]
        conv.sentiment = latest[key][1] if key in latest else ""
    return out


def rating_sums(convs: dict[tuple[str, str], Conversation]) -> dict[tuple[str, str, str], list[int]]:
    """(org, UTC hour or day label, mentor or "") -> [conversations, the sum of their ratings]: those whose
    newest record holds a rating (an integer other than 0) and is not a deletion, at the record's
    `inserted_at`; a mentor's are those whose newest record names it."""
    out: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (org, _), conv in convs.items():
        rec = conv.record
        r = (rec or {}).get("rating")
        if rec is None or rec.get("deleted") or not isinstance(r, int) or isinstance(r, bool) or r == 0:
            continue
        assert conv.inserted_ms is not None
        for who in {"", rec.get("mentor") or ""}:
            for period in (hour(conv.inserted_ms), day(conv.inserted_ms)):
                out[(org, period, who)][0] += 1
                out[(org, period, who)][1] += r
    return out


def ratings(convs: dict[tuple[str, str], Conversation]) -> Counter[tuple[str, str]]:
    """(org, UTC hour or day label) -> conversations whose newest record holds a rating (`rating_sums`)."""
    return Counter({(org, period): n for (org, period, who), (n, _) in rating_sums(convs).items() if not who})


def messages_by_hour(events: list[tuple[str, dict[str, Any]]]) -> Counter[tuple[str, str, int]]:
    """(org, mentor or "", epoch hour) -> chat messages stamped in that hour, each event_id once."""
    seen: set[tuple[str, str]] = set()
    out: Counter[tuple[str, str, int]] = Counter()
    for topic, e in events:
        if topic != "chat-messages" or (e["org"], e["event_id"]) in seen:
            continue
        seen.add((e["org"], e["event_id"]))
        for who in ("", e["mentor_id"]):
            out[(e["org"], who, ts_ms(e["timestamp"]) // 3_600_000)] += 1
    return out


def topics_by_day(
    events: list[tuple[str, dict[str, Any]]], convs: dict[tuple[str, str], Conversation]
) -> dict[tuple[str, str, str], dict[str, list[int]]]:
    """(org, UTC day, mentor or "") -> topic -> [conversations, their messages, those with a sentiment, the
    sum of its score (positive 1, neutral 0, negative -1), those rated, the sum of the ratings]: each
    conversation not deleted counts once per topic (its record's and its messages'), with all its messages,
    its latest sentiment and its newest record's rating (an integer other than 0), on the day chat history
    lists it by, under the record's mentor (the earliest message's without a record)."""
    seen: set[tuple[str, str]] = set()
    messages: Counter[tuple[str, str]] = Counter()
    for topic, e in events:
        if topic == "chat-messages" and (e["org"], e["event_id"]) not in seen:
            seen.add((e["org"], e["event_id"]))
            messages[(e["org"], e["session_id"])] += 1
    starts = session_starts(events)
    scores = {"positive": 1, "neutral": 0, "negative": -1}
    out: dict[tuple[str, str, str], dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0] * 6))
    for (org, cid), conv in convs.items():
        rec = conv.record
        if (rec is not None and rec.get("deleted")) or not conv.topics or conv.inserted_ms is None:
            continue
        mentor = (rec.get("mentor") or "") if rec is not None else starts[(org, cid)][3]
        r = (rec or {}).get("rating")
        rating = r if isinstance(r, int) and not isinstance(r, bool) else 0
        score = scores.get(conv.sentiment)
        add = [1, messages[(org, cid)], score is not None, score or 0, rating != 0, rating]
        for who in {"", mentor}:
            for name in conv.topics:
                acc = out[(org, day(conv.inserted_ms), who)][name]
                for i, n in enumerate(add):
                    acc[i] += int(n)
    return out


def new_and_returning(exp: Expected, org: str, first_ms: int, end_ms: int, mentor: str = "") -> tuple[int, int]:
    """(new, returning) students of [first_ms, end_ms): those who sent a human message in it (to the mentor),
    new when the earliest human message they ever sent (to the mentor) is in it."""
    sent = exp.humans.get((org, mentor), set())
    earliest: dict[str, int] = {}
    for student, t in sent:
        earliest[student] = min(t, earliest.get(student, t))
    active = {student for student, t in sent if first_ms <= t < end_ms}
    new = {student for student in active if earliest[student] >= first_ms}
    return len(new), len(active - new)


def day_ms(first: str, last: str, zone_name: str | None = None) -> tuple[int, int]:
    """[first ms, end ms) of the days from first to last (YYYY-MM-DD) of the zone (UTC without one)."""
    zone = ZoneInfo(zone_name) if zone_name else UTC
    start = datetime.fromisoformat(first).replace(tzinfo=zone)
    end = datetime.fromisoformat(last).replace(tzinfo=zone) + timedelta(days=1)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def shares(counts: list[int]) -> list[float]:
    """Percentages of two decimals that add up to 100: the exact shares (fractions) rounded down to a
    hundredth, then the hundredths missing to the largest fractional parts (the first of equal ones)."""
    total = sum(counts)
    if total == 0:
        return [0.0 for _ in counts]
    exact = [Fraction(100 * 100 * n, total) for n in counts]
    floors = [math.floor(x) for x in exact]
    order = sorted(range(len(counts)), key=lambda i: (floors[i] - exact[i], i))
    for i in order[: 10_000 - sum(floors)]:
        floors[i] += 1
    return [float(Decimal(h) / 100) for h in floors]


def topics_first_named(events: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], dict[str, int]]:
    """(org, mentor or "") -> topic -> the earliest time a chat message (its timestamp) or chat-history record
    (its `inserted_at`) named it, with that mentor or any."""
    out: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for topic, e in events:
        if topic == "chat-messages":
            named, mentor, t = e.get("topics") or [], e["mentor_id"], ts_ms(e["timestamp"])
        elif topic == "chat-history":
            named = [x["name"] if isinstance(x, dict) else x for x in e.get("topics") or []]
            mentor, t = e.get("mentor") or "", ts_ms(e.get("inserted_at") or e["timestamp"])
        else:
            continue
        for who in {"", mentor}:
            firsts = out[(e["org"], who)]
            for name in named:
                firsts[name] = min(t, firsts.get(name, t))
    return out


def top_students(exp: Expected, org: str, limit: int = 20) -> list[tuple[str, int]]:
    """Human messages per student over every day, most first, ties by username ascending."""
    totals: Counter[str] = Counter()
    for (o, _), counts in exp.human.items():
        if o == org:
            totals.update(counts)
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


# --- local days of a time zone ------------------------------------------------------------------------------


@dataclass
class Local:
    """The aggregates counted in one time zone's hours, days and ISO weeks (periods labelled as the API does)."""

    # (period, mentor or "") -> [sessions, messages]
    hourly: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    daily: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    weekly: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    sentiment: Counter[str] = field(default_factory=Counter)  # local day -> judgements
    # (local day, mentor or "") -> student -> human messages
    human: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def top(self, first: str, last: str, mentor: str = "", limit: int = 20) -> list[tuple[str, int]]:
        total: Counter[str] = Counter()
        for (d, who), counts in self.human.items():
            if first <= d <= last and who == mentor:
                total.update(counts)
        return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def local(events: list[tuple[str, dict[str, Any]]], zone_name: str) -> Local:
    """Each event's local time by the zone database (zoneinfo), straight from its timestamp."""
    zone = ZoneInfo(zone_name)
    out = Local()

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, zone)

    seen: set[tuple[str, str]] = set()
    messages: Counter[tuple[str, str]] = Counter()
    for topic, e in events:
        if (e["org"], e["event_id"]) in seen or topic not in ("chat-messages", "sentiment"):
            continue
        seen.add((e["org"], e["event_id"]))
        local_day = at(ts_ms(e["timestamp"])).date().isoformat()
        if topic == "sentiment":
            out.sentiment[local_day] += 1
            continue
        messages[(e["org"], e["session_id"])] += 1
        if e["role"] == "human":
            for who in ("", e["mentor_id"]):
                out.human[(local_day, who)][e["student"]] += 1
    for key, (start, _, _, mentor) in session_starts(events).items():
        t = at(start)
        hour = t.replace(minute=0, second=0, microsecond=0).isoformat()  # the local hour, with its offset
        monday = (t.date() - timedelta(days=t.weekday())).isoformat()
        for table, period in ((out.hourly, hour), (out.daily, t.date().isoformat()), (out.weekly, monday)):
            for who in ("", mentor):
                table[(period, who)][0] += 1
                table[(period, who)][1] += messages[key]
    return out
