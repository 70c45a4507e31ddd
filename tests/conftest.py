"""Session fixtures: one real Kafka broker and one real Redis for the whole run, on free loopback ports.

Each test gets clean state: its own topic prefix and consumer group (so its own topics and offsets)
and a flushed Redis. Nothing is skipped when a component is missing: it is installed/started, or the
run fails with the reason. Helpers live in tests/support.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from redis.asyncio import Redis

from infra.kafka import KafkaBroker
from infra.procs import free_port
from infra.redis import RedisServer
from streams.clients import ensure_topics
from streams.settings import Settings
from tests.support import WorkerProcess, make_settings


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aia-tests-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def kafka(tmp_root: Path) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_root / "kafka", port=free_port(), controller_port=free_port(), partitions=3)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_root: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_root / "redis", port=free_port(), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def engine() -> str:
    """The engine a test's workers run: the default one; suites that must hold on both override it."""
    return Settings().engine


@pytest.fixture
def settings(kafka: KafkaBroker, redis_server: RedisServer, engine: str) -> Settings:
    return replace(make_settings(kafka.bootstrap, redis_server.url), engine=engine)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """The session's Redis, emptied (the one `settings` names; it needs no broker)."""
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def topics(settings: Settings) -> list[str]:
    return await ensure_topics(settings)


@pytest.fixture
def workers(settings: Settings) -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(name: str = "w1") -> WorkerProcess:
        w = WorkerProcess(settings, name).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
