"""Query-parameter parsing: every bad value becomes a 400 that names the parameter and says what is expected."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import Request

from api.errors import ApiError
from tables.buckets import local_midnight_hour

# What the OpenAPI document says of a parameter's format (the parsers below check it and answer 400 otherwise).
DATE: dict[str, Any] = {"json_schema_extra": {"format": "date"}}
DATE_TIME: dict[str, Any] = {"json_schema_extra": {"format": "date-time"}}
# Dates in years 1000 to 9998: a day, a month or a time zone away from either end is still a date.
FIRST_YEAR, LAST_YEAR = 1000, 9998
MAX_SPAN_DAYS = 3660
PERIODS = {"today": 1, "yesterday": 1, "7d": 7, "30d": 30, "90d": 90}
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def parse_query(query_string: bytes) -> tuple[list[tuple[str, str]], str | None]:
    """A query string's (name, value) pairs, decoded and sorted: what an answer depends on, whatever the
    spelling and order (`a=%41&b=1` is `b=1&a=A`); and the first name given more than once, if any (the API
    refuses those, `single_values`)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return sorted(pairs), name
        seen.add(name)
    return sorted(pairs), None


def single_values(request: Request) -> None:
    """Every route's first check: a query parameter given twice is a 400 naming it (which value would count
    is a guess; the platform's Django views would take one silently)."""
    _, name = parse_query(request.scope.get("query_string", b""))
    if name is not None:
        raise bad(name, f"{name} is given more than once; give it once")


def parse_date(param: str, value: str | None, *, required: bool) -> date | None:
    if value is None or value == "":
        if required:
            raise bad(param, f"{param} is required (YYYY-MM-DD)")
        return None
    try:
        if len(value) != 10:
            raise ValueError
        d = date.fromisoformat(value)
    except ValueError:
        raise bad(param, f"{param} must be a date as YYYY-MM-DD, got {value[:40]!r}") from None
    return _in_years(param, d)


def _in_years(param: str, d: date) -> date:
    if not FIRST_YEAR <= d.year <= LAST_YEAR:
        raise bad(param, f"{param} must fall in the years {FIRST_YEAR} to {LAST_YEAR}, got {d.isoformat()}")
    return d


def parse_date_or_datetime(param: str, value: str | None, *, end: bool, zone: ZoneInfo | None = None) -> datetime:
    """A date (the whole day of the zone, UTC without one: its start, or for an end the start of the next
    day) or an RFC 3339 datetime."""
    if value is None or value == "":
        raise bad(param, f"{param} is required (YYYY-MM-DD or an RFC 3339 datetime)")
    if len(value) == 10:
        d = parse_date(param, value, required=True)
        assert d is not None
        day = d + timedelta(days=1) if end else d
        if zone is None:
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        return datetime.fromtimestamp(local_midnight_hour(day, zone) * 3600, UTC)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise bad(param, f"{param} must be YYYY-MM-DD or an RFC 3339 datetime, got {value[:40]!r}") from None
    _in_years(param, dt.date())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)  # the platform's clients send naive UTC datetimes
    return dt.astimezone(UTC)


def datetime_range(
    start_raw: str | None, end_raw: str | None, zone: ZoneInfo | None = None
) -> tuple[datetime, datetime]:
    """Both required; a date is its whole day (the zone's). At most MAX_SPAN_DAYS long."""
    start = parse_date_or_datetime("start_date", start_raw, end=False, zone=zone)
    end = parse_date_or_datetime("end_date", end_raw, end=True, zone=zone)
    if end < start:
        raise bad("end_date", f"end_date {end_raw} is before start_date {start_raw}")
    if (end - start).days > MAX_SPAN_DAYS:
        raise bad("end_date", "the range may span at most 10 years")
    return start, end


def date_range(
    start_raw: str | None, end_raw: str | None, *, required: bool, default_days: int = 30, today: date | None = None
) -> tuple[date, date]:
    """A range of days; without an end, up to today (UTC's, or the given one: a time zone's)."""
    today = today or datetime.now(UTC).date()
    start = parse_date("start_date", start_raw, required=required)
    end = parse_date("end_date", end_raw, required=required)
    if end is None:
        end = today if start is None else max(start, today)
    if start is None:
        start = end - timedelta(days=default_days - 1)
    if end < start:
        raise bad("end_date", f"end_date {end} is before start_date {start}")
    if (end - start).days > MAX_SPAN_DAYS:
        raise bad("end_date", "the range may span at most 10 years")
    return start, end


def optional_days(start_raw: str | None, end_raw: str | None) -> tuple[date | None, date | None]:
    """Optional first and last days (either may be left open); an end before the start is a 400 naming
    end_date."""
    start = parse_date("start_date", start_raw, required=False)
    end = parse_date("end_date", end_raw, required=False)
    if start and end and end < start:
        raise bad("end_date", f"end_date {end} is before start_date {start}")
    return start, end


def names(param: str, value: str | None) -> tuple[str, ...]:
    """A comma-separated list (topics), each name stripped, empty ones left out."""
    return tuple(t.strip() for t in (text(param, value) or "").split(",") if t.strip())


def choice(param: str, value: str | None, allowed: tuple[str, ...], default: str | None) -> str | None:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise bad(param, f"{param} must be one of {', '.join(allowed)}, got {value[:40]!r}")
    return value


FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def flag(param: str, value: str | None, default: bool = False) -> bool:
    """A boolean as Django REST framework's BooleanField reads one (`true`, `1`, `yes`, `on` and their
    opposites, in any case)."""
    if value is None or value == "":
        return default
    if (parsed := FLAGS.get(value.lower())) is None:
        raise bad(param, f"{param} must be true or false, got {value[:40]!r}")
    return parsed


def _whole(param: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise bad(param, f"{param} must be a whole number, got {value[:40]!r}") from None


def positive_int(param: str, value: str | None, default: int, maximum: int | None = None) -> int:
    if value is None or value == "":
        return default
    n = _whole(param, value)
    if n < 1:
        raise bad(param, f"{param} must be at least 1, got {n}")
    if maximum is not None and n > maximum:
        raise bad(param, f"{param} must be at most {maximum}, got {n}")
    return n


def whole_number(param: str, value: str | None) -> int | None:
    """A whole number from 0 (a count a client bounds a result by), or None when not given."""
    if value is None or value == "":
        return None
    n = _whole(param, value)
    if n < 0:
        raise bad(param, f"{param} must be at least 0, got {n}")
    return n


def text(param: str, value: str | None) -> str | None:
    if value is None or value == "":
        return None
    if len(value) > 1024:
        raise bad(param, f"{param} is longer than 1024 characters")
    return value


def period_days(value: str | None, today: date) -> tuple[date, date]:
    """The days of a period ending today (a time zone's today)."""
    period = choice("period", value, tuple(PERIODS), "7d")
    assert period is not None
    if period == "yesterday":
        return today - timedelta(days=1), today - timedelta(days=1)
    return today - timedelta(days=PERIODS[period] - 1), today


def page_size(value: str | None) -> int:
    """Rows per page as Django REST framework's PageNumberPagination reads it: a size over the maximum is
    capped, one that is not a positive whole number falls back to the default."""
    try:
        n = int(value) if value else DEFAULT_PAGE_SIZE
    except ValueError:
        return DEFAULT_PAGE_SIZE
    return DEFAULT_PAGE_SIZE if n < 1 else min(n, MAX_PAGE_SIZE)


def page_number(value: str | None, pages: int) -> int:
    """The page asked for; as Django REST framework does, one that is not a page of the result is a 404."""
    if value is None or value == "":
        return 1
    if value == "last":
        return pages
    try:
        n = int(value)
    except ValueError:
        raise ApiError(404, "Invalid page.", param="page") from None
    if n < 1 or n > pages:
        raise ApiError(404, "Invalid page.", param="page")
    return n
