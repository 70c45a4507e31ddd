"""The platform's newer analytics endpoints, `/api/analytics/...`: the org is the `platform_key` query
parameter (the API key's own org without one), the range a `date_filter`, and each answer the platform
SDK's model of it: sessions and conversations over time (a conversation is a session: one `session_id`),
mean ratings over time, the busiest weekday and hour, and active students.

Read from the families the `/api/ai-analytics/` endpoints read, so the two agree."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query

from api import params
from api.analytics import TZ, change_percent, check_retention, first_day, months, oldest_kept, zone_of
from api.auth import PlatformOrg
from api.cache import answered_by
from api.state import AppState, Served, State
from tables import ids, queries
from tables.aggregates import first_seen, ratings, sessions, topics
from tables.aggregates import top_students as top
from tables.buckets import HALF_MS, Grain, local_today, require_whole_hours
from tables.exceptions import QueryError

router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

DATE_FILTERS = ("today", "7d", "30d", "90d", "all_time", "custom")
FILTER_DAYS = {"today": 1, "7d": 7, "30d": 30, "90d": 90}
DEFAULT_FILTER = "7d"
GRANULARITIES = ("day", "hour", "week", "month")
USER_METRICS = ("currently_active", "active_users", "active_users_last_30d", "registered_users")

Span = tuple[date, date, ZoneInfo | None]


@dataclass
class Ask:
    """What every `/api/analytics/` call names: the org, the range, the granularity and the mentor."""

    state: AppState
    view: queries.View
    org: str
    date_filter: str | None
    start_date: str | None
    end_date: str | None
    granularity: str
    mentor_raw: str | None
    tz: str | None

    async def span(self, *, hourly: bool) -> Span:
        """(first day, last day, zone) the date_filter names, checked against what is kept (all_time: from
        the org's first day with a message, or the oldest day kept). Each refusal is a 400 naming its
        parameter."""
        zone = await zone_of(self.state, self.org, self.tz)
        today = local_today(zone)
        chosen = params.choice("date_filter", self.date_filter, DATE_FILTERS, None)
        if chosen is None:
            chosen = "custom" if self.start_date or self.end_date else DEFAULT_FILTER
        if chosen != "custom" and (self.start_date or self.end_date):
            name = "start_date" if self.start_date else "end_date"
            raise params.bad(name, f"{name} is read only with date_filter=custom, not {chosen}")
        if chosen == "custom":
            if not self.start_date:
                raise params.bad("start_date", "start_date is required with date_filter=custom (YYYY-MM-DD)")
            start, end = params.date_range(self.start_date, self.end_date, required=False, today=today)
        elif chosen == "all_time":
            start, end = await first_day(self.view, self.org, zone) or today, today
            oldest = oldest_kept(self.state, zone, hourly=hourly)
            start = min(end, start if oldest is None else max(start, oldest))
        else:
            start, end = today - timedelta(days=FILTER_DAYS[chosen] - 1), today
        check_retention(self.state, start, zone, hourly=hourly)
        if hourly and (end - start).days > self.state.retention.hourly_days:
            name = "end_date" if chosen == "custom" else "date_filter"
            raise params.bad(name, f"hourly points span at most {self.state.retention.hourly_days} days")
        return start, end, zone

    async def mentor(self) -> str | None:
        """The mentor asked for, as kept (tables/ids.py), or None for the whole org."""
        mentor = params.text("mentor_unique_id", self.mentor_raw)
        return None if mentor is None else await queries.resolve(self.view, self.org, ids.MENTOR, mentor)


async def ask(
    state: State,
    view: Served,
    org: PlatformOrg,
    date_filter: Annotated[
        str | None,
        Query(
            description="today, 7d (default), 30d, 90d: that many days up to today (the org's); all_time: from the "
            "org's first day with a message; custom: start_date to end_date (the default when either is given).",
            json_schema_extra={"enum": list(DATE_FILTERS)},
        ),
    ] = None,
    start_date: Annotated[
        str | None, Query(description="First day (date_filter=custom), YYYY-MM-DD.", **params.DATE)
    ] = None,
    end_date: Annotated[
        str | None, Query(description="Last day (date_filter=custom), YYYY-MM-DD; default: today.", **params.DATE)
    ] = None,
    granularity: Annotated[
        str | None,
        Query(
            description="day (default), hour, week (ISO weeks, from Monday) or month.",
            json_schema_extra={"enum": list(GRANULARITIES)},
        ),
    ] = None,
    mentor_unique_id: Annotated[
        str | None, Query(description="Only this mentor's (its unique id).", max_length=256)
    ] = None,
    usergroup_ids: Annotated[
        str | None,
        Query(
            description="User groups are in none of the topics: a filter by them cannot be answered (400).",
            include_in_schema=False,  # the document lists what is answered; the refusal is in docs/platform.md
        ),
    ] = None,
    tz: TZ = None,
) -> Ask:
    refuse_usergroups(usergroup_ids)
    chosen = params.choice("granularity", granularity, GRANULARITIES, "day") or "day"
    return Ask(state, view, org, date_filter, start_date, end_date, chosen, mentor_unique_id, tz)


Asked = Annotated[Ask, Depends(ask)]


def refuse_usergroups(usergroup_ids: str | None) -> None:
    """The platform's user groups are in none of the topics: a filter by them is a 400 naming it."""
    if usergroup_ids:
        raise params.bad("usergroup_ids", "usergroup_ids: user groups are in none of the topics; cannot filter by them")


METRIC_SESSIONS = Annotated[
    str | None,
    Query(description="sessions (default): sessions started per period; headline: the range's means.",
          json_schema_extra={"enum": ["sessions", "headline"]}),
]  # fmt: skip
METRIC_CONVERSATIONS = Annotated[
    str | None,
    Query(description="conversations (default): conversations started per period; headline: the range's means.",
          json_schema_extra={"enum": ["conversations", "headline"]}),
]  # fmt: skip


@router.get("/sessions/", openapi_extra=answered_by(sessions.Sessions, ratings.Ratings, first_seen.FirstSeen))
async def sessions_chart(a: Asked, metric: METRIC_SESSIONS = None) -> dict[str, Any]:
    """Sessions started per hour, day, ISO week or month of the org's time zone (periods without one
    included as 0), each at its earliest message; `metric=headline`: the range's sessions, messages, mean
    messages per session and mean rating, beside no points."""
    chosen = params.choice("metric", metric, ("sessions", "headline"), "sessions") or "sessions"
    return await started_chart(a, chosen, "session")


@router.get("/conversations/", openapi_extra=answered_by(sessions.Sessions, ratings.Ratings, first_seen.FirstSeen))
async def conversations_chart(a: Asked, metric: METRIC_CONVERSATIONS = None) -> dict[str, Any]:
    """Conversations started per hour, day, ISO week or month (a conversation is a session: the same
    numbers as `/api/analytics/sessions/`); `metric=headline`: the range's means."""
    chosen = params.choice("metric", metric, ("conversations", "headline"), "conversations") or "conversations"
    return await started_chart(a, chosen, "conversation")


@router.get("/ratings/", openapi_extra=answered_by(ratings.Ratings, first_seen.FirstSeen))
async def ratings_chart(
    a: Asked,
    metric: Annotated[
        str | None, Query(description="ratings (the only one).", json_schema_extra={"enum": ["ratings"]})
    ] = None,
) -> dict[str, Any]:
    """The mean rating of the conversations rated in each hour, day, ISO week or month (at their newest
    record's `inserted_at`); periods without a rating are left out (a mean of nothing is not 0)."""
    params.choice("metric", metric, ("ratings",), "ratings")
    start, end, zone = await a.span(hourly=a.granularity == "hour")
    rows = await ratings.mean_ratings(a.view, a.org, start, end, a.granularity == "hour", await a.mentor(), zone)
    points = [
        {"date": when, "value": ratings.mean(summed, high, low)}
        for when, (summed, high, low) in grouped(rows, a.granularity, zone)
        if summed
    ]
    return {"metric": "ratings", "points": points}


@router.get("/time/", openapi_extra=answered_by(sessions.Sessions, first_seen.FirstSeen))
async def busiest_time(a: Asked) -> dict[str, Any]:
    """The busiest hour of the week over the range: the weekday (0 Sunday to 6 Saturday) and hour of the
    org's time zone that hold the most chat messages (each by its own time), and how many. The platform's
    SDK types this answer as one cell, so it is the busiest one (ties: the earliest in the week); the
    whole grid is 168 of them. Hours are kept for the hourly retention: all_time reads those."""
    start, end, zone = await a.span(hourly=True)
    require_whole_hours(start, end, zone, "messages by hour are")
    mentor = await a.mentor()
    fld = sessions.SENT if mentor is None else sessions.mentor_field(sessions.SENT, mentor)
    cells = [[0] * 24 for _ in range(7)]
    for label, (n,) in await queries.periods(a.view, a.org, start, end, True, zone, [fld]):
        t = datetime.fromisoformat(label)
        cells[(t.weekday() + 1) % 7][t.hour] += n
    value, day, hour = max((n, -d, -h) for d, row in enumerate(cells) for h, n in enumerate(row))
    return {"day_of_week": -day, "hour": -hour, "value": value}


@router.get("/users/", openapi_extra=answered_by(top.TopStudents, first_seen.FirstSeen))
async def users(
    a: Asked,
    metric: Annotated[
        str,
        Query(
            description="currently_active: students who sent a message since the start of the previous half "
            "hour (30 to 60 minutes); active_users: in the date_filter's days; active_users_last_30d: in the "
            "last 30 days. `change`: the percentage change against the window just before, rounded half to even (0 when "
            "that window had none). registered_users needs the platform's user registry: 400.",
            json_schema_extra={"enum": list(USER_METRICS)},
        ),
    ],
) -> dict[str, Any]:
    """Active students: those who sent a message (a human message) in the window, to the org or to the
    mentor, counted exactly; and the change against the window before."""
    chosen = params.choice("metric", metric, USER_METRICS, None)
    if chosen == "registered_users":
        raise params.bad("metric", "metric registered_users needs the platform's user registry, in none of the topics")
    mentor = await a.mentor()
    gen, org = a.view.gen, a.org
    if chosen == "currently_active":
        half = int(datetime.now(UTC).timestamp() * 1000) // HALF_MS
        windows = [[top.key(gen, org, Grain.HALF, i, mentor) for i in (h, h - 1)] for h in (half, half - 2)]
    else:
        if chosen == "active_users_last_30d":
            a.date_filter, a.start_date, a.end_date = "30d", None, None
        start, end, zone = await a.span(hourly=False)
        before = start - timedelta(days=(end - start).days + 1)
        try:
            check_retention(a.state, before, zone, hourly=False)
        except QueryError as exc:
            raise params.bad("date_filter", f"the change compares with the days from {before}: {exc.message}") from None
        windows = [
            await top.view_range_keys(a.view, org, first, last, mentor, zone)
            for first, last in ((start, end), (before, start - timedelta(days=1)))
        ]
    now, then = await queries.union_sizes(a.view.redis, windows)
    return {"metric": chosen, "count": now, "change": int(change_percent(now, then, places=0))}


@router.get("/topics/", openapi_extra=answered_by(topics.Topics, sessions.Sessions, first_seen.FirstSeen))
async def topics_overview(
    a: Asked,
    metric: Annotated[
        str | None,
        Query(
            description="overview (the default, and the only one the SDK's `TopicsOverview` holds).",
            json_schema_extra={"enum": ["overview"]},
        ),
    ] = None,
) -> dict[str, Any]:
    """Topics, sessions, conversations (a conversation is a session) and their messages: all time, this
    month so far, the whole month before (the org's zone), and the percentage change (two places; 0 when the
    month before had none). All-time topics are every topic a message or record ever named; the date filter
    and `granularity` have no effect."""
    params.choice("metric", metric, ("overview",), "overview")
    mentor = await a.mentor()
    (this, last), zone = await months(a.state, a.org, a.tz)
    s_field, m_field = sessions.SESSIONS, sessions.MESSAGES
    if mentor is not None:
        s_field, m_field = sessions.mentor_field(s_field, mentor), sessions.mentor_field(m_field, mentor)
    monthly = [
        totals(await queries.periods(a.view, a.org, *month, False, zone, [s_field, m_field])) for month in (this, last)
    ]
    topic_months = [len(await topics.topic_counts(a.view, a.org, *month, mentor, zone)) for month in (this, last)]
    since = await first_day(a.view, a.org, None)
    all_time = [0, 0]
    if since is not None:  # every day kept, by the UTC day (all time is the same in any zone)
        all_time = totals(
            await queries.periods(a.view, a.org, since, local_today(None), False, None, [s_field, m_field])
        )
    session_metric = metric_of(all_time[0], monthly[0][0], monthly[1][0])
    return {
        "topics": metric_of(await topics.topics_first_named(a.view, a.org, None, None, mentor), *topic_months),
        "sessions": session_metric,
        "conversations": session_metric,
        "messages": metric_of(all_time[1], monthly[0][1], monthly[1][1]),
    }


def metric_of(all_time: int, this_month: int, last_month: int) -> dict[str, Any]:
    return {"all_time_total": all_time, "this_month": this_month, "last_month": last_month,
            "percentage_change": change_percent(this_month, last_month)}  # fmt: skip


@router.get("/topics/details/", openapi_extra=answered_by(topics.Topics, first_seen.FirstSeen))
async def topic_details(
    a: Asked,
    limit: Annotated[str | None, Query(description="Topics per page, 1 to 100 (default 20).")] = None,
    page: Annotated[str | None, Query(description="The page, from 1.")] = None,
    search: Annotated[str | None, Query(description="Only topics whose name holds this, in any case.")] = None,
) -> dict[str, Any]:
    """Per topic of the conversations listed in the range: its conversations (a conversation is a session,
    so `sessions` is the same number) and their messages; most conversations first, ties by name, paged.
    `granularity` has no effect."""
    start, end, zone = await a.span(hourly=False)
    per_page = params.positive_int("limit", limit, 20, 100)
    mentor = params.text("mentor_unique_id", a.mentor_raw)
    rows = topics.ranked(await topics.topic_counts(a.view, a.org, start, end, mentor, zone))
    if wanted := params.text("search", search):
        rows = [row for row in rows if wanted.casefold() in row[0].casefold()]
    pages = max(1, -(-len(rows) // per_page))
    n = params.page_number(page, pages)
    return {
        "results": [
            {"name": t, "messages": m, "conversations": c, "sessions": c}
            for t, c, m in rows[(n - 1) * per_page : n * per_page]
        ],
        "pagination": {
            "count": len(rows), "page": n, "limit": per_page, "total_pages": pages,
            "next": n + 1 if n < pages else None, "previous": n - 1 if n > 1 else None,
        },
    }  # fmt: skip


# --- helpers -------------------------------------------------------------------------------------------
async def started_chart(a: Ask, metric: str, noun: str) -> dict[str, Any]:
    """Sessions started per period, or the range's headline."""
    mentor = await a.mentor()
    s_field, m_field = sessions.SESSIONS, sessions.MESSAGES
    if mentor is not None:
        s_field, m_field = sessions.mentor_field(s_field, mentor), sessions.mentor_field(m_field, mentor)
    if metric != "headline":
        start, end, zone = await a.span(hourly=a.granularity == "hour")
        rows = await queries.periods(a.view, a.org, start, end, a.granularity == "hour", zone, [s_field])
        return {
            "metric": metric,
            "points": [{"date": when, "value": n} for when, (n,) in grouped(rows, a.granularity, zone)],
        }
    start, end, zone = await a.span(hourly=False)
    started, messages = totals(await queries.periods(a.view, a.org, start, end, False, zone, [s_field, m_field]))
    summed, high, low = totals(await ratings.mean_ratings(a.view, a.org, start, end, False, mentor, zone))
    return {
        "metric": "headline",
        "points": [],
        f"total_{noun}s": started,
        "total_messages": messages,
        f"avg_messages_per_{noun}": messages / started if started else None,
        "rated_conversations": summed,
        "avg_rating": ratings.mean(summed, high, low) if summed else None,
    }


def totals(rows: list[tuple[str, list[int]]]) -> list[int]:
    return [sum(column) for column in zip(*(sums for _, sums in rows), strict=True)] if rows else []


def period_start(label: str, granularity: str, zone: ZoneInfo | None) -> str:
    """The RFC 3339 start of the period a day or hour label falls in: the hour, or the zone's midnight of
    the day, of the ISO week's Monday or of the month's first day."""
    if granularity == "hour":
        return label
    d = date.fromisoformat(label)
    if granularity == "week":
        d -= timedelta(days=d.weekday())
    elif granularity == "month":
        d = d.replace(day=1)
    if zone is None:
        return f"{d.isoformat()}T00:00:00Z"
    return datetime(d.year, d.month, d.day, tzinfo=zone).isoformat()


def grouped(
    rows: Iterable[tuple[str, list[int]]], granularity: str, zone: ZoneInfo | None
) -> list[tuple[str, list[int]]]:
    """Rows of hours or days summed into the periods of the granularity, in order, each at its start."""
    out: dict[str, list[int]] = {}
    for label, sums in rows:
        acc = out.setdefault(period_start(label, granularity, zone), [0] * len(sums))
        for i, n in enumerate(sums):
            acc[i] += n
    return list(out.items())
