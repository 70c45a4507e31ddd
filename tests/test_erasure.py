"""Erasing a student while their events are still being produced: afterwards no endpoint, record, index or
key holds their username or their events, also after the same events are produced again; every other
student's counts are untouched, and the same username in another org is not erased."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from agents.pipeline import Batch, BatchProcessor
from infra.kafka import KafkaBroker
from infra.procs import ROOT, cli_command, free_port
from infra.redis import RedisServer
from streams.settings import Settings
from tables import keys
from tables.aggregates import top_students
from tables.connections import NotReplicated, Replication
from tables.erase import PublicationFence, erase_student
from tests import reference
from tests.support import (
    WorkerProcess,
    api_settings,
    as_records,
    create_keys,
    demo_events,
    produce,
    read_compacted,
    read_topic,
    start_api,
)

pytestmark = pytest.mark.integration

ORG = "acme-academy"


def settled(base: str, admin: str, orgs: set[str], timeout: float = 120) -> None:
    """Wait until every produced event is consumed: the workers' lag is 0 and the applied counts stop moving."""
    headers = {"Authorization": f"Api-Token {admin}"}
    deadline, last, quiet_since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        lag = sum(
            float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("aia_consumer_lag{")
        )
        now = [httpx.get(f"{base}/api/ai-analytics/orgs/{o}/users/x/freshness/", headers=headers).json()["events"]
               for o in sorted(orgs)]  # fmt: skip
        if now != last:
            last, quiet_since = now, time.monotonic()
        if lag == 0 and time.monotonic() - quiet_since > 6:  # the lag is cached for 5 s
            return
        time.sleep(0.5)
    raise AssertionError("the worker did not settle")


async def every_key_and_value(url: str, org: str) -> list[bytes]:
    """Every key of the org in the generation served and everything in it (hash fields and values,
    sorted-set members), plus the global keys that name orgs."""
    redis = Redis.from_url(url)
    out: list[bytes] = []
    try:
        served = int(await redis.hget(keys.generations(), "current") or 0)
        async for key in redis.scan_iter(match=f"{keys.generation_prefix(served)}{org}}}:*", count=1000):
            out.append(key)
            kind = (await redis.type(key)).decode()
            if kind == "hash":
                for f, v in (await redis.hgetall(key)).items():
                    out += [f, v]
            elif kind == "zset":
                out += await redis.zrange(key, 0, -1)
            elif kind == "set":
                out += list(await redis.smembers(key))
            elif kind == "string":
                out.append(await redis.get(key) or b"")
        for f, v in (await redis.hgetall(keys.time_zones())).items():
            out += [f, v]
    finally:
        await redis.aclose()
    return out


async def all_time_count(url: str, org: str, student: str) -> int | None:
    redis = Redis.from_url(url)
    try:
        score = await redis.zscore(top_students.alltime_key(0, org), student)
        return None if score is None else int(score)
    finally:
        await redis.aclose()


def test_erase_a_student_while_their_events_arrive(
    kafka: KafkaBroker, redis_server: RedisServer, tmp_path: Any
) -> None:
    settings = api_settings(kafka.bootstrap, redis_server.url, "erase")
    events = demo_events(4000, seed=31)
    orgs = {e["org"] for _, e in events}
    counts = reference.top_students(reference.expected(events), ORG, limit=1000)
    victim = counts[0][0]  # the busiest student of the org
    assert any(e["student"] == victim for _, e in events if e["org"] != ORG and "student" in e)  # also elsewhere
    victims_events = [(t, e) for t, e in events if e.get("student") == victim and e["org"] == ORG]

    keys_made = asyncio.run(create_keys(settings))
    admin = {"Authorization": f"Api-Token {keys_made['admin']}"}
    worker = WorkerProcess(settings, "erase-worker").start()
    api = start_api(settings, tmp_path / "api.log")
    base = f"http://127.0.0.1:{settings.api_port}"
    url = f"{base}/api/ai-analytics/orgs/{ORG}/users/tester"
    try:

        async def produce_and_erase() -> dict[str, Any]:
            sending = asyncio.create_task(produce(settings, events, seconds=8))
            await asyncio.sleep(3)  # some of the victim's events applied, more to come
            async with httpx.AsyncClient(timeout=60) as client:
                analyst = await client.delete(f"{url}/students/{victim}/",
                                              headers={"Authorization": f"Api-Token {keys_made['analyst']}"})  # fmt: skip
                assert analyst.status_code == 403
                r = await client.delete(f"{url}/students/{victim}/", headers=admin)
            assert not sending.done(), "the erasure must happen while events are still produced"
            await sending
            assert r.status_code == 200, r.text
            return dict(r.json())

        audit = asyncio.run(produce_and_erase())
        assert audit["org"] == ORG and audit["by"].startswith("key:") and audit["what"]["conversations"] > 0
        assert audit["what"]["first_seen_entries"] > 0  # the org's first-seen set and their mentors'
        assert audit["what"]["last_activity"] == 1  # their latest message (student activity)
        settled(base, keys_made["admin"], orgs)
        # The same events again (a producer's retry, a replay): still dropped.
        asyncio.run(produce(settings, victims_events, seconds=1))
        settled(base, keys_made["admin"], orgs)

        # No endpoint shows them.
        get = lambda path, **q: httpx.get(f"{url}/{path}/", params=q, headers=admin, timeout=10)  # noqa: E731
        recent = (datetime.now(UTC).date() - timedelta(days=20)).isoformat()  # within the hourly retention
        for query in ({}, {"start_date": "2026-01-01", "end_date": "2027-12-31"},
                      {"start_date": recent, "end_date": "2027-12-31", "tz": "America/New_York"}):  # fmt: skip
            top = get("top-students-by-chat-messages", **query)
            assert top.status_code == 200 and victim not in top.text, query
        listed = get("chat-history", filter_user_id=victim).json()
        assert listed["count"] == 0
        page, pages = 1, 1
        while page <= pages:
            body = get("chat-history", page=page, page_size=100).json()
            assert victim not in str(body)
            pages = -(-body["count"] // 100)
            page += 1
        for cid in {e["session_id"] for _, e in victims_events if "session_id" in e}:
            assert get(f"chat-history/{cid}").status_code == 404
        span = {"start_date": "2026-01-01", "end_date": "2027-12-31"}
        assert get("user-cost", username=victim, **span).json()["cost_nanos"] == 0
        assert victim not in get("costs/users", **span).text
        assert victim not in get("costs/peruser", **span).text
        victim_sessions = {e["session_id"] for _, e in victims_events if "session_id" in e}
        per_mentor = get("costs/permentor", **span).json()
        assert not {s["session_id"] for m in per_mentor["mentor_data"] for s in m["mentor_sessions"]} & victim_sessions
        # Their traces no longer name them (nor, unless one of their sessions' observations came after the
        # erasure, their sessions): docs/semantics.md.
        assert audit["what"]["traces"] > 0
        listed_traces, offset = [], 0
        while offset == 0 or body["next"] is not None:
            body = get("traces", limit=100, offset=offset).json()
            listed_traces += body["results"]
            offset += 100
        assert len(listed_traces) == body["count"] > 0 and victim not in str(listed_traces)

        # Nothing in Redis names them, nor any latest record of the compacted aggregates topic.
        stored = asyncio.run(every_key_and_value(settings.redis_url, ORG))
        assert not [b for b in stored if victim.encode() in b]
        latest = asyncio.run(read_compacted(settings))
        assert not [k for k, v in latest.items() if k.startswith(f"{ORG}|") and victim in f"{k} {v}"]

        # Every other student counts exactly as the reference says; the same username elsewhere is kept.
        others = [(u, n) for u, n in counts if u != victim]
        top = get("top-students-by-chat-messages").json()
        assert [(r["username"], r["chat_message_count"]) for r in top] == others[:20]
        expected = reference.expected(events)
        for other_org in sorted(orgs - {ORG}):
            want = dict(reference.top_students(expected, other_org, limit=1000)).get(victim)
            assert asyncio.run(all_time_count(settings.redis_url, other_org, victim)) == want, other_org

        # Dropped events are counted, the audit record is on the compacted topic.
        metrics = httpx.get(f"{base}/metrics").text
        dropped = [line for line in metrics.splitlines() if line.startswith("aia_erased_student_events_dropped{")]
        assert dropped and float(dropped[0].rsplit(" ", 1)[1]) > 0, dropped
        audits = asyncio.run(read_topic(settings, "analytics-erasures", idle_s=1.0))
        assert [v for _, v in audits] == [audit]

        # A rebuild from the topics (which still hold every event of theirs) does not bring them back.
        rebuilt = subprocess.run(cli_command("rebuild", "--grace", "1"), cwd=ROOT, env={**os.environ, **settings.as_env()},
                                 capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert rebuilt.returncode == 0 and "serving generation 1" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
        stored = asyncio.run(every_key_and_value(settings.redis_url, ORG))
        assert stored and not [b for b in stored if victim.encode() in b]
        assert victim not in get("top-students-by-chat-messages").text
        assert get("chat-history", filter_user_id=victim).json()["count"] == 0
        top = get("top-students-by-chat-messages").json()
        assert [(r["username"], r["chat_message_count"]) for r in top] == others[:20]

        # The CLI does the same, and says what it did.
        done = subprocess.run(cli_command("erase", "--org", ORG, "--student", others[0][0], "--by", "registrar"),
                              cwd=ROOT, env={**os.environ, **settings.as_env()}, capture_output=True, text=True,
                              timeout=120, check=False)  # fmt: skip
        assert done.returncode == 0 and "erased from acme-academy" in done.stdout, done.stderr
        assert others[0][0] not in get("top-students-by-chat-messages").text
    finally:
        api.terminate()
        api.wait(30)
        worker.kill()


def test_a_batch_planned_before_an_erasure_cannot_write_after_it(redis_server: RedisServer) -> None:
    """The apply is guarded on the erasures' version: a batch planned before the tombstone conflicts, and
    planned again it drops the student's events."""

    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        try:
            await redis.flushall()
            now = datetime.now(UTC) - timedelta(minutes=5)
            events = [("chat-messages", {"event_id": f"e{i}", "org": "acme", "timestamp": now.isoformat(),
                                         "session_id": "s1", "student": "ann", "mentor_id": "m1", "role": "human",
                                         "topics": []}) for i in range(3)]  # fmt: skip

            async def keep(_: Any) -> None:
                pass

            processor = BatchProcessor(Settings(), redis, keep)
            validated = await processor.validate(Batch.of(as_records(events)))
            planned = await processor.plan(validated.by_org, validated.now_ms, 0)
            await erase_student(redis, "acme", "ann", by="test", now_ms=int(time.time() * 1000))
            conflicts = await processor.writer.apply(planned)
            assert "acme" in conflicts and keys.erasures("acme") in conflicts["acme"]
            result = await processor.process(Batch.of(as_records(events)))
            assert result.applied == 0 and result.attempts == 1
            assert await redis.zscore(top_students.alltime_key(0, "acme"), "ann") is None
            assert int(await redis.hget(keys.meta(0, "acme"), keys.ERASED_DROPPED) or 0) == 3
        finally:
            await redis.aclose()

    asyncio.run(run())


def test_an_erasure_and_a_publication_are_on_a_replica_before_they_count(
    redis_server: RedisServer, tmp_path: Any
) -> None:
    """As a batch's writes: with a replica required and none there, an erasure raises NotReplicated (to be
    run again) and a publication's registration is taken back, nothing sent; with a replica attached, the
    replica holds the tombstone, the removals and the registration once each call returns."""

    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        replica = RedisServer(tmp_path / "replica", port=free_port())
        follower: Redis | None = None
        one = Replication(redis, 1, 300)
        top = orjson.dumps({"metric": "top_students", "value": {"ann": 3, "bob": 2}})
        records = [(b"acme|top_students|d|20261202", top)]
        try:
            await redis.flushall()
            await redis.zadd(top_students.alltime_key(0, "acme"), {"ann": 3, "bob": 2})
            with pytest.raises(NotReplicated):
                await erase_student(redis, "acme", "ann", by="test", now_ms=int(time.time() * 1000), replication=one)
            fence = PublicationFence(redis, replication=one)
            with pytest.raises(NotReplicated):
                await fence.begin(records)
            assert await redis.zcard(keys.publishing("acme")) == 0  # taken back: no erasure waits for it
            replica.start()
            follower = Redis(port=replica.port)
            await follower.replicaof("127.0.0.1", redis_server.port)
            deadline = time.monotonic() + 30
            while (await follower.info("replication")).get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica never caught up"
                await asyncio.sleep(0.1)
            await erase_student(redis, "acme", "ann", by="test", now_ms=int(time.time() * 1000), replication=one)
            assert await follower.hlen(keys.erasures("acme")) >= 1  # the tombstone
            assert await follower.zrange(top_students.alltime_key(0, "acme"), 0, -1) == [b"bob"]  # the removals
            out, orgs, token = await fence.begin(records)
            assert orjson.loads(out[0][1])["value"] == {"bob": 2}
            assert await follower.zscore(keys.publishing("acme"), token) is not None  # the registration
            await fence.end(orgs, token)
        finally:
            await one.aclose()
            if follower is not None:
                await follower.aclose()
            replica.stop()
            await redis.flushall()
            await redis.aclose()

    asyncio.run(run())


def test_no_changefeed_record_naming_the_student_lands_after_the_erasure(redis_server: RedisServer) -> None:
    """A worker that applied just before the tombstone publishes its records after it: the erasure waits
    for a publication that began before it, and one that begins after it leaves the student out."""

    async def run() -> None:
        redis = Redis.from_url(redis_server.url)
        try:
            await redis.flushall()
            sent: list[tuple[str, list[tuple[bytes, bytes]]]] = []
            fence = PublicationFence(redis)
            top = orjson.dumps({"metric": "top_students", "value": {"ann": 3, "bob": 2}})
            records = [
                (b"acme|cost_nanos|u|ann|h|2026120218", b'{"value": 5}'),
                (b"acme|cost_nanos|u|bob|h|2026120218", b'{"value": 7}'),
                (b"acme|cost_nanos|m|m1|h|2026120218", b'{"value": 12}'),
                (b"acme|top_students|d|20261202", top),
            ]
            before, orgs, token = await fence.begin(records)
            assert before == records  # nobody erased yet

            async def late_publisher() -> None:
                await asyncio.sleep(0.5)  # the worker's send, slower than the erasure's removal
                sent.append(("worker", before))
                await fence.end(orgs, token)

            publishing = asyncio.create_task(late_publisher())
            await erase_student(redis, "acme", "ann", by="test", now_ms=int(time.time() * 1000))
            sent.append(("erasure", []))
            await publishing
            assert [who for who, _ in sent] == ["worker", "erasure"]

            after, orgs, token = await fence.begin(records)
            await fence.end(orgs, token)
            assert [k for k, _ in after] == [k for k, _ in records if b"|ann|" not in k]
            assert orjson.loads(after[-1][1])["value"] == {"bob": 2}
            assert await redis.zcard(keys.publishing("acme")) == 0
        finally:
            await redis.aclose()

    asyncio.run(run())
