"""The platform's finance operations under `/api/analytics/financial/`: the org's LLM cost over a range with
the change against the window before and a daily, weekly or monthly series; cost tables by model, student
or mentor; and an invoice (cost, sessions, students, cost per mentor).

Read from the LLM cost family (tables/aggregates/llm_cost.py), as the cost endpoints are, so the two agree.
Money is the platform's decimal strings, made from the exact nano-dollar sums (`llm_cost.usd_text`): at most
5 places in the finance and details answers, 3 in the invoice. The org, range and mentor are the family's
`Ask` (api/platform_analytics.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query

from api import params
from api.analytics import check_retention
from api.cache import answered_by
from api.platform_analytics import DEFAULT_FILTER, Ask, Asked
from tables import ids, queries
from tables.aggregates import first_seen, llm_cost
from tables.buckets import days_between, local_midnight_hour
from tables.exceptions import QueryError

router = APIRouter(prefix="/api/analytics", tags=["analytics by platform_key"])

FINANCE_METRICS = ("total_costs", "weekly_costs", "monthly_costs")
FINANCE_GRANULARITIES = ("day", "week", "month")
FILL_METHODS = ("zero", "previous")
GROUPS = ("llm_model", "username", "mentor")
NOT_KEPT_GROUPS = {
    "provider": "an observation's provider is optional and the cost family does not keep it",
    "platform": "the cost family keeps cost per model, student and mentor, not per platform",
    "action": "actions (trace names) are in no event",
}
DETAIL_METRICS = {
    "total_cost": ("$", "Cost for this entity in period"),
    "sessions": ("sessions", "Sessions whose LLM calls in the period cost something"),
}
FINANCE_PLACES, INVOICE_PLACES = 5, 3
DETAILS_LIMIT, DETAILS_MAX = 50, 100
INVOICE_DAYS = 30

PROVIDER = Annotated[
    str | None,
    Query(
        description="An observation's provider is optional and not kept by the cost family: a 400.",
        max_length=256,
        include_in_schema=False,  # the document lists what is answered; the refusal is in docs/platform.md
    ),
]
LLM_MODEL = Annotated[str | None, Query(description="Only this model's cost (as the observations name it).")]
USERNAME = Annotated[str | None, Query(description="Only the cost of this student's sessions.")]


# --- /financial/ -----------------------------------------------------------------------------------------


@router.get("/financial/", openapi_extra=answered_by(llm_cost.LlmCost, first_seen.FirstSeen))
async def financial(
    a: Asked,
    metric: Annotated[
        str,
        Query(
            description="total_costs: the date filter's days; weekly_costs: the ISO week (from Monday) holding "
            "its last day, up to that day; monthly_costs: the month holding it, up to that day.",
            json_schema_extra={"enum": list(FINANCE_METRICS)},
        ),
    ],
    comparison_days: Annotated[
        str | None,
        Query(
            description="Compare the last this many days of the period with as many just before (default: "
            "the whole period with the window of its length just before); 1 to 3660."
        ),
    ] = None,
    fill_method: Annotated[
        str | None,
        Query(
            description="zero (default): a period that cost nothing is 0; previous: it takes the value of the "
            "period before it.",
            json_schema_extra={"enum": list(FILL_METHODS)},
        ),
    ] = None,
    show_overtime: Annotated[str | None, Query(description="true (default) or false: the series or [].")] = None,
    llm_model: LLM_MODEL = None,
    provider: PROVIDER = None,
    username: USERNAME = None,
) -> dict[str, Any]:
    """The LLM cost of the period (`value`), the percentage change of its recent days against as many just
    before (null when those cost nothing), and its cost per day, ISO week or month of the org's zone."""
    chosen = params.choice("metric", metric, FINANCE_METRICS, None) or "total_costs"
    granularity = params.choice("granularity", a.granularity, FINANCE_GRANULARITIES, "day")
    fill = params.choice("fill_method", fill_method, FILL_METHODS, "zero")
    overtime_on = params.flag("show_overtime", show_overtime, default=True)
    start, end, zone = await a.span(hourly=False)
    filtered = await cost_filter(a, llm_model, provider, username)
    first = {"total_costs": start, "weekly_costs": end - timedelta(days=end.weekday()),
             "monthly_costs": end.replace(day=1)}[chosen]  # fmt: skip
    days = (end - first).days + 1
    n = params.positive_int("comparison_days", comparison_days, days, params.MAX_SPAN_DAYS)
    recent_first, before_first, before_last = (
        end - timedelta(days=n - 1),
        end - timedelta(days=2 * n - 1),
        end - timedelta(days=n),
    )
    oldest = min(first, before_first)
    try:
        check_retention(a.state, oldest, zone, hourly=False)
    except QueryError as exc:
        name = "date_filter" if comparison_days is None else "comparison_days"
        raise params.bad(name, f"the comparison reads the days from {oldest}: {exc.message}") from None
    by_day = await daily_costs(a, oldest, end, zone, filtered.field)
    value = sum(nanos for d, nanos in by_day.items() if d >= first)
    recent = sum(nanos for d, nanos in by_day.items() if d >= recent_first)
    before = sum(nanos for d, nanos in by_day.items() if before_first <= d <= before_last)
    overtime = []
    if overtime_on:
        last_value = 0
        for label, nanos in series({d: v for d, v in by_day.items() if d >= first}, granularity or "day"):
            last_value = last_value if fill == "previous" and nanos == 0 else nanos
            overtime.append({"date": label, "value": llm_cost.usd_text(last_value, FINANCE_PLACES)})
    range_type = chosen_filter(a)
    return {
        "metric": chosen,
        "filters": {
            "start_date": first.isoformat(), "end_date": end.isoformat(), "granularity": granularity,
            "comparison_days": n, "platform_key": a.org, "mentor_unique_id": filtered.mentor_raw,
            "username": filtered.username, "provider": None, "llm_model": filtered.model,
            "all_time": range_type == "all_time",
        },
        "value": llm_cost.usd_text(value, FINANCE_PLACES),
        "percentage_change": percentage_change(recent, before),
        "overtime": overtime,
        "period_info": {"start_date": first.isoformat(), "end_date": end.isoformat(), "period_days": days,
                        "range_type": range_type},
        "comparison_info": {
            "previous_period_count": n, "previous_period_value": llm_cost.usd_text(before, FINANCE_PLACES),
            "comparison_start": before_first.isoformat(), "comparison_end": before_last.isoformat(),
            "comparison_days": n, "recent_period_value": llm_cost.usd_text(recent, FINANCE_PLACES),
        },
    }  # fmt: skip


def percentage_change(now: int, then: int) -> float | None:
    """The change from `then` to `now` in percent, rounded half to even to 2 places (exactly, from the
    nano-dollar sums); None when `then` cost nothing (no percentage of nothing)."""
    return None if then == 0 else float(queries.decimal_text((now - then) * 100, then, 2))


def series(by_day: dict[date, int], granularity: str) -> list[tuple[str, int]]:
    """Costs by day summed into days, ISO weeks or months, in order, each labelled by its first day
    (YYYY-MM-DD; a week's Monday, a month's 1st, even before the range's first day)."""
    out: dict[str, int] = {}
    for d, nanos in sorted(by_day.items()):
        if granularity == "week":
            d -= timedelta(days=d.weekday())
        elif granularity == "month":
            d = d.replace(day=1)
        out[d.isoformat()] = out.get(d.isoformat(), 0) + nanos
    return list(out.items())


# --- /financial/details/ ---------------------------------------------------------------------------------


@router.get("/financial/details/", openapi_extra=answered_by(llm_cost.LlmCost, first_seen.FirstSeen))
async def financial_details(
    a: Asked,
    group_by: Annotated[
        str,
        Query(
            description="llm_model, username or mentor; provider, platform and action are not kept (400).",
            json_schema_extra={"enum": list(GROUPS)},
        ),
    ],
    metrics: Annotated[
        str | None,
        Query(
            description="Comma-separated: total_cost (default), sessions (username and mentor only).",
            json_schema_extra={"pattern": f"^({'|'.join(DETAIL_METRICS)})(,({'|'.join(DETAIL_METRICS)}))*$"},
        ),
    ] = None,
    page: Annotated[str | None, Query(description="The page, from 1.")] = None,
    limit: Annotated[str | None, Query(description="Rows per page, 1 to 100 (default 50).")] = None,
    search: Annotated[
        str | None, Query(description="Only rows whose model, student or mentor holds this, in any case.")
    ] = None,
    llm_model: LLM_MODEL = None,
    provider: PROVIDER = None,
    username: USERNAME = None,
) -> dict[str, Any]:
    """LLM cost over the range per model, student or mentor (those that cost something), costliest first,
    ties by name, paged; `total_cost` is the sum of every row matched (all pages). `granularity` has no
    effect."""
    if group_by in NOT_KEPT_GROUPS:
        raise params.bad("group_by", f"group_by {group_by}: {NOT_KEPT_GROUPS[group_by]}")
    group = params.choice("group_by", group_by, GROUPS, None) or "llm_model"
    wanted = detail_metrics(metrics, group)
    per_page = params.positive_int("limit", limit, DETAILS_LIMIT, DETAILS_MAX)
    start, end, zone = await a.span(hourly=False)
    filtered = await cost_filter(a, llm_model, provider, username, group=group)
    span = utc_span(start, end, zone)
    kind = {"llm_model": "model", "username": "u", "mentor": "m"}[group]
    costs = {
        k: n for k, n in (await llm_cost.cost_fields(a.view, a.org, *span, llm_cost.cost_field(kind, ""))).items() if n
    }
    only = filtered.model if group == "llm_model" else filtered.username if group == "username" else filtered.mentor
    if only is not None:
        costs = {k: n for k, n in costs.items() if k == only}
    sessions: dict[str, int] = {}
    if "sessions" in wanted:
        for s in await llm_cost.attributed_sessions(a.view, a.org, *span):
            who = s.student if group == "username" else s.mentor
            sessions[who] = sessions.get(who, 0) + 1
    rows: list[tuple[dict[str, Any], int]] = []
    for name, nanos in sorted(costs.items(), key=lambda kn: (-kn[1], kn[0])):
        row: dict[str, Any] = {group: name}
        if group == "mentor":
            row = {"mentor": ids.served(a.org, ids.MENTOR, name), "mentor_name": name}
        if (needle := params.text("search", search)) and not any(
            needle.casefold() in str(v).casefold() for v in row.values()
        ):
            continue
        if "total_cost" in wanted:
            row["total_cost"] = llm_cost.usd_text(nanos, FINANCE_PLACES)
        if "sessions" in wanted:
            row["sessions"] = sessions.get(name, 0)
        rows.append((row, nanos))
    pages = max(1, -(-len(rows) // per_page))
    n = params.page_number(page, pages)
    return {
        "page": n, "limit": per_page, "total_pages": pages, "total_records": len(rows),
        "rows": [row for row, _ in rows[(n - 1) * per_page : n * per_page]],
        "metrics": [{"name": m, "unit": DETAIL_METRICS[m][0], "description": DETAIL_METRICS[m][1]} for m in wanted],
        "total_cost": llm_cost.usd_text(sum(nanos for _, nanos in rows), FINANCE_PLACES),
    }  # fmt: skip


def detail_metrics(value: str | None, group: str) -> list[str]:
    """The metrics asked for, in order, once each; one not kept for the group is a 400 naming `metrics`."""
    out: list[str] = []
    for name in (params.text("metrics", value) or "total_cost").split(","):
        name = name.strip()
        if name not in DETAIL_METRICS:
            raise params.bad("metrics", f"metrics: {name[:40]!r} is not one of {', '.join(DETAIL_METRICS)}")
        if name == "sessions" and group == "llm_model":
            raise params.bad("metrics", "metrics sessions: a session's cost is not kept per model")
        if name not in out:
            out.append(name)
    return out


# --- /financial/invoice/ ---------------------------------------------------------------------------------


@router.get("/financial/invoice/", openapi_extra=answered_by(llm_cost.LlmCost, first_seen.FirstSeen))
async def financial_invoice(
    a: Asked,
    include_breakdown: Annotated[str | None, Query(description="true (default) or false: the cost per mentor.")] = None,
    username: Annotated[
        str | None, Query(description="The invoice of this student's sessions (default: the platform's).")
    ] = None,
) -> dict[str, Any]:
    """The billing period's LLM cost (the org's, or one student's or one mentor's sessions'), the sessions
    that cost something and their students, cost per session; broken down by mentor. The period defaults to the
    last 30 days up to today (the org's); an end alone to the 30 days up to it."""
    breakdown = params.flag("include_breakdown", include_breakdown, default=True)
    student = params.text("username", username)
    mentor = await a.mentor()
    if mentor is not None and student is not None:
        raise params.bad("username", "username: an invoice is the org's, one student's or one mentor's, not a pair's")
    if a.date_filter is None and a.start_date is None:
        if a.end_date:
            last = params.parse_date("end_date", a.end_date, required=True)
            assert last is not None
            a.start_date = (last - timedelta(days=INVOICE_DAYS - 1)).isoformat()
        else:
            a.date_filter = "30d"
    start, end, zone = await a.span(hourly=False)
    span = utc_span(start, end, zone)
    fld = llm_cost.COST
    if student is not None or mentor is not None:
        fld = llm_cost.cost_field("u", student) if student is not None else llm_cost.cost_field("m", mentor or "")
    total = await llm_cost.cost_of(a.view, a.org, *span, fld)
    sessions = [
        s
        for s in await llm_cost.attributed_sessions(a.view, a.org, *span)
        if student in (None, s.student) and mentor in (None, s.mentor)
    ]
    students = {s.student for s in sessions if s.student}
    out: dict[str, Any] = {
        "entity": {
            "type": "platform" if student is None else "user", "username": student, "platform_key": a.org,
            "display_name": a.org if student is None and mentor is None else f"{student or mentor} on {a.org}",
        },
        "billing_period": {"start_date": start.isoformat(), "end_date": end.isoformat(),
                           "days": (end - start).days + 1},
        "summary": {
            "total_cost": llm_cost.usd_text(total, INVOICE_PLACES), "total_sessions": len(sessions),
            "active_users": len(students),
            "cost_per_session": queries.decimal_text(total, len(sessions) * 1_000_000_000, INVOICE_PLACES)
            if sessions else llm_cost.usd_text(0, INVOICE_PLACES),
        },
    }  # fmt: skip
    if breakdown:
        by_mentor: dict[str, list[int]] = {}
        for s in sessions:
            acc = by_mentor.setdefault(s.mentor, [0, 0])
            acc[0], acc[1] = acc[0] + s.nanos, acc[1] + 1
        out["breakdown"] = {
            "by_mentor": [
                {"mentor": ids.served(a.org, ids.MENTOR, m), "mentor_name": m,
                 "cost": llm_cost.usd_text(nanos, INVOICE_PLACES), "sessions": count}
                for m, (nanos, count) in sorted(by_mentor.items(), key=lambda mc: (-mc[1][0], mc[0]))
            ]
        }  # fmt: skip
    return out


# --- helpers ---------------------------------------------------------------------------------------------


@dataclass
class CostFilter:
    """The one cost field a finance answer reads (the org's, a model's, a student's or a mentor's), and the
    filters as given."""

    field: str
    model: str | None = None
    username: str | None = None
    mentor: str | None = None
    mentor_raw: str | None = None


async def cost_filter(
    a: Ask, llm_model: str | None, provider: str | None, username: str | None, *, group: str | None = None
) -> CostFilter:
    """The cost field the filters name. Cost is kept per model, per student and per mentor, not per pair:
    two of them (or one beside another `group_by`) is a 400 naming the second; `provider` is not kept."""
    if params.text("provider", provider) is not None:
        raise params.bad(
            "provider", "provider: an observation's provider is optional and the cost family does not keep it"
        )
    given = [(name, value) for name, value in (("mentor_unique_id", params.text("mentor_unique_id", a.mentor_raw)),
             ("username", params.text("username", username)), ("llm_model", params.text("llm_model", llm_model)))
             if value is not None]  # fmt: skip
    own = {"mentor": "mentor_unique_id", "username": "username", "llm_model": "llm_model"}.get(group or "")
    others = [name for name, _ in given if name != own]
    if len(given) > 1 or (own is not None and others):
        name = others[-1] if own is not None and others else given[-1][0]
        raise params.bad(name, f"{name}: cost is kept per model, per student and per mentor, not per pair; "
                               "filter by one (the grouping counts as one)")  # fmt: skip
    out = CostFilter(llm_cost.COST, mentor_raw=params.text("mentor_unique_id", a.mentor_raw))
    for name, value in given:
        if name == "mentor_unique_id":
            out.mentor = await a.mentor()
            out.field = llm_cost.cost_field("m", out.mentor or "")
        elif name == "username":
            out.username, out.field = value, llm_cost.cost_field("u", value)
        else:
            out.model, out.field = value, llm_cost.cost_field("model", value)
    return out


def chosen_filter(a: Ask) -> str:
    """The date filter a span was read with (after `Ask.span` checked it)."""
    return a.date_filter or ("custom" if a.start_date or a.end_date else DEFAULT_FILTER)


def utc_span(first: date, last: date, zone: ZoneInfo | None) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the zone's days first to last; cost is kept by the hour, so a zone whose days
    start on a half hour is a 400 naming `tz`."""
    if zone is None:
        return (datetime(first.year, first.month, first.day, tzinfo=UTC),
                datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1))  # fmt: skip
    after = last + timedelta(days=1)
    return (datetime.fromtimestamp(local_midnight_hour(first, zone) * 3600, UTC),
            datetime.fromtimestamp(local_midnight_hour(after, zone) * 3600, UTC))  # fmt: skip


async def daily_costs(a: Ask, first: date, last: date, zone: ZoneInfo | None, fld: str) -> dict[date, int]:
    """Nano-dollars of one cost field per day of the zone, first to last (zeros included)."""
    if zone is not None:
        for d in days_between(first, last + timedelta(days=1)):
            local_midnight_hour(d, zone)  # every day's edge on an hour, else a 400 naming tz
    rows = await queries.periods(a.view, a.org, first, last, False, zone, [fld])
    return {date.fromisoformat(label): nanos for label, (nanos,) in rows}
