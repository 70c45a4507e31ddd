"""The platform's analytics endpoints over the aggregates: average messages per session, conversations,
distinct students and ratings per period, new and returning students, sentiment counts and shares, tenant
cost, top students, and how fresh the data is."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request

from api import params
from api.auth import ORG, USER, Caller
from api.cache import answered_by
from api.state import AppState, Served, State
from streams.schemas import SENTIMENTS
from tables import queries
from tables.aggregates import first_seen, llm_cost, ratings, sentiment, sessions, topics
from tables.aggregates import top_students as top
from tables.buckets import local_today, time_zone

router = APIRouter(tags=["analytics"])
DATE, DATE_TIME = params.DATE, params.DATE_TIME
TZ = Annotated[
    str | None,
    Query(
        description="The days' time zone, an IANA name (America/Los_Angeles); default: the org's (UTC unless set "
        "with `ai-analytics orgs tz`). Zones with a whole- or half-hour offset (costs: whole-hour).",
        max_length=64,
    ),
]


FIRST_DAY = Annotated[str, Query(description="First day, YYYY-MM-DD.", **DATE)]
LAST_DAY = Annotated[str, Query(description="Last day, YYYY-MM-DD.", **DATE)]
SINCE_30_DAYS = Annotated[str | None, Query(description="First day, YYYY-MM-DD (default: 30 days ago).", **DATE)]
UNTIL_TODAY = Annotated[str | None, Query(description="Last day, YYYY-MM-DD (default: today).", **DATE)]
AGGREGATION = Annotated[
    str | None,
    Query(description="hourly, daily (default) or weekly.", json_schema_extra={"enum": list(sessions.AGGREGATIONS)}),
]
NO_EFFECT = Annotated[str | None, Query(description="Accepted for the platform's clients; no effect.")]


async def days_of(
    state: AppState,
    org: str,
    tz: str | None,
    start_date: str | None,
    end_date: str | None,
    *,
    hourly: bool,
    required: bool = True,
    default_days: int = 30,
) -> tuple[date, date, ZoneInfo | None]:
    """(first day, last day, zone) of a range of days in the time zone, checked against what is kept: the
    retention, and for hourly rows the hourly retention's span. Each refusal is a 400 naming its parameter."""
    zone = await zone_of(state, org, tz)
    start, end = params.date_range(
        start_date, end_date, required=required, default_days=default_days, today=local_today(zone)
    )
    check_retention(state, start, zone, hourly=hourly)
    if hourly and (end - start).days > state.retention.hourly_days:
        raise params.bad("end_date", f"hourly rows span at most {state.retention.hourly_days} days")
    return start, end, zone


@router.get("/average-messages-per-session/", openapi_extra=answered_by(sessions.Sessions))
async def average_messages_per_session(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    mentor_id: Annotated[str | None, Query(description="Only sessions with this mentor.")] = None,
    aggregation: AGGREGATION = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Sessions started per period (hours, days or ISO weeks of the time zone) and the average number of
    messages in them."""
    agg = params.choice("aggregation", aggregation, sessions.AGGREGATIONS, "daily") or "daily"
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=agg == "hourly")
    mentor = params.text("mentor_id", mentor_id)
    return await sessions.average_messages_per_session(view, org, start, end, agg, mentor, zone)


@router.get("/conversation/", openapi_extra=answered_by(sessions.Sessions))
async def conversation_volume(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    mentor_id: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    aggregation: AGGREGATION = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Conversations started per period (hours, days or ISO weeks of the time zone; periods without one
    included as 0): a conversation starts at its earliest message, with that message's mentor. The same
    sessions `average-messages-per-session` counts."""
    agg = params.choice("aggregation", aggregation, sessions.AGGREGATIONS, "daily") or "daily"
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=agg == "hourly")
    mentor = params.text("mentor_id", mentor_id)
    rows = await sessions.average_messages_per_session(view, org, start, end, agg, mentor, zone)
    return [{"date": row["time"], "conversation_count": row["total_sessions"]} for row in rows]


@router.get("/total-users-by-mentor/", openapi_extra=answered_by(top.TopStudents))
async def total_users_by_mentor(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: SINCE_30_DAYS = None,
    end_date: UNTIL_TODAY = None,
    mentor_id: Annotated[str | None, Query(description="Only students who wrote to this mentor.")] = None,
    aggregation: Annotated[
        str | None, Query(description="hourly or daily (default).", json_schema_extra={"enum": ["hourly", "daily"]})
    ] = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Distinct students who sent a message, per hour or day of the time zone (periods without one
    included as 0), to the org's mentors or to one."""
    hourly = params.choice("aggregation", aggregation, ("hourly", "daily"), "daily") == "hourly"
    start, end, zone = await days_of(
        state, org, tz, start_date, end_date, hourly=hourly, required=False, default_days=31
    )
    return await top.active_students(view, org, start, end, hourly, params.text("mentor_id", mentor_id), zone)


@router.get("/usage-summary/", openapi_extra=answered_by(top.TopStudents))
async def usage_summary(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Distinct students who sent a message, per day of the time zone (days without one included as 0): the
    students `total-users-by-mentor/` counts, to any of the org's mentors."""
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False)
    rows = await top.active_students(view, org, start, end, False, None, zone)
    return [{"date": row["period"], "user_count": row["user_count"]} for row in rows]


@router.get("/user-metrics-pie-chart/", openapi_extra=answered_by(top.TopStudents, first_seen.FirstSeen))
async def user_metrics_pie_chart(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    mentor_id: Annotated[
        str | None, Query(description="Only students who wrote to this mentor (new: their first message to it).")
    ] = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """Students who sent a message over the range (days of the time zone), to the org's mentors or to one:
    new (their first message ever, to the org or to that mentor, is in the range) and returning (the
    others), each counted and with its share in percent (adding up to 100; both 0 when nobody wrote)."""
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False)
    mentor = params.text("mentor_id", mentor_id)
    return await first_seen.new_and_returning(view, org, start, end, mentor, zone)


@router.get("/rating-summary/", openapi_extra=answered_by(ratings.Ratings))
async def rating_summary(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    group_by: Annotated[
        str | None, Query(description="day (default) or hour.", json_schema_extra={"enum": ["day", "hour"]})
    ] = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Rated conversations per day or hour of the time zone (periods without one included as 0): those whose
    newest chat-history record holds a rating, counted at the record's `inserted_at`."""
    hourly = params.choice("group_by", group_by, ("day", "hour"), "day") == "hour"
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=hourly)
    return await ratings.rating_summary(view, org, start, end, hourly, zone)


@router.get("/user-sentiment/", openapi_extra=answered_by(sentiment.Sentiment))
async def user_sentiment(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """The sentiment judgements over the range (days of the time zone): each label's share in percent (two
    decimals, adding up to 100; every label, all 0 when there is none) and their number, with each label's
    count."""
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False)
    return await sentiment.sentiment_summary(view, org, start, end, zone)


@router.get("/most-discussed-topics/", openapi_extra=answered_by(topics.Topics))
async def most_discussed_topics(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: FIRST_DAY,
    end_date: LAST_DAY,
    mentor_id: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    aggregation: Annotated[
        str | None,
        Query(
            description="hourly, daily or weekly: accepted, no effect (one row per topic).",
            json_schema_extra={"enum": list(sessions.AGGREGATIONS)},
        ),
    ] = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Every topic of the conversations listed in the range (days of the time zone), with how many there
    are, most first (ties by topic): the conversations chat history lists under the topic for those days."""
    params.choice("aggregation", aggregation, sessions.AGGREGATIONS, "daily")
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False)
    counts = await topics.topic_counts(view, org, start, end, params.text("mentor_id", mentor_id), zone)
    return [{"topic_name": t, "conversation_count": n} for t, n, _ in topics.ranked(counts)]


@router.get("/topics/summary/", openapi_extra=answered_by(topics.Topics))
async def topics_summary(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: SINCE_30_DAYS = None,
    end_date: UNTIL_TODAY = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """The 10 topics with the most conversations in the range (as `most-discussed-topics/`)."""
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False, required=False)
    counts = await topics.topic_counts(view, org, start, end, None, zone)
    return [{"name": t, "conversation_count": n} for t, n, _ in topics.ranked(counts)[: topics.SUMMARY_TOPICS]]


@router.get("/topic-statistics/", openapi_extra=answered_by(topics.Topics))
async def topic_statistics(
    request: Request,
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: SINCE_30_DAYS = None,
    end_date: UNTIL_TODAY = None,
    mentor_id: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    page: Annotated[str | None, Query(description="The page, from 1 (`last`: the last).")] = None,
    page_size: Annotated[str | None, Query(description="Topics per page (default 20, at most 100).")] = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """Per topic of the conversations listed in the range (as `most-discussed-topics/`): conversations, their
    messages, the mean sentiment of those judged (positive 1, neutral 0, negative -1) and the mean rating of
    those rated, as decimal strings of two places ("" where none is); most conversations first, paged as
    Django REST framework pages."""
    start, end, zone = await days_of(state, org, tz, start_date, end_date, hourly=False, required=False)
    counts = await topics.topic_counts(view, org, start, end, params.text("mentor_id", mentor_id), zone)
    rows = topics.statistics(counts)
    size = params.page_size(page_size)
    pages = max(1, -(-len(rows) // size))
    n = params.page_number(page, pages)
    return {
        "count": len(rows),
        "next": str(request.url.include_query_params(page=n + 1)) if n < pages else None,
        "previous": str(request.url.include_query_params(page=n - 1)) if n > 1 else None,
        "results": rows[(n - 1) * size : n * size],
    }


@router.get("/topic-overview/", openapi_extra=answered_by(topics.Topics))
async def topic_overview(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    mentor_id: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """This month so far against the whole month before (the time zone's): the topics of the conversations
    listed in each, and the topics first named in each (by a message or record, to the mentor with
    `mentor_id`), with the percentage changes (two places; 0 when the month before had none)."""
    mentor = params.text("mentor_id", mentor_id)
    (this, last), zone = await months(state, org, tz)
    counts = [await topics.topic_counts(view, org, *month, mentor, zone) for month in (this, last)]
    new = [
        await topics.topics_first_named(view, org, *first_seen.range_ms(*month, zone), mentor) for month in (this, last)
    ]
    return {
        "total_topics": len(counts[0]),
        "total_topics_change_percentage": change_percent(len(counts[0]), len(counts[1])),
        "new_topics": new[0],
        "new_topics_change_percentage": change_percent(*new),
    }


@router.get(
    "/overview-summary/", openapi_extra=answered_by(sessions.Sessions, top.TopStudents, topics.Topics, ratings.Ratings)
)
async def overview_summary(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    mentor_id: Annotated[str | None, Query(description="Only this mentor's.")] = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """This month so far against the whole month before (the time zone's), each `{"total", "change"}` (the
    percentage change, two places; 0 when the month before had none): conversations started, students who
    sent a message, topics of the conversations listed, and conversations rated."""
    mentor = params.text("mentor_id", mentor_id)
    (this, last), zone = await months(state, org, tz)
    if mentor is not None:
        mentor = await queries.resolve(view, org, "mentor", mentor)
    s_field = sessions.SESSIONS if mentor is None else sessions.mentor_field(sessions.SESSIONS, mentor)
    r_field = ratings.RATINGS if mentor is None else sessions.mentor_field(ratings.SUMMED, mentor)
    figures: dict[str, list[int]] = {"conversation_volume": [], "users": [], "topics": [], "user_rating": []}
    for first, end in (this, last):
        started, rated = (sum(column) for column in zip(
            *(sums for _, sums in await queries.periods(view, org, first, end, False, zone, [s_field, r_field])),
            strict=True,
        ))  # fmt: skip
        figures["conversation_volume"].append(started)
        figures["user_rating"].append(rated)
        keys_of = await top.view_range_keys(view, org, first, end, mentor, zone)
        figures["users"].extend(await queries.union_sizes(view.redis, [keys_of]))
        figures["topics"].append(len(await topics.topic_counts(view, org, first, end, mentor, zone)))
    return {name: {"total": now, "change": change_percent(now, then)} for name, (now, then) in figures.items()}


async def months(
    state: AppState, org: str, tz: str | None
) -> tuple[tuple[tuple[date, date], tuple[date, date]], ZoneInfo | None]:
    """((first day, today) of this month, (first, last day) of the month before) in the zone, checked against
    what is kept."""
    zone = await zone_of(state, org, tz)
    this, last = month_bounds(local_today(zone))
    check_retention(state, last[0], zone, hourly=False)
    return (this, last), zone


def month_bounds(today: date) -> tuple[tuple[date, date], tuple[date, date]]:
    """((first day, today) of today's month, (first, last day) of the month before)."""
    first = today.replace(day=1)
    last_end = first - timedelta(days=1)
    return (first, today), (last_end.replace(day=1), last_end)


def change_percent(now: int, then: int, places: int = 2) -> float:
    """The percentage change from then to now, rounded half to even to `places` places (exactly: from the
    fraction); 0 when then is 0 (no percentage of nothing)."""
    return 0.0 if then == 0 else float(round(Fraction(100 * (now - then), then), places))


@router.get(
    "/chat-history-filter/",
    openapi_extra=answered_by(topics.Topics, top.TopStudents, sentiment.Sentiment, first_seen.FirstSeen),
)
async def chat_history_filter(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: Annotated[
        str | None, Query(description="First day, YYYY-MM-DD (default: the org's first day with a message).", **DATE)
    ] = None,
    end_date: UNTIL_TODAY = None,
    mentor_id: Annotated[str | None, Query(description="Only this mentor's topics and students.")] = None,
    monthly_range: Annotated[
        str | None, Query(description="true: monthly date ranges; false (default): ISO weeks.")
    ] = None,
    tz: TZ = None,
) -> dict[str, Any]:
    """What chat history can be filtered by over the range (days of the time zone): the topics of the
    conversations listed in it (as chat history serves them: at most 255 characters), the students who sent
    a message in it (their email is not kept per student: ""), the sentiment labels judged in it (the org's,
    with or without `mentor_id`), and the weeks or months from its first day to its last."""
    monthly = params.flag("monthly_range", monthly_range)
    mentor = params.text("mentor_id", mentor_id)
    zone = await zone_of(state, org, tz)
    today = local_today(zone)
    if start_date is None and end_date is None:  # since the first message, or the oldest day kept
        start = await first_day(view, org, zone) or today
        start, end = min(max(start, oldest_kept(state, zone, hourly=False) or start), today), today
    else:
        start, end = params.date_range(start_date, end_date, required=False, today=today)
    check_retention(state, start, zone, hourly=False)
    named = await topics.topic_counts(view, org, start, end, mentor, zone)
    students = await top.top_students(view, org, start, end, mentor, limit=None, zone=zone)
    judged = await sentiment.sentiment_counts(view, org, start, end, zone)
    return {
        "topics": [{"name": name} for name in dict.fromkeys(t[:255] for t in sorted(named))],
        "date_ranges": [{"start_date": a.isoformat(), "end_date": b.isoformat()} for a, b in periods_of(start, end, monthly)],
        "sentiment": [label for label in SENTIMENTS if any(row[label] for row in judged)],
        "users": [{"username": row["username"], "email": "", "lti_email": ""}
                  for row in sorted(students, key=lambda row: row["username"])],
    }  # fmt: skip


async def first_day(view: queries.View, org: str, zone: ZoneInfo | None) -> date | None:
    """The zone's day of the org's earliest human message (the first-seen family's earliest entry), None
    before any."""
    ms = await first_seen.earliest_ms(view, org)
    return None if ms is None else datetime.fromtimestamp(ms / 1000, zone or UTC).date()


def oldest_kept(state: AppState, zone: ZoneInfo | None, *, hourly: bool) -> date | None:
    """The first day `check_retention` lets a range start on, None when days are kept forever."""
    days = state.retention.hourly_days if hourly or zone is not None else state.retention.daily_days
    if not days:
        return None
    oldest = local_today(None) - timedelta(days=days - 1)
    return oldest if zone is None else oldest + timedelta(days=1)


def periods_of(start: date, end: date, monthly: bool) -> list[tuple[date, date]]:
    """The ISO weeks (Monday to Sunday) or calendar months from the one holding start to the one holding
    end, oldest first."""
    out = []
    first = start.replace(day=1) if monthly else start - timedelta(days=start.weekday())
    while first <= end:
        after = (first.replace(day=28) + timedelta(days=4)).replace(day=1) if monthly else first + timedelta(days=7)
        out.append((first, after - timedelta(days=1)))
        first = after
    return out


@router.get("/conversation-summary/", openapi_extra=answered_by(sessions.Sessions, first_seen.FirstSeen))
async def conversation_summary(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    mentor_id: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
    group_by: NO_EFFECT = None,
) -> dict[str, Any]:
    """All time: the conversations (sessions, at their earliest message, with its mentor) and their human and
    AI messages, of every UTC day kept since the org's first message."""
    mentor = params.text("mentor_id", mentor_id)
    names = [sessions.SESSIONS, sessions.MESSAGES, sessions.HUMAN]
    if mentor is not None:
        mentor = await queries.resolve(view, org, "mentor", mentor)
        names = [sessions.mentor_field(name, mentor) for name in names]
    since = await first_day(view, org, None)
    if since is None:
        return {"total_conversations": 0, "total_human_messages": 0, "total_ai_messages": 0}
    today = local_today(None)
    oldest = state.retention.oldest_daily(today)
    rows = await queries.periods(view, org, max(since, oldest or since), today, False, None, names)
    started, messages, human = (sum(column) for column in zip(*(sums for _, sums in rows), strict=True))
    return {"total_conversations": started, "total_human_messages": human, "total_ai_messages": messages - human}


@router.get("/sentiment-count/", openapi_extra=answered_by(sentiment.Sentiment))
async def sentiment_count(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    period: Annotated[
        str | None,
        Query(
            description="today, yesterday, 7d (default), 30d or 90d.", json_schema_extra={"enum": list(params.PERIODS)}
        ),
    ] = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """Sentiment judgements per day of the time zone (zeros included), with a breakdown by sentiment."""
    zone = await zone_of(state, org, tz)
    start, end = params.period_days(period, local_today(zone))
    check_retention(state, start, zone, hourly=False)
    return await sentiment.sentiment_counts(view, org, start, end, zone)


@router.get("/tenant-cost/", openapi_extra=answered_by(llm_cost.LlmCost))
async def tenant_cost(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    start_date: Annotated[str, Query(description="Start: YYYY-MM-DD or an RFC 3339 datetime.", **DATE_TIME)],
    end_date: Annotated[str, Query(description="End (a date includes that whole day).", **DATE_TIME)],
    tz: TZ = None,
) -> dict[str, Any]:
    """Exact LLM cost of the org over the range (USD), with tokens and observation counts. A date is a
    whole day of the time zone."""
    zone = await zone_of(state, org, tz)
    start, end = params.datetime_range(start_date, end_date, zone)
    check_retention(state, start.date(), zone, hourly=False)
    return await llm_cost.tenant_cost(view, org, start, end)


@router.get("/top-students-by-chat-messages/", openapi_extra=answered_by(top.TopStudents))
async def top_students(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    mentor_id: Annotated[str | None, Query(description="Only messages to this mentor.")] = None,
    start_date: Annotated[str | None, Query(description="First day, YYYY-MM-DD (default: all time).", **DATE)] = None,
    end_date: UNTIL_TODAY = None,
    group_by: NO_EFFECT = None,
    tz: TZ = None,
) -> list[dict[str, Any]]:
    """The 20 students with the most messages over the range (days of the time zone), ties by username."""
    mentor = params.text("mentor_id", mentor_id)
    zone = await zone_of(state, org, tz)
    if not start_date and not end_date:
        return await top.top_students(view, org, None, None, mentor)
    start, end = params.date_range(start_date, end_date, required=False, today=local_today(zone))
    check_retention(state, start, zone, hourly=False)
    return await top.top_students(view, org, start, end, mentor, zone=zone)


@router.get("/freshness/")
async def freshness(org: ORG, user_id: USER, key: Caller, state: State, view: Served) -> dict[str, Any]:
    """Time of the newest event applied for the org, events applied per topic, and the org's time zone
    and what day it is there."""
    return await queries.freshness(view, org)


async def zone_of(state: AppState, org: str, tz: str | None) -> ZoneInfo | None:
    """The zone asked for, else the org's default; None for UTC."""
    name = params.text("tz", tz) or await queries.org_time_zone(state.redis, org)
    return None if name is None else time_zone(name)


def check_retention(state: AppState, start: Any, zone: ZoneInfo | None, *, hourly: bool) -> None:
    """A zone's days are read from hourly buckets at least at their edges (from the UTC day before the
    first local day): they must still be kept."""
    if zone is None:
        state.retention.check(start, local_today(None), hourly=hourly)
    else:
        state.retention.check(start - timedelta(days=1), local_today(None), hourly=True)
