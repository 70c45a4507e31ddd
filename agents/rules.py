"""Alert rules: the rules file (TOML, defaults plus per-org overrides) and what each rule decides.

Pure: `evaluate` turns what Redis holds for an org (a `Reading`) into a `Verdict` per rule; the engine
(agents/alerts.py) turns verdicts into state changes and alert events. See agents/alerts.toml.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from streams.exceptions import SettingsError
from streams.schemas import format_timestamp
from tables.buckets import DAY_MS, MINUTE_MS

DEFAULT_RULES = Path(__file__).with_name("alerts.toml")

DAILY_COST = "daily_cost"
NEGATIVE_SENTIMENT = "negative_sentiment"
MESSAGE_VOLUME = "message_volume"

# rule -> parameter -> its type
PARAMS: dict[str, dict[str, type]] = {
    DAILY_COST: {"enabled": bool, "budget_usd": str},
    NEGATIVE_SENTIMENT: {"enabled": bool, "threshold": float, "min_events": int, "window_minutes": int},
    MESSAGE_VOLUME: {"enabled": bool, "floor": int, "window_minutes": int},
}
MAX_WINDOW_MINUTES = 90  # minute counts are kept three hours; the volume rule reads two windows


class RulesError(SettingsError):
    pass


@dataclass(frozen=True)
class RuleSet:
    defaults: dict[str, dict[str, Any]]
    orgs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> RuleSet:
        """The shipped rules, with a user's file (same shape) merged over them key by key."""
        rules = cls.parse(_read(DEFAULT_RULES), str(DEFAULT_RULES))
        if path is not None:
            user = cls.parse(_read(path), str(path))
            defaults = {rule: {**rules.defaults[rule], **user.defaults.get(rule, {})} for rule in PARAMS}
            rules = cls(defaults, user.orgs)
        return rules

    @classmethod
    def parse(cls, doc: dict[str, Any], where: str) -> RuleSet:
        unknown = set(doc) - {"defaults", "orgs"}
        if unknown:
            raise RulesError(f"{where}: unknown section(s) {sorted(unknown)}; expected [defaults.*] and [orgs.*]")
        defaults = _rules(doc.get("defaults", {}), f"{where}: defaults")
        orgs = {org: _rules(rules, f"{where}: orgs.{org}") for org, rules in doc.get("orgs", {}).items()}
        return cls(defaults, orgs)

    def for_org(self, org: str) -> dict[str, dict[str, Any]]:
        """The enabled rules of an org, each with its parameters."""
        out = {}
        for rule in PARAMS:
            params = {**self.defaults.get(rule, {}), **self.orgs.get(org, {}).get(rule, {})}
            if params.get("enabled", True):
                out[rule] = params
        return out


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"cannot read the alert rules {path}: {exc}") from None


def _rules(section: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(section, dict):
        raise RulesError(f"{where}: expected a table of rules")
    out: dict[str, dict[str, Any]] = {}
    for rule, params in section.items():
        if rule not in PARAMS:
            raise RulesError(f"{where}: unknown rule {rule!r}; rules are {', '.join(PARAMS)}")
        if not isinstance(params, dict):
            raise RulesError(f"{where}.{rule}: expected a table of parameters")
        for name, value in params.items():
            want = PARAMS[rule].get(name)
            if want is None:
                raise RulesError(f"{where}.{rule}: unknown parameter {name!r}; known: {', '.join(PARAMS[rule])}")
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                ok, value = True, float(value)
            if not ok:
                raise RulesError(f"{where}.{rule}.{name}: expected {want.__name__}, got {value!r}")
            params = {**params, name: value}
        if "budget_usd" in params:
            try:
                if Decimal(params["budget_usd"]) < 0:
                    raise InvalidOperation
            except InvalidOperation:
                raise RulesError(f"{where}.{rule}.budget_usd: not a decimal amount: {params['budget_usd']!r}") from None
        if not 1 <= params.get("window_minutes", 60) <= MAX_WINDOW_MINUTES:
            raise RulesError(f"{where}.{rule}.window_minutes: must be 1 to {MAX_WINDOW_MINUTES}")
        out[rule] = params
    return out


@dataclass(frozen=True)
class Reading:
    """What Redis held for one org when the rules were evaluated."""

    now_ms: int
    cost_today_nanos: int
    # minute index (epoch minutes) -> (messages, sentiment events, negative sentiment events)
    minutes: dict[int, tuple[int, int, int]]

    def window(self, window_minutes: int, back: int = 0) -> tuple[int, int, tuple[int, int, int]]:
        """(start ms, end ms, summed counts) of the rolling window ending `back` windows before now."""
        end_min = self.now_ms // MINUTE_MS + 1 - back * window_minutes  # the current minute included
        start_min = end_min - window_minutes
        sums = [0, 0, 0]
        for m in range(start_min, end_min):
            for i, n in enumerate(self.minutes.get(m, (0, 0, 0))):
                sums[i] += n
        return start_min * MINUTE_MS, end_min * MINUTE_MS, (sums[0], sums[1], sums[2])


@dataclass(frozen=True)
class Verdict:
    rule: str
    breached: bool | None  # None: the rule neither fires nor resolves now (its state stays)
    value: float
    threshold: float
    window_start_ms: int
    window_end_ms: int
    summary: str
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate(org: str, rule: str, params: dict[str, Any], reading: Reading) -> Verdict:
    if rule == DAILY_COST:
        budget = Decimal(params["budget_usd"])
        cost = Decimal(reading.cost_today_nanos) / Decimal(1_000_000_000)
        day_start = reading.now_ms // DAY_MS * DAY_MS
        day = datetime.fromtimestamp(day_start / 1000, UTC).date().isoformat()
        return Verdict(
            rule,
            cost > budget,
            float(cost),
            float(budget),
            day_start,
            day_start + DAY_MS,
            f"{org}: LLM cost on {day} (UTC) is ${cost:.2f}, budget ${budget:.2f}",
            {"value_exact": str(cost), "threshold_exact": str(budget)},
        )
    window = params.get("window_minutes", 60)
    start, end, (messages, sentiments, negative) = reading.window(window)
    if rule == NEGATIVE_SENTIMENT:
        threshold, min_events = params["threshold"], params["min_events"]
        share = negative / sentiments if sentiments else 0.0
        return Verdict(
            rule,
            sentiments >= min_events and share > threshold,
            share,
            threshold,
            start,
            end,
            f"{org}: {negative} of {sentiments} sentiment events in the last {window} min are negative "
            f"({share:.0%}; threshold {threshold:.0%}, at least {min_events} events)",
            {"events": sentiments, "negative": negative, "min_events": min_events},
        )
    if rule == MESSAGE_VOLUME:
        floor = params["floor"]
        _, _, (before, _, _) = reading.window(window, back=1)
        # Fires on the way down from a normal window; resolves once the volume is back; otherwise the
        # state stays (a long quiet spell is one alert, not one per window).
        breached = True if messages < floor <= before else False if messages >= floor else None
        return Verdict(
            rule,
            breached,
            float(messages),
            float(floor),
            start,
            end,
            f"{org}: {messages} chat messages in the last {window} min (floor {floor}; {before} in the {window} min before)",
            {"previous_window": before},
        )
    raise RulesError(f"unknown rule {rule!r}")


def transition(state: str, verdict: Verdict) -> str | None:
    """The new state ("firing" or "ok") when the verdict crosses the rule, else None."""
    if verdict.breached is True and state != "firing":
        return "firing"
    if verdict.breached is False and state == "firing":
        return "ok"
    return None


def alert_event(org: str, verdict: Verdict, new_state: str, crossing: int, now_ms: int) -> dict[str, Any]:
    """The analytics-alerts record. `alert_id` names the crossing and its edge, so a copy is recognisable."""
    state = "firing" if new_state == "firing" else "resolved"

    return {
        "alert_id": f"{org}|{verdict.rule}|{crossing}|{state}",
        "rule": verdict.rule,
        "org": org,
        "state": state,
        "value": verdict.value,
        "threshold": verdict.threshold,
        "window": {"start": format_timestamp(verdict.window_start_ms), "end": format_timestamp(verdict.window_end_ms)},
        "crossing": crossing,
        "at": format_timestamp(now_ms),
        "summary": verdict.summary,
        **verdict.extra,
    }
