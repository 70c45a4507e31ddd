"""Session fixtures: one real Kafka broker and one real Redis for the whole run, on free loopback ports.

Each test gets clean state: its own topic prefix and consumer group (so its own topics and offsets)
and a flushed Redis. Nothing is skipped when a component is missing: it is installed/started, or the
run fails with the reason.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from infra.kafka import KafkaBroker
from infra.procs import free_port, spawn, tail, worker_command
from infra.redis import RedisServer
from streams.admin import ensure_topics
from streams.settings import Settings


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


def make_settings(bootstrap: str, redis_url: str, tmp_path: Path, name: str = "test") -> Settings:
    """Settings of one test: its own topic prefix and consumer group, small batches, a quick rebalance."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{run}.",
        topic_partitions=3,
        app_id=f"aia-{name}-{run}",
        data_dir=tmp_path / "worker",
        batch_size=500,
        batch_within=0.1,
        session_timeout=6.0,
        heartbeat_interval=1.0,
    )


@pytest.fixture
def settings(kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Path) -> Settings:
    return make_settings(kafka.bootstrap, redis_server.url, tmp_path)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def topics(settings: Settings) -> list[str]:
    return await ensure_topics(settings)


class WorkerProcess:
    """A real `python -m streams worker` subprocess, as a user would run it."""

    def __init__(self, settings: Settings, name: str = "w1") -> None:
        self.settings = replace(settings, data_dir=settings.data_dir.parent / f"worker-{name}")
        self.log = settings.data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1"}
        env.pop("AIA_PRICE_TABLE", None)
        self.proc = spawn(worker_command("info"), log=self.log, env=env)
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to commit, flush or leave the group."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log, lines)


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


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll an async check until it returns a truthy value; fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what} not reached within {timeout}s; last value: {last!r}")


async def read_topic(settings: Settings, name: str, idle_s: float = 3.0) -> list[tuple[bytes | None, Any]]:
    """Every record of a topic from the beginning, as (key, decoded JSON value), until `idle_s` of quiet."""
    consumer = AIOKafkaConsumer(
        settings.topic(name), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[tuple[bytes | None, Any]] = []
    quiet_since = time.monotonic()
    try:
        while time.monotonic() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out += [(r.key, orjson.loads(r.value)) for r in records]
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return out


async def read_compacted(settings: Settings, idle_s: float = 3.0) -> dict[str, dict[str, Any]]:
    """Everything on analytics-aggregates from the beginning, last value per key (what compaction keeps)."""
    latest: dict[str, dict[str, Any]] = {}
    for key, value in await read_topic(settings, "analytics-aggregates", idle_s):
        assert key is not None
        latest[key.decode()] = value
    return latest
