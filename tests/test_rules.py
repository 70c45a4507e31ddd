"""The alert rules without servers: the rules file, each rule's verdict, and the state transitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.rules import (
    DAILY_COST,
    MESSAGE_VOLUME,
    NEGATIVE_SENTIMENT,
    Reading,
    RulesError,
    RuleSet,
    alert_event,
    evaluate,
    transition,
)
from tables.buckets import MINUTE_MS

NOW = 1_795_000_000_000
NOW_MIN = NOW // MINUTE_MS


def rules_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_shipped_rules_load_and_per_org_overrides_merge_key_by_key(tmp_path: Path) -> None:
    shipped = RuleSet.load()
    assert set(shipped.for_org("anyone")) == {DAILY_COST, NEGATIVE_SENTIMENT, MESSAGE_VOLUME}
    path = rules_file(
        tmp_path,
        """
[defaults.negative_sentiment]
threshold = 0.25
[orgs.acme.daily_cost]
budget_usd = "5"
[orgs.acme.message_volume]
enabled = false
""",
    )
    rules = RuleSet.load(path)
    acme, other = rules.for_org("acme"), rules.for_org("other")
    assert acme[DAILY_COST]["budget_usd"] == "5" and other[DAILY_COST]["budget_usd"] == "100.00"
    assert MESSAGE_VOLUME not in acme and MESSAGE_VOLUME in other
    assert acme[NEGATIVE_SENTIMENT] == {"enabled": True, "threshold": 0.25, "min_events": 20, "window_minutes": 60}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[defaults.cost]\nbudget_usd = '1'", "unknown rule 'cost'"),
        ("[defaults.daily_cost]\nbudget = '1'", "unknown parameter 'budget'"),
        ("[defaults.daily_cost]\nbudget_usd = 'lots'", "not a decimal amount"),
        ("[defaults.negative_sentiment]\nmin_events = 'ten'", "min_events: expected int"),
        ("[defaults.message_volume]\nwindow_minutes = 600", "window_minutes: must be 1 to 90"),
        ("[rules]\nx = 1", "unknown section"),
        ("[defaults.daily_cost\n", "cannot read the alert rules"),
    ],
)
def test_a_bad_rules_file_is_refused_with_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RulesError, match=message):
        RuleSet.load(rules_file(tmp_path, text))


def reading(minutes: dict[int, tuple[int, int, int]] | None = None, cost_nanos: int = 0) -> Reading:
    return Reading(NOW, cost_nanos, {NOW_MIN - ago: v for ago, v in (minutes or {}).items()})


def test_daily_cost_is_exact_against_the_budget() -> None:
    params = {"budget_usd": "1.00"}
    at = evaluate("acme", DAILY_COST, params, reading(cost_nanos=1_000_000_000))
    over = evaluate("acme", DAILY_COST, params, reading(cost_nanos=1_000_000_001))
    assert (at.breached, over.breached) == (False, True)
    assert over.extra["value_exact"] == "1.000000001"
    assert over.window_end_ms - over.window_start_ms == 86_400_000


def test_negative_share_needs_the_minimum_count_in_the_window() -> None:
    params = {"threshold": 0.5, "min_events": 4, "window_minutes": 60}
    few = evaluate("acme", NEGATIVE_SENTIMENT, params, reading({0: (0, 3, 3)}))
    enough = evaluate("acme", NEGATIVE_SENTIMENT, params, reading({0: (0, 3, 3), 59: (0, 1, 1)}))
    outside = evaluate("acme", NEGATIVE_SENTIMENT, params, reading({0: (0, 3, 3), 60: (0, 1, 1)}))
    assert (few.breached, enough.breached, outside.breached) == (False, True, False)
    assert enough.value == 1.0 and enough.extra["events"] == 4


def test_message_volume_fires_on_the_way_down_and_holds_until_back() -> None:
    params = {"floor": 5, "window_minutes": 30}
    dropped = evaluate("acme", MESSAGE_VOLUME, params, reading({40: (6, 0, 0), 1: (2, 0, 0)}))
    still_quiet = evaluate("acme", MESSAGE_VOLUME, params, reading({}))  # both windows quiet now
    back = evaluate("acme", MESSAGE_VOLUME, params, reading({0: (5, 0, 0)}))
    assert (dropped.breached, still_quiet.breached, back.breached) == (True, None, False)
    assert transition("ok", dropped) == "firing"
    assert transition("firing", still_quiet) is None  # a long quiet spell is one alert
    assert transition("firing", back) == "ok"
    assert transition("ok", back) is None


def test_alert_event_names_the_crossing() -> None:
    verdict = evaluate("acme", DAILY_COST, {"budget_usd": "1"}, reading(cost_nanos=2_000_000_000))
    event = alert_event("acme", verdict, "firing", 3, NOW)
    assert event["alert_id"] == "acme|daily_cost|3|firing"
    assert (event["value"], event["threshold"], event["state"]) == (2.0, 1.0, "firing")
    assert event["window"]["start"].endswith("T00:00:00Z")
    assert alert_event("acme", verdict, "ok", 3, NOW)["alert_id"] == "acme|daily_cost|3|resolved"
