"""UTC time buckets: the grains aggregates are kept at (minute, hour, day, week, month), their labels and how long
each is kept (`Retention`, from settings); and local days (an IANA time zone's days as spans of UTC hours)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import IntEnum
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from streams.settings import Settings
from tables.exceptions import QueryError

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# Minute counts serve the alert rules' rolling hour (and the hour before it, for the volume rule).
MINUTES_KEPT_S = 3 * 3600


class Grain(IntEnum):
    """A bucket size. A bucket is named by its index: epoch minutes, hours or days, or for a week the day
    index of its Monday (ISO weeks, so a week is not a whole number of weeks since the epoch)."""

    MINUTE = 0
    HOUR = 1
    DAY = 2
    WEEK = 3
    HALF = 4  # half an hour: the edges of the days of zones half an hour off UTC (Asia/Kolkata)
    MONTH = 5  # a calendar month (UTC): months since 1970-01 (top students' sets only)

    def index(self, ts_ms: int) -> int:
        """The index of the bucket holding ts_ms."""
        if self is Grain.WEEK:
            return week_start(ts_ms // DAY_MS)
        if self is Grain.MONTH:
            return month_index(day_at(ts_ms // DAY_MS))
        return ts_ms // _SPAN_MS[self]

    def start_ms(self, index: int) -> int:
        if self is Grain.MONTH:
            return day_index(month_first(index)) * DAY_MS
        return index * (DAY_MS if self is Grain.WEEK else _SPAN_MS[self])

    def end_s(self, index: int) -> int:
        """Epoch seconds at which the bucket ends."""
        if self is Grain.MONTH:
            return self.start_ms(index + 1) // 1000
        return (self.start_ms(index) + _SPAN_MS[self]) // 1000

    def label(self, index: int) -> str:
        """`YYYYMMDDHH` for an hour, `YYYYMMDDHHMM` for a half hour, `YYYYMMDD` for a day, `wYYYYMMDD` (its
        Monday) for a week, `mYYYYMM` for a month, the epoch minute for a minute."""
        if self is Grain.MONTH:
            first = month_first(index)
            return f"m{first.year:04d}{first.month:02d}"
        if self is Grain.HOUR:
            return hour_label(index)
        if self is Grain.HALF:
            return hour_label(index // 2) + ("30" if index % 2 else "00")
        if self is Grain.DAY:
            return day_label(index)
        if self is Grain.WEEK:
            return "w" + day_label(index)
        return str(index)


HALF_MS = HOUR_MS // 2
_SPAN_MS = {Grain.MINUTE: MINUTE_MS, Grain.HOUR: HOUR_MS, Grain.DAY: DAY_MS, Grain.WEEK: WEEK_MS, Grain.HALF: HALF_MS}


@dataclass(frozen=True)
class Retention:
    """How long buckets and event ids are kept, in days (from settings); daily_days 0: forever."""

    hourly_days: int
    daily_days: int
    dedup_days: int
    observation_days: int = 7  # observations and traces listed (AIA_OBSERVATION_RETENTION_DAYS)
    transcript_days: int = 0  # message content kept (AIA_TRANSCRIPT_DAYS); 0: never stored

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.hourly_retention_days, settings.daily_retention_days, settings.dedup_window_days,
            settings.observation_retention_days, settings.transcript_days,
        )  # fmt: skip

    def oldest_observation_day(self, today: int) -> int:
        """The first day (an epoch day index) whose observations and traces are listed on day `today`."""
        return today - self.observation_days + 1

    def expire_at_s(self, grain: Grain, index: int) -> int | None:
        """When a bucket's key expires: its end plus the retention of its grain (days and weeks: daily);
        None when it is kept forever."""
        if grain is Grain.MINUTE:
            keep = MINUTES_KEPT_S
        elif grain in (Grain.HOUR, Grain.HALF):
            keep = self.hourly_days * 86400
        elif not self.daily_days:
            return None
        else:
            keep = self.daily_days * 86400
        return grain.end_s(index) + keep

    def dedup_expire_at_s(self, now_ms: int) -> int:
        """When the ids seen in a batch applied at now_ms may be forgotten."""
        return (now_ms + self.dedup_days * DAY_MS) // 1000

    def oldest_daily(self, today: date) -> date | None:
        """The first day whose daily buckets are kept, None when they are kept forever."""
        return today - timedelta(days=self.daily_days - 1) if self.daily_days else None

    def check(self, start: date, today: date, *, hourly: bool, param: str = "start_date") -> None:
        """Refuse a range that starts before what the grain keeps, naming the parameter and the limit."""
        days = self.hourly_days if hourly else self.daily_days
        if not days:
            return
        oldest = today - timedelta(days=days - 1)
        if start < oldest:
            grain = "hourly" if hourly else "daily"
            raise QueryError(param, f"{param} {start} is past the {grain} retention of {days} days (oldest: {oldest})")


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


def day_index(d: date) -> int:
    """Days since 1970-01-01 (the DAY grain's index of a date)."""
    return d.toordinal() - _EPOCH_ORDINAL


def day_at(index: int) -> date:
    """The date of a DAY grain index (the inverse of day_index)."""
    return date.fromordinal(index + _EPOCH_ORDINAL)


def hour_index(dt: datetime) -> int:
    """Hours since the epoch (the HOUR grain's index of an aware datetime)."""
    return int(dt.timestamp()) // 3600


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def hours_between(start: date, end: date) -> list[datetime]:
    first = datetime(start.year, start.month, start.day, tzinfo=UTC)
    return [first + timedelta(hours=i) for i in range(((end - start).days + 1) * 24)]


def month_index(d: date) -> int:
    """Months since 1970-01 (the MONTH grain's index of a date)."""
    return (d.year - 1970) * 12 + d.month - 1


def month_first(index: int) -> date:
    """The first day of a MONTH grain index (the inverse of month_index)."""
    years, month = divmod(index, 12)
    return date(1970 + years, month + 1, 1)


def week_start(day_index: int) -> int:
    """The day index of the Monday of that day's ISO week (day 0, 1970-01-01, was a Thursday)."""
    return day_index - (day_index + 3) % 7


def split_months(start: date, end: date, first_month: int) -> tuple[list[int], list[tuple[date, date]]]:
    """Cover start..end (both included) with whole calendar months (their indexes, from `first_month` on)
    and the spans left over (at most two: before the first whole month, after the last)."""
    months: list[int] = []
    spans: list[tuple[date, date]] = []
    d = start
    while d <= end:
        nxt = month_first(month_index(d) + 1)
        if d.day == 1 and nxt - timedelta(days=1) <= end and month_index(d) >= first_month:
            months.append(month_index(d))
        elif spans and spans[-1][1] == d - timedelta(days=1):
            spans[-1] = (spans[-1][0], min(end, nxt - timedelta(days=1)))
        else:
            spans.append((d, min(end, nxt - timedelta(days=1))))
        d = nxt
    return months, spans


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


# --- local days ---------------------------------------------------------------------------------------


UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal"})


@lru_cache(maxsize=1024)
def time_zone(name: str, param: str = "tz") -> ZoneInfo | None:
    """The IANA zone of that name; None for UTC, whose days are the daily buckets themselves."""
    if name in UTC_NAMES:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a name too long
        raise QueryError(
            param, f"{param} must be an IANA time zone such as America/Los_Angeles, got {name[:60]!r}"
        ) from None


Piece = tuple[Grain, int]  # a bucket: HOUR or HALF, and its index


def local_midnight(d: date, zone: ZoneInfo) -> int:
    """Epoch seconds at which local day d starts (a midnight a clock change skips: the change).

    Only midnights on a whole or half UTC hour fall on a bucket's edge; another offset (Asia/Kathmandu's
    +05:45) is refused, naming `tz`."""
    seconds = int(datetime.combine(d, time(), zone).timestamp())
    if seconds % 1800:
        offset = datetime.fromtimestamp(seconds, zone).strftime("%z")
        raise QueryError(
            "tz",
            f"tz {zone.key} is UTC{offset[:3]}:{offset[3:]} on {d}: only whole- and half-hour offsets are answered "
            "(the finest buckets kept are half hours)",
        )
    return seconds


def require_whole_hours(start: date, end: date, zone: ZoneInfo | None, what: str) -> None:
    """Refuse, naming `tz`, a zone any of whose days from start to end starts on a half hour: `what` is kept
    by the hour, not the half hour."""
    if zone is not None and any(first % 3600 for _, first, _ in local_days(start, end, zone)):
        raise QueryError("tz", f"tz {zone.key}: {what} kept by the hour, and its days start on a half hour")


def local_midnight_hour(d: date, zone: ZoneInfo) -> int:
    """The UTC hour index at which local day d starts, for what is kept by the hour only (LLM costs): a zone
    half an hour off UTC is refused there, naming `tz`."""
    seconds = local_midnight(d, zone)
    if seconds % 3600:
        raise QueryError("tz", f"tz {zone.key}: costs are kept by the hour, and its days start on a half hour")
    return seconds // 3600


def pieces(first_s: int, end_s: int) -> list[Piece]:
    """Cover [first_s, end_s) (both on a half hour) with hour buckets, and half-hour ones at the edges."""
    out: list[Piece] = []
    t = first_s
    while t < end_s:
        if t % 3600 == 0 and t + 3600 <= end_s:
            out.append((Grain.HOUR, t // 3600))
            t += 3600
        else:
            out.append((Grain.HALF, t // 1800))
            t += 1800
    return out


def local_days(start: date, end: date, zone: ZoneInfo) -> list[tuple[date, int, int]]:
    """Every local day from start to end (both included) as (day, first second, end second): 24 hours, or 23
    and 25 on the days the clocks change."""
    bounds = [local_midnight(start + timedelta(days=i), zone) for i in range((end - start).days + 2)]
    return [(start + timedelta(days=i), bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def local_hours(first_s: int, end_s: int) -> list[int]:
    """The starts (epoch seconds) of the local hours from first_s to end_s: one every 3600 s from a local
    midnight (a change of offset by a whole hour keeps them on the same grid)."""
    return list(range(first_s, end_s, 3600))


def local_hour_label(start_s: int, zone: ZoneInfo) -> str:
    """An hour as local time with its offset: `2026-11-01T01:00:00-07:00`, then `...01:00:00-08:00`."""
    return datetime.fromtimestamp(start_s, zone).isoformat()


def local_today(zone: ZoneInfo | None) -> date:
    return datetime.now(UTC if zone is None else zone).date()


def cover(first_s: int, end_s: int) -> tuple[list[int], list[Piece]]:
    """Cover [first_s, end_s) (on half hours) with whole UTC days (day indexes) and the hours and half hours
    left at either edge."""
    day_first, day_end = -(-first_s // 86400), end_s // 86400
    if day_first >= day_end:
        return [], pieces(first_s, end_s)
    return list(range(day_first, day_end)), [*pieces(first_s, day_first * 86400), *pieces(day_end * 86400, end_s)]
