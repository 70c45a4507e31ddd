"""The platform's LLM cost family: per user, per mentor, by model, per mentor with its sessions, the user's
latest trace, and per tenant across orgs. Sums are exact (nano-dollars) and answered in USD.

An observation counts for its org and model; through its `session_id` it also counts for the student and
mentor of that session's earliest message (docs/semantics.md, "Cost attribution").
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi import Path as PathParam

from api import params
from api.analytics import TZ, check_retention, zone_of
from api.auth import ORG, USER, AllOrgsAdmin, Caller
from api.state import Served, State
from streams.schemas import format_timestamp
from tables import ids, queries
from tables.aggregates import llm_cost
from tables.aggregates import top_students as top
from tables.buckets import time_zone

router = APIRouter(tags=["cost"])
all_orgs_router = APIRouter(tags=["cost"])

START = Annotated[str, Query(description="Start: YYYY-MM-DD or a datetime (naive means UTC).", **params.DATE_TIME)]
END = Annotated[str, Query(description="End (a date includes that whole day).", **params.DATE_TIME)]


async def cost_range(
    org: ORG, state: State, start_date: START, end_date: END, tz: TZ = None
) -> tuple[datetime, datetime]:
    """The range asked for; a date is a whole day of the time zone (`tz`, else the org's)."""
    zone = await zone_of(state, org, tz)
    start, end = params.datetime_range(start_date, end_date, zone)
    if zone is not None:
        check_retention(state, start.date(), zone, hourly=False)
    return start, end


def all_orgs_range(start_date: START, end_date: END, tz: TZ = None) -> tuple[datetime, datetime]:
    return params.datetime_range(start_date, end_date, None if tz is None else time_zone(tz))


Range = Annotated[tuple[datetime, datetime], Depends(cost_range)]
AllOrgsRange = Annotated[tuple[datetime, datetime], Depends(all_orgs_range)]


@router.get("/user-cost/")
async def user_cost(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    span: Range,
    username: Annotated[str, Query(description="The student.", min_length=1, max_length=1024)],
) -> dict[str, Any]:
    """LLM cost of one student's sessions over the range (USD)."""
    student = username
    nanos = await llm_cost.cost_of(view, org, *span, llm_cost.cost_field("u", student))
    return {"total_cost": llm_cost.usd(nanos), "cost_nanos": nanos}


@router.get("/mentors/{mentor_unique_id}/cost/")
async def mentor_cost(
    org: ORG,
    user_id: USER,
    key: Caller,
    state: State,
    view: Served,
    span: Range,
    mentor_unique_id: Annotated[str, PathParam(description="The mentor's unique id (UUID).", max_length=256)],
) -> dict[str, Any]:
    """LLM cost of one mentor's sessions over the range (USD)."""
    mentor = await queries.resolve(view, org, ids.MENTOR, mentor_unique_id)
    nanos = await llm_cost.cost_of(view, org, *span, llm_cost.cost_field("m", mentor))
    return {"total_cost": llm_cost.usd(nanos), "cost_nanos": nanos}


@router.get("/costs/model/")
async def model_cost(org: ORG, user_id: USER, key: Caller, state: State, view: Served, span: Range) -> dict[str, Any]:
    """The model that cost the most over the range, and its cost (one object, as the platform answers);
    `models` lists every model's cost."""
    by_model = await llm_cost.cost_fields(view, org, *span, llm_cost.cost_field("model", ""))
    ranked = sorted(((n, m) for m, n in by_model.items() if n), key=lambda nm: (-nm[0], nm[1]))
    top_nanos, top_model = ranked[0] if ranked else (0, "")
    return {
        "model": top_model,
        "total_cost": llm_cost.usd(top_nanos),
        "models": [{"model": m, "total_cost": llm_cost.usd(n)} for n, m in ranked],
    }


@router.get("/costs/permentor/")
async def per_mentor_cost(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, span: Range
) -> dict[str, Any]:
    """Each mentor's cost over the range with the sessions behind it (sessions by the UTC days the range
    touches), and the tenant's total."""
    by_mentor = await llm_cost.cost_fields(view, org, *span, llm_cost.cost_field("m", ""))
    sessions = await llm_cost.session_costs(view, org, *span)
    total = await llm_cost.cost_of(view, org, *span, llm_cost.COST)
    mentor_data = []
    for mentor, nanos in sorted(by_mentor.items(), key=lambda mn: (-mn[1], mn[0])):
        if not nanos:
            continue
        mentor_sessions = sorted(
            ((n, s) for (m, s), n in sessions.items() if m == mentor), key=lambda ns: (-ns[0], ns[1])
        )
        mentor_data.append(
            {
                "mentor_unique_id": ids.served(org, ids.MENTOR, mentor),
                "mentor_name": mentor,
                "total_cost": llm_cost.usd(nanos),
                "mentor_sessions": [{"session_id": s, "cost": llm_cost.usd(n)} for n, s in mentor_sessions],
            }
        )
    return {"tenant": org, "tenant_total_cost": llm_cost.usd(total), "mentor_data": mentor_data}


@router.get("/costs/peruser/")
async def per_user_cost(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, span: Range
) -> dict[str, Any]:
    """The path's user and their latest LLM trace in the range (`id` is the trace; empty when none), with
    their cost over the range."""
    latest = await llm_cost.latest_trace(view, org, user_id, *span)
    nanos = await llm_cost.cost_of(view, org, *span, llm_cost.cost_field("u", user_id))
    trace_id, ts_ms = latest if latest is not None else ("", int(span[0].timestamp() * 1000))
    return {
        "id": trace_id,
        "name": user_id,
        "date": format_timestamp(ts_ms),
        "total_cost": llm_cost.usd(nanos),
    }


@router.get("/costs/users/")
async def top_users_by_cost(
    org: ORG, user_id: USER, key: Caller, state: State, view: Served, span: Range
) -> list[dict[str, Any]]:
    """The 20 students whose sessions cost the most over the range (not in the platform's API: what the
    dashboard shows)."""
    by_user = await llm_cost.cost_fields(view, org, *span, llm_cost.cost_field("u", ""))
    ranked = sorted(((n, u) for u, n in by_user.items() if n), key=lambda nu: (-nu[0], nu[1]))[: top.TOP_N]
    return [{"username": u, "total_cost": llm_cost.usd(n), "cost_nanos": n} for n, u in ranked]


@all_orgs_router.get("/api/ai-analytics/costs/pertenant/")
async def per_tenant_cost(key: AllOrgsAdmin, state: State, view: Served, span: AllOrgsRange) -> list[dict[str, Any]]:
    """Every org's cost over the range, with its cost by model (an all-orgs platform_admin key)."""
    out = []
    for org in await queries.list_orgs(state.redis):
        total = await llm_cost.cost_of(view, org, *span, llm_cost.COST)
        by_model = await llm_cost.cost_fields(view, org, *span, llm_cost.cost_field("model", ""))
        if not total and not any(by_model.values()):
            continue
        models = sorted(((n, m) for m, n in by_model.items() if n), key=lambda nm: (-nm[0], nm[1]))
        out.append(
            {
                "platform_key": org,
                "total_cost": llm_cost.usd(total),
                "model_costs": [{"model": m, "total_cost": llm_cost.usd(n)} for n, m in models],
            }
        )
    return out
