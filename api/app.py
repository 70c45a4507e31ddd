"""The ASGI application: the platform's analytics endpoints, chat history, operations and the dashboard.

`create_app` only assembles: connections on `app.state.aia` (api/state.py), error handlers, the routers
(api/analytics.py, api/history.py, api/ops.py) and the static dashboard.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import (
    analytics,
    costs,
    erasure,
    history,
    ops,
    platform_analytics,
    platform_financial,
    platform_messages,
    platform_users,
    traces,
    transcripts,
)
from api.cache import AnswerCache
from api.errors import ApiError
from api.metrics import Metrics
from api.params import single_values
from api.state import AppState
from infra.runtime import collect_loop
from streams.settings import Settings, get_settings
from tables.exceptions import QueryError

PREFIX = "/api/ai-analytics/orgs/{org}/users/{user_id}"
DASHBOARD_DIR = Path(__file__).with_name("dashboard")
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter is unusable; `parameter` names it."},
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "The key's org or role does not allow this."},
    404: {"description": "The org does not exist."},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.aia = AppState.connect(settings, metrics)
        stop = asyncio.Event()
        collector = asyncio.create_task(collect_loop(stop))  # a collection pauses every request in flight
        try:
            yield
        finally:
            stop.set()
            await collector
            await app.state.aia.close()

    app = FastAPI(
        title="ai-analytics",
        version="0.1.0",
        description="Real-time analytics of the AI-tutoring platform, under the platform's analytics API paths. "
        "Authenticate with `Authorization: Api-Token <key>` (or `Token <key>`; the scheme in any case).",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        dependencies=[Depends(single_values)],  # a query parameter given twice: 400 naming it
    )
    _error_handlers(app, metrics)
    app.add_middleware(AnswerCache)  # inside GenerationMiddleware: keys of the generation served
    app.add_middleware(ops.GenerationMiddleware)
    app.add_middleware(ops.ObserveMiddleware, metrics=metrics)
    app.include_router(analytics.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(history.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(costs.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(traces.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(transcripts.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(transcripts.analytics_router, responses=ERRORS)
    app.include_router(costs.all_orgs_router, responses=ERRORS)
    app.include_router(platform_analytics.router, responses=ERRORS)
    app.include_router(platform_financial.router, responses=ERRORS)
    app.include_router(platform_messages.router, responses=ERRORS)
    app.include_router(platform_users.router, responses=ERRORS)
    app.include_router(erasure.router, prefix=PREFIX, responses=ERRORS)
    app.include_router(ops.router)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    return app


def _error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> ORJSONResponse:
        headers = {"WWW-Authenticate": "Api-Token"} if exc.status == 401 else None
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(QueryError)
    async def query_error(_: Request, exc: QueryError) -> ORJSONResponse:
        return ORJSONResponse(ApiError(400, exc.message, param=exc.param).body(), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        param = ".".join(loc) or "request"
        message = f"{param} is required" if err.get("type") == "missing" else f"{param}: {err.get('msg', 'invalid')}"
        return ORJSONResponse(ApiError(400, message, param=param).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        return ORJSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RedisError)
    async def redis_away(_: Request, exc: RedisError) -> ORJSONResponse:
        # Redis (or a Redis Cluster primary, while it fails over) away: answered like any unexpected error,
        # but here, so the connection stays usable (the catch-all below is re-raised to the server).
        metrics.errors.inc()
        return ORJSONResponse({"detail": f"temporarily unavailable: {type(exc).__name__}"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> ORJSONResponse:
        # A dependency being down is a 503 the client can retry, never a 500 with a traceback.
        metrics.errors.inc()
        return ORJSONResponse({"detail": f"temporarily unavailable: {type(exc).__name__}"}, status_code=503)
