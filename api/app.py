"""The ASGI application: the platform's analytics endpoints, health, metrics, OpenAPI docs and the dashboard."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import params
from api.errors import ApiError
from api.kafka import KafkaGateway
from api.metrics import Metrics
from streams.exceptions import InvalidEvent
from streams.names import CHAT_HISTORY
from streams.schemas import Conversation, Limits, parse
from streams.settings import Settings, get_settings
from tables import apikeys, queries
from tables.queries import HistoryFilter, Retention

PREFIX = "/api/ai-analytics/orgs/{org}/users/{user_id}"
DASHBOARD_DIR = Path(__file__).with_name("dashboard")

ORG = Annotated[str, PathParam(description="The org (tenant) whose analytics are read.", max_length=128)]
USER = Annotated[str, PathParam(description="The caller's user id, as in the platform's API.", max_length=256)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A parameter is unusable; `parameter` names it."},
    401: {"description": "No API key, or an unknown one."},
    403: {"description": "The key's org or role does not allow this."},
    404: {"description": "The org does not exist."},
}


class ObserveMiddleware:
    """Counts and times every HTTP request (a plain ASGI middleware: Starlette's BaseHTTPMiddleware
    costs more per request than most of our endpoints)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], path, status, time.perf_counter() - started)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["redis"] = Redis.from_url(settings.redis_url)
        state["kafka"] = KafkaGateway(settings)
        try:
            yield
        finally:
            await state["kafka"].close()
            await state["redis"].aclose()

    app = FastAPI(
        title="ai-analytics",
        version="0.1.0",
        description="Real-time analytics of the AI-tutoring platform, under the platform's analytics API paths. "
        "Authenticate with `Authorization: Api-Token <key>` (or `Token <key>`).",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
    )
    metrics = Metrics(settings)
    retention = Retention(settings.hourly_retention_days, settings.daily_retention_days)
    limits = Limits(
        retention_ms=settings.daily_retention_days * 86_400_000, max_future_ms=settings.max_future_seconds * 1000
    )

    def redis() -> Redis:
        r: Redis = state["redis"]
        return r

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> ORJSONResponse:
        headers = {"WWW-Authenticate": "Api-Token"} if exc.status == 401 else None
        return ORJSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> ORJSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        param = ".".join(loc) or "request"
        return ORJSONResponse({"error": f"{param}: {err.get('msg', 'invalid')}", "parameter": param}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> ORJSONResponse:
        return ORJSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> ORJSONResponse:
        # A dependency being down is a 503 the client can retry, never a 500 with a traceback.
        metrics.errors.inc()
        return ORJSONResponse({"error": f"temporarily unavailable: {type(exc).__name__}"}, status_code=503)

    app.add_middleware(ObserveMiddleware, metrics=metrics)

    async def caller(request: Request, org: ORG) -> apikeys.ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ApiError(401, "missing Authorization header; send `Authorization: Api-Token <key>`")
        if scheme not in ("Api-Token", "Token") or not token.strip():
            raise ApiError(401, "Authorization must be `Api-Token <key>` or `Token <key>`")
        key, exists = await apikeys.lookup_with_org(redis(), token.strip(), org)  # one round trip
        if key is None:
            raise ApiError(401, "unknown or revoked API key")
        if not key.allows_org(org):
            raise ApiError(403, f"this key may not read org {org!r}")
        if not exists:
            raise ApiError(404, f"org {org!r} does not exist")
        return key

    Caller = Annotated[apikeys.ApiKey, Depends(caller)]

    def admin(key: apikeys.ApiKey) -> None:
        if key.role != "platform_admin":
            raise ApiError(403, "chat history needs a platform_admin key")

    @app.get(f"{PREFIX}/average-messages-per-session/", responses=ERRORS, tags=["analytics"])
    async def average_messages_per_session(
        org: ORG,
        user_id: USER,
        key: Caller,
        start_date: Annotated[str | None, Query(description="First day, YYYY-MM-DD (required).")] = None,
        end_date: Annotated[str | None, Query(description="Last day, YYYY-MM-DD (required).")] = None,
        mentor_id: Annotated[str | None, Query(description="Only sessions with this mentor.")] = None,
        aggregation: Annotated[str | None, Query(description="hourly, daily (default) or weekly.")] = None,
    ) -> list[dict[str, Any]]:
        """Sessions started per period and the average number of messages in them."""
        agg = params.choice("aggregation", aggregation, queries.AGGREGATIONS, "daily")
        start, end = params.date_range(start_date, end_date, required=True)
        _retention(retention, start, hourly=agg == "hourly")
        if agg == "hourly" and (end - start).days > settings.hourly_retention_days:
            raise params.bad("end_date", f"hourly rows span at most {settings.hourly_retention_days} days")
        return await queries.average_messages_per_session(
            redis(), org, start, end, agg or "daily", params.text("mentor_id", mentor_id)
        )

    @app.get(f"{PREFIX}/chat-history/", responses=ERRORS, tags=["chat history"])
    async def chat_history(
        request: Request,
        org: ORG,
        user_id: USER,
        key: Caller,
        start_date: Annotated[str | None, Query(description="Conversations inserted on or after, YYYY-MM-DD.")] = None,
        end_date: Annotated[str | None, Query(description="Conversations inserted on or before, YYYY-MM-DD.")] = None,
        filter_user_id: Annotated[str | None, Query(description="Only this student's conversations.")] = None,
        mentor: Annotated[str | None, Query(description="Only conversations with this mentor.")] = None,
        sentiment: Annotated[str | None, Query(description="positive, neutral or negative (latest judgement).")] = None,
        topics: Annotated[str | None, Query(description="Comma-separated topics; all must match.")] = None,
        page: Annotated[str | None, Query(description="Page number, from 1.")] = None,
        page_size: Annotated[str | None, Query(description="Rows per page, 1 to 100 (default 20).")] = None,
    ) -> dict[str, Any]:
        """Conversations, newest first, with the platform's pagination envelope."""
        admin(key)
        start = params.parse_date("start_date", start_date, required=False)
        end = params.parse_date("end_date", end_date, required=False)
        if start and end and end < start:
            raise params.bad("end_date", f"end_date {end} is before start_date {start}")
        topic_list = tuple(t.strip() for t in (params.text("topics", topics) or "").split(",") if t.strip())
        flt = HistoryFilter(
            start=start,
            end=end,
            student=params.text("filter_user_id", filter_user_id),
            mentor=params.text("mentor", mentor),
            sentiment=params.choice("sentiment", sentiment, params.SENTIMENTS, None),
            topics=topic_list,
        )
        n = params.positive_int("page", page, 1, maximum=1_000_000)
        size = params.positive_int("page_size", page_size, 20, maximum=params.MAX_PAGE_SIZE)
        count, rows = await queries.chat_history(redis(), org, flt, n, size)
        pages = max(1, -(-count // size))
        if n > pages:
            raise params.bad("page", f"page {n} is past the last page ({pages})")
        return {
            "count": count,
            "next": str(request.url.include_query_params(page=n + 1)) if n < pages else None,
            "previous": str(request.url.include_query_params(page=n - 1)) if n > 1 else None,
            "results": rows,
        }

    @app.post(f"{PREFIX}/chat-history/", status_code=201, responses=ERRORS, tags=["chat history"])
    async def post_chat_history(org: ORG, user_id: USER, key: Caller, request: Request) -> dict[str, Any]:
        """Store a conversation record: validated, written through Kafka, visible to GET within a second."""
        admin(key)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"body is not JSON: {exc}", param="body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object (a conversation record)", param="body")
        for reserved in ("org", "event_id", "timestamp"):
            body.pop(reserved, None)
        body.setdefault("id", uuid.uuid4().hex)
        now = datetime.now(UTC)
        event = {**body, "event_id": uuid.uuid4().hex, "org": org, "timestamp": now.isoformat()}
        raw = orjson.dumps(event)
        try:
            parsed = parse(CHAT_HISTORY, None, raw, int(now.timestamp() * 1000), limits)
        except InvalidEvent as exc:
            raise ApiError(400, f"body: {exc.reason}", param="body") from None
        assert isinstance(parsed, Conversation)
        await state["kafka"].send(CHAT_HISTORY, raw, key=parsed.id.encode())
        return parsed.record

    @app.get(f"{PREFIX}/sentiment-count/", responses=ERRORS, tags=["analytics"])
    async def sentiment_count(
        org: ORG,
        user_id: USER,
        key: Caller,
        period: Annotated[str | None, Query(description="today, yesterday, 7d (default), 30d or 90d.")] = None,
    ) -> list[dict[str, Any]]:
        """Sentiment judgements per day (zeros included), with a breakdown by sentiment."""
        start, end = params.period_days(period)
        return await queries.sentiment_counts(redis(), org, start, end)

    @app.get(f"{PREFIX}/tenant-cost/", responses=ERRORS, tags=["analytics"])
    async def tenant_cost(
        org: ORG,
        user_id: USER,
        key: Caller,
        start_date: Annotated[str | None, Query(description="Start: YYYY-MM-DD or an RFC 3339 datetime.")] = None,
        end_date: Annotated[str | None, Query(description="End (a date includes that whole day).")] = None,
    ) -> dict[str, Any]:
        """Exact LLM cost of the org over the range (USD), with tokens and observation counts."""
        start = params.parse_date_or_datetime("start_date", start_date, end=False)
        end = params.parse_date_or_datetime("end_date", end_date, end=True)
        if end < start:
            raise params.bad("end_date", f"end_date {end_date} is before start_date {start_date}")
        _retention(retention, start.date(), hourly=False)
        if (end - start).days > 3660:
            raise params.bad("end_date", "the range may span at most 10 years")
        return await queries.tenant_cost(redis(), org, start, end)

    @app.get(f"{PREFIX}/top-students-by-chat-messages/", responses=ERRORS, tags=["analytics"])
    async def top_students(
        org: ORG,
        user_id: USER,
        key: Caller,
        mentor_id: Annotated[str | None, Query(description="Only messages to this mentor.")] = None,
        start_date: Annotated[str | None, Query(description="First day, YYYY-MM-DD (default: 30 days ago).")] = None,
        end_date: Annotated[str | None, Query(description="Last day, YYYY-MM-DD (default: today).")] = None,
    ) -> list[dict[str, Any]]:
        """The 20 students with the most messages, ties by username."""
        start, end = params.date_range(start_date, end_date, required=False)
        _retention(retention, start, hourly=False)
        return await queries.top_students(redis(), org, start, end, params.text("mentor_id", mentor_id))

    @app.get(f"{PREFIX}/freshness/", responses=ERRORS, tags=["analytics"])
    async def freshness(org: ORG, user_id: USER, key: Caller) -> dict[str, Any]:
        """Time of the newest event applied for the org, and events applied per topic."""
        return await queries.freshness(redis(), org)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"description": "Kafka or Redis unreachable."}})
    async def readyz() -> ORJSONResponse:
        """Kafka and Redis are reachable."""
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(redis().ping(), 2.0)
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        checks["kafka"] = await state["kafka"].check()
        ok = all(v == "ok" for v in checks.values())
        return ORJSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics_endpoint() -> Response:
        """Prometheus metrics: requests, latencies, consumer lag, dead letters, events applied."""
        body, content_type = await metrics.render(redis(), state["kafka"])
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_slash() -> RedirectResponse:
        return RedirectResponse("/dashboard/")

    app.mount("/dashboard/", StaticFiles(directory=DASHBOARD_DIR, html=True), name="dashboard")
    return app


def _retention(retention: Retention, start: Any, *, hourly: bool) -> None:
    from tables.exceptions import QueryError

    try:
        retention.check(start, datetime.now(UTC).date(), hourly=hourly)
    except QueryError as exc:
        raise ApiError(400, exc.message, param=exc.param) from None
