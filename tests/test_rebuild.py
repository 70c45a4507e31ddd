"""`ai-analytics rebuild` during live traffic: interrupted (kill -9) and resumed, it switches to the new
generation with every answer equal to the reference; while it runs, every answer the API gives is a complete
one (never a half-built generation's); it refuses when the topics lost records by retention."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from infra.kafka import KafkaBroker
from infra.procs import ROOT, cli_command
from infra.redis import RedisServer
from tables import generations, keys
from tests import reference
from tests.support import Env, WorkerProcess, api_settings, create_keys, demo_events, produce, start_api, wait_applied

pytestmark = pytest.mark.integration

ORG = "acme-academy"


def sessions_total(env: Env, first: str, last: str) -> int:
    rows = env.get(ORG, "average-messages-per-session", start_date=first, end_date=last).json()
    return sum(r["total_sessions"] for r in rows)


async def generation_keys(url: str, n: int) -> int:
    redis = Redis.from_url(url)
    try:
        return len([k async for k in redis.scan_iter(match=keys.generation_prefix(n) + "*", count=1000)])
    finally:
        await redis.aclose()


async def generation_marks(url: str) -> dict[str, bytes]:
    redis = Redis.from_url(url)
    try:
        marks: dict[bytes, bytes] = await redis.hgetall(keys.generations())
        return {k.decode(): v for k, v in marks.items() if k.startswith((b"months:", b"activity:"))}
    finally:
        await redis.aclose()


def test_rebuild_during_live_traffic_interrupted_and_resumed(
    kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Any
) -> None:
    settings = api_settings(kafka.bootstrap, redis_server.url, "rebuild")
    events = demo_events(6000, seed=53)
    half = len(events) // 2
    keys_made = asyncio.run(create_keys(settings))
    worker = WorkerProcess(settings, "rebuild-worker").start()
    api = start_api(settings, tmp_path / "api.log")
    base = f"http://127.0.0.1:{settings.api_port}"
    env_vars = {**os.environ, **settings.as_env()}
    polling = threading.Event()
    try:
        first_half = reference.expected(events[:half])
        env = Env(settings, base, keys_made, first_half, worker, tmp_path / "api.log")
        asyncio.run(produce(settings, events[:half], seconds=2))
        wait_applied(env, events[:half], first_half, timeout=120)
        everything = reference.expected(events)
        days = sorted({d for o, d in everything.days() if o == ORG})
        final_total = sum(n for (o, _), n in everything.sessions.items() if o == ORG)
        seen: list[int] = []

        def poll() -> None:  # what a dashboard sees during the rebuild
            while not polling.is_set():
                try:
                    seen.append(sessions_total(env, days[0], days[-1]))
                except httpx.HTTPError:
                    return  # the test failed and stopped the API
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        sending = threading.Thread(target=lambda: asyncio.run(produce(settings, events[half:], seconds=8)))
        sending.start()
        # A slow rebuild, killed mid-way; run again, it resumes and switches.
        slow = subprocess.Popen(cli_command("rebuild", "--rate", "400", "--grace", "2"), cwd=ROOT, env=env_vars,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        assert slow.stdout is not None
        assert "building generation 1" in slow.stdout.readline()
        time.sleep(2.5)
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait(30)
        slow.stdout.close()
        status = subprocess.run(cli_command("rebuild", "--status"), cwd=ROOT, env=env_vars, capture_output=True,
                                text=True, timeout=60, check=True).stdout  # fmt: skip
        assert "serving generation 0" in status and "building generation 1" in status, status
        resumed = subprocess.run(cli_command("rebuild", "--grace", "2"), cwd=ROOT, env=env_vars, capture_output=True,
                                 text=True, timeout=300, check=False)  # fmt: skip
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resuming generation 1" in resumed.stdout and "serving generation 1" in resumed.stdout, resumed.stdout
        sending.join()
        wait_applied(Env(settings, base, keys_made, everything, worker, tmp_path / "api.log"), events, everything, 120)
        polling.set()
        poller.join()

        # Every answer during it was a complete generation's: never fewer sessions than before, never more
        # than all of them.
        assert seen and all(a <= b for a, b in itertools.pairwise(seen)), seen
        assert seen[-1] == final_total and max(seen) == final_total
        for day in days:
            row = env.get(ORG, "average-messages-per-session", start_date=day, end_date=day).json()[0]
            assert row["total_sessions"] == everything.sessions[(ORG, day)], day
            assert row["total_messages"] == everything.messages[(ORG, day)], day
        for org in everything.orgs:
            for row in env.get(org, "sentiment-count", period="30d").json():
                assert row["sentiment_count"] == everything.sentiment[(org, row["date"])], (org, row)
            cost = env.get(org, "tenant-cost", start_date=days[0], end_date=days[-1]).json()
            assert cost["cost_nanos"] == sum(n for (o, _), n in everything.cost.items() if o == org), org
            history = env.get(org, "chat-history", page_size=1).json()
            assert history["count"] == len(everything.conversations[org]), org
            for first, last in ((days[0], days[-1]), (days[-1], days[-1])):  # the first-seen family rebuilt too
                split = env.get(org, "user-metrics-pie-chart", start_date=first, end_date=last).json()
                got = (split["new_users"]["count"], split["returning_users"]["count"])
                assert got == reference.new_and_returning(everything, org, *reference.day_ms(first, last)), org
        top = env.get(ORG, "top-students-by-chat-messages").json()
        assert [(r["username"], r["chat_message_count"]) for r in top] == reference.top_students(everything, ORG)
        metrics = httpx.get(f"{base}/metrics").text
        assert "aia_generation 1.0" in metrics and "aia_rebuild_records_left 0.0" in metrics
        assert asyncio.run(generation_keys(settings.redis_url, 0)) == 0  # the old generation is gone
        assert asyncio.run(generation_keys(settings.redis_url, 1)) > 0
        # The rebuilt generation's monthly sets are whole from the first month, its student activity whole;
        # the old one's marks are gone.
        marks = asyncio.run(generation_marks(settings.redis_url))
        assert marks == {generations.months_field(1): b"0", generations.activity_field(1): b"1"}, marks
        assert "continuity" not in worker.log_tail(400)
    finally:
        polling.set()
        api.terminate()
        api.wait(30)
        worker.kill()


def test_rebuild_refuses_when_the_topics_lost_records(kafka: KafkaBroker, redis_server: RedisServer) -> None:
    from aiokafka import TopicPartition
    from aiokafka.admin import RecordsToDelete

    from streams import clients

    settings = api_settings(kafka.bootstrap, redis_server.url, "refuse")
    asyncio.run(create_keys(settings))
    asyncio.run(produce(settings, demo_events(200, seed=61), seconds=0.2))

    async def delete_some() -> None:
        admin = clients.admin(settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.delete_records({TopicPartition(settings.topic("chat-messages"), 0): RecordsToDelete(5)})
        finally:
            await admin.close()

    asyncio.run(delete_some())
    done = subprocess.run(cli_command("rebuild"), cwd=ROOT, env={**os.environ, **settings.as_env()},
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "refusing to rebuild" in done.stderr and "chat-messages:0 begins at offset 5" in done.stderr, done.stderr
    assert "events before 20" in done.stderr  # and from when it still holds them
