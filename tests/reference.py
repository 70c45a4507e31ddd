"""An independent model of what the aggregates must be, computed straight from the produced events.

It shares no code with agents/ or tables/: its own timestamp parsing, its own prices for the demo's
models, plain dictionaries. Events must be given in send order (which is partition order per key).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

# USD per million tokens, for the demo's models (the shipped table's published prices).
PRICES = [
    (r"^gpt-4o-mini", "0.15", "0.60"),
    (r"^gpt-4o", "2.50", "10.00"),
    (r"^claude-3-(5|7)-sonnet", "3.00", "15.00"),
    (r"^gemini-1\.5-flash", "0.10", "0.40"),
]


def _day(ts: Any) -> str:
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d")
    return datetime.fromisoformat(ts).astimezone(UTC).strftime("%Y-%m-%d")


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
    human: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    sentiment: Counter[tuple[str, str]] = field(default_factory=Counter)
    cost: Counter[tuple[str, str]] = field(default_factory=Counter)  # nano-dollars
    conversations: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    orgs: set[str] = field(default_factory=set)

    def days(self) -> set[tuple[str, str]]:
        return set(self.sessions) | set(self.messages) | set(self.human) | set(self.sentiment) | set(self.cost)


def expected(events: list[tuple[str, dict[str, Any]]]) -> Expected:
    out = Expected()
    seen: set[tuple[str, str]] = set()
    session_day: dict[tuple[str, str], str] = {}
    observations: dict[tuple[str, str], tuple[str, int]] = {}
    for topic, e in events:
        org = e["org"]
        out.orgs.add(org)
        ident = (org, e["event_id"])
        if topic == "llm-observations":
            observations[ident] = (_day(e["timestamp"]), _cost_nanos(e))  # a re-send replaces
            continue
        if ident in seen:
            continue
        seen.add(ident)
        day = _day(e["timestamp"])
        if topic == "chat-messages":
            sk = (org, e["session_id"])
            if sk not in session_day:
                session_day[sk] = day
                out.sessions[(org, day)] += 1
                out.conversations[org].add(e["session_id"])
            out.messages[(org, session_day[sk])] += 1
            if e["role"] == "human":
                out.human[(org, day)][e["student"]] += 1
        elif topic == "sentiment":
            out.sentiment[(org, day)] += 1
        elif topic == "chat-history":
            out.conversations[org].add(e["id"])
    for (org, _), (day, nanos) in observations.items():
        out.cost[(org, day)] += nanos
    return out
