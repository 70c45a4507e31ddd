"""An independent model of what the aggregates must be, computed in batch straight from the produced events.

It shares no code with agents/ or tables/: its own timestamp parsing, its own prices for the demo's
models, plain dictionaries. It reads the events as a set: a session starts at its earliest message by
event time (ties: smaller event_id), the latest sentiment and record win (by time, then send order, then
event_id), and of an observation's copies the newest by (time, send order) counts. `events` are given in
send order, which within a partition is offset order.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

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
    cost: Counter[tuple[str, str]] = field(default_factory=Counter)  # nano-dollars
    conversations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # (org, conversation id) -> the latest sentiment label
    latest_sentiment: dict[tuple[str, str], str] = field(default_factory=dict)
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
            if e["role"] == "human":
                out.human[(org, day(t))][e["student"]] += 1
        elif topic == "sentiment":
            out.sentiment[(org, day(t))] += 1
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
