"""Prometheus metrics of the API process, plus pipeline gauges read at scrape time (lag, dead letters, applied)."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis

from tables import connections, generations, keys, queries

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("aia_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)  # fmt: skip
        self.latency = Histogram(
            "aia_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )  # fmt: skip
        self.errors = Counter("aia_http_unexpected_errors_total", "Requests answered 503 after an error",
                              registry=self.registry)  # fmt: skip
        self.lag = Gauge("aia_consumer_lag", "Messages not yet committed by the workers", ["topic"],
                         registry=self.registry)  # fmt: skip
        self.dead = Gauge("aia_dead_letters", "Messages in the dead-letter topic", registry=self.registry)
        self.applied = Gauge("aia_events_applied", "Events applied to the aggregates", ["org", "topic"],
                             registry=self.registry)  # fmt: skip
        self.erased = Gauge("aia_erased_student_events_dropped", "Events of erased students the workers dropped",
                            ["org"], registry=self.registry)  # fmt: skip
        self.quarantined = Gauge(
            "aia_records_quarantined", "Records dead-lettered because processing their batch failed on them "
            "(isolated from the rest of the batch, which was applied)", ["topic"], registry=self.registry,
        )  # fmt: skip
        self.generation = Gauge("aia_generation", "The generation of the aggregates served (ai-analytics rebuild)",
                                registry=self.registry)  # fmt: skip
        self.rebuild_left = Gauge("aia_rebuild_records_left", "Records a rebuild under way has still to read "
                                  "(0: none under way)", registry=self.registry)  # fmt: skip
        self.redis_failing = Gauge("aia_redis_nodes_failing", "Redis Cluster nodes the others flag as failing "
                                   "(0 on one server)", registry=self.registry)  # fmt: skip
        self.redis_replicas = Gauge("aia_redis_primary_replicas", "Replicas (not failing) of each Redis Cluster "
                                    "primary serving slots", ["primary"], registry=self.registry)  # fmt: skip
        self.engine = Gauge(
            "aia_faust_engine_records", "Faust-engine workers' counts, summed over the group: read, applied, skipped, "
            "dead, gaps (offset ranges Faust did not deliver), refetched (records read again directly), "
            "out_of_order (records delivered below an offset already delivered)", ["counter"], registry=self.registry,
        )  # fmt: skip

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    async def render(self, redis: Redis, kafka: Any) -> tuple[bytes, str]:
        try:
            lag, dead = await kafka.lag()
            for topic, n in lag.items():
                self.lag.labels(topic).set(n)
            self.dead.set(dead)
        except Exception as exc:  # metrics must render even when Kafka is away
            log.warning("consumer lag unavailable: %r", exc)
        try:
            served = await generations.current(redis)
            for org in await queries.list_orgs(redis):
                meta: Any = await redis.hgetall(keys.meta(served, org))
                for fld, value in meta.items():
                    name = fld.decode()
                    if name.startswith("events|"):
                        self.applied.labels(org, name.split("|", 1)[1]).set(int(value))
                    elif name == keys.ERASED_DROPPED:
                        self.erased.labels(org).set(int(value))
            quarantined: Any = await redis.hgetall(keys.quarantined())
            for fld, value in quarantined.items():
                self.quarantined.labels(fld.decode()).set(int(value))
            self.generation.set((await generations.Generations.read(redis)).current)
            under_way = await generations.status(redis)
            self.rebuild_left.set(0 if under_way is None else under_way.remaining())
            stats: Any = await redis.hgetall(keys.engine_stats(kafka.settings.app_id))
            for fld, value in stats.items():
                self.engine.labels(fld.decode()).set(int(value))
        except Exception as exc:
            log.warning("applied counts unavailable: %r", exc)
        try:
            health = await connections.cluster_health(redis)
            self.redis_replicas.clear()  # a primary failed over is no longer one
            if health is not None:
                self.redis_failing.set(len(health.failed))
                for primary, n in health.replicas.items():
                    self.redis_replicas.labels(primary).set(n)
        except Exception as exc:
            log.warning("Redis Cluster health unavailable: %r", exc)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
