"""Operations: request metrics and generation middlewares, health, readiness and the Prometheus endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import ORJSONResponse, PlainTextResponse, Response

from api.metrics import Metrics
from api.state import State
from tables import connections, generations

router = APIRouter(tags=["operations"])


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


class GenerationMiddleware:
    """Each API request reads the generation served once, into its state: its handlers read that one
    (`api.state.Served`) and the answer cache names answers by it, so an answer is wholly from one
    generation, however a rebuild's switch falls."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Redis away: the handler's own read of it answers 503 with the reason (api/state.served_view).
        with contextlib.suppress(Exception):
            scope.setdefault("state", {})["generation"] = await generations.current(scope["app"].state.aia.redis)
        await self.app(scope, receive, send)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Kafka or Redis unreachable."}})
async def readyz(state: State) -> ORJSONResponse:
    """Kafka and Redis are reachable. On a Redis Cluster, Redis is reachable when any node answers (the
    client follows the slots to the others), and `redis_cluster` also says whether a node is failing and
    whether a primary has fewer replicas than a batch waits for (its orgs are then not applied): "ok" or
    "degraded: ..."; degraded is still ready (every org answers)."""
    checks: dict[str, str] = {}
    health: connections.ClusterHealth | None = None
    try:
        if connections.is_cluster(state.redis):  # asks each node in turn until one answers
            health = await asyncio.wait_for(connections.cluster_health(state.redis), 2.0)
        else:
            await asyncio.wait_for(state.redis.ping(), 2.0)
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    checks["kafka"] = await state.kafka.check()
    ok = all(v == "ok" for v in checks.values())
    if connections.is_cluster(state.redis):
        needed = connections.wait_replicas(state.settings.redis_url, state.settings.redis_wait_replicas)
        checks["redis_cluster"] = checks["redis"] if health is None else health.summary(needed)
    return ORJSONResponse({"status": "ok" if ok else "unavailable", **checks}, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics_endpoint(state: State) -> Response:
    """Prometheus metrics: requests, latencies, consumer lag, dead letters, events applied."""
    body, content_type = await state.metrics.render(state.redis, state.kafka)
    return Response(body, media_type=content_type)
