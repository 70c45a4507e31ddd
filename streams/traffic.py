"""A traffic model of an AI-tutoring platform: seeded, reproducible, every distribution written down with its
reason in docs/TRAFFIC.md.

    python -m streams.traffic --mode backfill --events 200000 --days 90 [--seed 7] [--orgs 20] ...

prints what the model generated, measured (org sizes, session lengths, shares per topic, duplicates, the
daily rhythm), so a change to a parameter shows what it does. `PlatformTraffic.backfill` gives N days of
history in time order (with late and duplicated events mixed in as a producer sends them);
`PlatformTraffic.live` gives sessions happening now. Events are the four input topics' JSON documents
(docs/contract.md), as the platform's producers send them.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from streams.schemas import format_timestamp
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT

Event = tuple[str, dict[str, Any]]  # (topic, document)

FIRST_NAMES = ("ana", "ben", "chen", "dara", "eli", "fatima", "gus", "hana", "ivan", "jade", "kofi", "lena",
               "mateo", "nia", "omar", "priya", "quinn", "rosa", "sam", "tara", "uma", "vik", "wen", "yusuf")  # fmt: skip
LAST_NAMES = ("garcia", "smith", "nguyen", "kim", "okafor", "muller", "rossi", "silva", "khan", "cohen",
              "ivanova", "tanaka", "dubois", "novak", "larsen", "haddad")  # fmt: skip
TOPICS = ("algebra", "fractions", "essays", "grammar", "kinematics", "vocabulary", "geometry", "chemistry",
          "biology", "history", "statistics", "programming", "reading", "spanish", "french", "calculus")  # fmt: skip
# (model, provider, share of generations): several models and providers; the last matches no price.
MODELS = (("gpt-4o-mini", "openai", 0.45), ("gpt-4o", "openai", 0.2), ("claude-3-5-sonnet-20241022", "anthropic", 0.15),
          ("gemini-1.5-flash", "google", 0.15), ("in-house-tutor-v2", "self-hosted", 0.05))  # fmt: skip
SENTIMENT_WEIGHTS = (("positive", 0.55), ("neutral", 0.35), ("negative", 0.10))
# Sessions started per local hour of a weekday, relative: school hours busiest, homework in the evening,
# little at night (docs/TRAFFIC.md).
HOUR_WEIGHTS = (0.4, 0.2, 0.1, 0.1, 0.1, 0.2, 0.6, 1.5, 3.0, 4.0, 4.5, 4.5, 3.5, 4.0, 4.5, 4.0,
                3.5, 3.0, 3.0, 3.5, 3.5, 2.5, 1.5, 0.8)  # fmt: skip
WEEKEND_FACTOR = 0.35
DAY_MS = 86_400_000


@dataclass(frozen=True)
class TrafficConfig:
    seed: int = 7
    orgs: int = 20
    students: int = 30_000  # over all orgs
    mentors: int = 600  # over all orgs
    org_skew: float = 1.1  # Zipf exponent of org sizes: a few large, a long tail of small
    student_skew: float = 1.6  # rank skew of who chats (1: uniform)
    mentor_skew: float = 2.5  # rank skew of which mentor a session is with
    session_median: float = 6.0  # messages; lognormal, so many short sessions and a tail past 30
    session_sigma: float = 0.75
    max_messages: int = 80
    think_median_s: float = 45.0  # a student's time before their next message: tens of seconds to minutes
    reply_median_s: float = 2.5  # the AI's reply: within seconds
    sentiment_share: float = 0.8  # sessions judged
    rejudged_share: float = 0.1  # of the judged, judged again later
    history_share: float = 0.85  # sessions with a chat-history record
    spans_mean: float = 0.7  # spans per AI reply beside its generation (Poisson)
    priced_share: float = 0.5  # observations that carry their own cost (the rest are priced by the table)
    upsert_share: float = 0.03  # generations whose cost is sent again minutes later (same event_id)
    duplicate_share: float = 0.01  # events a producer sends twice
    late_share: float = 0.02  # events sent minutes to hours after their time


@dataclass
class Org:
    name: str
    students: list[str]
    mentors: list[str]
    utc_offset_h: int  # where its school day is
    weight: float


@dataclass
class PlatformTraffic:
    config: TrafficConfig = field(default_factory=TrafficConfig)

    def __post_init__(self) -> None:
        cfg = self.config
        self.rng = random.Random(cfg.seed)
        weights = [1 / (k + 1) ** cfg.org_skew for k in range(cfg.orgs)]
        total = sum(weights)
        self.orgs: list[Org] = []
        used: set[str] = set()
        for k, w in enumerate(weights):
            share = w / total
            students = [self._username(used) for _ in range(max(3, round(cfg.students * share)))]
            mentors = [self._uuid() for _ in range(max(2, round(cfg.mentors * share)))]
            offset = self.rng.choice((-8, -7, -6, -5, -4, 0, 1, 2, 5, 8, 9, 10))
            self.orgs.append(Org(f"org-{k:03d}", students, mentors, offset, w))
        self._org_weights = [o.weight for o in self.orgs]
        self._models = [m[:2] for m in MODELS]
        self._model_weights = [m[2] for m in MODELS]

    # --- ids ---------------------------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _username(self, used: set[str]) -> str:
        """A platform username: `first.last` and a number, unique."""
        while True:
            name = f"{self.rng.choice(FIRST_NAMES)}.{self.rng.choice(LAST_NAMES)}{self.rng.randint(1, 9999)}"
            if name not in used:
                used.add(name)
                return name

    # --- time ----------------------------------------------------------------------------------------
    def session_start_ms(self, first_ms: int, end_ms: int, org: Org) -> int:
        """A session start between the two times, drawn by the org's daily rhythm (local hour, weekday)."""
        days = max(1, (end_ms - first_ms) // DAY_MS)
        while True:
            t = first_ms + self.rng.randrange(days * DAY_MS)
            local = datetime.fromtimestamp(t / 1000, UTC) + timedelta(hours=org.utc_offset_h)
            weight = HOUR_WEIGHTS[local.hour] * (WEEKEND_FACTOR if local.weekday() >= 5 else 1.0)
            if self.rng.random() * max(HOUR_WEIGHTS) < weight and t < end_ms:
                return t

    # --- one session ---------------------------------------------------------------------------------
    def session(self, start_ms: int, org: Org | None = None) -> list[tuple[int, Event]]:
        """One tutoring session's events, each with the time (ms) its producer sends it."""
        rng, cfg = self.rng, self.config
        org = org or rng.choices(self.orgs, weights=self._org_weights)[0]
        # Some students chat far more than others, and a few mentors take most sessions: skewed ranks
        # (u^k of a uniform u), which still reach every student and mentor of the org.
        student = org.students[int(len(org.students) * rng.random() ** cfg.student_skew)]
        mentor = org.mentors[int(len(org.mentors) * rng.random() ** cfg.mentor_skew)]
        session_id = self._uuid()
        n = min(cfg.max_messages, max(2, round(rng.lognormvariate(math.log(cfg.session_median), cfg.session_sigma))))
        topics = rng.sample(TOPICS, rng.choice((1, 1, 2, 3)))
        model, provider = rng.choices(self._models, weights=self._model_weights)[0]
        out: list[tuple[int, Event]] = []
        t = start_ms
        for i in range(n):
            role = "human" if i % 2 == 0 else "ai"
            out.append((t, (CHAT_MESSAGES, {
                "event_id": self._uuid(), "org": org.name, "timestamp": format_timestamp(t),
                "session_id": session_id, "student": student, "mentor_id": mentor, "role": role,
                "topics": topics, "content": f"turn {i}",
            })))  # fmt: skip
            if role == "ai":
                out += self._observations(t, org, session_id, model, provider)
                t += int(1000 * rng.lognormvariate(math.log(cfg.think_median_s), 0.9))
            else:
                t += int(1000 * rng.lognormvariate(math.log(cfg.reply_median_s), 0.5))
        end = t
        if rng.random() < cfg.sentiment_share:
            judged = end + rng.randint(5_000, 120_000)
            out.append((judged, self._sentiment(judged, org, session_id, student, mentor)))
            if rng.random() < cfg.rejudged_share:
                again = judged + rng.randint(60_000, 6 * 3_600_000)
                out.append((again, self._sentiment(again, org, session_id, student, mentor)))
        if rng.random() < cfg.history_share:
            recorded = end + rng.randint(1_000, 30_000)
            out.append((recorded, (CHAT_HISTORY, {
                "event_id": self._uuid(), "org": org.name, "timestamp": format_timestamp(recorded),
                "id": session_id, "student": student, "email": f"{student}@students.example.edu",
                "mentor": mentor, "topics": [{"name": x} for x in topics], "model": model, "platform": "web",
                "has_document": rng.random() < 0.15, "memory_tracked": rng.random() < 0.5,
                "enable_artifacts": rng.random() < 0.2, "is_shared": False, "is_authenticated": True,
                "llm_name": model, "llm_provider": provider, "metadata": {"source": "chat"}, "tools": [],
                "title": f"{topics[0].title()} session", "rating": rng.choice((0, 0, 0, 1, -1)),
                "inserted_at": format_timestamp(start_ms),
            })))  # fmt: skip
        return out

    def _sentiment(self, t: int, org: Org, session_id: str, student: str, mentor: str) -> Event:
        label = self.rng.choices([s for s, _ in SENTIMENT_WEIGHTS], weights=[w for _, w in SENTIMENT_WEIGHTS])[0]
        return (SENTIMENT, {
            "event_id": self._uuid(), "org": org.name, "timestamp": format_timestamp(t), "session_id": session_id,
            "student": student, "mentor_id": mentor, "sentiment": label, "score": round(self.rng.random(), 3),
        })  # fmt: skip

    def _observations(self, t: int, org: Org, session_id: str, model: str, provider: str) -> list[tuple[int, Event]]:
        """One generation per AI reply, and spans beside it (retrieval, tools); a few generations' cost is
        sent again minutes later, as a tracing SDK's upsert does."""
        rng, cfg = self.rng, self.config
        trace = self._uuid()
        out: list[tuple[int, Event]] = []
        gen_id = self._uuid()
        generation: dict[str, Any] = {
            "event_id": gen_id, "org": org.name, "timestamp": format_timestamp(t), "trace_id": trace,
            "session_id": session_id, "type": "generation", "model": model, "provider": provider,
            "usage": {"input": rng.randint(300, 6000), "output": rng.randint(40, 900)},
        }  # fmt: skip
        if rng.random() < cfg.priced_share:
            generation["cost"] = f"{rng.uniform(0.0001, 0.04):.9f}"
        out.append((t, (LLM_OBSERVATIONS, generation)))
        if rng.random() < cfg.upsert_share:
            later = t + rng.randint(60_000, 15 * 60_000)
            out.append((later, (LLM_OBSERVATIONS, {**generation, "timestamp": format_timestamp(later),
                                                   "cost": f"{rng.uniform(0.0001, 0.04):.9f}"})))  # fmt: skip
        for _ in range(_poisson(rng, cfg.spans_mean)):
            at = t - rng.randint(50, 1500)
            out.append((at, (LLM_OBSERVATIONS, {
                "event_id": self._uuid(), "org": org.name, "timestamp": format_timestamp(at), "trace_id": trace,
                "session_id": session_id, "type": "span", "model": model, "provider": provider,
                "usage": {"input": 0, "output": 0}, "cost": "0",
            })))  # fmt: skip
        return out

    def session_by(self, start_ms: int, latest_ms: int, org: Org | None = None) -> list[tuple[int, Event]]:
        """A session starting at `start_ms`, or earlier by as much as its last event (a judgement hours later)
        would fall after `latest_ms`: nothing is stamped in the future. Reproducible: the same draws."""
        state = self.rng.getstate()
        out = self.session(start_ms, org)
        over = max(t for t, _ in out) - latest_ms
        if over > 0:
            self.rng.setstate(state)
            out = self.session(start_ms - over, org)
        return out

    # --- streams -------------------------------------------------------------------------------------
    def backfill(self, events: int, days: int, end: datetime | None = None) -> Iterator[Event]:
        """About `events` events of sessions spread over the `days` before `end`, in the order a producer
        sends them: by time, with a share sent late (minutes to hours after their time) and a share sent
        twice. Made a day at a time (each day's share of the events by its weight in the orgs' rhythm), so
        memory holds a day's events and the late ones, not the whole history: 10M events stream."""
        cfg = self.config
        end_ms = int((end or datetime.now(UTC)).timestamp() * 1000)
        first_ms = end_ms - days * DAY_MS
        last_start_ms = end_ms - 3_600_000
        weights = [self._day_weight(first_ms + d * DAY_MS) for d in range(days)]
        total_weight = sum(weights)
        pending: list[tuple[int, int, Event]] = []
        order = made = 0
        share = 0.0
        for d in range(days):
            day_ms = first_ms + d * DAY_MS
            share += weights[d] / total_weight
            target = events if d == days - 1 else round(events * share)
            while made < target:
                org = self.rng.choices(self.orgs, weights=self._org_weights)[0]
                start = self.session_start_ms(day_ms, min(day_ms + DAY_MS, last_start_ms), org)
                for sent, ev in self.session_by(start, end_ms, org):
                    if self.rng.random() < cfg.late_share:
                        sent += self.rng.randint(5 * 60_000, 6 * 3_600_000)
                    heapq.heappush(pending, (sent, order, ev))
                    order += 1
                    made += 1
                    if self.rng.random() < cfg.duplicate_share:
                        heapq.heappush(pending, (sent + self.rng.randint(100, 60_000), order, ev))
                        order += 1
                        made += 1
            # Sessions of the days after start after this day ends (their spans at most 1.5 s before a
            # message), so what is due before then is in its final order.
            while pending and pending[0][0] < day_ms + DAY_MS - 2_000:
                yield heapq.heappop(pending)[2]
        while pending:
            yield heapq.heappop(pending)[2]

    def _day_weight(self, day_ms: int) -> float:
        """How busy the 24 hours starting at `day_ms` are over all orgs: each org's local hours and weekday
        (`HOUR_WEIGHTS`, `WEEKEND_FACTOR`), by the org's weight."""
        total = 0.0
        for org in self.orgs:
            for h in range(24):
                local = datetime.fromtimestamp(day_ms / 1000 + h * 3600, UTC) + timedelta(hours=org.utc_offset_h)
                total += org.weight * HOUR_WEIGHTS[local.hour] * (WEEKEND_FACTOR if local.weekday() >= 5 else 1.0)
        return total

    def live(self, now: datetime | None = None) -> Iterator[Event]:
        """Endless sessions stamped in the minutes (or, with a late judgement, hours) before `now` (or the
        clock, when none is given), each sent whole as it is made: what `ai-analytics produce demo` sends at
        its rate."""
        while True:
            now_ms = int((now or datetime.now(UTC)).timestamp() * 1000)
            session = self.session_by(now_ms - 30 * 60_000, now_ms)
            session.sort(key=lambda te: te[0])
            for _, ev in session:
                yield ev
                if self.rng.random() < self.config.duplicate_share:
                    yield ev


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method: means here are small)."""
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def describe(events: list[Event]) -> dict[str, Any]:
    """What a stream of events is made of, measured (what `--summary` prints and tests/test_traffic.py checks)."""
    by_topic = Counter(t for t, _ in events)
    ids = Counter((t, e["event_id"]) for t, e in events)
    copies = Counter(orjson.dumps([t, e]) for t, e in events)
    sessions: Counter[str] = Counter()
    orgs: Counter[str] = Counter()
    students: set[tuple[str, str]] = set()
    hours: Counter[int] = Counter()
    for topic, e in events:
        orgs[e["org"]] += 1
        if topic == CHAT_MESSAGES:
            sessions[e["session_id"]] += 1
            students.add((e["org"], e["student"]))
            hours[datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).hour] += 1
    lengths = sorted(sessions.values())
    largest = orgs.most_common()
    judged = {e["session_id"] for t, e in events if t == SENTIMENT}
    recorded = {e["id"] for t, e in events if t == CHAT_HISTORY}
    ai = sum(1 for t, e in events if t == CHAT_MESSAGES and e["role"] == "ai")
    generations = len({e["event_id"] for t, e in events if t == LLM_OBSERVATIONS and e["type"] == "generation"})
    return {
        "events": len(events),
        "by_topic": dict(by_topic),
        "duplicate_share": sum(n - 1 for n in copies.values()) / len(events),  # the same document again
        "upsert_share": (sum(n - 1 for n in ids.values()) - sum(n - 1 for n in copies.values())) / len(events),
        "orgs": len(orgs),
        "largest_org_share": largest[0][1] / len(events),
        "smallest_org_share": largest[-1][1] / len(events),
        "students": len(students),
        "sessions": len(lengths),
        "session_median": statistics.median(lengths),
        "session_p99": lengths[int(0.99 * (len(lengths) - 1))],
        "sessions_over_30": sum(1 for n in lengths if n > 30),
        "judged_share": len(judged & set(sessions)) / len(sessions),
        "recorded_share": len(recorded & set(sessions)) / len(sessions),
        "generations_per_ai_reply": generations / max(1, ai),
        "messages_by_utc_hour": dict(sorted(hours.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("backfill", "live"), default="backfill")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=90, help="backfill: days of history")
    for name, value in vars(TrafficConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    config = TrafficConfig(**{k: getattr(args, k) for k in vars(TrafficConfig())})
    traffic = PlatformTraffic(config)
    stream = traffic.backfill(args.events, args.days) if args.mode == "backfill" else traffic.live()
    events = [ev for _, ev in zip(range(args.events), stream, strict=False)]
    for name, value in describe(events).items():
        print(f"{name:>26}: {value}")


if __name__ == "__main__":
    main()
