"""The API against the real stack: values against an independent reference, every error status, the auth
matrix, POST through Kafka, operations endpoints, and schemathesis over the OpenAPI document."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.asyncio import Redis

from infra.browser import render
from infra.kafka import KafkaBroker
from infra.procs import ROOT, cli_command
from infra.redis import RedisServer
from tables import generations, keys, queries
from tests import reference
from tests.support import (
    Env,
    WorkerProcess,
    api_settings,
    create_keys,
    demo_events,
    produce,
    read_compacted,
    start_api,
    wait_applied,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(kafka: KafkaBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("api")
    settings = api_settings(kafka.bootstrap, redis_server.url, "api")
    events = demo_events(3000, seed=99)
    expected = reference.expected(events)

    keys = asyncio.run(create_keys(settings))
    worker = WorkerProcess(settings, "api-worker").start()
    api_log = tmp / "api.log"
    api = start_api(settings, api_log)
    asyncio.run(produce(settings, events, seconds=2))
    e = Env(settings, f"http://127.0.0.1:{settings.api_port}", keys, expected, worker, api_log, events)
    wait_applied(e, events, expected, timeout=120)
    yield e
    api.terminate()
    api.wait(30)
    worker.kill()


def days(e: Env) -> tuple[date, date]:
    ds = sorted({d for _, d in e.expected.days()})
    return date.fromisoformat(ds[0]), date.fromisoformat(ds[-1])


# --- values ------------------------------------------------------------------------------------------


def test_average_messages_per_session_matches_reference(env: Env) -> None:
    first, last = days(env)
    for org in env.expected.orgs:
        r = env.get(org, "average-messages-per-session", start_date=first.isoformat(), end_date=last.isoformat())
        assert r.status_code == 200, r.text
        for row in r.json():
            sessions = env.expected.sessions[(org, row["time"])]
            messages = env.expected.messages[(org, row["time"])]
            assert (row["total_sessions"], row["total_messages"]) == (sessions, messages)
            assert row["avg_messages"] == (int(messages / sessions + 0.5) if sessions else 0)
    weekly = env.get("acme-academy", "average-messages-per-session", start_date=first.isoformat(),
                     end_date=last.isoformat(), aggregation="weekly").json()  # fmt: skip
    assert sum(r["total_sessions"] for r in weekly) == sum(
        n for (o, _), n in env.expected.sessions.items() if o == "acme-academy"
    )


def test_top_students_match_reference(env: Env) -> None:
    first, last = days(env)
    for org in env.expected.orgs:
        totals: Counter[str] = Counter()
        for (o, _), counts in env.expected.human.items():
            if o == org:
                totals.update(counts)
        want = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        r = env.get(org, "top-students-by-chat-messages", start_date=first.isoformat(), end_date=last.isoformat())
        assert r.status_code == 200
        assert [(x["username"], x["chat_message_count"]) for x in r.json()] == want
        # A range of whole weeks around the data reads the weekly sets: the same answer.
        wide = env.get(org, "top-students-by-chat-messages", start_date=(first - timedelta(days=14)).isoformat(),
                       end_date=(last + timedelta(days=14)).isoformat())  # fmt: skip
        assert [(x["username"], x["chat_message_count"]) for x in wide.json()] == want


def test_sentiment_count_and_tenant_cost_match_reference(env: Env) -> None:
    today = datetime.now(UTC).date()
    for org in env.expected.orgs:
        rows = env.get(org, "sentiment-count", period="7d").json()
        assert [r["date"] for r in rows] == [(today - timedelta(days=6 - i)).isoformat() for i in range(7)]
        for row in rows:
            assert row["sentiment_count"] == env.expected.sentiment[(org, row["date"])]
        first, last = days(env)
        cost = env.get(org, "tenant-cost", start_date=first.isoformat(), end_date=last.isoformat()).json()
        want = sum(n for (o, _), n in env.expected.cost.items() if o == org)
        assert cost["cost_nanos"] == want
        assert cost["total_cost"] == pytest.approx(want / 1e9)


def test_chat_history_pages_newest_first(env: Env) -> None:
    org = "acme-academy"
    r = env.get(org, "chat-history", page_size="7")
    body = r.json()
    assert r.status_code == 200
    assert body["count"] == len(env.expected.conversations[org])
    stamps = [c["inserted_at"] for c in body["results"]]
    assert stamps == sorted(stamps, reverse=True) and len(stamps) == 7
    assert body["previous"] is None and "page=2" in body["next"]
    nxt = httpx.get(body["next"], headers={"Authorization": f"Api-Token {env.keys['admin']}"}).json()
    assert not {c["id"] for c in nxt["results"]} & {c["id"] for c in body["results"]}
    one = body["results"][0]
    filtered = env.get(org, "chat-history", filter_user_id=one["student"], mentor=one["mentor"]).json()
    assert one["id"] in {c["id"] for c in filtered["results"]}
    assert all(c["student"] == one["student"] and c["mentor"] == one["mentor"] for c in filtered["results"])


def test_post_chat_history_goes_through_kafka_and_is_listed(env: Env) -> None:
    org = "acme-academy"
    # The server sets the student (the path's user) and the id; what a client says of them is ignored.
    body = {"student": "someone-else", "mentor": "math-tutor", "topics": [{"name": "calculus"}], "title": "Limits"}
    r = httpx.post(env.url(org, "chat-history"), json=body, headers={"Authorization": f"Token {env.keys['admin']}"})
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["id"] and stored["student"] == "tester" and stored["topics"] == [{"name": "calculus"}]
    assert stored["mentor_name"] == "math-tutor" and len(stored["mentor"]) == 36  # a slug is served as a UUID
    deadline = time.monotonic() + 10
    while True:
        found = env.get(org, "chat-history", filter_user_id="tester").json()["results"]
        if found:
            break
        assert time.monotonic() < deadline, "posted record never listed"
        time.sleep(0.1)
    assert found[0]["id"] == stored["id"] and found[0]["title"] == "Limits"
    by_mentor = env.get(org, "chat-history", mentor=stored["mentor"]).json()["results"]
    assert [c["id"] for c in by_mentor] == [stored["id"]]  # the served UUID finds the slug's conversations
    for bad_body, param in (({"topics": [{"name": "x"}]}, "mentor"), ({"mentor": "m", "topics": "x"}, "topics")):
        bad = httpx.post(
            env.url(org, "chat-history"), json=bad_body, headers={"Authorization": f"Token {env.keys['admin']}"}
        )
        assert bad.status_code == 400 and bad.json()["parameter"] == param and bad.json()["detail"], bad.text
    # A form field past 64 bits (found by schemathesis: it was a 503) is a 400 naming it.
    huge = httpx.post(env.url(org, "chat-history"), data={"mentor": "m", "tools": "9" * 25},
                      headers={"Authorization": f"Token {env.keys['admin']}"})  # fmt: skip
    assert huge.status_code == 400 and huge.json()["parameter"] == "tools", huge.text


# --- errors and auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "query", "param"),
    [
        ("average-messages-per-session", {"end_date": "2026-01-01"}, "start_date"),
        ("average-messages-per-session", {"start_date": "2026-13-01", "end_date": "2026-01-01"}, "start_date"),
        ("average-messages-per-session", {"start_date": "2026-02-01", "end_date": "2026-01-01"}, "end_date"),
        (
            "average-messages-per-session",
            {"start_date": "2026-01-01", "end_date": "2026-01-02", "aggregation": "yearly"},
            "aggregation",
        ),
        (
            "average-messages-per-session",
            {"start_date": "2000-01-01", "end_date": "2000-01-02", "aggregation": "hourly"},
            "start_date",
        ),
        ("sentiment-count", {"period": "1y"}, "period"),
        ("tenant-cost", {"start_date": "yesterday", "end_date": "2026-01-01"}, "start_date"),
        ("tenant-cost", {"start_date": "2026-11-02"}, "end_date"),
        ("tenant-cost", {"start_date": "9998-12-31", "end_date": "9999-12-31"}, "end_date"),  # was a 503
        ("user-cost", {"start_date": "2026-11-02", "end_date": "2026-11-02"}, "username"),
        ("top-students-by-chat-messages", {"start_date": "2026-11-02", "end_date": "2026-11-01"}, "end_date"),
        ("chat-history", {"start_date": "2026-02-30"}, "start_date"),
        ("sentiment-count", {"tz": "Asia/Kathmandu"}, "tz"),  # +05:45: not on a half-hour bucket's edge
        ("tenant-cost", {"start_date": "2026-11-02", "end_date": "2026-11-02", "tz": "Asia/Kolkata"}, "tz"),
        # A local day's edges are hourly buckets: past the hourly retention they are gone.
        ("tenant-cost", {"start_date": "2020-01-01", "end_date": "2020-01-02", "tz": "America/New_York"}, "start_date"),
        ("top-students-by-chat-messages", {"tz": "Mars/Olympus_Mons"}, "tz"),
        ("tenant-cost", {"start_date": "2026-11-02", "end_date": "2026-11-02", "tz": "Nowhere"}, "tz"),
        ("chat-history-filter", {"monthly_range": "maybe"}, "monthly_range"),
        ("chat-history-filter", {"start_date": "2026-11-02", "end_date": "2026-11-01"}, "end_date"),
        ("topic-statistics", {"start_date": "2026-11-02", "end_date": "2026-11-01"}, "end_date"),
        ("topic-overview", {"tz": "Asia/Kathmandu"}, "tz"),
        ("overview-summary", {"mentor_id": "m" * 2000}, "mentor_id"),
    ],
)
def test_bad_parameters_get_400_naming_them(env: Env, path: str, query: dict[str, str], param: str) -> None:
    r = env.get("acme-academy", path, **query)
    assert r.status_code == 400, r.text
    assert r.json()["parameter"] == param
    assert r.json()["detail"] and r.json()[param] == [r.json()["detail"]]  # Django REST framework's shapes


def test_without_transcripts_no_content_is_stored_and_what_needs_it_says_so(env: Env) -> None:
    """AIA_TRANSCRIPT_DAYS unset: the demo's messages carry content, none of it is in Redis, and the two
    operations that need it answer 404 naming the setting (a platform_admin key; an analyst's is a 403)."""
    org = "acme-academy"
    r = env.get(org, "transcripts")
    assert r.status_code == 404 and "AIA_TRANSCRIPT_DAYS" in r.json()["detail"], r.text
    assert env.get(org, "transcripts", key="analyst").status_code == 403
    conversation = env.get(org, "chat-history", page_size="1").json()["results"][0]["id"]
    r = httpx.get(f"{env.base}/api/analytics/messages/details/", params={"platform_key": org, "session_id": conversation},
                  headers={"Authorization": f"Api-Token {env.keys['admin']}"}, timeout=10)  # fmt: skip
    assert r.status_code == 404 and "AIA_TRANSCRIPT_DAYS" in r.json()["detail"], r.text
    assert any(e.get("content") for t, e in env.events if t == "chat-messages")

    async def stored() -> list[bytes]:
        redis = Redis.from_url(env.settings.redis_url)
        try:
            return [k async for k in redis.scan_iter(match="*:tx:*")]
        finally:
            await redis.aclose()

    assert asyncio.run(stored()) == []


def test_paging_follows_django_rest_framework(env: Env) -> None:
    org = "acme-academy"
    assert len(env.get(org, "chat-history", page_size="1000").json()["results"]) == min(
        100, len(env.expected.conversations[org])
    )  # capped at 100
    assert len(env.get(org, "chat-history", page_size="lots").json()["results"]) == 20  # the default
    for page in ("0", "9999", "x"):
        r = env.get(org, "chat-history", page=page)
        assert r.status_code == 404 and r.json()["detail"] == "Invalid page.", r.text
    assert env.get(org, "chat-history", sentiment="angry").json()["count"] == 0  # any label filters


# The app in-process answers with ORJSONResponse, which this FastAPI deprecates (the API process does too).
@pytest.mark.filterwarnings("ignore::fastapi.exceptions.FastAPIDeprecationWarning")
async def test_users_details_search_is_bounded_and_long_reads_go_in_short_round_trips(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`users/details/` in-process over the stack's Redis, with its bounds made small: a search over more
    active students than `MAX_SEARCHED` is a 400 naming `search` (the page without a search is still
    answered), and reads cut into round trips of two commands (`queries.PIPELINE_CALLS`) give the answer the
    running API gives. A generation whose student activity is not whole (data applied before it was
    written) is read from the conversations, with the same answers: all time, one mentor's days, a search."""
    from api import platform_users
    from api.app import create_app

    org = "acme-academy"
    query = {"platform_key": org, "date_filter": "all_time", "limit": "100"}
    headers = {"Authorization": f"Api-Token {env.keys['admin']}"}
    chats = [e for t, e in env.events if t == "chat-messages" and e["org"] == org]
    mentor = Counter(e["mentor_id"] for e in chats).most_common(1)[0][0]
    day = sorted(reference.day(reference.ts_ms(e["timestamp"])) for e in chats)[len(chats) // 2]
    asked = [
        query,
        {**query, "search": chats[0]["student"][:4].upper()},
        {**query, "mentor_unique_id": mentor},
        {**query, "date_filter": "custom", "start_date": day, "end_date": day, "mentor_unique_id": mentor},
    ]
    async with httpx.AsyncClient(timeout=10) as running:
        answers = [
            await running.get(f"{env.base}/api/analytics/users/details/", params=q, headers=headers) for q in asked
        ]
    served = answers[0]
    assert served.status_code == 200 and served.json()["total_records"] > 3, served.text
    # The admin's answer is kept per role: the same query by an analyst of the org is refused, not served it.
    async with httpx.AsyncClient(timeout=10) as running:
        analyst = {"Authorization": f"Api-Token {env.keys['analyst']}"}
        refused = await running.get(f"{env.base}/api/analytics/users/details/", params=query, headers=analyst)
    assert refused.status_code == 403 and "etag" not in refused.headers, refused.text
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    redis = Redis.from_url(env.settings.redis_url)
    try:  # written by this code from the generation's first event
        assert await generations.activity_whole(redis, await generations.current(redis))
    finally:
        await redis.aclose()
    slow = create_app(env.settings)

    async def not_whole(redis: Redis, gen: int) -> bool:
        return False

    with monkeypatch.context() as patched:
        patched.setattr(generations, "activity_whole", not_whole)
        async with (
            slow.router.lifespan_context(slow),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=slow), base_url=env.base) as client,
        ):
            for q, want in zip(asked, answers, strict=True):
                r = await client.get("/api/analytics/users/details/", params=q, headers=headers)
                assert (r.status_code, r.json()) == (want.status_code, want.json()), q
    monkeypatch.setattr(queries, "PIPELINE_CALLS", 2)
    monkeypatch.setattr(platform_users, "MAX_SEARCHED", served.json()["total_records"] - 1)
    app = create_app(env.settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=env.base) as client,
    ):
        r = await client.get("/api/analytics/users/details/", params=query, headers=headers)
        assert r.status_code == 200 and r.json() == served.json()
        r = await client.get("/api/analytics/users/details/", params={**query, "search": "student"}, headers=headers)
        assert r.status_code == 400 and r.json()["parameter"] == "search", r.text
        assert "narrow the range" in r.json()["detail"]


def test_auth_matrix(env: Env) -> None:
    acme, globex = "acme-academy", "globex-school"
    assert env.get(acme, "sentiment-count", key=None).status_code == 401
    assert env.get(acme, "sentiment-count", key="not-a-key").status_code == 401
    assert env.get(acme, "sentiment-count", key="revoked").status_code == 401
    assert env.get(acme, "sentiment-count", scheme="Bearer").status_code == 401
    assert env.get(acme, "sentiment-count", key="analyst").status_code == 200
    assert env.get(acme, "sentiment-count", key="analyst", scheme="Token").status_code == 200
    # another org's key: 403 whether or not the org exists, so existence does not leak
    assert env.get(acme, "sentiment-count", key="other").status_code == 403
    assert env.get("no-such-org", "sentiment-count", key="other").status_code == 403
    assert env.get(globex, "top-students-by-chat-messages", key="analyst").status_code == 403
    # all-orgs key: 404 for an org that does not exist
    assert env.get("no-such-org", "sentiment-count", key="admin").status_code == 404
    # chat-history needs platform_admin
    assert env.get(acme, "chat-history", key="analyst").status_code == 403
    assert env.get(acme, "chat-history", key="acme_admin").status_code == 200
    assert env.get(globex, "chat-history", key="acme_admin").status_code == 403
    post = httpx.post(env.url(acme, "chat-history"), json={"student": "x", "mentor": "y"},
                      headers={"Authorization": f"Api-Token {env.keys['analyst']}"})  # fmt: skip
    assert post.status_code == 403


def test_registered_org_exists_with_zeros(env: Env) -> None:
    out = subprocess.run(cli_command("orgs", "register", "fresh-org"), cwd=ROOT,
                         env={**os.environ, **env.settings.as_env()}, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = env.get("fresh-org", "sentiment-count", period="today").json()
    assert rows == [{"date": datetime.now(UTC).date().isoformat(), "sentiment_count": 0, "positive": 0, "neutral": 0,
                     "negative": 0}]  # fmt: skip


def test_operations_endpoints(env: Env) -> None:
    assert httpx.get(f"{env.base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{env.base}/readyz")
    assert ready.status_code == 200 and ready.json()["kafka"] == "ok" and ready.json()["redis"] == "ok"
    metrics = httpx.get(f"{env.base}/metrics", timeout=20).text
    assert "aia_http_requests_total" in metrics
    assert 'aia_consumer_lag{topic="chat-messages"}' in metrics
    assert 'aia_events_applied{org="acme-academy",topic="chat-messages"}' in metrics
    doc = httpx.get(f"{env.base}/openapi.json").json()
    assert "/api/ai-analytics/orgs/{org}/users/{user_id}/tenant-cost/" in doc["paths"]
    assert httpx.get(f"{env.base}/docs").status_code == 200


def test_time_zone_days_and_the_org_default(env: Env) -> None:
    """`tz=` answers in that zone's days (equal to the reference converting each event's time); an org's
    default zone, set with the CLI, applies when a request names none (as the SDK's never do)."""
    org, zone = "acme-academy", "America/Los_Angeles"
    want = reference.local([(t, e) for t, e in env.events if e["org"] == org], zone)
    first, last = days(env)
    first -= timedelta(days=1)  # local days start before the UTC ones
    span = {"start_date": first.isoformat(), "end_date": last.isoformat()}
    rows = env.get(org, "average-messages-per-session", **span, tz=zone).json()
    assert len(rows) == (last - first).days + 1
    for row in rows:
        assert [row["total_sessions"], row["total_messages"]] == want.daily.get((row["time"], ""), [0, 0]), row
    assert sum(r["total_sessions"] for r in rows) == sum(s for (_, who), (s, _) in want.daily.items() if not who)
    top = env.get(org, "top-students-by-chat-messages", **span, tz=zone).json()
    assert [(r["username"], r["chat_message_count"]) for r in top] == want.top(*span.values())
    for row in env.get(org, "sentiment-count", period="30d", tz=zone).json():
        assert row["sentiment_count"] == want.sentiment[row["date"]], row

    def set_zone(name: str) -> None:
        done = subprocess.run(cli_command("orgs", "tz", org, name), cwd=ROOT, env={**os.environ, **env.settings.as_env()},
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert done.returncode == 0, done.stderr

    set_zone(zone)
    try:
        assert env.get(org, "freshness").json()["time_zone"] == zone
        assert env.get(org, "average-messages-per-session", **span).json() == rows
        assert env.get(org, "top-students-by-chat-messages", **span).json() == top
        explicit = env.get(org, "tenant-cost", **span, tz=zone).json()
        assert env.get(org, "tenant-cost", **span).json() == explicit
    finally:
        set_zone("UTC")
    assert env.get(org, "freshness").json()["time_zone"] == "UTC"
    assert env.get(org, "tenant-cost", **span).json() == env.get(org, "tenant-cost", **span, tz="Etc/UTC").json()
    bad = subprocess.run(cli_command("orgs", "tz", org, "Asia/Nowhere"), cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **env.settings.as_env()}, timeout=60, check=False)  # fmt: skip
    assert bad.returncode == 2 and "IANA" in bad.stderr


@pytest.mark.parametrize("days", [7, 90])
def test_every_endpoint_the_serving_benchmark_polls_answers(env: Env, days: int) -> None:
    """bench/run.py's serving section polls these (and stops at a non-200): each answers 200 here."""
    from bench.run import serving_endpoints

    headers = {"Authorization": f"Api-Token {env.keys['admin']}"}
    for name, (path, query) in serving_endpoints(days, "acme-academy").items():
        url = env.base + path if path.startswith("/") else env.url("acme-academy", path.rstrip("/"))
        r = httpx.get(url, params=query, headers=headers, timeout=30)
        assert r.status_code == 200, (name, r.text[:300])


def test_answers_naming_the_org_by_platform_key_are_cached_with_etags(env: Env) -> None:
    """`/api/analytics/` answers name their org by `platform_key`, or by the key's own org without one: each
    carries an ETag and gets 304 with it, like an answer under the org's path; another org's key is refused
    and shown nothing kept; an all-orgs key must name the org."""

    def ask(key: str = "analyst", tag: str | None = None, **query: Any) -> httpx.Response:
        headers = {"Authorization": f"Api-Token {env.keys[key]}"} | ({"If-None-Match": tag} if tag else {})
        return httpx.get(f"{env.base}/api/analytics/sessions/", params=query, headers=headers)

    named = ask(platform_key="acme-academy")
    etag = named.headers["etag"]
    assert named.status_code == 200 and ask(platform_key="acme-academy", tag=etag).status_code == 304
    assert ask(key="admin", platform_key="acme-academy", tag=etag).status_code == 304  # any key that may read it
    own = ask()  # the analyst key's own org: acme-academy
    assert (own.status_code, own.json()) == (200, named.json())
    assert ask(tag=own.headers["etag"]).status_code == 304
    refused = ask(key="other", platform_key="acme-academy", tag=etag)
    assert refused.status_code == 403 and "etag" not in refused.headers
    unnamed = ask(key="admin")
    assert (unnamed.status_code, unnamed.json()["parameter"]) == (400, "platform_key")
    assert ask(key="admin", platform_key="globex-school").headers["etag"] != etag


def test_answers_are_shared_per_data_version_with_etags(env: Env) -> None:
    """An answer carries an ETag; asking again with it gets 304 until the org's data changes; a refused
    caller never gets a kept answer; new events, an erasure's version and the org's time zone each give a
    new answer (api/cache.py)."""
    org = "acme-academy"
    today = datetime.now(UTC).date().isoformat()
    span = {"start_date": today, "end_date": today}
    first = env.get(org, "average-messages-per-session", **span)
    etag = first.headers["etag"]
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"

    def ask(key: str = "admin", tag: str | None = None, **query: Any) -> httpx.Response:
        headers = {"Authorization": f"Api-Token {env.keys[key]}"} | ({"If-None-Match": tag} if tag else {})
        return httpx.get(env.url(org, "average-messages-per-session"), params=query or span, headers=headers)

    again = ask(tag=etag)
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    assert ask(tag=f'W/{etag}, "other"').status_code == 304
    swapped = ask(end_date=today, start_date=today)  # the same query in another order: the same answer
    assert (swapped.headers["etag"], swapped.json()) == (etag, first.json())
    assert ask(key="analyst", tag=etag).status_code == 304  # any key that may read the org
    for refused in ("other", "revoked"):  # the route says why; nothing kept is shown
        r = ask(key=refused, tag=etag)
        assert r.status_code in (401, 403) and "etag" not in r.headers and "detail" in r.json()
    other_query = env.get(org, "average-messages-per-session", **span, aggregation="hourly")
    assert other_query.headers["etag"] != etag

    def on_redis(change: Callable[[Redis], Awaitable[Any]]) -> None:
        async def run() -> None:
            redis = Redis.from_url(env.settings.redis_url)
            try:
                await change(redis)
            finally:
                await redis.aclose()

        asyncio.run(run())

    on_redis(lambda r: r.hincrby(keys.erasures(org), keys.ERASURES_VERSION, 1))  # what an erasure does first
    assert ask(tag=etag).status_code == 200
    etag = ask().headers["etag"]
    on_redis(lambda r: queries.set_org_time_zone(r, org, "Europe/Berlin"))
    try:
        assert ask(tag=etag).status_code == 200
    finally:
        on_redis(lambda r: queries.set_org_time_zone(r, org, None))
    assert ask(tag=etag).status_code == 304

    # New events for the org: the same question gets a new answer, with the new numbers.
    before = ask().json()
    now = datetime.now(UTC).isoformat()
    session = f"etag-{time.time_ns()}"
    new = [("chat-messages", {"event_id": f"{session}-{i}", "org": org, "timestamp": now, "session_id": session,
                              "student": "etag-student", "mentor_id": "etag-mentor", "role": "human"})
           for i in range(3)]  # fmt: skip
    asyncio.run(produce(env.settings, new, seconds=0.1))
    deadline = time.monotonic() + 60
    while (r := ask(tag=etag)).status_code == 304 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 200 and r.headers["etag"] != etag
    total = sum(row["total_sessions"] for row in r.json())
    assert total == sum(row["total_sessions"] for row in before) + 1


# --- fuzzing -----------------------------------------------------------------------------------------


def test_fuzz_no_500_and_responses_match_schema(env: Env) -> None:
    """Schemathesis cases for every operation, with an all-orgs key, another org's key, and none."""
    schema = schemathesis.openapi.from_url(f"{env.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    keys = [env.keys["admin"], env.keys["other"], None]
    for op in operations:

        @given(case=op.as_strategy(), which=st.integers(0, 2), real_org=st.booleans())
        @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any, which: int, real_org: bool) -> None:
            if real_org and case.path_parameters and "org" in case.path_parameters:
                case.path_parameters["org"] = "acme-academy"
            key = keys[which]
            headers = {} if key is None else {"Authorization": f"Api-Token {key}"}
            response = case.call(headers=headers, timeout=20)
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text)
            if response.status_code in (200, 201):
                case.validate_response(response)

        check()


def test_schemathesis_run_finds_document_and_api_agree(env: Env, tmp_path: Path) -> None:
    """`st run` as a user would run it, failing on a 5xx, on an answer outside the document, and on the
    warnings that say the document and the API disagree: an operation that rejects most generated data
    (validation mismatch, a valid rate under 20%) or that never finds what it asks for (missing test data).
    The item operations get conversations of their own: one to read, replace and change, one to delete; an
    observation and a trace of the demo's to read; `users/details/` its first page and a search its
    students match (a page past the last, or a search nobody matches, is a 404 that says nothing of the
    document); and there, with the most parameters of the family, no warning is raised (its checks still
    run): `start_date` and `end_date` are refused beside any `date_filter` but custom, a dependency between
    parameters that OpenAPI cannot state, so most generated combinations are refused by design."""
    org = "acme-academy"
    admin = {"Authorization": f"Api-Token {env.keys['admin']}"}
    conversations = []
    for title in ("fuzzed", "deleted"):
        r = httpx.post(env.url(org, "chat-history"), json={"mentor": "fuzz-tutor", "title": title}, headers=admin)
        assert r.status_code == 201, r.text
        conversations.append(r.json()["id"])
    deadline = time.monotonic() + 10
    while any(
        httpx.get(f"{env.url(org, 'chat-history')}{c}/", headers=admin).status_code != 200 for c in conversations
    ):
        assert time.monotonic() < deadline, "posted records never readable"
        time.sleep(0.1)

    listed = {path: env.get(org, path, limit="1").json()["results"][0]["id"] for path in ("observations", "traces")}

    def run(conversation: str, method: str, *filters: str) -> None:
        config = tmp_path / f"{method}.toml"
        config.write_text(
            "[warnings]\n"
            'fail-on = ["missing_test_data", "validation_mismatch", "low_valid_rate"]\n'
            "[parameters]\n"
            f'org = "{org}"\nplatform_key = "{org}"\nconversation_id = "{conversation}"\n'
            f'observation_id = "{listed["observations"]}"\ntrace_id = "{listed["traces"]}"\n'
            '[[operations]]\ninclude-path = "/api/analytics/users/details/"\n'
            'parameters = { page = "1", search = "student" }\nwarnings = false\n'
        )
        command = [str(Path(sys.executable).parent / "st"), "--config-file", str(config), "run",
                   f"{env.base}/openapi.json", "-H", f"Authorization: Api-Token {env.keys['admin']}",
                   "--phases", "examples,coverage,fuzzing", "--max-examples", "30",
                   "--checks", "not_a_server_error,response_schema_conformance", *filters]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]

    # transcripts/ and messages/details/ answer 404 unless AIA_TRANSCRIPT_DAYS is set (tests/test_sdk.py
    # drives them with it set, and test_without_transcripts_... checks the 404 here).
    run(conversations[0], "all-but-delete", "--exclude-method", "DELETE", "--exclude-path-regex",
        "(transcripts|messages/details)/$")  # fmt: skip
    run(conversations[1], "delete", "--include-method", "DELETE")


# --- dashboard -----------------------------------------------------------------------------------------


class Page(HTMLParser):
    """A DOM as Chromium dumps it: per element with an id, its attributes, the tags inside it and its text."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.attrs: dict[str, dict[str, str]] = {}
        self.inside: dict[str, Counter[str]] = {}
        self.texts: dict[str, list[str]] = {}
        self.options: list[str] = []  # the values of every <option>
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for _, ident in self.stack:
            if ident:
                self.inside[ident][tag] += 1
        ident = dict(attrs).get("id") or ("body" if tag == "body" else "")
        if tag == "option":
            self.options.append(dict(attrs).get("value") or "")
        if ident:
            self.attrs[ident] = {k: v or "" for k, v in attrs}
            self.inside[ident], self.texts[ident] = Counter(), []
        if tag not in self.VOID:
            self.stack.append((tag, ident))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        for _, ident in self.stack:
            if ident:
                self.texts[ident].append(data)

    def text(self, ident: str) -> str:
        return "".join(self.texts[ident])

    def chart(self, ident: str, **want: object) -> dict[str, str]:
        """A chart ECharts drew (its SVG inside) after a successful fetch, whose data-* attributes (points
        drawn, the sum of its main series, ...) are `want`'s values."""
        attrs, inside = self.attrs[ident], self.inside[ident]
        assert attrs.get("data-state") == "ok", (ident, attrs)
        assert inside["svg"] >= 1 and inside["path"] >= 1, (ident, inside)
        got = {k: attrs.get("data-" + k.replace("_", "-")) for k in want}
        assert got == {k: str(v) for k, v in want.items()}, ident
        return attrs


def test_dashboard_in_headless_chromium_shows_every_panel_with_live_data(env: Env, tmp_path: Path) -> None:
    """Every panel drawn by ECharts (or a table) from the API's answer to the same query, for the org and for
    one mentor's view; a day without sessions or without a rating drawn as a gap, never as an average of 0."""
    org = "acme-academy"
    today = date.fromisoformat(env.get(org, "freshness").json()["today"])

    def ago(n: int) -> str:
        return (today - timedelta(days=n)).isoformat()

    def get(path: str, **query: str) -> Any:
        r = env.get(org, path, **query)
        assert r.status_code == 200, r.text
        return r.json()

    def newer(path: str, **query: str) -> Any:
        """An answer of the newer family, the org named by platform_key as the dashboard names it."""
        headers = {"Authorization": f"Api-Token {env.keys['admin']}"}
        r = httpx.get(f"{env.base}/api/analytics/{path}/", params={"platform_key": org, **query}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def check_scoped(page: Page, mentor: dict[str, str]) -> int:
        """The panels a mentor scopes; returns the sessions drawn."""
        unique = {"mentor_unique_id": mentor["mentor_id"]} if mentor else {}  # the newer family's name for it
        sessions = get("average-messages-per-session", start_date=ago(13), end_date=ago(0), **mentor)
        empty = sum(1 for r in sessions if r["total_sessions"] == 0)
        total = sum(r["total_sessions"] for r in sessions)
        page.chart("sessions-chart", points=len(sessions), sum=total, empty=empty)
        assert ("without sessions" in page.text("sessions-note")) == (empty > 0)
        span = {"start_date": ago(29), "end_date": ago(0), "aggregation": "daily", **mentor}
        convs, users = get("conversation", **span), get("total-users-by-mentor", **span)
        page.chart("activity-chart", points=len(convs), sum=sum(r["conversation_count"] for r in convs),
                   students_points=len(users), students_sum=sum(r["user_count"] for r in users))  # fmt: skip
        hourly = get("conversation", start_date=ago(27), end_date=ago(0), aggregation="hourly", **mentor)
        assert len(hourly) == 28 * 24  # the org's days are UTC's
        page.chart("heatmap-chart", points=len(hourly), sum=sum(r["conversation_count"] for r in hourly), cells=7 * 24)
        assert page.inside["heatmap-chart"]["path"] >= 7 * 24  # a cell per weekday and hour
        busiest = newer("time", date_filter="custom", start_date=ago(27), end_date=ago(0), **unique)
        assert busiest["value"] > 1 and page.attrs["busiest"]["data-state"] == "ok"
        assert page.attrs["busiest"]["data-sum"] == str(busiest["value"])
        weekday = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")[busiest["day_of_week"]]
        hour, value = busiest["hour"], busiest["value"]
        assert page.text("busiest") == f"busiest hour: {weekday} {hour:02d}:00, {value:,} messages"
        split = get("user-metrics-pie-chart", start_date=ago(29), end_date=ago(0), **mentor)
        new, returning = split["new_users"], split["returning_users"]
        assert new["count"] > 0  # the demo's students all wrote first within these days
        drawn = page.chart("new-users-chart", points=2, sum=new["count"] + returning["count"], new=new["count"],
                           returning=returning["count"])  # fmt: skip
        assert [float(drawn[f"data-{k}-percentage"]) for k in ("new", "returning")] == [
            new["percentage"], returning["percentage"]]  # fmt: skip
        topics = get("most-discussed-topics", start_date=ago(29), end_date=ago(0), **mentor)
        assert topics
        page.chart("topics-chart", points=min(10, len(topics)), sum=sum(t["conversation_count"] for t in topics[:10]),
                   topics=len(topics), top=topics[0]["topic_name"])  # fmt: skip
        top = get("top-students-by-chat-messages", start_date=ago(29), end_date=ago(0), **mentor)
        assert top and page.attrs["top"]["data-rows"] == str(len(top))
        assert f"1{top[0]['username']}{top[0]['chat_message_count']:,}" in page.text("top")
        return total

    shot = ROOT / "docs" / "dashboard.png"
    url = f"{env.base}/dashboard/#org={org}&key={env.keys['admin']}"
    page = Page(render(url, tmp_path / "all", screenshot=shot, size="1280,4300"))
    assert page.attrs["body"].get("data-loaded") == "true", page.text("error")
    all_sessions = check_scoped(page, {})
    assert "newest event applied" in page.text("freshness") and "days in UTC" in page.text("freshness")

    # Distinct students per day: the activity panel's line, for the whole org usage-summary/'s rows.
    usage = get("usage-summary", start_date=ago(29), end_date=ago(0))
    page.chart("activity-chart", students_points=len(usage), students_sum=sum(r["user_count"] for r in usage))
    sentiment = get("sentiment-count", period="7d")
    page.chart("sentiment-chart", points=7, sum=sum(r["sentiment_count"] for r in sentiment))
    shares = get("user-sentiment", start_date=ago(6), end_date=ago(0))
    assert shares["total_sentiments"] == sum(r["sentiment_count"] for r in sentiment) > 0
    drawn = page.chart("sentiment-share-chart", points=3, sum=shares["total_sentiments"])
    assert {k: float(drawn[f"data-{k}"]) for k in shares["sentiment_distribution"]} == shares["sentiment_distribution"]
    rated = get("rating-summary", start_date=ago(13), end_date=ago(0))
    assert sum(r["total_ratings"] for r in rated) > 0  # the demo rates two sessions in five
    # The mean rating: a point per day with a rating, a gap (no point, never 0) on the others.
    means = newer("ratings", date_filter="custom", start_date=ago(13), end_date=ago(0))["points"]
    gaps = 14 - len(means)
    assert means and gaps > 0  # the demo's traffic is of the last few days
    assert {p["date"][:10] for p in means} <= {r["time"] for r in rated if r["total_ratings"]}
    drawn = page.chart("ratings-chart", points=14, sum=sum(r["total_ratings"] for r in rated), mean_points=len(means),
                       mean_gaps=gaps)  # fmt: skip
    assert float(drawn["data-mean-sum"]) == pytest.approx(sum(p["value"] for p in means))
    assert f"{gaps} of 14 days without a rating" in page.text("ratings-note")
    nanos = sum(get("tenant-cost", start_date=ago(n), end_date=ago(n))["cost_nanos"] for n in range(14))
    page.chart("cost-chart", points=14, sum=nanos)
    assert nanos > 0 and page.text("cost-total").startswith("$")
    span = {"start_date": ago(13), "end_date": ago(0)}
    by_model = get("costs/model", **span)
    drawn = page.chart("cost-models-chart", points=len(by_model["models"]), top=by_model["model"])
    assert float(drawn["data-sum"]) == pytest.approx(sum(m["total_cost"] for m in by_model["models"]))
    by_mentor = get("costs/permentor", **span)["mentor_data"]
    page.chart("cost-mentors-chart", points=len(by_mentor))
    by_user = get("costs/users", **span)
    assert by_user and page.attrs["cost-users"]["data-rows"] == str(len(by_user))
    assert by_user[0]["username"] in page.text("cost-users")
    latest = get("chat-history", page_size="10")["results"]
    assert page.attrs["convs"]["data-rows"] == str(len(latest)) and latest[0]["student"] in page.text("convs")
    traces = get("traces", limit="8")["results"]
    assert traces and page.attrs["traces"]["data-rows"] == str(len(traces)) and traces[0]["id"] in page.text("traces")
    calls = [o for o in get("observations", search=traces[0]["id"], limit="100")["results"]
             if o["trace_id"] == traces[0]["id"]]  # fmt: skip
    assert page.attrs["trace-note"]["data-trace"] == traces[0]["id"]
    assert calls and page.attrs["trace-calls"]["data-rows"] == str(len(calls))
    assert calls[0]["provided_model_name"] in page.text("trace-calls")
    assert shot.stat().st_size > 10_000

    # A mentor's view: the selector lists the mentors the cost answers name; the scoped panels redraw for one.
    assert by_mentor and {m["mentor_unique_id"] for m in by_mentor} <= set(page.options)
    mentor = max(by_mentor, key=lambda m: (len(m["mentor_sessions"]), m["mentor_name"]))
    scoped = Page(render(f"{url}&mentor={mentor['mentor_unique_id']}", tmp_path / "mentor"))
    assert scoped.attrs["body"].get("data-loaded") == "true", scoped.text("error")
    assert scoped.attrs["mentor"]["data-selected"] == mentor["mentor_unique_id"]
    assert f"mentor {mentor['mentor_name']}" in scoped.text("mentor-note")
    assert 0 < check_scoped(scoped, {"mentor_id": mentor["mentor_unique_id"]}) < all_sessions


# --- analytics-aggregates ----------------------------------------------------------------------------


def test_aggregates_topic_rebuilds_the_api_values(env: Env) -> None:
    latest = asyncio.run(read_compacted(env.settings))
    first, last = days(env)
    for org in env.expected.orgs:
        rows = env.get(org, "average-messages-per-session", start_date=first.isoformat(), end_date=last.isoformat())
        for row in rows.json():
            day = row["time"].replace("-", "")
            sessions = latest.get(f"{org}|sessions|d|{day}", {}).get("value", 0)
            messages = latest.get(f"{org}|messages|d|{day}", {}).get("value", 0)
            assert (sessions, messages) == (row["total_sessions"], row["total_messages"]), (org, day)
        cost = env.get(org, "tenant-cost", start_date=first.isoformat(), end_date=last.isoformat()).json()
        rebuilt = sum(v["value"] for k, v in latest.items() if k.startswith(f"{org}|cost_nanos|d|"))
        assert rebuilt == cost["cost_nanos"]
        top = env.get(org, "top-students-by-chat-messages", start_date=first.isoformat(), end_date=last.isoformat())
        totals: Counter[str] = Counter()
        for v in latest.values():
            if v["org"] == org and v["metric"] == "top_students" and v["grain"] == "d":  # weeks repeat the days
                totals.update(v["value"])
        want = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        assert [(r["username"], r["chat_message_count"]) for r in top.json()] == want


# --- what a hostile client may send -------------------------------------------------------------------


def test_a_repeated_parameter_is_a_400_and_never_served_from_the_cache(env: Env) -> None:
    """The cache names an answer by the parsed query: `a=1&a=2` and `a=2&a=1` are refused, not served one
    another's answer; a percent-encoded spelling of the same query is the same answer."""
    org = "acme-academy"
    first, last = days(env)
    headers = {"Authorization": f"Api-Token {env.keys['admin']}"}
    url = env.url(org, "average-messages-per-session")
    for query in (
        f"start_date={first}&start_date={last}&end_date={last}",
        f"start_date={last}&end_date={last}&start_date={first}",
    ):
        r = httpx.get(f"{url}?{query}", headers=headers)
        assert r.status_code == 400 and r.json()["parameter"] == "start_date", r.text
    plain = httpx.get(f"{url}?start_date={first}&end_date={last}", headers=headers)
    encoded = httpx.get(f"{url}?end_date={str(last).replace('-', '%2D')}&start_date={first}", headers=headers)
    assert plain.status_code == encoded.status_code == 200
    assert (plain.headers["etag"], plain.json()) == (encoded.headers["etag"], encoded.json())


def test_chat_history_bodies_too_big_or_too_deep_are_client_errors(env: Env) -> None:
    org = "acme-academy"
    headers = {"Authorization": f"Token {env.keys['admin']}", "Content-Type": "application/json"}
    url = env.url(org, "chat-history")
    for size in (2_000_000, 10_000_000):  # over the documented 512 KiB: 413, not "Kafka unavailable, retry"
        body = b'{"mentor": "m", "metadata": "' + b"x" * size + b'"}'
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        assert r.status_code == 413 and r.json()["parameter"] == "body", r.text[:200]
    for depth in (300, 1000):  # orjson reads 1,024 levels and writes 254: 400, not 503
        body = b'{"mentor": "m", "metadata": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        r = httpx.post(url, content=body, headers=headers)
        assert r.status_code == 400 and r.json()["parameter"] == "body" and "deep" in r.json()["detail"], r.text[:200]
    many = httpx.post(url, json={"mentor": "m", "topics": [{"name": f"t{i}"} for i in range(65)]}, headers=headers)
    assert many.status_code == 400 and "topics" in many.json()["detail"], many.text


LIMIT = 512 * 1024  # the documented largest chat-history body (docs/contract.md)


def test_a_body_at_the_limit_is_taken_and_one_byte_over_is_a_413_naming_it(env: Env) -> None:
    """Exactly 512 KiB is written; one byte more is a 413 in the API's error shape, whether the client
    declares the length or streams it chunked, as JSON or as a form. The bodies are padded with the blanks
    JSON allows after a value, so what is stored stays small."""
    org = "acme-academy"
    url = f"{env.base}/api/ai-analytics/orgs/{org}/users/limit-prober/chat-history/"  # a user of its own
    headers = {"Authorization": f"Api-Token {env.keys['admin']}", "Content-Type": "application/json"}
    record = b'{"mentor": "limit-mentor", "title": "at the limit"}'

    def padded(size: int) -> bytes:
        return record + b" " * (size - len(record))

    def chunked(body: bytes, step: int = 64 * 1024) -> Iterator[bytes]:  # no Content-Length: streamed
        yield from (body[i : i + step] for i in range(0, len(body), step))

    for how, send in (
        ("declared", lambda body: httpx.post(url, content=body, headers=headers, timeout=30)),
        ("chunked", lambda body: httpx.post(url, content=chunked(body), headers=headers, timeout=30)),
    ):
        at = send(padded(LIMIT))
        assert at.status_code == 201, (how, at.text[:200])
        assert at.json()["title"] == "at the limit" and at.json()["student"] == "limit-prober"
        over = send(padded(LIMIT + 1))
        assert over.status_code == 413, (how, over.text[:200])
        detail = over.json()["detail"]
        assert over.json() == {"detail": detail, "body": [detail], "parameter": "body"}, how  # DRF's shape
        assert str(LIMIT) in detail, detail  # it names the limit
    way_over = httpx.post(url, content=chunked(padded(8 * LIMIT)), headers=headers, timeout=30)
    assert way_over.status_code == 413, way_over.text[:200]
    form = {"mentor": "limit-mentor", "title": "x" * LIMIT}  # form-urlencoded: the encoded body counts
    r = httpx.post(url, data=form, headers={"Authorization": headers["Authorization"]}, timeout=30)
    assert r.status_code == 413 and r.json()["parameter"] == "body", r.text[:200]
    deadline = time.monotonic() + 10
    while (listed := env.get(org, "chat-history", filter_user_id="limit-prober").json())["count"] < 2:
        assert time.monotonic() < deadline, "the records at the limit were never listed"
        time.sleep(0.1)
    assert listed["count"] == 2 and {c["title"] for c in listed["results"]} == {"at the limit"}  # none over it


@pytest.mark.parametrize("scheme", ["Api-Token", "api-token", "API-TOKEN", "aPI-tOKEN", "Token", "token", "TOKEN"])
def test_the_scheme_is_taken_in_any_case_of_its_name(env: Env, scheme: str) -> None:
    """As Django REST framework's TokenAuthentication: the scheme's name compared without case."""
    r = env.get("acme-academy", "sentiment-count", key="analyst", scheme=scheme)
    assert r.status_code == 200, r.text
    across = httpx.get(f"{env.base}/api/ai-analytics/costs/pertenant/", params={"start_date": "2026-01-01",
                       "end_date": "2026-01-02"}, headers={"Authorization": f"{scheme} {env.keys['admin']}"})  # fmt: skip
    assert across.status_code == 200, across.text


def test_look_alike_schemes_and_malformed_headers_are_401(env: Env) -> None:
    """Only ASCII case is ignored: a scheme spelled with look-alike characters (sent as UTF-8 bytes), a
    Latin-1 blank that Python's str.split() would take for a space (sent as its one byte), or a header that
    is not exactly `<scheme> <key>` is refused like no key, as DRF refuses it."""
    key = env.keys["admin"]
    for header in (
        f"Api\u2013Token {key}",  # en dash
        f"Api\u2010Token {key}",  # hyphen
        f"Api-T\u043eken {key}",  # Cyrillic o
        f"\u0410pi-Token {key}",  # Cyrillic A
        f"Api-To\u212aen {key}",  # Kelvin sign: "\u212a".lower() == "k"
        f"\uff21pi-Token {key}",  # fullwidth A
        f"Api-Token\u00a0{key}",  # no-break space (UTF-8)
        f"Api_Token {key}",
        f"ApiToken {key}",
        f"Api-Tokens {key}",
        f"Bearer {key}",
        f"{key}",
        "Api-Token",
        f"Api-Token {key} {key}",
    ):
        r = httpx.get(env.url("acme-academy", "sentiment-count"), headers={"Authorization": header.encode()})
        assert r.status_code == 401, (header.replace(key, "<key>"), r.status_code, r.text)
        assert r.json()["detail"] and r.headers["www-authenticate"] == "Api-Token"
    for blank in (b"\xa0", b"\x85"):  # no-break space, next line: blanks to str.isspace(), not to DRF
        header_bytes = b"Api-Token" + blank + key.encode()
        r = httpx.get(env.url("acme-academy", "sentiment-count"), headers={"Authorization": header_bytes})
        assert r.status_code == 401, (blank, r.status_code, r.text)
    spaced = httpx.get(env.url("acme-academy", "sentiment-count"), headers={"Authorization": f"Api-Token \t {key}"})
    assert spaced.status_code == 200, spaced.text  # ASCII blanks separate, as DRF splits the header


def test_any_username_an_event_may_carry_can_be_erased(env: Env) -> None:
    org = "globex-school"
    headers = {"Authorization": f"Api-Token {env.keys['admin']}"}
    prefix = env.url(org, "students/placeholder").removesuffix("placeholder/")
    for username in ("a/b", "x" * 1024, "eve|top_students|x"):
        r = httpx.delete(f"{prefix}{quote(username, safe='')}/", headers=headers)
        assert r.status_code == 200, (username[:20], r.status_code, r.text[:200])
        assert r.json()["org"] == org
    too_long = httpx.delete(f"{prefix}{'x' * 1025}/", headers=headers)
    assert too_long.status_code == 400
