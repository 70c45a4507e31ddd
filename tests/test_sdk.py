"""The platform's published Python SDK (iblai 4.202.2) against the real stack.

Every endpoint the SDK's `AiAnalyticsApi` offers for this service is driven through the SDK's own generated
method, every answer is parsed with the SDK's own models (the status code asserted with it, since a status
the method's map does not list parses silently to None), and every number is checked against the
independent batch reference (tests/reference.py) over the events produced. One worker and one API for the
module, over demo traffic plus a few observations without a session. Mentor ids are read from the events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from typing import Any
from urllib.parse import quote

import httpx
import iblai.models as M
import pytest
from iblai import ApiClient, Configuration
from iblai.api.ai_analytics_api import AiAnalyticsApi
from iblai.api_response import ApiResponse
from iblai.exceptions import (
    ApiException,
    BadRequestException,
    ForbiddenException,
    NotFoundException,
    UnauthorizedException,
)
from iblai.rest import RESTResponse

from infra.kafka import KafkaBroker
from infra.procs import ROOT, cli_command
from infra.redis import RedisServer
from tables import ids
from tests import reference
from tests.support import Env, WorkerProcess, api_settings, create_keys, demo_events, produce, start_api, wait_applied

pytestmark = pytest.mark.integration

CALLER = "tester"  # the path's user_id of the analytics reads: the caller, as the platform's clients send it
WRITES = "sdk-writes"  # a registered org of its own for chat-history writes: the demo orgs stay the reference's
HOUR_MS = 3_600_000
TODAY = datetime.now(UTC).date()
LATER, EARLIER = TODAY - timedelta(days=2), TODAY - timedelta(days=9)  # a range that ends before it starts

# The `_response_types_map` of each SDK method (local to the generated method, so repeated here).
AVG_MESSAGES = {"200": "List[MessageStatistics]", "400": None, "404": None}
CONVERSATIONS = {"200": "List[ConversationVolume]", "400": None, "404": None}
USERS_BY_MENTOR = {"200": "List[UserChatByPeriod]", "400": None, "404": None}
RATINGS = {"200": "List[RatingRecord]", "400": None, "404": None}
TOPIC_RECORDS = {"200": "List[TopicRecord]", "400": None, "404": None}
TOPICS_SUMMARY = {"200": "List[TopicSummaryView]"}
TOPIC_DETAILS = {"200": "TopicDetails"}
TOPIC_STATISTICS = {"200": "PaginatedTopicStatisticsResponse"}
TOPIC_OVERVIEW = {"200": "TopicStatisticsResponse"}
OVERVIEW = {"200": "AnalyticsOverview"}
TOPICS_OVERVIEW = {"200": "TopicsOverview"}
HISTORY_FILTER = {"200": "ChatHistoryFilterData"}
CONVERSATION_SUMMARY = {"200": "ConversationSummary"}
SESSIONS_CHART = {"200": "SessionsChart"}
CONVERSATIONS_CHART = {"200": "ConversationsChart"}
RATINGS_CHART = {"200": "RatingsOvertime"}
BUSIEST = {"200": "AccessTimesHeatmap", "400": None, "403": None, "500": None}
CURRENT_USERS = {"200": "CurrentUsersResponse", "400": None, "403": None, "500": None}
FINANCE = {"200": "BaseFinanceResponse", "400": None, "403": None, "500": None}
FINANCE_DETAILS = {"200": "FinanceDetailsResponse", "400": None, "403": None, "500": None}
INVOICE = {"200": "InvoiceReportResponse", "400": None, "403": None, "500": None}
CONVERSATION_LIST = {"200": "ConversationListResponse"}
USAGE = {"200": "List[UserCountRecord]", "400": None, "404": None}
USER_SENTIMENT = {"200": "SentimentSummary", "400": None, "404": None}
PIE_CHART = {"200": "PieChartData", "400": None, "404": None}
HISTORY_LIST = {"200": "PaginatedConversationsList"}
HISTORY_CREATE = {"201": "Conversations"}
HISTORY_ONE = {"200": "Conversations"}
HISTORY_DESTROY: dict[str, str | None] = {"204": None}
SENTIMENT_COUNT = {"200": "List[UserSentimentCountView]", "404": None}
COST = {"200": "Cost", "400": None, "404": None}
TOP_STUDENTS = {"200": "List[StudentChatMessage]", "400": None, "404": None}
MODEL_COST = {"200": "ModelCost"}
PER_MENTOR = {"200": "TenantMentorTraces", "400": None, "404": None}
PER_USER = {"200": "LLMTracesListResponse", "400": None, "404": None}
PER_TENANT = {"200": "List[CostPerTenant]", "400": None}


# --- the stack ----------------------------------------------------------------------------------------


@dataclass
class Stack:
    env: Env
    events: list[tuple[str, dict[str, Any]]]
    exp: reference.Expected
    obs: list[reference.Observation]
    convs: dict[tuple[str, str], reference.Conversation]
    keys: dict[str, str]
    _clients: dict[str, tuple[ApiClient, AiAnalyticsApi]] = field(default_factory=dict)

    def client(self, key: str = "admin") -> tuple[ApiClient, AiAnalyticsApi]:
        if key in self._clients:
            return self._clients[key]
        cfg = Configuration(
            host=self.env.base,
            api_key={"PlatformApiKeyAuthentication": self.keys.get(key, key)},
            api_key_prefix={"PlatformApiKeyAuthentication": "Api-Token"},
        )
        client = ApiClient(cfg)
        self._clients[key] = (client, AiAnalyticsApi(client))
        return self._clients[key]

    def call(self, method: str, types: dict[str, Any], key: str = "admin", **kwargs: Any) -> ApiResponse[Any]:
        """Call the SDK method, then parse its raw answer the way the SDK does (raises ApiException on 4xx)."""
        client, api = self.client(key)
        raw = getattr(api, method)(_request_timeout=15.0, **kwargs)
        resp = RESTResponse(raw)
        resp.read()
        return client.response_deserialize(response_data=resp, response_types_map=types)

    def mentors(self, org: str) -> list[str]:
        """The org's mentor ids, as the produced chat messages name them."""
        return sorted({e["mentor_id"] for t, e in self.events if t == "chat-messages" and e["org"] == org})

    def conversations(self, org: str) -> dict[str, reference.Conversation]:
        return {cid: c for (o, cid), c in self.convs.items() if o == org}


def sessionless(events: list[tuple[str, dict[str, Any]]], n: int) -> list[tuple[str, dict[str, Any]]]:
    """`n` observations like the demo's but without a session_id: they count for the tenant and the model only."""
    out = []
    for topic, e in [x for x in events if x[0] == "llm-observations"][:n]:
        copy = {k: v for k, v in e.items() if k != "session_id"}
        copy["event_id"] = f"nosession-{e['event_id']}"
        copy["trace_id"] = uuid.uuid4().hex
        out.append((topic, copy))
    return out


@pytest.fixture(scope="module")
def stack(kafka: KafkaBroker, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("sdk")
    # Transcripts on (AIA_TRANSCRIPT_DAYS): the demo's messages carry content; test_api's stack keeps none.
    settings = dataclasses.replace(api_settings(kafka.bootstrap, redis_server.url, "sdk"), transcript_days=7)
    events = demo_events(3000, seed=99)
    events += sessionless(events, 12)
    events += [(t, {**e, "org": "acme-academy", "event_id": f"obs/1|{e['event_id']}", "trace_id": "tr/1|x%2F ü/"})
               for t, e in sessionless(events, 1)]  # ids holding `/`, `|`, `%2F`, a space, a non-ASCII letter  # fmt: skip
    expected = reference.expected(events)

    keys = asyncio.run(create_keys(settings))
    registered = subprocess.run(cli_command("orgs", "register", WRITES), cwd=ROOT,
                                env={**os.environ, **settings.as_env()}, capture_output=True, text=True)  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    worker = WorkerProcess(settings, "sdk-worker").start()
    api_log = tmp / "api.log"
    api = start_api(settings, api_log)
    asyncio.run(produce(settings, events, seconds=2))
    env = Env(settings, f"http://127.0.0.1:{settings.api_port}", keys, expected, worker, api_log)
    wait_applied(env, events, expected, timeout=90)
    yield Stack(env, events, expected, reference.observations(events), reference.conversations(events), keys)
    api.terminate()
    api.wait(30)
    worker.kill()


# --- helpers ------------------------------------------------------------------------------------------


def utc(t: datetime) -> datetime:
    """A served time in UTC; one without an offset is UTC (how the platform writes them)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def period_label(aggregation: str) -> Callable[[datetime], str]:
    """How the reference labels a served period of this aggregation (`hourly`/`hour`: its UTC hour, else its
    UTC day, or the Monday of a week)."""
    if aggregation in ("hourly", "hour"):
        return lambda t: utc(t).strftime("%Y-%m-%dT%H:00:00Z")
    return lambda t: utc(t).date().isoformat()


def ms_of(t: datetime) -> int:
    return (utc(t) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def naive(ms: int) -> datetime:
    """The naive UTC datetime a platform client passes (the SDK sends it without an offset)."""
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)).replace(tzinfo=None)


def usd(nanos: int) -> float:
    return nanos / 1e9


def half_up(messages: int, sessions: int) -> int:
    return (2 * messages + sessions) // (2 * sessions) if sessions else 0


def as_uuid(value: Any) -> uuid.UUID | str:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return str(value)


def ok(r: ApiResponse[Any], status: int, model: type) -> Any:
    assert r.status_code == status, (r.status_code, r.raw_data[:500])
    assert isinstance(r.data, model), (type(r.data), r.raw_data[:500])
    return r.data


def ok_list(r: ApiResponse[Any], model: type) -> list[Any]:
    assert r.status_code == 200, r.raw_data[:500]
    assert isinstance(json.loads(r.raw_data), list), r.raw_data[:500]  # `{}` would parse silently as []
    assert isinstance(r.data, list) and all(isinstance(x, model) for x in r.data)
    return r.data


def days(s: Stack) -> tuple[date, date]:
    ds = sorted({d for _, d in s.exp.days()})
    return date.fromisoformat(ds[0]), date.fromisoformat(ds[-1])


def ranges(s: Stack) -> list[tuple[int, int]]:
    """Hour-aligned [start, end) ranges: everything, everything but the newest hour, everything after the
    first day. Each one's reference cost differs from the whole's, so a range ignored shows."""
    stamps = [o.ts_ms for o in s.obs]
    first = min(stamps) // HOUR_MS * HOUR_MS
    last = max(stamps) // HOUR_MS * HOUR_MS + HOUR_MS
    out = [(first, last), (first, last - HOUR_MS), (first + 24 * HOUR_MS, last)]
    full = reference.cost_nanos(s.obs, first, last)
    for a, b in out[1:]:
        assert 0 < reference.cost_nanos(s.obs, a, b) < full, "the demo no longer spreads over these ranges"
    return out


def history_pages(
    s: Stack, org: str, key: str = "admin", user_id: str = CALLER, **filters: Any
) -> tuple[int, list[Any]]:
    """(count, every Conversations) of a chat-history listing, walking its pages of 100 through the SDK."""
    out: list[Any] = []
    page, count = 1, None
    while True:
        r = s.call("ai_analytics_orgs_users_chat_history_list", HISTORY_LIST, key, org=org, user_id=user_id,
                   page=page, page_size=100, **filters)  # fmt: skip
        data = ok(r, 200, M.PaginatedConversationsList)
        assert all(isinstance(c, M.Conversations) for c in data.results)
        count = data.count if count is None else count
        assert data.count == count, "the count changed while paging"
        out += data.results
        if data.next is None:
            break
        page += 1
        assert page < 100
    assert len(out) == count
    return count, out


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll until `check` returns a truthy value (writes go through Kafka)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except ApiException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {timeout}s; last: {last!r}")


def new_conversation(mentor: uuid.UUID, **fields: Any) -> M.Conversations:
    """A Conversations body as a platform client builds it: the read-only fields must hold something for the
    model to validate, and the SDK leaves them out of the request."""
    base: dict[str, Any] = dict(
        id=uuid.uuid4(), messages="", sentiment="", student="ignored", email="", rating=0, lti_email="",
        lti_username="", inserted_at=datetime.now(UTC),
        topics=[M.TopicModel(name="calculus"), M.TopicModel(name="limits")], mentor=mentor, model="gpt-4o",
        platform="web", has_document=True, memory_tracked=False, llm_name="gpt-4o", llm_provider="openai",
        metadata={"course": "calc-1", "week": 3}, title="Limits at infinity", tools=[1, 2],
    )  # fmt: skip
    base.update(fields)
    return M.Conversations(**base)


def retrieve(s: Stack, org: str, user_id: str, cid: uuid.UUID | str) -> Any:
    r = s.call("ai_analytics_orgs_users_chat_history_retrieve", HISTORY_ONE, org=org, user_id=user_id, id=str(cid))
    return ok(r, 200, M.Conversations)


def served(c: Any) -> dict[str, Any]:
    """The fields a user compares on a conversation."""
    return {
        "student": c.student,
        "mentor": as_uuid(c.mentor),
        "title": c.title,
        "sentiment": c.sentiment,
        "topics": {t.name for t in c.topics},
    }


def wanted(c: reference.Conversation) -> dict[str, Any]:
    return {
        "student": c.student,
        "mentor": as_uuid(c.mentor),
        "title": c.title,
        "sentiment": c.sentiment,
        "topics": c.topics,
    }


# --- average messages per session ---------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["daily", "weekly", "hourly"])
def test_average_messages_per_session_matches_reference(stack: Stack, aggregation: str) -> None:
    first, last = days(stack)
    table = {"daily": stack.exp.daily, "weekly": stack.exp.weekly, "hourly": stack.exp.hourly}[aggregation]
    label = period_label(aggregation)
    for org in sorted(stack.exp.orgs):
        r = stack.call("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES, org=org,
                       user_id=CALLER, start_date=first.isoformat(), end_date=last.isoformat(),
                       aggregation=aggregation)  # fmt: skip
        rows = ok_list(r, M.MessageStatistics)
        got = {label(row.time): (row.total_sessions, row.avg_messages) for row in rows}
        assert len(got) == len(rows), "a period served twice"
        want = {p: (n, half_up(m, n)) for (o, p, who), (n, m) in table.items() if o == org and who == ""}
        assert {p: v for p, v in got.items() if p in want} == want
        assert all(v == (0, 0) for p, v in got.items() if p not in want)
        assert sum(n for n, _ in got.values()) == len(stack.conversations(org))  # every session once


def test_average_messages_per_session_per_mentor(stack: Stack) -> None:
    first, last = days(stack)
    org = "acme-academy"
    for mentor in stack.mentors(org):
        r = stack.call("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES, org=org,
                       user_id=CALLER, start_date=first.isoformat(), end_date=last.isoformat(),
                       mentor_id=mentor)  # fmt: skip
        rows = ok_list(r, M.MessageStatistics)
        got = {utc(row.time).date().isoformat(): (row.total_sessions, row.avg_messages) for row in rows}
        want = {p: (n, half_up(m, n)) for (o, p, who), (n, m) in stack.exp.daily.items() if o == org and who == mentor}
        assert want, f"no sessions of mentor {mentor}"
        assert {p: v for p, v in got.items() if p in want} == want, mentor
        assert all(v == (0, 0) for p, v in got.items() if p not in want), mentor


@pytest.mark.parametrize("aggregation", ["daily", "weekly", "hourly"])
def test_conversation_volume_matches_reference(stack: Stack, aggregation: str) -> None:
    """`conversation/`: conversations started per period, for the org and for each of its mentors."""
    first, last = days(stack)
    table = {"daily": stack.exp.daily, "weekly": stack.exp.weekly, "hourly": stack.exp.hourly}[aggregation]
    label = period_label(aggregation)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            r = stack.call("ai_analytics_orgs_users_conversation_list", CONVERSATIONS, org=org, user_id=CALLER,
                           start_date=first.isoformat(), end_date=last.isoformat(), aggregation=aggregation,
                           mentor_id=mentor or None)  # fmt: skip
            rows = ok_list(r, M.ConversationVolume)
            got = {label(row.var_date): row.conversation_count for row in rows}
            assert len(got) == len(rows), "a period served twice"
            want = {p: n for (o, p, who), (n, _) in table.items() if o == org and who == mentor}
            assert {p: n for p, n in got.items() if p in want} == want, (org, mentor)
            assert all(n == 0 for p, n in got.items() if p not in want), (org, mentor)
            if not mentor:
                assert sum(got.values()) == len(stack.conversations(org))  # every conversation once


@pytest.mark.parametrize("aggregation", ["daily", "hourly"])
def test_total_users_by_mentor_matches_reference(stack: Stack, aggregation: str) -> None:
    """`total-users-by-mentor/`: distinct students who sent a message per hour or day, for the org and for
    each of its mentors, against the reference's sets."""
    first, last = days(stack)
    label = period_label(aggregation)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            r = stack.call("ai_analytics_orgs_users_total_users_by_mentor_list", USERS_BY_MENTOR, org=org,
                           user_id=CALLER, start_date=first.isoformat(), end_date=last.isoformat(),
                           aggregation=aggregation, mentor_id=mentor or None)  # fmt: skip
            rows = ok_list(r, M.UserChatByPeriod)
            got = {label(row.period): row.user_count for row in rows}
            assert len(got) == len(rows), "a period served twice"
            want = {p: len(who) for (o, p, m), who in stack.exp.active.items()
                    if o == org and m == mentor and ("T" in p) == (aggregation == "hourly")}  # fmt: skip
            assert want, (org, mentor)
            assert {p: n for p, n in got.items() if p in want} == want, (org, mentor)
            assert all(n == 0 for p, n in got.items() if p not in want), (org, mentor)


def test_usage_summary_matches_reference(stack: Stack) -> None:
    """`usage-summary/`: distinct students who sent a message per day (the SDK documents no value of
    `group_by`: it changes nothing), against the reference's sets."""
    first, last = days(stack)
    for org in sorted(stack.exp.orgs):
        for group_by in (None, "day"):
            r = stack.call("ai_analytics_orgs_users_usage_summary_list", USAGE, org=org, user_id=CALLER,
                           start_date=first.isoformat(), end_date=last.isoformat(), group_by=group_by)  # fmt: skip
            rows = ok_list(r, M.UserCountRecord)
            got = [(row.var_date.isoformat(), row.user_count) for row in rows]
            want = [(d.isoformat(), len(stack.exp.active.get((org, d.isoformat(), ""), set())))
                    for d in (first + timedelta(days=i) for i in range((last - first).days + 1))]  # fmt: skip
            assert got == want, (org, group_by)
            assert sum(n for _, n in got) > 0, org


def test_user_metrics_pie_chart_matches_reference(stack: Stack) -> None:
    """`user-metrics-pie-chart/`: students who sent a message in the range, new (their first message ever, to
    the org or to the mentor, in it) and returning, with shares adding up to 100, for the org and for each of
    its mentors, over ranges that leave out the first days (so some students return) and one without events."""
    first, last = days(stack)
    spans = [(first, last), (first + timedelta(days=1), last), (last, last), (last - timedelta(days=1),) * 2,
             (first - timedelta(days=9), first - timedelta(days=8))]  # fmt: skip
    returning = 0
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            for start, end in spans:
                r = stack.call("ai_analytics_orgs_users_user_metrics_pie_chart_retrieve", PIE_CHART, org=org,
                               user_id=CALLER, start_date=start.isoformat(), end_date=end.isoformat(),
                               mentor_id=mentor or None)  # fmt: skip
                got = ok(r, 200, M.PieChartData)
                assert isinstance(got.new_users, M.PieChartSegment)
                new, old = reference.new_and_returning(stack.exp, org, *reference.day_ms(str(start), str(end)), mentor)
                where = (org, mentor, start, end)
                assert (got.new_users.count, got.returning_users.count) == (new, old), where
                assert [got.new_users.percentage, got.returning_users.percentage] == reference.shares([new, old]), where
                if start == first:
                    assert new > 0 and old == 0, where  # everyone who wrote is new when the range holds everything
                returning += old
    assert returning > 0, "no range had a returning student"


@pytest.mark.parametrize("group_by", ["day", "hour"])
def test_rating_summary_matches_reference(stack: Stack, group_by: str) -> None:
    """`rating-summary/`: conversations whose newest record holds a rating, per day or hour of its
    `inserted_at`."""
    first, last = days(stack)
    want_all = reference.ratings(stack.convs)
    label = period_label(group_by)
    for org in sorted(stack.exp.orgs):
        r = stack.call("ai_analytics_orgs_users_rating_summary_list", RATINGS, org=org, user_id=CALLER,
                       start_date=first.isoformat(), end_date=last.isoformat(), group_by=group_by)  # fmt: skip
        rows = ok_list(r, M.RatingRecord)
        got = {label(row.time): row.total_ratings for row in rows}
        assert len(got) == len(rows), "a period served twice"
        want = {p: n for (o, p), n in want_all.items() if o == org and ("T" in p) == (group_by == "hour")}
        assert sum(want.values()) > 0, org  # the demo traffic rates some conversations
        assert {p: n for p, n in got.items() if p in want} == want, org
        assert all(n == 0 for p, n in got.items() if p not in want), org


def topics_in(stack: Stack, org: str, mentor: str, first: date, last: date) -> list[tuple[str, list[int]]]:
    """The reference's (topic, [conversations, messages, judged, score, rated, rating]) over the days, most
    conversations first, ties by topic."""
    total: dict[str, list[int]] = defaultdict(lambda: [0] * 6)
    for (o, d, who), by_topic in reference.topics_by_day(stack.events, stack.convs).items():
        if o == org and who == mentor and first <= date.fromisoformat(d) <= last:
            for name, counts in by_topic.items():
                total[name] = [a + b for a, b in zip(total[name], counts, strict=True)]
    return sorted(total.items(), key=lambda row: (-row[1][0], row[0]))


def two_places(numerator: int, denominator: int) -> str:
    return "" if denominator == 0 else f"{Decimal(numerator) / Decimal(denominator):.2f}"


def test_topics_match_reference(stack: Stack) -> None:
    """`most-discussed-topics/` (every topic, per mentor too), `topics/summary/` (the top 10) and
    `/api/analytics/topics/details/` (paged, searchable): the conversations chat history lists under each
    topic over the days, and their messages."""
    first, last = days(stack)
    second = first + timedelta(days=1)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            for a, b in ((first, last), (second, second)):
                want = topics_in(stack, org, mentor, a, b)
                r = stack.call("ai_analytics_orgs_users_most_discussed_topics_list", TOPIC_RECORDS, org=org,
                               user_id=CALLER, start_date=a.isoformat(), end_date=b.isoformat(),
                               mentor_id=mentor or None)  # fmt: skip
                rows = ok_list(r, M.TopicRecord)
                assert [(x.topic_name, x.conversation_count) for x in rows] == [(t, c[0]) for t, c in want]
                r = stack.call("analytics_topics_details_retrieve", TOPIC_DETAILS, platform_key=org,
                               date_filter="custom", start_date=a, end_date=b, limit=100,
                               mentor_unique_id=uuid.UUID(mentor) if mentor else None)  # fmt: skip
                details = ok(r, 200, M.TopicDetails)
                assert [(x.name, x.conversations, x.messages, x.sessions) for x in details.results] == [
                    (t, c[0], c[1], c[0]) for t, c in want], (org, mentor)  # fmt: skip
                r = stack.call("ai_analytics_orgs_users_topic_statistics_retrieve", TOPIC_STATISTICS, org=org,
                               user_id=CALLER, start_date=a.isoformat(), end_date=b.isoformat(), page_size=100,
                               mentor_id=mentor or None)  # fmt: skip
                stats = ok(r, 200, M.PaginatedTopicStatisticsResponse)
                assert stats.count == len(want) and stats.next is None
                assert [(x.name, x.conversations, x.messages, x.avg_sentiment, x.avg_user_rating)
                        for x in stats.results] == [
                    (t, c[0], c[1], two_places(c[3], c[2]), two_places(c[5], c[4])) for t, c in want], (org, mentor)  # fmt: skip
                assert details.pagination["count"] == len(want)
        want = topics_in(stack, org, "", first, last)
        assert len(want) > 2, org  # the demo's seven topics
        r = stack.call("ai_analytics_orgs_users_topics_summary_list", TOPICS_SUMMARY, org=org, user_id=CALLER,
                       start_date=first, end_date=last)  # fmt: skip
        assert [(x.name, x.conversation_count) for x in ok_list(r, M.TopicSummaryView)] == [
            (t, c[0]) for t, c in want[:10]]  # fmt: skip
        # Paged two at a time, and searched in any case.
        r = stack.call("analytics_topics_details_retrieve", TOPIC_DETAILS, platform_key=org, date_filter="custom",
                       start_date=first, end_date=last, limit=2, page=2)  # fmt: skip
        page = ok(r, 200, M.TopicDetails)
        assert [x.name for x in page.results] == [t for t, _ in want[2:4]]
        r = stack.call("ai_analytics_orgs_users_topic_statistics_retrieve", TOPIC_STATISTICS, org=org,
                       user_id=CALLER, start_date=first.isoformat(), end_date=last.isoformat(), page_size=2, page=2)  # fmt: skip
        stats = ok(r, 200, M.PaginatedTopicStatisticsResponse)
        assert [x.name for x in stats.results] == [t for t, _ in want[2:4]] and stats.previous and stats.next
        assert (page.pagination["page"], page.pagination["previous"]) == (2, 1)
        name = want[0][0]
        r = stack.call("analytics_topics_details_retrieve", TOPIC_DETAILS, platform_key=org, date_filter="custom",
                       start_date=first, end_date=last, search=name[1:].upper())  # fmt: skip
        assert name in [x.name for x in ok(r, 200, M.TopicDetails).results]
        with pytest.raises(NotFoundException):  # past the last page, as Django REST framework answers
            stack.call("analytics_topics_details_retrieve", TOPIC_DETAILS, platform_key=org, page=99)


def change(now: int, then: int) -> float:
    return 0.0 if then == 0 else float(round(Fraction(100 * (now - then), then), 2))


def month_ms(month: tuple[date, date]) -> tuple[int, int]:
    """[first ms, end ms) of the UTC days from month[0] to month[1]."""
    first, end = (datetime(d.year, d.month, d.day, tzinfo=UTC) for d in (month[0], month[1] + timedelta(days=1)))
    return int(first.timestamp() * 1000), int(end.timestamp() * 1000)


def monthly(
    table: dict[tuple[str, str, str], list[int]], org: str, mentor: str, i: int, days: tuple[date, date]
) -> int:
    """Column i of a reference table (org, day or hour, mentor) summed over the days."""
    return sum(v[i] for (o, d, who), v in table.items()
               if o == org and who == mentor and "T" not in d and days[0] <= date.fromisoformat(d) <= days[1])  # fmt: skip


def test_month_overviews_match_reference(stack: Stack) -> None:
    """`topic-overview/`, `overview-summary/` and `/api/analytics/topics/`: this month so far against the
    month before (UTC: the stack's orgs have no zone), for the org and each mentor, against the reference."""
    today = datetime.now(UTC).date()
    this = (today.replace(day=1), today)
    last = ((this[0] - timedelta(days=1)).replace(day=1), this[0] - timedelta(days=1))
    named = reference.topics_first_named(stack.events)
    sums = reference.rating_sums(stack.convs)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:

            def in_month(month: tuple[date, date]) -> tuple[int, int]:
                return int(datetime(*month[0].timetuple()[:3], tzinfo=UTC).timestamp() * 1000), int(
                    datetime(*(month[1] + timedelta(days=1)).timetuple()[:3], tzinfo=UTC).timestamp() * 1000
                )

            firsts = named.get((org, mentor), {})
            new = [sum(1 for t in firsts.values() if lo <= t < hi) for lo, hi in map(month_ms, (this, last))]
            listed = [len(topics_in(stack, org, mentor, *month)) for month in (this, last)]
            r = stack.call("ai_analytics_orgs_users_topic_overview_retrieve", TOPIC_OVERVIEW, org=org, user_id=CALLER,
                           mentor_id=mentor or None)  # fmt: skip
            got = ok(r, 200, M.TopicStatisticsResponse)
            assert (got.total_topics, got.total_topics_change_percentage, got.new_topics,
                    got.new_topics_change_percentage) == (listed[0], change(*listed), new[0], change(*new))  # fmt: skip
            assert got.total_topics > 0 and got.new_topics > 0, (org, mentor)  # the demo names topics this month

            humans = [(e["student"], reference.ts_ms(e["timestamp"])) for t, e in stack.events
                      if t == "chat-messages" and e["org"] == org and e["role"] == "human" and mentor in ("", e["mentor_id"])]  # fmt: skip
            users = [len({s for s, ms in humans if lo <= ms < hi}) for lo, hi in map(month_ms, (this, last))]
            want = {
                "conversation_volume": [monthly(stack.exp.daily, org, mentor, 0, m) for m in (this, last)],
                "users": users,
                "topics": listed,
                "user_rating": [monthly(sums, org, mentor, 0, m) for m in (this, last)],
            }
            r = stack.call("ai_analytics_orgs_users_overview_summary_retrieve", OVERVIEW, org=org, user_id=CALLER,
                           mentor_id=mentor or None)  # fmt: skip
            got_overview = ok(r, 200, M.AnalyticsOverview)
            for name, (now, then) in want.items():
                figure = getattr(got_overview, name)
                assert (figure.total, figure.change) == (now, change(now, then)), (org, mentor, name)
            r = stack.call("analytics_topics_retrieve", TOPICS_OVERVIEW, platform_key=org,
                           mentor_unique_id=uuid.UUID(mentor) if mentor else None)  # fmt: skip
            overview = ok(r, 200, M.TopicsOverview)
            started = [monthly(stack.exp.daily, org, mentor, 0, m) for m in (this, last)]
            messages = [monthly(stack.exp.daily, org, mentor, 1, m) for m in (this, last)]
            every = (date(1970, 1, 1), today)
            assert overview.topics.to_dict() == {"all_time_total": len(firsts), "this_month": listed[0],
                                                 "last_month": listed[1], "percentage_change": change(*listed)}  # fmt: skip
            for figure in (overview.sessions, overview.conversations):
                assert figure.to_dict() == {"all_time_total": monthly(stack.exp.daily, org, mentor, 0, every),
                                            "this_month": started[0], "last_month": started[1],
                                            "percentage_change": change(*started)}  # fmt: skip
            assert overview.messages.to_dict() == {"all_time_total": monthly(stack.exp.daily, org, mentor, 1, every),
                                                   "this_month": messages[0], "last_month": messages[1],
                                                   "percentage_change": change(*messages)}  # fmt: skip


def test_chat_history_filter_matches_reference(stack: Stack) -> None:
    """`chat-history-filter/`: the topics listed in the range, the students who sent a message in it, the
    sentiment labels judged in it, and its weeks (or months); without dates, from the org's first message."""
    first, last = days(stack)
    today = datetime.now(UTC).date()
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            for span, monthly in (((first, last), False), ((first, first), True), (None, False)):
                humans = [(e["student"], datetime.fromtimestamp(reference.ts_ms(e["timestamp"]) / 1000, UTC).date())
                          for t, e in stack.events if t == "chat-messages" and e["org"] == org
                          and e["role"] == "human" and mentor in ("", e["mentor_id"])]  # fmt: skip
                a, b = span or (min(d for _, d in humans), today)
                query = {} if span is None else {"start_date": a, "end_date": b}
                r = stack.call("ai_analytics_orgs_users_chat_history_filter_retrieve", HISTORY_FILTER, org=org,
                               user_id=CALLER, mentor_id=uuid.UUID(mentor) if mentor else None,
                               monthly_range=monthly, **query)  # fmt: skip
                got = ok(r, 200, M.ChatHistoryFilterData)
                assert [t.name for t in got.topics] == sorted(t for t, _ in topics_in(stack, org, mentor, a, b))
                assert [u.username for u in got.users] == sorted({s for s, d in humans if a <= d <= b})
                assert all((u.email, u.lti_email) == ("", "") for u in got.users)
                labels = {e["sentiment"] for t, e in stack.events if t == "sentiment" and e["org"] == org
                          and a <= datetime.fromtimestamp(reference.ts_ms(e["timestamp"]) / 1000, UTC).date() <= b}  # fmt: skip
                assert got.sentiment == [x for x in ("positive", "neutral", "negative") if x in labels]
                ranges = [(x.start_date, x.end_date) for x in got.date_ranges or []]
                assert ranges[0][0] <= a and ranges[-1][1] >= b and all(x[0] <= x[1] for x in ranges)
                assert all(later[0] - earlier[1] == timedelta(days=1) for earlier, later in itertools.pairwise(ranges))
                if monthly:
                    assert ranges == [(a.replace(day=1), (a.replace(day=28) + timedelta(days=4)).replace(day=1)
                                       - timedelta(days=1))]  # fmt: skip
                else:
                    assert all(x[0].weekday() == 0 and (x[1] - x[0]).days == 6 for x in ranges)


def test_conversation_summary_matches_reference(stack: Stack) -> None:
    """`conversation-summary/`: all time, the conversations (sessions, with their earliest message's mentor)
    and their human and AI messages."""
    starts = reference.session_starts(stack.events)
    roles: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    seen: set[tuple[str, str]] = set()
    for t, e in stack.events:
        if t == "chat-messages" and (e["org"], e["event_id"]) not in seen:
            seen.add((e["org"], e["event_id"]))
            roles[(e["org"], e["session_id"])][e["role"]] += 1
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            mine = [roles[key] for key, start in starts.items() if key[0] == org and mentor in ("", start[3])]
            r = stack.call("ai_analytics_orgs_users_conversation_summary_retrieve", CONVERSATION_SUMMARY, org=org,
                           user_id=CALLER, mentor_id=mentor or None)  # fmt: skip
            got = ok(r, 200, M.ConversationSummary)
            assert (got.total_conversations, got.total_human_messages, got.total_ai_messages) == (
                len(mine), sum(c["human"] for c in mine), sum(c["ai"] for c in mine)), (org, mentor)  # fmt: skip
            assert got.total_human_messages and got.total_ai_messages


# --- /api/analytics/: the org as platform_key ---------------------------------------------------------


def month_of(t: datetime) -> str:
    return utc(t).date().replace(day=1).isoformat()


@pytest.mark.parametrize("granularity", ["day", "hour", "week", "month"])
def test_analytics_sessions_and_conversations_match_reference(stack: Stack, granularity: str) -> None:
    """`/api/analytics/sessions/` and `conversations/`: sessions started per hour, day, ISO week or month,
    for the org and for each mentor; a conversation is a session, so both give the same points."""
    first, last = days(stack)
    table = {"hour": stack.exp.hourly, "week": stack.exp.weekly}.get(granularity, stack.exp.daily)
    label = month_of if granularity == "month" else period_label(granularity)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            want: Counter[str] = Counter()
            for (o, p, who), (n, _) in table.items():
                if o == org and who == mentor:
                    want[p[:7] + "-01" if granularity == "month" else p] += n
            query = {"platform_key": org, "date_filter": "custom", "start_date": first, "end_date": last,
                     "granularity": granularity, "mentor_unique_id": uuid.UUID(mentor) if mentor else None}  # fmt: skip
            for method, types, model, metric in (
                ("analytics_sessions_retrieve", SESSIONS_CHART, M.SessionsChart, "sessions"),
                ("analytics_conversations_retrieve", CONVERSATIONS_CHART, M.ConversationsChart, "conversations"),
            ):
                chart = ok(stack.call(method, types, **query), 200, model)
                assert chart.metric == metric
                got = {label(p.var_date): p.value for p in chart.points}
                assert len(got) == len(chart.points), "a period served twice"
                assert {p: n for p, n in got.items() if n} == +want, (org, mentor, method)
                if granularity == "day":
                    assert len(got) == (last - first).days + 1  # days without a session served as 0


def test_analytics_sessions_headline_matches_reference(stack: Stack) -> None:
    """`metric=headline`: the range's sessions, messages and mean rating, as extra fields beside no points
    (the SDK's model keeps metric and points; the numbers are in the JSON)."""
    first, last = days(stack)
    sums = reference.rating_sums(stack.convs)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            r = stack.call("analytics_sessions_retrieve", SESSIONS_CHART, platform_key=org, date_filter="custom",
                           start_date=first, end_date=last, metric="headline",
                           mentor_unique_id=uuid.UUID(mentor) if mentor else None)  # fmt: skip
            assert ok(r, 200, M.SessionsChart).points == []
            body = json.loads(r.raw_data)
            started = sum(n for (o, _, who), (n, _) in stack.exp.daily.items() if o == org and who == mentor)
            messages = sum(m for (o, _, who), (_, m) in stack.exp.daily.items() if o == org and who == mentor)
            rated = [v for (o, p, who), v in sums.items() if o == org and who == mentor and "T" not in p]
            n, total = sum(v[0] for v in rated), sum(v[1] for v in rated)
            assert (body["total_sessions"], body["total_messages"]) == (started, messages), (org, mentor)
            assert body["avg_messages_per_session"] == pytest.approx(messages / started, rel=1e-15)
            assert body["rated_conversations"] == n
            assert body["avg_rating"] == (None if n == 0 else pytest.approx(total / n, rel=1e-15)), (org, mentor)


@pytest.mark.parametrize("granularity", ["day", "hour", "month"])
def test_analytics_ratings_match_reference(stack: Stack, granularity: str) -> None:
    """`/api/analytics/ratings/`: the mean rating of the conversations rated per period (at their newest
    record's `inserted_at`), for the org and for each mentor its newest record names; periods without a
    rating are left out."""
    first, last = days(stack)
    sums = reference.rating_sums(stack.convs)
    label = month_of if granularity == "month" else period_label(granularity)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            want: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for (o, p, who), (n, total) in sums.items():
                if o == org and who == mentor and ("T" in p) == (granularity == "hour"):
                    acc = want[p[:7] + "-01" if granularity == "month" else p]
                    acc[0], acc[1] = acc[0] + n, acc[1] + total
            r = stack.call("analytics_ratings_retrieve", RATINGS_CHART, platform_key=org, date_filter="custom",
                           start_date=first, end_date=last, granularity=granularity,
                           mentor_unique_id=uuid.UUID(mentor) if mentor else None)  # fmt: skip
            chart = ok(r, 200, M.RatingsOvertime)
            assert chart.metric == "ratings"
            got = {label(datetime.fromisoformat(p.var_date)): p.value for p in chart.points}
            assert got == {p: pytest.approx(total / n, rel=1e-15) for p, (n, total) in want.items()}, (org, mentor)
            if not mentor:
                assert got, org  # the demo rates some conversations


def test_analytics_time_is_the_busiest_hour_of_the_week(stack: Stack) -> None:
    """`/api/analytics/time/`: the SDK types the answer as one cell, so it is the busiest weekday (0 =
    Sunday) and hour, with its messages (each by its own time), ties the earliest in the week."""
    first, last = days(stack)
    by_hour = reference.messages_by_hour(stack.events)
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            grid: Counter[tuple[int, int]] = Counter()
            for (o, who, h), n in by_hour.items():
                t = datetime.fromtimestamp(h * 3600, UTC)
                if o == org and who == mentor and first <= t.date() <= last:
                    grid[((t.weekday() + 1) % 7, t.hour)] += n
            (want_day, want_hour), want = min(grid.items(), key=lambda kv: (-kv[1], kv[0]))
            r = stack.call("analytics_time_retrieve", BUSIEST, platform_key=org, date_filter="custom",
                           start_date=first, end_date=last,
                           mentor_unique_id=uuid.UUID(mentor) if mentor else None)  # fmt: skip
            cell = ok(r, 200, M.AccessTimesHeatmap)
            assert (cell.day_of_week, cell.hour, cell.value) == (want_day, want_hour, want), (org, mentor)


def current_users(stack: Stack, org: str, mentor: str, metric: str, **query: Any) -> M.CurrentUsersResponse:
    r = stack.call("analytics_users_retrieve", CURRENT_USERS, platform_key=org, metric=metric,
                   mentor_unique_id=uuid.UUID(mentor) if mentor else None, **query)  # fmt: skip
    got: M.CurrentUsersResponse = ok(r, 200, M.CurrentUsersResponse)
    assert got.metric == metric
    return got


def test_analytics_users_match_reference(stack: Stack) -> None:
    """`/api/analytics/users/`: students who sent a message in the window (the date filter's days, the last
    30 days, or since the previous half hour began), and the rounded percentage change against the window
    before; registered users need the registry (400 naming metric)."""
    first, _ = days(stack)
    second, today = first + timedelta(days=1), datetime.now(UTC).date()
    humans = [(e["org"], e["mentor_id"], e["student"], reference.ts_ms(e["timestamp"]))
              for t, e in stack.events if t == "chat-messages" and e["role"] == "human"]  # fmt: skip
    for org in sorted(stack.exp.orgs):
        for mentor in ["", *stack.mentors(org)]:
            mine = [(student, ms) for o, m, student, ms in humans if o == org and mentor in ("", m)]
            on = [(student, datetime.fromtimestamp(ms / 1000, UTC).date()) for student, ms in mine]
            now, then = (len({s for s, d in on if d == day}) for day in (second, first))
            change = 0 if then == 0 else round(Fraction(100 * (now - then), then))  # half to even
            got = current_users(stack, org, mentor, "active_users", date_filter="custom", start_date=second,
                                end_date=second)  # fmt: skip
            assert (got.count, got.change) == (now, change), (org, mentor)
            got = current_users(stack, org, mentor, "active_users_last_30d")
            assert (got.count, got.change) == (len({s for s, d in on if d > today - timedelta(days=30)}), 0)
            for _ in range(3):  # the half hour may turn between the call and the reference
                half = time.time_ns() // 1_000_000 // (30 * 60_000)
                got = current_users(stack, org, mentor, "currently_active")
                if half == time.time_ns() // 1_000_000 // (30 * 60_000):
                    break
            assert got.count == len({s for s, ms in mine if ms >= (half - 1) * 30 * 60_000}), (org, mentor)
    with pytest.raises(BadRequestException) as info:
        stack.call("analytics_users_retrieve", CURRENT_USERS, platform_key="acme-academy", metric="registered_users")
    assert json.loads(info.value.body)["parameter"] == "metric"


USER_DETAIL = {"200": "UserDetail", "400": None, "403": None, "404": None}


def test_analytics_users_details_match_reference(stack: Stack) -> None:
    """`/api/analytics/users/details/`: per student active in the range (a human message), their human
    messages in it, their sessions started in it (at their earliest message), their latest human message;
    most messages first, ties by username, paged; the SDK's one `UserDetail` is the first row."""
    first, _ = days(stack)
    today = datetime.now(UTC).date()
    starts = reference.session_starts(stack.events)
    seen: set[str] = set()
    humans = []
    for t, e in stack.events:
        if t == "chat-messages" and e["role"] == "human" and e["event_id"] not in seen:
            seen.add(e["event_id"])
            humans.append((e["org"], e["mentor_id"], e["student"], reference.ts_ms(e["timestamp"])))
    lo = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
    for org in sorted(stack.exp.orgs)[:2]:
        for mentor in ["", stack.mentors(org)[0]]:
            messages = Counter(s for o, m, s, ms in humans if o == org and mentor in ("", m) and ms >= lo)
            sessions = Counter(st for (o, _), (ms, _, st, m) in starts.items() if o == org and ms >= lo
                               and mentor in ("", m))  # fmt: skip
            last = {s: max(ms for o, _, x, ms in humans if o == org and x == s) for s in messages}
            want = sorted(messages.items(), key=lambda kv: (-kv[1], kv[0]))
            query = {"platform_key": org, "date_filter": "custom", "start_date": first, "end_date": today}
            if mentor:
                query["mentor_unique_id"] = mentor
            got = ok(stack.call("analytics_users_details_retrieve", USER_DETAIL, limit=100, **query), 200, M.UserDetail)
            raw = json.loads(stack.call("analytics_users_details_retrieve", USER_DETAIL, limit=100, **query).raw_data)
            rows = raw["results"]
            assert raw["total_records"] == len(want) and [(r["username"], r["messages"]) for r in rows] == want[:100]
            emails: dict[str, tuple[int, str]] = {}
            for c in stack.conversations(org).values():
                email = (c.record or {}).get("email")
                if (
                    c.student
                    and isinstance(email, str)
                    and email
                    and (c.inserted_ms or 0) > emails.get(c.student, (-1,))[0]
                ):
                    emails[c.student] = (c.inserted_ms or 0, email)
            assert any(r["email"] for r in rows) or not emails
            for r in rows:
                assert r["email"] == emails.get(r["username"], (0, ""))[1], r
                assert r["conversations"] == sessions[r["username"]], (org, mentor, r)
                assert abs(ms_of(datetime.fromisoformat(r["last_activity"])) - last[r["username"]]) <= 1, r
            assert (got.messages, got.conversations, got.full_name) == (
                rows[0]["messages"],
                rows[0]["conversations"],
                "",
            )
    org = sorted(stack.exp.orgs)[0]
    one = json.loads(stack.call("analytics_users_details_retrieve", USER_DETAIL, platform_key=org, limit=2,
                                page=2, date_filter="all_time").raw_data)  # fmt: skip
    assert (one["page"], one["limit"], len(one["results"])) == (2, 2, 2)
    needle = one["results"][0]["username"]
    found = json.loads(stack.call("analytics_users_details_retrieve", USER_DETAIL, platform_key=org,
                                  search=needle.upper(), date_filter="all_time").raw_data)  # fmt: skip
    assert found["results"] and all(needle.casefold() in r["username"].casefold() for r in found["results"])
    with pytest.raises(ForbiddenException):  # emails: a platform_admin key
        stack.call("analytics_users_details_retrieve", USER_DETAIL, key="analyst", platform_key="acme-academy")
    with pytest.raises(NotFoundException):  # nobody active in those days
        stack.call("analytics_users_details_retrieve", USER_DETAIL, platform_key=org, date_filter="custom",
                   start_date=date(2026, 1, 1), end_date=date(2026, 1, 2))  # fmt: skip


def test_analytics_platform_key_is_the_org(stack: Stack) -> None:
    """The org is `platform_key`, checked as a path's org is (403 for another org's key, 404 for an unknown
    org to an all-orgs key); without one, the key's own org; an all-orgs key must name one."""

    def sessions(key: str, **query: Any) -> M.SessionsChart:
        r = stack.call("analytics_sessions_retrieve", SESSIONS_CHART, key, date_filter="all_time", **query)
        chart: M.SessionsChart = ok(r, 200, M.SessionsChart)
        return chart

    named = sessions("analyst", platform_key="acme-academy")
    assert sessions("analyst") == named  # the key's own org
    assert sum(p.value for p in named.points) == len({
        cid for (o, cid) in stack.convs if o == "acme-academy"} & {e["session_id"] for t, e in stack.events
        if t == "chat-messages" and e["org"] == "acme-academy"})  # fmt: skip
    with pytest.raises(ForbiddenException):
        sessions("other", platform_key="acme-academy")
    with pytest.raises(NotFoundException):
        sessions("admin", platform_key="no-such-org")
    with pytest.raises(BadRequestException) as info:
        sessions("admin")
    assert json.loads(info.value.body)["parameter"] == "platform_key"
    with pytest.raises(UnauthorizedException):
        sessions("not-a-key", platform_key="acme-academy")


# --- /api/analytics/financial/: the org's LLM cost as the platform's finance operations -----------------


def money(nanos: int, places: int) -> str:
    """Nano-dollars as the decimal string of USD the finance models allow, rounded half to even."""
    return str((Decimal(nanos) / Decimal(10**9)).quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN))


def spend(stack: Stack, first: date, last: date, **who: str | None) -> int:
    """Reference nano-dollars of the observations in the UTC days first to last matching the filters."""
    return reference.cost_nanos(stack.obs, *reference.day_ms(first.isoformat(), last.isoformat()), **who)


def cost_filters(stack: Stack, org: str) -> list[dict[str, str]]:
    """The org, each mentor, each model and its two costliest students: the filters finance answers take."""
    per_student: Counter[str] = Counter()
    for o in stack.obs:
        if o.org == org and o.student:
            per_student[o.student] += o.nanos
    models = sorted({o.model for o in stack.obs if o.org == org})
    return [{}, *({"mentor": m} for m in stack.mentors(org)), *({"model": m} for m in models),
            *({"student": s} for s, _ in per_student.most_common(2))]  # fmt: skip


def as_query(who: dict[str, str]) -> dict[str, Any]:
    return {"mentor_unique_id": uuid.UUID(who["mentor"]) if "mentor" in who else None,
            "llm_model": who.get("model"), "username": who.get("student")}  # fmt: skip


def finance_change(now: int, then: int) -> float | None:
    if then == 0:
        return None
    return float((Decimal((now - then) * 100) / Decimal(then)).quantize(Decimal("0.01"), ROUND_HALF_EVEN))


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
def test_analytics_financial_matches_reference(stack: Stack, granularity: str) -> None:
    """`/api/analytics/financial/?metric=total_costs`: the range's cost as a 5-place decimal string, its cost
    per day, ISO week (from Monday) or month, and the change against the window of its length just before
    (null when that cost nothing) or, with comparison_days, of the last days against as many before; for
    the org, each mentor, model and student."""
    first, last = days(stack)
    n = (last - first).days + 1
    for org in sorted(stack.exp.orgs):
        for who in cost_filters(stack, org):
            r = stack.call("analytics_financial_retrieve", FINANCE, platform_key=org, metric="total_costs",
                           date_filter="custom", start_date=first, end_date=last, granularity=granularity,
                           **as_query(who))  # fmt: skip
            got = ok(r, 200, M.BaseFinanceResponse)
            total = spend(stack, first, last, org=org, **who)
            before = spend(stack, first - timedelta(days=n), first - timedelta(days=1), org=org, **who)
            assert (got.metric, got.value, got.percentage_change) == ("total_costs", money(total, 5),
                                                                     finance_change(total, before)), (org, who)  # fmt: skip
            want: Counter[str] = Counter()
            for d in (first + timedelta(days=i) for i in range(n)):
                start = {"day": d, "week": d - timedelta(days=d.weekday()), "month": d.replace(day=1)}[granularity]
                want[start.isoformat()] += spend(stack, d, d, org=org, **who)
            assert [(p.var_date, p.value) for p in got.overtime] == [(k, money(v, 5)) for k, v in want.items()]
            assert (got.period_info.start_date, got.period_info.end_date, got.period_info.period_days,
                    got.period_info.range_type) == (first.isoformat(), last.isoformat(), n, "custom")  # fmt: skip
            info = got.comparison_info
            assert (info.comparison_start, info.comparison_end, info.comparison_days, info.previous_period_value,
                    info.recent_period_value) == ((first - timedelta(days=n)).isoformat(),
                    (first - timedelta(days=1)).isoformat(), n, money(before, 5), money(total, 5))  # fmt: skip
            f = got.filters
            assert (f.platform_key, f.granularity, f.llm_model, f.username, f.all_time) == (
                org, granularity, who.get("model"), who.get("student"), False)  # fmt: skip
            if granularity == "day":  # the last day against the day before it
                r = stack.call("analytics_financial_retrieve", FINANCE, platform_key=org, metric="total_costs",
                               date_filter="custom", start_date=first, end_date=last, comparison_days=1,
                               show_overtime=False, **as_query(who))  # fmt: skip
                got = ok(r, 200, M.BaseFinanceResponse)
                now, then = (spend(stack, d, d, org=org, **who) for d in (last, last - timedelta(days=1)))
                assert (got.value, got.percentage_change, got.overtime) == (
                    money(total, 5),
                    finance_change(now, then),
                    [],
                )
                assert (got.comparison_info.recent_period_value, got.comparison_info.previous_period_value) == (
                    money(now, 5), money(then, 5))  # fmt: skip
        assert spend(stack, first, last, org=org) > 0, "the demo spends nothing"


def test_analytics_financial_week_and_month_hold_the_last_day(stack: Stack) -> None:
    """weekly_costs and monthly_costs: the ISO week (from Monday) and the month holding the range's last day,
    up to it; `fill_method=previous` carries a costly day's value over the days that cost nothing."""
    _, last = days(stack)
    org = "acme-academy"
    for metric, first in (("weekly_costs", last - timedelta(days=last.weekday())),
                          ("monthly_costs", last.replace(day=1))):  # fmt: skip
        r = stack.call("analytics_financial_retrieve", FINANCE, platform_key=org, metric=metric,
                       date_filter="custom", start_date=last, end_date=last, fill_method="previous")  # fmt: skip
        got = ok(r, 200, M.BaseFinanceResponse)
        assert (got.metric, got.value) == (metric, money(spend(stack, first, last, org=org), 5))
        assert got.period_info.start_date == first.isoformat()
        held = 0
        for p, d in zip(got.overtime, (first + timedelta(days=i) for i in range((last - first).days + 1)), strict=True):
            held = spend(stack, d, d, org=org) or held
            assert (p.var_date, p.value) == (d.isoformat(), money(held, 5)), metric


def test_analytics_financial_details_match_reference(stack: Stack) -> None:
    """`/api/analytics/financial/details/`: cost per model, student or mentor over the range (those that
    cost something), costliest first, ties by name, walked page by page; sessions: those whose
    observations in the range cost something; `total_cost`: every row's; a filter keeps its own row."""
    first, last = days(stack)
    lo, hi = reference.day_ms(first.isoformat(), last.isoformat())
    for org in sorted(stack.exp.orgs):
        mine = [o for o in stack.obs if o.org == org and lo <= o.ts_ms < hi]
        for group, attr in (("llm_model", "model"), ("username", "student"), ("mentor", "mentor")):
            cost: Counter[str] = Counter()
            per_session: Counter[tuple[str, str]] = Counter()
            for o in mine:
                key = getattr(o, attr)
                if key is not None:
                    cost[key] += o.nanos
                    if o.session_id and o.mentor is not None:
                        per_session[(key, o.session_id)] += o.nanos
            sessions = Counter(key for (key, _), nanos in per_session.items() if nanos)
            ranked = sorted(((k, n) for k, n in cost.items() if n), key=lambda kn: (-kn[1], kn[0]))
            metrics = "total_cost" if group == "llm_model" else "total_cost,sessions"
            rows: list[dict[str, Any]] = []
            page, pages = 1, 1
            while page <= pages:
                r = stack.call("analytics_financial_details_retrieve", FINANCE_DETAILS, platform_key=org,
                               group_by=group, metrics=metrics, date_filter="custom", start_date=first,
                               end_date=last, limit=3, page=page)  # fmt: skip
                got = ok(r, 200, M.FinanceDetailsResponse)
                assert (got.page, got.limit, got.total_records) == (page, 3, len(ranked)), (org, group)
                assert got.total_cost == money(sum(cost.values()), 5)
                assert [m.name for m in got.metrics or []] == metrics.split(",")
                rows += got.rows
                pages = got.total_pages
                page += 1
            want: list[dict[str, Any]] = []
            for k, n in ranked:
                row: dict[str, Any] = {group: k, "total_cost": money(n, 5)}
                if group == "mentor":
                    row = {"mentor": k, "mentor_name": k, "total_cost": money(n, 5)}
                if group != "llm_model":
                    row["sessions"] = sessions[k]
                want.append(row)
            assert rows == want, (org, group)
            k, n = ranked[0]
            only = {"mentor_unique_id": uuid.UUID(k)} if group == "mentor" else {group: k}
            r = stack.call("analytics_financial_details_retrieve", FINANCE_DETAILS, platform_key=org, group_by=group,
                           date_filter="custom", start_date=first, end_date=last, **only)  # fmt: skip
            got = ok(r, 200, M.FinanceDetailsResponse)
            kept = {name: v for name, v in want[0].items() if name != "sessions"}
            assert (got.rows, got.total_cost, got.total_records) == ([kept], money(n, 5), 1), (org, group)


def test_analytics_financial_invoice_matches_reference(stack: Stack) -> None:
    """`/api/analytics/financial/invoice/`: the period's cost (3 places), the sessions that cost something,
    their students and the cost per session, and per mentor; for the platform and for one student; by
    default the last 30 days up to today."""
    first, last = days(stack)
    lo, hi = reference.day_ms(first.isoformat(), last.isoformat())
    for org in sorted(stack.exp.orgs):
        students = [w["student"] for w in cost_filters(stack, org) if "student" in w]
        for student, mentor in [(None, None), *((s, None) for s in students), *((None, m) for m in stack.mentors(org))]:
            if mentor is None:
                r = stack.call("analytics_financial_invoice_retrieve", INVOICE, platform_key=org, start_date=first,
                               end_date=last, username=student)  # fmt: skip
                got = ok(r, 200, M.InvoiceReportResponse)
            else:  # the SDK's method has no mentor_unique_id: a client of the family's other calls sends it
                raw = httpx.get(f"{stack.env.base}/api/analytics/financial/invoice/", timeout=15, params={
                    "platform_key": org, "start_date": first.isoformat(), "end_date": last.isoformat(),
                    "mentor_unique_id": mentor}, headers={"Authorization": f"Api-Token {stack.keys['admin']}"})  # fmt: skip
                assert raw.status_code == 200, raw.text
                got = M.InvoiceReportResponse.from_json(raw.text)
            per_session: Counter[tuple[str, str, str]] = Counter()
            for o in stack.obs:
                if (o.org == org and lo <= o.ts_ms < hi and o.mentor is not None and student in (None, o.student)
                        and mentor in (None, o.mentor)):  # fmt: skip
                    per_session[(o.mentor, o.session_id or "", o.student or "")] += o.nanos
            billed = {k: n for k, n in per_session.items() if n}
            total = spend(stack, first, last, org=org, student=student, mentor=mentor)
            assert (got.entity.type, got.entity.username, got.entity.platform_key) == (
                M.EntityTypeEnum.PLATFORM if student is None else M.EntityTypeEnum.USER, student, org)  # fmt: skip
            assert (got.billing_period.start_date, got.billing_period.end_date, got.billing_period.days) == (
                first, last, (last - first).days + 1)  # fmt: skip
            per_session_cost = (Decimal(total) / Decimal(10**9) / len(billed)).quantize(
                Decimal("0.001"), ROUND_HALF_EVEN
            )
            assert got.summary.to_dict() == {
                "total_cost": money(total, 3), "total_sessions": len(billed),
                "active_users": len({s for _, _, s in billed}), "cost_per_session": str(per_session_cost),
            }, (org, student)  # fmt: skip
            by_mentor: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for (mentor, _, _), n in billed.items():
                by_mentor[mentor][0] += n
                by_mentor[mentor][1] += 1
            assert got.breakdown is not None
            assert [(str(m.mentor), m.mentor_name, m.cost, m.sessions) for m in got.breakdown.by_mentor or []] == [
                (m, m, money(n, 3), k) for m, (n, k) in sorted(by_mentor.items(), key=lambda mn: (-mn[1][0], mn[0]))
            ], (org, student)  # fmt: skip
            assert (got.breakdown.by_provider, got.breakdown.by_action) == (None, None)
    before = datetime.now(UTC).date()  # today at the call: a run may pass midnight
    r = stack.call("analytics_financial_invoice_retrieve", INVOICE, platform_key="acme-academy",
                   include_breakdown=False)  # fmt: skip
    got = ok(r, 200, M.InvoiceReportResponse)
    today = got.billing_period.end_date
    assert today in (before, datetime.now(UTC).date())
    start = today - timedelta(days=29)
    assert (got.billing_period.start_date, got.breakdown) == (start, None)
    assert got.summary.total_cost == money(spend(stack, start, today, org="acme-academy"), 3)
    r = stack.call("analytics_financial_invoice_retrieve", INVOICE, platform_key="acme-academy", end_date=last)
    got = ok(r, 200, M.InvoiceReportResponse)
    start = last - timedelta(days=29)
    assert (got.billing_period.start_date, got.billing_period.days) == (start, 30)
    assert got.summary.total_cost == money(spend(stack, start, last, org="acme-academy"), 3)


def test_analytics_financial_refusals_the_sdk_cannot_send(stack: Stack) -> None:
    """Cost is kept by the hour: days of a zone that start on a half hour cannot be answered (a 400 naming
    tz); an invoice is the org's, a student's or a mentor's, not a pair's."""
    for path in ("financial/?metric=total_costs&tz=Asia/Kolkata", "financial/details/?group_by=llm_model&tz=Asia/Kolkata",
                 "financial/invoice/?tz=Asia/Kolkata", f"financial/invoice/?mentor_unique_id={uuid.uuid4()}&username=x"):  # fmt: skip
        r = httpx.get(f"{stack.env.base}/api/analytics/{path}&platform_key=acme-academy",
                      headers={"Authorization": f"Api-Token {stack.keys['admin']}"}, timeout=15)  # fmt: skip
        assert r.status_code == 400, (path, r.text)
        assert r.json()["parameter"] == path.rsplit("&", 1)[-1].split("?")[-1].split("=")[0], (path, r.text)


# --- /api/analytics/messages/: the conversation list ------------------------------------------------------


def message_counts(stack: Stack) -> dict[tuple[str, str], list[int]]:
    """(org, session) -> [human, ai] messages, each event once."""
    seen: set[tuple[str, str]] = set()
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for topic, e in stack.events:
        if topic == "chat-messages" and (e["org"], e["event_id"]) not in seen:
            seen.add((e["org"], e["event_id"]))
            out[(e["org"], e["session_id"])][0 if e["role"] == "human" else 1] += 1
    return out


def listed(stack: Stack, org: str, first: date, last: date) -> list[dict[str, Any]]:
    """The reference's conversation list of the UTC days: each conversation listed then (at its newest
    record's `inserted_at`, else its first message's time), as `ConversationListItem` fields, newest first."""
    lo, hi = reference.day_ms(first.isoformat(), last.isoformat())
    counts = message_counts(stack)
    scores = {"positive": 1, "neutral": 0, "negative": -1}
    out = []
    for cid, c in stack.conversations(org).items():
        if c.inserted_ms is None or not lo <= c.inserted_ms < hi or (c.record or {}).get("deleted"):
            continue
        human, ai = counts[(org, cid)]
        nanos = sum(o.nanos for o in stack.obs if o.org == org and o.session_id == cid and lo <= o.ts_ms < hi)
        out.append({
            "session": as_uuid(cid), "platform_key": org, "platform_name": org, "platform": 0,
            "mentor": c.mentor, "mentor_unique_id": c.mentor,
            "model": m if isinstance(m := (c.record or {}).get("model"), str) else "",
            "username": c.student, "name": c.title or "", "topics": c.topics,
            "message_count": human + ai, "user_queries": human, "assistant_responses": ai,
            "sentiment": c.sentiment or None, "average_sentiment": scores.get(c.sentiment),
            "created_at": c.inserted_ms, "cost": money(nanos, 6), "nanos": nanos,
        })  # fmt: skip
    return sorted(out, key=lambda row: -row["created_at"])


def list_pages(stack: Stack, org: str, limit: int = 100, **query: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, every item as `listed` describes it) of `/api/analytics/messages/`, walked page by page
    through the SDK and parsed with its models."""
    rows: list[dict[str, Any]] = []
    page, pages, summary = 1, 1, None
    while page <= pages:
        r = stack.call("analytics_messages_retrieve", CONVERSATION_LIST, platform_key=org, limit=limit, page=page,
                       **query)  # fmt: skip
        got = ok(r, 200, M.ConversationListResponse)
        assert all(isinstance(x, M.ConversationListItem) for x in got.results)
        assert summary in (None, got.summary), "the summary changed while paging"
        summary, pages = got.summary, got.pagination["total_pages"]
        assert got.pagination == {
            "count": summary["total_conversations"], "page": page, "limit": limit, "total_pages": pages,
            "next": page + 1 if page < pages else None, "previous": page - 1 if page > 1 else None,
        }  # fmt: skip
        assert len(got.results) == (limit if page < pages else summary["total_conversations"] - (pages - 1) * limit)
        for x, raw in zip(got.results, json.loads(r.raw_data)["results"], strict=True):
            rows.append({
                "session": x.session, "platform_key": x.platform_key, "platform_name": x.platform_name,
                "platform": x.platform, "mentor": x.mentor, "mentor_unique_id": x.mentor_unique_id,
                "model": x.model, "username": x.username, "name": x.name,
                "topics": {t["name"] for t in x.topics}, "message_count": x.message_count,
                "user_queries": x.user_queries, "assistant_responses": x.assistant_responses,
                "sentiment": x.sentiment, "average_sentiment": x.average_sentiment,
                "created_at": ms_of(x.created_at), "cost": x.cost, "nanos": raw["cost_nanos"],
            })  # fmt: skip
        page += 1
    assert summary is not None
    return summary, rows


def summary_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    nanos = sum(row["nanos"] for row in rows)
    return {
        "total_conversations": len(rows), "total_messages": sum(row["message_count"] for row in rows),
        "user_queries": sum(row["user_queries"] for row in rows),
        "assistant_responses": sum(row["assistant_responses"] for row in rows),
        "unique_users": len({row["username"] for row in rows}), "total_cost": money(nanos, 6), "cost_nanos": nanos,
    }  # fmt: skip


def same_list(got: list[dict[str, Any]], want: list[dict[str, Any]], what: Any) -> None:
    """The same items, newest first (the order of conversations listed at the same millisecond is the
    service's own)."""
    assert [row["created_at"] for row in got] == sorted((row["created_at"] for row in got), reverse=True), what
    key = lambda row: row["session"]  # noqa: E731
    mine = sorted(({**row, "nanos": None} for row in got), key=key)
    assert mine == sorted(({**row, "nanos": None} for row in want), key=key), what
    assert sum(row["nanos"] for row in got) == sum(row["nanos"] for row in want), what


def test_analytics_messages_match_reference(stack: Stack) -> None:
    """`/api/analytics/messages/`: every conversation listed in the days (each org, a day alone), newest
    first, as the SDK's `ConversationListItem`: the org, the mentor, the record's model and title, the
    student, topics, messages per role, the latest sentiment and its score, the listing time, its LLM cost
    over the range (6 places); the summary sums every one matched."""
    first, last = days(stack)
    for org in sorted(stack.exp.orgs):
        for a, b in ((first, last), (last, last)):
            want = listed(stack, org, a, b)
            summary, got = list_pages(stack, org, start_date=a, end_date=b)
            same_list(got, want, (org, a, b))
            assert summary == summary_of(want), (org, a, b)
        assert sum(row["nanos"] for row in listed(stack, org, first, last)) > 0, "the demo spends nothing"


def test_analytics_messages_filters_and_paging(stack: Stack) -> None:
    """Each filter keeps what the reference says: the mentor, the latest sentiment, a topic holding the text
    (any case), the message counts (both bounds included), a search in the title or username (any case);
    pages of three; a page past the last is a 404."""
    first, last = days(stack)
    org = "acme-academy"
    every = listed(stack, org, first, last)
    dates = {"start_date": first, "end_date": last}

    def check(pred: Callable[[dict[str, Any]], bool], **query: Any) -> None:
        want = [row for row in every if pred(row)]
        assert 0 < len(want) < len(every), ("the filter would not discriminate", query)
        summary, got = list_pages(stack, org, **dates, **query)
        same_list(got, want, query)
        assert summary == summary_of(want), query

    for mentor in stack.mentors(org):
        check(lambda row, m=mentor: row["mentor"] == m, mentor_unique_id=uuid.UUID(mentor))
    check(lambda row: row["sentiment"] == "negative", sentiment="negative")
    check(lambda row: any("gebr" in t for t in row["topics"]), topic="GEBR")
    counts = sorted(row["message_count"] for row in every)
    low, high = counts[len(counts) // 3], counts[2 * len(counts) // 3]
    check(lambda row: row["message_count"] >= low, min_messages=low)
    check(lambda row: row["message_count"] <= high, max_messages=high)
    check(lambda row: low <= row["message_count"] <= high, min_messages=low, max_messages=high)
    student = Counter(row["username"] for row in every).most_common(2)[1][0]
    title_word = Counter(w for row in every for w in row["name"].split() if len(w) > 4).most_common(1)[0][0]
    for needle in (student.casefold(), title_word.casefold()):
        check(lambda row, n=needle: n in row["name"].casefold() or n in row["username"].casefold(),
              search=needle.swapcase())  # fmt: skip
    mentor = stack.mentors(org)[0]
    check(lambda row: row["mentor"] == mentor and row["sentiment"] == "positive",
          mentor_unique_id=uuid.UUID(mentor), sentiment="positive")  # fmt: skip
    # Paged three at a time: the same list, in the same order as pages of a hundred.
    _, by_three = list_pages(stack, org, limit=3, **dates)
    _, by_hundred = list_pages(stack, org, **dates)
    assert by_three == by_hundred and len(by_three) > 3
    with pytest.raises(NotFoundException):  # past the last page, as Django REST framework answers
        stack.call("analytics_messages_retrieve", CONVERSATION_LIST, platform_key=org, page=999, **dates)
    # Nothing matched: one empty page.
    r = stack.call("analytics_messages_retrieve", CONVERSATION_LIST, platform_key=org, search="no such text", **dates)
    got = ok(r, 200, M.ConversationListResponse)
    assert (got.results, got.summary["total_conversations"], got.pagination["total_pages"]) == ([], 0, 1)
    # The default range: the last 7 days of the org (UTC).
    while True:  # today at the call: a run may pass midnight
        today = datetime.now(UTC).date()
        _, got_week = list_pages(stack, org)
        if datetime.now(UTC).date() == today:
            break
    week = listed(stack, org, today - timedelta(days=6), today)
    same_list(got_week, week, "7d")


def test_analytics_messages_refusals_the_sdk_cannot_send(stack: Stack) -> None:
    """What the SDK's own checks refuse before sending (limit out of 1–100, negative counts), a date filter
    it has no parameter for, and a zone whose days start on a half hour (cost is kept by the hour): a 400
    naming the parameter."""
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("min_messages=-1", "min_messages"),
                         ("max_messages=many", "max_messages"), ("date_filter=1y", "date_filter"),
                         ("tz=Asia/Kolkata", "tz")):  # fmt: skip
        r = httpx.get(f"{stack.env.base}/api/analytics/messages/?{query}&platform_key=acme-academy",
                      headers={"Authorization": f"Api-Token {stack.keys['admin']}"}, timeout=15)  # fmt: skip
        assert r.status_code == 400, (query, r.text)
        assert r.json()["parameter"] == param, (query, r.text)


PLATFORM_BAD = [
    ("analytics_sessions_retrieve", SESSIONS_CHART, {"date_filter": "1y"}, "date_filter"),
    ("analytics_sessions_retrieve", SESSIONS_CHART, {"granularity": "year"}, "granularity"),
    ("analytics_sessions_retrieve", SESSIONS_CHART, {"metric": "conversations"}, "metric"),
    ("analytics_conversations_retrieve", CONVERSATIONS_CHART, {"date_filter": "7d", "start_date": TODAY}, "start_date"),
    ("analytics_conversations_retrieve", CONVERSATIONS_CHART, {"date_filter": "custom"}, "start_date"),
    ("analytics_ratings_retrieve", RATINGS_CHART, {"usergroup_ids": [1, 2]}, "usergroup_ids"),
    ("analytics_ratings_retrieve", RATINGS_CHART, {"usergroup_ids": [7]}, "usergroup_ids"),
    ("analytics_ratings_retrieve", RATINGS_CHART, {"start_date": LATER, "end_date": EARLIER}, "end_date"),
    ("analytics_time_retrieve", BUSIEST, {"start_date": date(2020, 1, 1), "end_date": TODAY}, "start_date"),
    ("analytics_users_retrieve", CURRENT_USERS, {"metric": "everyone"}, "metric"),
    ("analytics_topics_retrieve", TOPICS_OVERVIEW, {"metric": "highlighted"}, "metric"),
    ("analytics_financial_retrieve", FINANCE, {"metric": "daily_costs"}, "metric"),
    ("analytics_financial_retrieve", FINANCE, {"provider": "openai"}, "provider"),
    ("analytics_financial_retrieve", FINANCE, {"granularity": "hour"}, "granularity"),
    ("analytics_financial_retrieve", FINANCE, {"fill_method": "linear"}, "fill_method"),
    ("analytics_financial_retrieve", FINANCE, {"mentor_unique_id": uuid.uuid4(), "llm_model": "gpt-4o"}, "llm_model"),
    ("analytics_financial_retrieve", FINANCE, {"usergroup_ids": [3]}, "usergroup_ids"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"group_by": "provider"}, "group_by"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"group_by": "action"}, "group_by"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"group_by": "platform"}, "group_by"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"metrics": "total_cost,last_active"}, "metrics"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"metrics": "sessions"}, "metrics"),
    ("analytics_financial_details_retrieve", FINANCE_DETAILS, {"group_by": "mentor", "username": "x"}, "username"),
    ("analytics_financial_invoice_retrieve", INVOICE, {"usergroup_ids": [1]}, "usergroup_ids"),
    ("analytics_financial_invoice_retrieve", INVOICE, {"start_date": LATER, "end_date": EARLIER}, "end_date"),
    ("analytics_messages_retrieve", CONVERSATION_LIST, {"start_date": LATER, "end_date": EARLIER}, "end_date"),
    ("analytics_messages_retrieve", CONVERSATION_LIST, {"min_messages": 5, "max_messages": 2}, "max_messages"),
    ("analytics_messages_retrieve", CONVERSATION_LIST, {"sentiment": "angry"}, "sentiment"),
    ("analytics_messages_retrieve", CONVERSATION_LIST, {"usergroup_ids": [4]}, "usergroup_ids"),
]  # fmt: skip
PLATFORM_REQUIRED = {"analytics_users_retrieve": {"metric": "active_users"},
                     "analytics_financial_retrieve": {"metric": "total_costs"},
                     "analytics_financial_details_retrieve": {"group_by": "llm_model"}}  # fmt: skip


@pytest.mark.parametrize(
    ("method", "types", "query", "param"), PLATFORM_BAD,
    ids=[f"{b[0][10:-9]}-{b[3]}-{i}" for i, b in enumerate(PLATFORM_BAD)],
)  # fmt: skip
def test_analytics_bad_parameter_is_400_naming_it(
    stack: Stack, method: str, types: dict[str, Any], query: dict[str, Any], param: str
) -> None:
    query = {**PLATFORM_REQUIRED.get(method, {}), **query}
    with pytest.raises(BadRequestException) as info:
        stack.call(method, types, platform_key="acme-academy", **query)
    body = json.loads(info.value.body)
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["parameter"] == param, body


# --- chat history: reads ------------------------------------------------------------------------------


def test_chat_history_lists_every_conversation_as_the_sdk_model(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        count, rows = history_pages(stack, org)
        want = stack.conversations(org)
        assert count == len(want) == len(stack.exp.conversations[org])
        got = {as_uuid(c.id): served(c) for c in rows}
        assert got == {as_uuid(cid): wanted(c) for cid, c in want.items()}


def test_chat_history_filters(stack: Stack) -> None:
    org = "acme-academy"
    convs = stack.conversations(org)

    def ids(**filters: Any) -> set[Any]:
        _, rows = history_pages(stack, org, **filters)
        return {as_uuid(c.id) for c in rows}

    def want(pred: Callable[[reference.Conversation], bool]) -> set[Any]:
        out = {as_uuid(cid) for cid, c in convs.items() if pred(c)}
        assert 0 < len(out) < len(convs), "the filter would not discriminate"
        return out

    for mentor in stack.mentors(org):
        assert ids(mentor=uuid.UUID(mentor)) == want(lambda c, m=mentor: c.mentor == m), mentor
    student = Counter(c.student for c in convs.values()).most_common(2)[1][0]
    assert ids(filter_user_id=student) == want(lambda c: c.student == student)
    assert ids(sentiment="negative") == want(lambda c: c.sentiment == "negative")
    assert ids(topics="algebra") == want(lambda c: "algebra" in c.topics)
    assert ids(topics="algebra,fractions") == {
        as_uuid(cid) for cid, c in convs.items() if {"algebra", "fractions"} <= c.topics
    }
    day = Counter(reference.day(c.inserted_ms) for c in convs.values() if c.inserted_ms).most_common(1)[0][0]
    d = date.fromisoformat(day)
    assert ids(start_date=d, end_date=d) == want(
        lambda c: c.inserted_ms is not None and reference.day(c.inserted_ms) == day
    )
    mentor = stack.mentors(org)[0]
    assert ids(mentor=uuid.UUID(mentor), filter_user_id=student) == {
        as_uuid(cid) for cid, c in convs.items() if c.mentor == mentor and c.student == student
    }


def test_chat_history_sentiment_filter_takes_any_string(stack: Stack) -> None:
    count, rows = history_pages(stack, "acme-academy", sentiment="frustrated")
    assert (count, rows) == (0, [])


def test_chat_history_paging_follows_drf(stack: Stack) -> None:
    org = "acme-academy"
    total = len(stack.conversations(org))
    assert total > 100, "the demo must give more than a page of 100"

    def page(**q: Any) -> Any:
        r = stack.call("ai_analytics_orgs_users_chat_history_list", HISTORY_LIST, org=org, user_id=CALLER, **q)
        return ok(r, 200, M.PaginatedConversationsList)

    capped = page(page_size=1000)  # over 100: capped at 100
    assert (capped.count, len(capped.results)) == (total, 100)
    assert capped.previous is None and capped.next is not None and "page=2" in capped.next
    stamps = [utc(c.inserted_at) for c in capped.results]
    assert stamps == sorted(stamps, reverse=True), "not newest first"
    rest = page(page_size=1000, page=2)
    assert len(rest.results) == total - 100 and rest.next is None and rest.previous is not None
    assert not {c.id for c in rest.results} & {c.id for c in capped.results}
    assert len(page(page_size=0).results) == 20  # invalid: the default
    assert len(page(page_size=-3).results) == 20
    raw = httpx.get(stack.env.url(org, "chat-history"), params={"page_size": "lots"},
                    headers={"Authorization": f"Api-Token {stack.keys['admin']}"}, timeout=10)  # fmt: skip
    assert raw.status_code == 200, raw.text
    assert len(M.PaginatedConversationsList.from_dict(raw.json()).results) == 20
    last = -(-total // 20)
    assert len(page(page=last).results) == total - 20 * (last - 1)
    with pytest.raises(NotFoundException):
        page(page=last + 1)
    with pytest.raises(NotFoundException):
        page(page=3, page_size=100)


def test_chat_history_retrieve_a_demo_conversation(stack: Stack) -> None:
    org = "acme-academy"
    cid, conv = sorted(stack.conversations(org).items())[0]
    assert conv.student is not None
    got = retrieve(stack, org, conv.student, cid)
    assert as_uuid(got.id) == as_uuid(cid)
    assert served(got) == wanted(conv)
    assert conv.record is not None
    assert (got.model, got.platform, got.email) == (conv.record["model"], conv.record["platform"], conv.record["email"])
    with pytest.raises(NotFoundException):
        retrieve(stack, org, conv.student, uuid.uuid4())


# --- chat history: writes -----------------------------------------------------------------------------


def test_chat_history_create_through_the_sdk(stack: Stack) -> None:
    student = f"sdk-student-{uuid.uuid4().hex[:8]}"
    mentor = uuid.uuid4()
    body = new_conversation(mentor)
    r = stack.call("ai_analytics_orgs_users_chat_history_create", HISTORY_CREATE, org=WRITES, user_id=student,
                   conversations=body)  # fmt: skip
    made = ok(r, 201, M.Conversations)
    assert isinstance(made.id, uuid.UUID) and made.id != body.id  # set by the server; the body's is read-only
    assert (made.student, made.sentiment, made.email, made.rating, made.lti_email, made.lti_username) == (
        student, "", "", 0, "", ""
    )  # fmt: skip
    assert [t.name for t in made.topics] == ["calculus", "limits"]
    assert (made.mentor, made.model, made.platform, made.has_document, made.memory_tracked) == (
        mentor, "gpt-4o", "web", True, False
    )  # fmt: skip
    assert (made.llm_name, made.llm_provider, made.title, made.tools) == (
        "gpt-4o",
        "openai",
        "Limits at infinity",
        [1, 2],
    )
    assert made.metadata == {"course": "calc-1", "week": 3}

    def listed() -> Any:
        count, rows = history_pages(stack, WRITES, filter_user_id=student)
        return rows if count == 1 else None

    rows = wait_for(listed, "the created conversation in the list")
    assert rows[0].id == made.id and rows[0].title == "Limits at infinity" and rows[0].student == student
    assert [c.id for c in history_pages(stack, WRITES, mentor=mentor)[1]] == [made.id]
    got = wait_for(lambda: retrieve(stack, WRITES, student, made.id), "the created conversation by id")
    assert (got.id, got.student, got.mentor, got.title, got.metadata) == (
        made.id, student, mentor, "Limits at infinity", {"course": "calc-1", "week": 3}
    )  # fmt: skip


@pytest.mark.parametrize("encoding", ["form", "multipart"])
def test_chat_history_create_form_encoded(stack: Stack, encoding: str) -> None:
    student = f"sdk-{encoding}-{uuid.uuid4().hex[:8]}"
    mentor = uuid.uuid4()
    fields: list[tuple[str, str]] = [
        ("mentor", str(mentor)), ("model", "gpt-4o-mini"), ("platform", "web"), ("has_document", "true"),
        ("memory_tracked", "false"), ("llm_name", "gpt-4o-mini"), ("llm_provider", "openai"),
        ("metadata", json.dumps({"source": encoding})), ("title", f"Sent as {encoding}"),
    ]  # fmt: skip
    url = f"{stack.env.base}/api/ai-analytics/orgs/{WRITES}/users/{student}/chat-history/"
    headers = {"Authorization": f"Api-Token {stack.keys['admin']}"}
    if encoding == "form":  # topics as a repeated field
        form: dict[str, str | list[str]] = {**dict(fields), "topics": ["calculus", "limits"]}
        r = httpx.post(url, data=form, headers=headers, timeout=10)
        assert r.request.headers["content-type"].startswith("application/x-www-form-urlencoded")
        assert b"topics=calculus&topics=limits" in r.request.content
    else:  # topics comma-separated
        parts = [(k, (None, v)) for k, v in [*fields, ("topics", "calculus,limits")]]
        r = httpx.post(url, files=parts, headers=headers, timeout=10)
        assert r.request.headers["content-type"].startswith("multipart/form-data")
    assert r.status_code == 201, r.text
    made = M.Conversations.from_dict(r.json())
    assert made is not None

    def check(c: Any) -> None:
        assert (c.student, c.mentor, c.title, c.model, c.has_document, c.memory_tracked) == (
            student, mentor, f"Sent as {encoding}", "gpt-4o-mini", True, False
        )  # fmt: skip
        assert sorted(t.name for t in c.topics) == ["calculus", "limits"]
        assert c.metadata == {"source": encoding}

    check(made)
    got = wait_for(lambda: retrieve(stack, WRITES, student, made.id), f"the {encoding} conversation by id")
    check(got)


def test_chat_history_update_patch_destroy(stack: Stack) -> None:
    student = f"sdk-crud-{uuid.uuid4().hex[:8]}"
    mentor = uuid.uuid4()
    r = stack.call("ai_analytics_orgs_users_chat_history_create", HISTORY_CREATE, org=WRITES, user_id=student,
                   conversations=new_conversation(mentor))  # fmt: skip
    cid = ok(r, 201, M.Conversations).id
    wait_for(lambda: retrieve(stack, WRITES, student, cid), "the created conversation")

    # PUT: the whole record replaced
    other = uuid.uuid4()
    body = new_conversation(other, topics=[M.TopicModel(name="derivatives")], model="gpt-4o-mini",
                            title="Derivatives", metadata={"v": 2}, has_document=False)  # fmt: skip
    r = stack.call("ai_analytics_orgs_users_chat_history_update", HISTORY_ONE, org=WRITES, user_id=student,
                   id=str(cid), conversations=body)  # fmt: skip
    put = ok(r, 200, M.Conversations)
    assert (put.id, put.student, put.mentor, put.model, put.title, put.has_document, put.metadata) == (
        cid, student, other, "gpt-4o-mini", "Derivatives", False, {"v": 2}
    )  # fmt: skip
    assert [t.name for t in put.topics] == ["derivatives"]
    got = wait_for(lambda: (c := retrieve(stack, WRITES, student, cid)).title == "Derivatives" and c, "the PUT")
    assert ([t.name for t in got.topics], got.mentor, got.model) == (["derivatives"], other, "gpt-4o-mini")

    # PATCH: only the title changes
    r = stack.call("ai_analytics_orgs_users_chat_history_partial_update", HISTORY_ONE, org=WRITES, user_id=student,
                   id=str(cid), patched_conversations=M.PatchedConversations(title="Chain rule"))  # fmt: skip
    patched = ok(r, 200, M.Conversations)
    assert (patched.id, patched.title, patched.model, patched.mentor) == (cid, "Chain rule", "gpt-4o-mini", other)
    assert [t.name for t in patched.topics] == ["derivatives"] and patched.metadata == {"v": 2}
    got = wait_for(lambda: (c := retrieve(stack, WRITES, student, cid)).title == "Chain rule" and c, "the PATCH")
    assert ([t.name for t in got.topics], got.model, got.mentor) == (["derivatives"], "gpt-4o-mini", other)
    assert [c.title for c in history_pages(stack, WRITES, filter_user_id=student)[1]] == ["Chain rule"]

    # DELETE: 204, then gone from retrieve and from the list
    r = stack.call("ai_analytics_orgs_users_chat_history_destroy", HISTORY_DESTROY, org=WRITES, user_id=student,
                   id=str(cid))  # fmt: skip
    assert r.status_code == 204 and r.data is None

    def gone() -> bool:
        try:
            retrieve(stack, WRITES, student, cid)
        except NotFoundException:
            return True
        return False

    wait_for(gone, "the deleted conversation answering 404")
    assert history_pages(stack, WRITES, filter_user_id=student) == (0, [])


# --- sentiment, top students ---------------------------------------------------------------------------


def test_sentiment_count_7d_matches_reference(stack: Stack) -> None:
    today = datetime.now(UTC).date()
    for org in sorted(stack.exp.orgs):
        r = stack.call("ai_analytics_orgs_users_sentiment_count_list", SENTIMENT_COUNT, org=org, user_id=CALLER,
                       period="7d")  # fmt: skip
        rows = ok_list(r, M.UserSentimentCountView)
        got = [(utc(row.var_date).date().isoformat(), row.sentiment_count) for row in rows]
        want = [((today - timedelta(days=6 - i)).isoformat(),) for i in range(7)]
        assert [(d,) for d, _ in got] == want
        assert got == [(d, stack.exp.sentiment[(org, d)]) for (d,) in want]
        assert sum(n for _, n in got) == sum(n for (o, _), n in stack.exp.sentiment.items() if o == org) > 0


def test_user_sentiment_matches_reference(stack: Stack) -> None:
    """`user-sentiment/`: the judgements of the range, their number and each label's share (percentages of two
    decimals adding up to 100), over every day, over the last day alone, and over days before any event."""
    first, last = days(stack)
    labels = ("positive", "neutral", "negative")
    before = first - timedelta(days=30)
    for org in sorted(stack.exp.orgs):
        for start, end in ((first, last), (last, last), (before, before + timedelta(days=2))):
            r = stack.call("ai_analytics_orgs_users_user_sentiment_retrieve", USER_SENTIMENT, org=org,
                           user_id=CALLER, start_date=start.isoformat(), end_date=end.isoformat(),
                           group_by="day")  # fmt: skip
            got = ok(r, 200, M.SentimentSummary)
            span = {(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)}
            counts = [sum(n for (o, d, s), n in stack.exp.labels.items() if o == org and d in span and s == label)
                      for label in labels]  # fmt: skip
            assert got.total_sentiments == sum(counts), (org, start, end)
            assert got.sentiment_distribution == dict(zip(labels, reference.shares(counts), strict=True))
            if start == first:
                assert sum(counts) == sum(n for (o, _), n in stack.exp.sentiment.items() if o == org) > 0
            if start == before:
                assert got.sentiment_distribution == {"positive": 0, "neutral": 0, "negative": 0}


def test_top_students_all_time_matches_reference(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        r = stack.call("ai_analytics_orgs_users_top_students_by_chat_messages_list", TOP_STUDENTS, org=org,
                       user_id=CALLER)  # fmt: skip
        rows = ok_list(r, M.StudentChatMessage)
        want = reference.top_students(stack.exp, org)
        assert [(x.username, x.chat_message_count) for x in rows] == want


# --- costs --------------------------------------------------------------------------------------------


def test_tenant_cost_matches_reference(stack: Stack) -> None:
    for start, end in ranges(stack):
        for org in sorted(stack.exp.orgs):
            r = stack.call("ai_analytics_orgs_users_tenant_cost_retrieve", COST, org=org, user_id=CALLER,
                           start_date=naive(start), end_date=naive(end))  # fmt: skip
            want = reference.cost_nanos(stack.obs, start, end, org=org)
            assert ok(r, 200, M.Cost).total_cost == usd(want), (org, naive(start), naive(end))


def test_tenant_cost_with_offset_datetimes(stack: Stack) -> None:
    """A client passing aware datetimes: the SDK sends them with their offset (`...+0200`)."""
    start, end = ranges(stack)[1]
    plus2 = timezone(timedelta(hours=2))
    org = "acme-academy"
    r = stack.call("ai_analytics_orgs_users_tenant_cost_retrieve", COST, org=org, user_id=CALLER,
                   start_date=naive(start).replace(tzinfo=UTC).astimezone(plus2),
                   end_date=naive(end).replace(tzinfo=UTC).astimezone(plus2))  # fmt: skip
    assert ok(r, 200, M.Cost).total_cost == usd(reference.cost_nanos(stack.obs, start, end, org=org))


def test_user_cost_matches_reference(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        spend: Counter[str] = Counter()
        for o in stack.obs:
            if o.org == org and o.student:
                spend[o.student] += o.nanos
        students = [s for s, _ in spend.most_common(4)] + [f"nobody-{uuid.uuid4().hex[:6]}"]
        for start, end in ranges(stack):
            for student in students:
                r = stack.call("ai_analytics_orgs_users_user_cost_retrieve", COST, org=org, user_id=CALLER,
                               username=student, start_date=naive(start), end_date=naive(end))  # fmt: skip
                want = reference.cost_nanos(stack.obs, start, end, org=org, student=student)
                assert ok(r, 200, M.Cost).total_cost == usd(want), (org, student, naive(start), naive(end))
    # sessionless observations are the tenant's, nobody's: the students' sums fall short of the tenant's
    start, end = ranges(stack)[0]
    assert sum(o.nanos for o in stack.obs if o.student is None and start <= o.ts_ms < end) > 0


def test_mentor_cost_matches_reference(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        for start, end in ranges(stack):
            for mentor in stack.mentors(org):
                r = stack.call("ai_analytics_orgs_users_mentors_cost_retrieve", COST, org=org, user_id=CALLER,
                               mentor_unique_id=mentor, start_date=naive(start), end_date=naive(end))  # fmt: skip
                want = reference.cost_nanos(stack.obs, start, end, org=org, mentor=mentor)
                assert ok(r, 200, M.Cost).total_cost == usd(want), (org, mentor, naive(start), naive(end))


def test_costs_model_is_the_costliest_model(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        for start, end in ranges(stack):
            per_model: Counter[str] = Counter()
            for o in stack.obs:
                if o.org == org and start <= o.ts_ms < end:
                    per_model[o.model] += o.nanos
            (top, nanos), *others = per_model.most_common()
            assert not others or others[0][1] < nanos, "a tie: the answer would be ambiguous"
            r = stack.call("ai_analytics_orgs_users_costs_model_retrieve", MODEL_COST, org=org, user_id=CALLER,
                           start_date=naive(start), end_date=naive(end))  # fmt: skip
            got = ok(r, 200, M.ModelCost)
            assert (got.model, got.total_cost) == (top, usd(nanos)), (org, naive(start), naive(end))


def test_costs_permentor_matches_reference(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        for start, end in ranges(stack):
            r = stack.call("ai_analytics_orgs_users_costs_permentor_retrieve", PER_MENTOR, org=org, user_id=CALLER,
                           start_date=naive(start), end_date=naive(end))  # fmt: skip
            got = ok(r, 200, M.TenantMentorTraces)
            assert got.tenant == org
            assert got.tenant_total_cost == usd(reference.cost_nanos(stack.obs, start, end, org=org))
            sessions: dict[str, Counter[str]] = defaultdict(Counter)
            for o in stack.obs:
                if o.org == org and o.mentor and start <= o.ts_ms < end:
                    sessions[o.mentor][o.session_id or ""] += o.nanos
            served_mentors = {}
            for m in got.mentor_data:
                assert m.mentor_name not in served_mentors, f"mentor {m.mentor_name} served twice"
                assert as_uuid(m.mentor_unique_id) == as_uuid(m.mentor_name)
                assert isinstance(as_uuid(m.mentor_unique_id), uuid.UUID), m.mentor_unique_id
                ids = [s.session_id for s in m.mentor_sessions]
                assert len(ids) == len(set(ids)), "a session served twice"
                served_mentors[m.mentor_name] = (
                    m.total_cost,
                    {as_uuid(s.session_id): s.cost for s in m.mentor_sessions if s.cost},
                    {as_uuid(s.session_id) for s in m.mentor_sessions if not s.cost},
                )
            want = {
                mentor: (usd(sum(per.values())), {as_uuid(sid): usd(n) for sid, n in per.items() if n})
                for mentor, per in sessions.items()
            }
            assert {k: v[:2] for k, v in served_mentors.items() if k in want} == want, (org, naive(start))
            for mentor, (total, costly, free) in served_mentors.items():  # anything else costs nothing
                assert mentor in want or (total == 0 and not costly), mentor
                assert free <= {as_uuid(sid) for sid, n in sessions.get(mentor, {}).items() if n == 0}, mentor


def test_costs_peruser_gives_the_users_latest_trace(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        traces: dict[str, list[reference.Observation]] = defaultdict(list)
        for o in stack.obs:
            if o.org == org and o.student:
                traces[o.student].append(o)
        students = sorted(traces, key=lambda s: (-len(traces[s]), s))[:3]
        for start, end in ranges(stack):
            for student in students:
                inside = sorted((o for o in traces[student] if start <= o.ts_ms < end), key=lambda o: o.ts_ms)
                if not inside:
                    continue
                latest = inside[-1]
                assert len(inside) == 1 or inside[-2].ts_ms < latest.ts_ms, "a tie: ambiguous"
                r = stack.call("ai_analytics_orgs_users_costs_peruser_retrieve", PER_USER, org=org, user_id=student,
                               start_date=naive(start), end_date=naive(end))  # fmt: skip
                got = ok(r, 200, M.LLMTracesListResponse)
                assert got.name == student
                assert (got.id, abs(ms_of(got.var_date) - latest.ts_ms) <= 1) == (latest.trace_id, True), (
                    org, student, got, latest
                )  # fmt: skip


OBSERVATIONS = {"200": "PaginatedObservationList", "400": None}
OBSERVATION = {"200": "Observation", "404": None}
TRACES = {"200": "PaginatedTraceList", "400": None}
TRACE = {"200": "Trace", "404": None}


def listed_days() -> list[int]:
    """The first day listed (an epoch day index) under the default observation retention of 7 days, today's
    and, for a run that passed midnight UTC since the events were applied, yesterday's."""
    today = (datetime.now(UTC).date() - date(1970, 1, 1)).days
    return [today - 6, today - 7]


def every_page(stack: Stack, method: str, types: dict[str, Any], org: str, **q: Any) -> list[Any]:
    """Every result of a limit/offset listing, following `next` as a client would."""
    out: list[Any] = []
    offset = 0
    while True:
        page = stack.call(method, types, org=org, user_id=CALLER, limit=100, offset=offset, **q).data
        out += page.results
        if page.next is None:
            assert len(out) == page.count, (len(out), page.count)
            return out
        assert f"offset={offset + 100}" in page.next and "limit=100" in page.next, page.next
        offset += 100


def test_observations_list_and_retrieve_match_reference(stack: Stack) -> None:
    org = "acme-academy"
    got = every_page(stack, "ai_analytics_orgs_users_observations_list", OBSERVATIONS, org)
    assert all(isinstance(o, M.Observation) for o in got)
    listed = [[o for o in stack.obs if o.org == org and o.ts_ms // 86_400_000 >= day] for day in listed_days()]
    want = [sorted(rows, key=lambda o: (o.ts_ms, o.event_id), reverse=True) for rows in listed]
    assert [o.id for o in got] in [[o.event_id for o in rows] for rows in want], "not the listed ones, newest first"
    by_id = {o.event_id: o for o in stack.obs if o.org == org}
    assert len(got) > 100, "the demo must give more than a page"
    for o in got:
        ref = by_id[o.id]
        assert (o.trace_id, o.provided_model_name, abs(ms_of(o.start_time) - ref.ts_ms) <= 1) == (
            ref.trace_id, ref.model, True
        ), (o, ref)  # fmt: skip
        assert o.total_cost is None or Decimal(o.total_cost) * 10**9 == ref.nanos, (o.total_cost, ref.nanos)
        assert (o.total_cost is None) == (json.loads(o.cost_details) == {}), o
        usage = json.loads(o.usage_details)
        assert usage["total"] == usage["input"] + usage["output"]
    oldest = every_page(stack, "ai_analytics_orgs_users_observations_list", OBSERVATIONS, org, ordering="start_time")
    assert [o.id for o in oldest] == [o.id for o in reversed(got)]

    one = ok(stack.call("ai_analytics_orgs_users_observations_retrieve", OBSERVATION, id=got[0].id, org=org,
                        user_id=CALLER), 200, M.Observation)  # fmt: skip
    assert one == got[0]
    with pytest.raises(NotFoundException):
        stack.call("ai_analytics_orgs_users_observations_retrieve", OBSERVATION, id="no-such", org=org, user_id=CALLER)
    # Another org's observation is not this org's.
    other = next(o for o in stack.obs if o.org != org)
    with pytest.raises(NotFoundException):
        stack.call("ai_analytics_orgs_users_observations_retrieve", OBSERVATION, id=other.event_id, org=org,
                   user_id=CALLER)  # fmt: skip

    # A search: the id, trace, type or model, in any case.
    needle = got[5].trace_id[:12].upper()
    found = stack.call("ai_analytics_orgs_users_observations_list", OBSERVATIONS, org=org, user_id=CALLER,
                       search=needle, limit=100).data  # fmt: skip
    assert [o.id for o in found.results] == [o.id for o in got if needle.casefold() in o.trace_id.casefold()]


def test_traces_list_and_retrieve_match_reference(stack: Stack) -> None:
    for org in sorted(stack.exp.orgs):
        got = every_page(stack, "ai_analytics_orgs_users_traces_list", TRACES, org)
        served = [(t.id, ms_of(t.timestamp), t.session_id, t.user_id) for t in got]
        wants = []
        for day in listed_days():
            rows = reversed(reference.traces(stack.events, org, day))
            wants.append(
                [(i, t, None if s is None else ids.served(org, ids.CONVERSATION, s), u) for i, t, s, u in rows]
            )
        assert served in wants, (org, served[:3], wants[0][:3])
        oldest = every_page(stack, "ai_analytics_orgs_users_traces_list", TRACES, org, ordering="timestamp")
        assert [t.id for t in oldest] == [t.id for t in reversed(got)]
    org = "acme-academy"
    got = every_page(stack, "ai_analytics_orgs_users_traces_list", TRACES, org)
    assert any(t.session_id is None for t in got) and any(t.user_id for t in got)
    one = ok(stack.call("ai_analytics_orgs_users_traces_retrieve", TRACE, id=got[3].id, org=org, user_id=CALLER),
             200, M.Trace)  # fmt: skip
    assert one == got[3]
    with pytest.raises(NotFoundException):
        stack.call("ai_analytics_orgs_users_traces_retrieve", TRACE, id="no-such", org=org, user_id=CALLER)
    # Ids holding `/` and other separators: asked for encoded, and as they are.
    admin = {"Authorization": f"Api-Token {stack.keys['admin']}"}
    odd = next(e for t, e in stack.events if t == "llm-observations" and e["event_id"].startswith("obs/1|"))
    for path, want in (
        (f"traces/{odd['trace_id']}", odd["trace_id"]),
        (f"observations/{odd['event_id']}", odd["event_id"]),
    ):
        for spelled in (quote(path, safe="/"), path.split("/", 1)[0] + "/" + quote(path.split("/", 1)[1], safe="")):
            r = httpx.get(f"{stack.env.base}/api/ai-analytics/orgs/{org}/users/{CALLER}/{spelled}/", headers=admin,
                          timeout=10)  # fmt: skip
            assert r.status_code == 200 and r.json()["id"] == want, (spelled, r.status_code, r.text[:200])
    student = next(t.user_id for t in got if t.user_id)
    found = stack.call("ai_analytics_orgs_users_traces_list", TRACES, org=org, user_id=CALLER, search=student.upper(),
                       limit=100).data  # fmt: skip
    assert found.results and all(student in (t.user_id, t.session_id, t.id) for t in found.results)
    assert found.count == sum(1 for t in got if student.casefold() in " ".join(
        x.casefold() for x in (t.id, t.session_id or "", t.user_id or "")))  # fmt: skip


@pytest.mark.parametrize(
    ("query", "param"),
    [({"ordering": "name"}, "ordering"), ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"),
     ({"offset": "-1"}, "offset"), ({"offset": "x"}, "offset")],
)  # fmt: skip
def test_observations_and_traces_refuse_bad_parameters(stack: Stack, query: dict[str, str], param: str) -> None:
    for path in ("observations", "traces"):
        r = httpx.get(stack.env.url("acme-academy", path), params=query,
                      headers={"Authorization": f"Api-Token {stack.keys['admin']}"}, timeout=10)  # fmt: skip
        assert r.status_code == 400 and param in r.json(), (path, r.status_code, r.text)
    past = httpx.get(stack.env.url("acme-academy", "traces"), params={"offset": "1000000"},
                     headers={"Authorization": f"Api-Token {stack.keys['admin']}"}, timeout=10)  # fmt: skip
    assert past.status_code == 200 and past.json()["results"] == [] and past.json()["previous"], past.text


TRANSCRIPTS = {"200": "List[ConversationMessage]", "400": None, "403": None, "404": None}
DETAIL = {"200": "ConversationDetailResponse", "400": None, "403": None, "404": None}


def reference_messages(stack: Stack, org: str) -> dict[str, list[tuple[int, str, str, str]]]:
    """Each session's messages with content (by the session's served UUID: the demo's are UUIDs), once per
    event id, by (time, event id): (time, id, role, text)."""
    out: dict[str, dict[str, tuple[int, str, str, str]]] = defaultdict(dict)
    for topic, e in stack.events:
        if topic == "chat-messages" and e["org"] == org and e.get("content") is not None:
            out[reference.canonical_id(e["session_id"])].setdefault(e["event_id"], (reference.ts_ms(e["timestamp"]), e["event_id"], e["role"],
                                                            e["content"]))  # fmt: skip
    return {sid: sorted(msgs.values()) for sid, msgs in out.items()}


def test_transcripts_list_each_conversation_with_its_first_message(stack: Stack) -> None:
    org = "acme-academy"
    got = ok_list(stack.call("ai_analytics_orgs_users_transcripts_list", TRANSCRIPTS, org=org, user_id=CALLER),
                  M.ConversationMessage)  # fmt: skip
    kept = reference_messages(stack, org)
    history = every_history_page(stack, org)
    assert [str(t.id) for t in got] == [str(c.id) for c in history if str(c.id) in kept], "not chat history's order"
    by_id = {str(c.id): c for c in history}
    for t in got:
        row = by_id[str(t.id)]
        messages = kept[str(row.id)]
        assert t.first_message == next((m[3] for m in messages if m[2] == "human"), ""), str(row.id)
        assert (t.user_id, t.message_count, t.user_sentiment) == (
            row.student,
            row.message_count_human + row.message_count_ai,
            row.sentiment,
        )
    mentor = got[0]
    one = ok_list(stack.call("ai_analytics_orgs_users_transcripts_list", TRANSCRIPTS, org=org, user_id=CALLER,
                             mentor=str(by_id[str(mentor.id)].mentor)), M.ConversationMessage)  # fmt: skip
    assert one and all(by_id[str(t.id)].mentor == by_id[str(mentor.id)].mentor for t in one)
    with pytest.raises(ForbiddenException):  # what students wrote: a platform_admin key
        stack.call("ai_analytics_orgs_users_transcripts_list", TRANSCRIPTS, key="analyst", org=org, user_id=CALLER)


def every_history_page(stack: Stack, org: str) -> list[Any]:
    out: list[Any] = []
    page = 1
    while True:
        r = stack.call("ai_analytics_orgs_users_chat_history_list", HISTORY_LIST, org=org, user_id=CALLER, page=page,
                       page_size=100).data  # fmt: skip
        out += r.results
        if r.next is None:
            return out
        page += 1


def test_message_details_give_a_conversations_messages_in_pairs(stack: Stack) -> None:
    org = "acme-academy"
    kept = reference_messages(stack, org)
    history = every_history_page(stack, org)
    row = max((c for c in history if str(c.id) in kept), key=lambda c: (len(kept[str(c.id)]), str(c.id)))
    r = stack.call("analytics_messages_details_retrieve", DETAIL, session_id=str(row.id), platform_key=org)
    got = ok(r, 200, M.ConversationDetailResponse)
    flat = []
    for pair in got.messages:
        flat += [("human", pair["human"])] if pair["human"] else []
        flat += [("ai", m) for m in pair["ai"] or []]
    want = kept[str(row.id)]
    assert [(role, m["content"], m["event_id"]) for role, m in flat] == [(w[2], w[3], w[1]) for w in want]
    assert all(pair["human"] or pair is got.messages[0] for pair in got.messages)  # a pair starts with a human one
    assert (got.summary["session"], got.summary["message_count"]) == (
        str(row.id),
        row.message_count_human + row.message_count_ai,
    )
    # The messages of one day only; another mentor's conversation, an unknown one, a day without any: 404.
    day = datetime.fromtimestamp(want[-1][0] / 1000, UTC).date()
    on_day = [w for w in want if datetime.fromtimestamp(w[0] / 1000, UTC).date() == day]
    r = stack.call("analytics_messages_details_retrieve", DETAIL, session_id=str(row.id), platform_key=org,
                   start_date=day, end_date=day)  # fmt: skip
    assert sum(bool(p["human"]) + len(p["ai"] or []) for p in r.data.messages) == len(on_day)
    other_mentor = next(c.mentor for c in history if c.mentor != row.mentor)
    for query in ({"mentor_unique_id": other_mentor}, {"session_id": str(uuid.uuid4())},
                  {"start_date": date(2001, 1, 1), "end_date": date(2001, 1, 2)}):  # fmt: skip
        with pytest.raises(NotFoundException):
            stack.call("analytics_messages_details_retrieve", DETAIL, **{"session_id": str(row.id), "platform_key": org,
                                                                          **query})  # fmt: skip
    with pytest.raises(ForbiddenException):
        stack.call(
            "analytics_messages_details_retrieve", DETAIL, key="analyst", session_id=str(row.id), platform_key=org
        )


def test_costs_pertenant_matches_reference(stack: Stack) -> None:
    for start, end in ranges(stack):
        r = stack.call("ai_analytics_costs_pertenant_list", PER_TENANT, start_date=naive(start), end_date=naive(end))
        rows = ok_list(r, M.CostPerTenant)
        got = {}
        for row in rows:
            assert row.platform_key not in got, f"{row.platform_key} served twice"
            models = {m.model: m.total_cost for m in row.model_costs}
            assert len(models) == len(row.model_costs), "a model served twice"
            got[row.platform_key] = (row.total_cost, {k: v for k, v in models.items() if v})
        want: dict[str, tuple[float, dict[str, float]]] = {}
        for org in sorted(stack.exp.orgs):
            per_model: Counter[str] = Counter()
            for o in stack.obs:
                if o.org == org and start <= o.ts_ms < end:
                    per_model[o.model] += o.nanos
            want[org] = (usd(sum(per_model.values())), {m: usd(n) for m, n in per_model.items() if n})
        assert {k: v for k, v in got.items() if k in want} == want, naive(start)
        assert all(v == (0, {}) for k, v in got.items() if k not in want)


# --- errors -------------------------------------------------------------------------------------------

BACKWARDS = {"start_date": datetime.combine(LATER, datetime.min.time()),
             "end_date": datetime.combine(EARLIER, datetime.min.time())}  # fmt: skip
BAD = [
    ("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES,
     {"start_date": f"{TODAY.year}-13-01", "end_date": TODAY.isoformat()}, "start_date"),
    ("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES,
     {"start_date": "last week", "end_date": TODAY.isoformat()}, "start_date"),
    ("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_average_messages_per_session_list", AVG_MESSAGES,
     {"start_date": EARLIER.isoformat(), "end_date": TODAY.isoformat(), "aggregation": "yearly"}, "aggregation"),
    ("ai_analytics_orgs_users_conversation_list", CONVERSATIONS,
     {"start_date": EARLIER.isoformat(), "end_date": TODAY.isoformat(), "aggregation": "monthly"}, "aggregation"),
    ("ai_analytics_orgs_users_conversation_list", CONVERSATIONS,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_total_users_by_mentor_list", USERS_BY_MENTOR, {"aggregation": "weekly"}, "aggregation"),
    ("ai_analytics_orgs_users_total_users_by_mentor_list", USERS_BY_MENTOR, {"start_date": "2026-02-30"}, "start_date"),
    ("ai_analytics_orgs_users_total_users_by_mentor_list", USERS_BY_MENTOR,
     {"start_date": "2020-01-01", "end_date": TODAY.isoformat(), "aggregation": "hourly"}, "start_date"),
    ("ai_analytics_orgs_users_rating_summary_list", RATINGS,
     {"start_date": EARLIER.isoformat(), "end_date": TODAY.isoformat(), "group_by": "week"}, "group_by"),
    ("ai_analytics_orgs_users_rating_summary_list", RATINGS, {"start_date": "x", "end_date": "y"}, "start_date"),
    ("ai_analytics_orgs_users_most_discussed_topics_list", TOPIC_RECORDS,
     {"start_date": EARLIER.isoformat(), "end_date": TODAY.isoformat(), "aggregation": "monthly"}, "aggregation"),
    ("ai_analytics_orgs_users_most_discussed_topics_list", TOPIC_RECORDS,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_usage_summary_list", USAGE, {"start_date": "x", "end_date": TODAY.isoformat()},
     "start_date"),
    ("ai_analytics_orgs_users_usage_summary_list", USAGE,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_user_sentiment_retrieve", USER_SENTIMENT,
     {"start_date": "2026-02-30", "end_date": TODAY.isoformat()}, "start_date"),
    ("ai_analytics_orgs_users_user_sentiment_retrieve", USER_SENTIMENT,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_user_sentiment_retrieve", USER_SENTIMENT,
     {"start_date": EARLIER.isoformat(), "end_date": "2026-1-1"}, "end_date"),
    ("ai_analytics_orgs_users_user_metrics_pie_chart_retrieve", PIE_CHART,
     {"start_date": LATER.isoformat(), "end_date": EARLIER.isoformat()}, "end_date"),
    ("ai_analytics_orgs_users_user_metrics_pie_chart_retrieve", PIE_CHART,
     {"start_date": "today", "end_date": TODAY.isoformat(), "mentor_id": "m1"}, "start_date"),
    ("ai_analytics_orgs_users_user_metrics_pie_chart_retrieve", PIE_CHART,
     {"start_date": EARLIER.isoformat(), "end_date": TODAY.isoformat(), "mentor_id": "m" * 2000}, "mentor_id"),
    ("ai_analytics_orgs_users_sentiment_count_list", SENTIMENT_COUNT, {"period": "1y"}, "period"),
    ("ai_analytics_orgs_users_tenant_cost_retrieve", COST, BACKWARDS, "end_date"),
    ("ai_analytics_orgs_users_user_cost_retrieve", COST, {"username": "x", **BACKWARDS}, "end_date"),
    ("ai_analytics_orgs_users_costs_permentor_retrieve", PER_MENTOR, BACKWARDS, "end_date"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "types", "query", "param"), BAD, ids=[f"{b[0][24:]}-{b[3]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_parameter_is_400_with_detail(
    stack: Stack, method: str, types: dict[str, Any], query: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequestException) as info:
        stack.call(method, types, org="acme-academy", user_id=CALLER, **query)
    assert info.value.status == 400
    body = json.loads(info.value.body)
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["parameter"] == param, body


def test_auth_errors_through_the_sdk(stack: Stack) -> None:
    def sentiment(org: str, key: str) -> ApiResponse[Any]:
        return stack.call("ai_analytics_orgs_users_sentiment_count_list", SENTIMENT_COUNT, key, org=org,
                          user_id=CALLER, period="7d")  # fmt: skip

    assert sentiment("acme-academy", "analyst").status_code == 200
    with pytest.raises(UnauthorizedException):
        sentiment("acme-academy", "not-a-key")
    with pytest.raises(ForbiddenException):
        sentiment("acme-academy", "other")  # another org's key
    with pytest.raises(ForbiddenException):
        sentiment("no-such-org", "other")  # whether or not the org exists
    with pytest.raises(NotFoundException):
        sentiment("no-such-org", "admin")  # an all-orgs key: the org does not exist
    with pytest.raises(UnauthorizedException):
        stack.call("ai_analytics_costs_pertenant_list", PER_TENANT, "not-a-key",
                   start_date=BACKWARDS["end_date"], end_date=BACKWARDS["start_date"])  # fmt: skip
    with pytest.raises(ForbiddenException):  # an org's key does not read every org's costs
        stack.call("ai_analytics_costs_pertenant_list", PER_TENANT, "acme_admin",
                   start_date=BACKWARDS["end_date"], end_date=BACKWARDS["start_date"])  # fmt: skip
    with pytest.raises(ForbiddenException):  # chat history needs platform_admin
        history_pages(stack, "acme-academy", key="analyst")
    assert history_pages(stack, "acme-academy", key="acme_admin")[0] == len(stack.conversations("acme-academy"))
