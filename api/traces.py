"""Each LLM observation and each trace of an org, as the platform's observations and traces endpoints
list them (Langfuse's shapes), with Django REST framework's limit/offset paging, ordering and search.

They list what the observation retention keeps (AIA_OBSERVATION_RETENTION_DAYS, 7 days of event time by
default): tables/traces.py. The path's user is the caller's, as on the platform: every answer is the org's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request

from api import params
from api.auth import ORG, USER, Caller
from api.cache import answered_by
from api.errors import ApiError
from api.state import Served
from tables import queries, traces
from tables.aggregates import llm_cost, sessions

router = APIRouter(tags=["observations and traces"])

DEFAULT_LIMIT, MAX_LIMIT = 20, 100
T = TypeVar("T")

LIMIT = Annotated[str | None, Query(description=f"Results per page, 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}).")]
OFFSET = Annotated[str | None, Query(description="The index of the first result, from 0.")]


# The `ordering` of each listing: newest first by default.
BY_START_TIME = Annotated[
    str | None,
    Query(alias="ordering", description="-start_time (default) or start_time.",
          json_schema_extra={"enum": ["-start_time", "start_time"]}),
]  # fmt: skip
BY_TIMESTAMP = Annotated[
    str | None,
    Query(alias="ordering", description="-timestamp (default) or timestamp: a trace's first observation's time.",
          json_schema_extra={"enum": ["-timestamp", "timestamp"]}),
]  # fmt: skip


def ordering(value: str | None, name: str) -> bool:
    """Newest first (`-<name>`, the default) or oldest first (`<name>`); anything else is a 400."""
    if value is None or value == "" or value == f"-{name}":
        return True
    if value == name:
        return False
    raise params.bad("ordering", f"ordering must be {name} or -{name}, got {value[:40]!r}")


async def listed(
    request: Request,
    view: Served,
    org: str,
    limit: str | None,
    offset: str | None,
    search: str | None,
    count: Callable[[queries.View, str], Awaitable[int]],
    page: Callable[[int, int], Awaitable[list[T]]],
    everything: Callable[[], Awaitable[list[T]]],
    matches: Callable[[T, str], bool],
    served: Callable[[T], dict[str, Any]],
) -> dict[str, Any]:
    """The DRF limit/offset envelope over a listing: `count`, `next`, `previous`, `results`. A search reads
    every listed row (at most `traces.SEARCH_MAX`, else a 400 naming `search`)."""
    size = params.positive_int("limit", limit, DEFAULT_LIMIT, MAX_LIMIT)
    start = params.whole_number("offset", offset) or 0
    needle = params.text("search", search)
    if needle is None:
        total = await count(view, org)
        rows = await page(start, size) if start < total else []
    else:
        if (total := await count(view, org)) > traces.SEARCH_MAX:
            raise params.bad(
                "search", f"search reads every listed row; this org lists {total:,}, more than {traces.SEARCH_MAX:,}"
            )
        found = [row for row in await everything() if matches(row, needle.casefold())]
        total, rows = len(found), found[start : start + size]
    url = request.url.include_query_params(limit=size)
    return {
        "count": total,
        "next": str(url.include_query_params(offset=start + size)) if start + size < total else None,
        "previous": (None if start == 0 else str(url.include_query_params(offset=max(0, start - size)))),
        "results": [served(row) for row in rows],
    }


@router.get("/observations/", openapi_extra=answered_by(llm_cost.LlmCost))
async def observation_list(
    request: Request,
    org: ORG,
    user_id: USER,
    key: Caller,
    view: Served,
    limit: LIMIT = None,
    offset: OFFSET = None,
    ordering_: BY_START_TIME = None,
    search: Annotated[
        str | None, Query(description="Only observations whose id, trace, type or model holds this, in any case.")
    ] = None,
) -> dict[str, Any]:
    """The org's LLM observations within the observation retention, each as applied (the newest version of
    an observation re-sent with the same id), ties by id."""
    newest = ordering(ordering_, "start_time")
    return await listed(
        request, view, org, limit, offset, search, traces.count_observations,
        lambda start, size: traces.observation_page(view, org, start, size, newest_first=newest),
        lambda: traces.all_observations(view, org, newest_first=newest),
        traces.observation_matches, traces.served_observation,
    )  # fmt: skip


@router.get("/observations/{observation_id:path}/", openapi_extra=answered_by(llm_cost.LlmCost))
async def observation_item(org: ORG, user_id: USER, key: Caller, view: Served, observation_id: str) -> dict[str, Any]:
    """One observation by its event id (a 404 when it is not listed)."""
    found = await traces.observation(view, org, observation_id)
    if found is None:
        raise ApiError(404, "No Observation matches the given query.", param="observation_id")
    return traces.served_observation(found)


@router.get("/traces/", openapi_extra=answered_by(llm_cost.LlmCost, sessions.Sessions))
async def trace_list(
    request: Request,
    org: ORG,
    user_id: USER,
    key: Caller,
    view: Served,
    limit: LIMIT = None,
    offset: OFFSET = None,
    ordering_: BY_TIMESTAMP = None,
    search: Annotated[
        str | None, Query(description="Only traces whose id, session or student holds this, in any case.")
    ] = None,
) -> dict[str, Any]:
    """The org's traces within the observation retention: each with its first observation's time, the
    session its observations name and that session's student, ties by id."""
    newest = ordering(ordering_, "timestamp")
    return await listed(
        request, view, org, limit, offset, search, traces.count_traces,
        lambda start, size: traces.trace_page(view, org, start, size, newest_first=newest),
        lambda: traces.all_traces(view, org, newest_first=newest),
        traces.trace_matches, lambda t: traces.served_trace(org, t),
    )  # fmt: skip


@router.get("/traces/{trace_id:path}/", openapi_extra=answered_by(llm_cost.LlmCost, sessions.Sessions))
async def trace_item(org: ORG, user_id: USER, key: Caller, view: Served, trace_id: str) -> dict[str, Any]:
    """One trace by its id (a 404 when it is not listed)."""
    found = await traces.trace(view, org, trace_id)
    if found is None:
        raise ApiError(404, "No Trace matches the given query.", param="trace_id")
    return traces.served_trace(org, found)
