"""What every request handler shares: settings and the connections, kept on `app.state.aia`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from api.kafka import KafkaGateway
from api.metrics import Metrics
from streams.schemas import Limits
from streams.settings import Settings
from tables import connections, generations, queries
from tables.buckets import Retention


@dataclass
class AppState:
    settings: Settings
    redis: Redis
    kafka: KafkaGateway
    metrics: Metrics
    retention: Retention
    limits: Limits

    @classmethod
    def connect(cls, settings: Settings, metrics: Metrics) -> AppState:
        return cls(
            settings=settings,
            redis=connections.connect(settings.redis_url),
            kafka=KafkaGateway(settings),
            metrics=metrics,
            retention=Retention.from_settings(settings),
            limits=Limits.from_settings(settings),
        )

    async def close(self) -> None:
        await self.kafka.close()
        await self.redis.aclose()


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.aia
    return state


State = Annotated[AppState, Depends(app_state)]


async def served_view(request: Request) -> queries.View:
    """What the request reads: the generation served, read once per request (api/ops.GenerationMiddleware),
    so an answer is wholly from one generation however a rebuild's switch falls."""
    redis = app_state(request).redis
    gen = getattr(request.state, "generation", None)
    if gen is None:  # the middleware could not read it (Redis away): this read raises, the handler answers 503
        gen = await generations.current(redis)
    return queries.View(redis, gen)


Served = Annotated[queries.View, Depends(served_view)]
