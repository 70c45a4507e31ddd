"""A seeded generator of realistic platform traffic, for the demo, the tests and the benchmarks.

Several orgs, mentors and students; sessions of several messages from both roles with a conversation
record; sentiment judgements; LLM observations over several models, some with a cost and some without
(so the price table is exercised); a share of late and out-of-order events, and of re-sent ones.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.schemas import SENTIMENTS, format_timestamp
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, LLM_OBSERVATIONS, SENTIMENT

ORGS = ("acme-academy", "globex-school", "initech-u")
# Mentors are UUIDs on the platform (its `mentor_unique_id`); the names are only for titles.
MENTORS = {
    "8d7f2c1e-3b4a-4c5d-9e6f-0a1b2c3d4e01": "Math Tutor",
    "8d7f2c1e-3b4a-4c5d-9e6f-0a1b2c3d4e02": "Essay Coach",
    "8d7f2c1e-3b4a-4c5d-9e6f-0a1b2c3d4e03": "Physics Pal",
    "8d7f2c1e-3b4a-4c5d-9e6f-0a1b2c3d4e04": "Spanish Buddy",
}
STUDENTS = tuple(f"student{i:03d}" for i in range(60))
TOPICS = ("algebra", "fractions", "essays", "grammar", "kinematics", "vocabulary", "geometry")
MODELS = (
    ("gpt-4o-mini", "openai"),
    ("gpt-4o", "openai"),
    ("claude-3-5-sonnet-20241022", "anthropic"),
    ("gemini-1.5-flash", "google"),
    ("in-house-tutor-v2", "self-hosted"),  # matches no price: counted as unpriced
)


@dataclass
class DemoConfig:
    seed: int = 42
    late_share: float = 0.05  # events stamped minutes to days in the past
    resend_share: float = 0.01  # events sent twice with the same event_id
    with_cost_share: float = 0.5  # observations that carry their own cost


class DemoTraffic:
    """Endless (topic, event) pairs; `now` fixes the clock for reproducible runs."""

    def __init__(self, config: DemoConfig | None = None) -> None:
        self.config = config or DemoConfig()
        self.rng = random.Random(self.config.seed)
        self._ids = 0

    def _id(self, kind: str) -> str:
        self._ids += 1
        return f"{kind}-{self.config.seed}-{self._ids}"

    def sessions(self, now: datetime | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            yield from self.session(now or datetime.now(UTC))

    def session(self, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        """One tutoring session's events, in the order a platform would send them."""
        rng, cfg = self.rng, self.config
        org = rng.choices(ORGS, weights=(5, 3, 2))[0]
        mentor = rng.choice(tuple(MENTORS))
        student = STUDENTS[min(int(rng.paretovariate(1.2)) - 1, len(STUDENTS) - 1)]
        session_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex  # random UUIDs, as the platform sends
        n_messages = rng.randint(2, 12)
        gaps = [rng.uniform(5, 60) for _ in range(n_messages)]
        # The session ends at most a minute before `now`: nothing is stamped in the future.
        start = now - timedelta(seconds=sum(gaps) + rng.uniform(0, 60))
        if rng.random() < cfg.late_share:
            start -= timedelta(minutes=rng.uniform(5, 3 * 24 * 60))
        topics = rng.sample(TOPICS, rng.randint(1, 2))
        model, provider = rng.choice(MODELS)
        out: list[tuple[str, dict[str, Any]]] = []
        t = start
        for i in range(n_messages):
            role = "human" if i % 2 == 0 else "ai"
            out.append(
                (
                    CHAT_MESSAGES,
                    {
                        "event_id": self._id("msg"),
                        "org": org,
                        "timestamp": format_timestamp(t),
                        "session_id": session_id,
                        "student": student,
                        "mentor_id": mentor,
                        "role": role,
                        "topics": topics,
                        "content": f"message {i}",
                    },
                )
            )
            if role == "ai":
                usage = {"input": rng.randint(200, 4000), "output": rng.randint(50, 800)}
                obs: dict[str, Any] = {
                    "event_id": self._id("obs"),
                    "org": org,
                    "timestamp": format_timestamp(t),
                    "trace_id": uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                    "session_id": session_id,
                    "type": "generation",
                    "model": model,
                    "provider": provider,
                    "usage": usage,
                }
                if rng.random() < cfg.with_cost_share:
                    obs["cost"] = f"{rng.uniform(0.0001, 0.05):.9f}"
                out.append((LLM_OBSERVATIONS, obs))
            t += timedelta(seconds=gaps[i])
        out.append(
            (
                SENTIMENT,
                {
                    "event_id": self._id("sent"),
                    "org": org,
                    "timestamp": format_timestamp(t),
                    "session_id": session_id,
                    "student": student,
                    "mentor_id": mentor,
                    "sentiment": rng.choices(SENTIMENTS, weights=(5, 3, 2))[0],
                    "score": round(rng.random(), 3),
                },
            )
        )
        out.append(
            (
                CHAT_HISTORY,
                {
                    "event_id": self._id("conv"),
                    "org": org,
                    "timestamp": format_timestamp(t),
                    "id": session_id,
                    "student": student,
                    "email": f"{student}@example.edu",
                    "mentor": mentor,
                    "topics": [{"name": x} for x in topics],
                    "model": model,
                    "platform": "web",
                    "has_document": rng.random() < 0.2,
                    "memory_tracked": rng.random() < 0.5,
                    "llm_name": model,
                    "llm_provider": provider,
                    "metadata": {},
                    "tools": [],
                    "title": f"{topics[0].title()} with {MENTORS[mentor]}",
                    # a thumbs up or down on two sessions in five, from the id (no draw: the stream stays)
                    "rating": (0, 0, 0, 1, -1)[int(session_id[-1], 16) % 5],
                    "inserted_at": format_timestamp(start),
                },
            )
        )
        if out and rng.random() < cfg.resend_share * len(out):
            out.append(rng.choice(out))  # a producer retry: same event_id, counted once
        if rng.random() < 0.1 and len(out) > 3:  # a little reordering across topics
            i = rng.randrange(len(out) - 1)
            if out[i][0] != out[i + 1][0]:
                out[i], out[i + 1] = out[i + 1], out[i]
        return out
