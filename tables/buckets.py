"""UTC time buckets: hourly (`YYYYMMDDHH`) and daily (`YYYYMMDD`) labels, from epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@lru_cache(maxsize=65536)
def hour_label(hour_index: int) -> str:
    return datetime.fromtimestamp(hour_index * 3600, UTC).strftime("%Y%m%d%H")


@lru_cache(maxsize=8192)
def day_label(day_index: int) -> str:
    return datetime.fromtimestamp(day_index * 86400, UTC).strftime("%Y%m%d")


def hour_of(ts_ms: int) -> str:
    return hour_label(ts_ms // HOUR_MS)


def day_of(ts_ms: int) -> str:
    return day_label(ts_ms // DAY_MS)


def hour_end_ms(ts_ms: int) -> int:
    return (ts_ms // HOUR_MS + 1) * HOUR_MS


def day_end_ms(ts_ms: int) -> int:
    return (ts_ms // DAY_MS + 1) * DAY_MS


def day_label_of_date(d: date) -> str:
    return d.strftime("%Y%m%d")


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def hours_between(start: date, end: date) -> list[datetime]:
    first = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return [first + timedelta(hours=i) for i in range(((end - start).days + 1) * 24)]


def hour_label_of(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y%m%d%H")


def week_start(day_index: int) -> int:
    """The day index of the Monday of that day's ISO week (day 0, 1970-01-01, was a Thursday)."""
    return day_index - (day_index + 3) % 7


def split_weeks(start: date, end: date) -> tuple[list[date], list[date]]:
    """Cover start..end (both included) with whole ISO weeks (their Mondays) and the days left over."""
    days: list[date] = []
    mondays: list[date] = []
    d = start
    while d <= end:
        if d.weekday() == 0 and d + timedelta(days=6) <= end:
            mondays.append(d)
            d += timedelta(days=7)
        else:
            days.append(d)
            d += timedelta(days=1)
    return mondays, days
