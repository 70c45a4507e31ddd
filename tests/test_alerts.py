"""Alerts against the real broker and Redis: each rule across its threshold and back gives exactly one
firing and one resolved event, a kill -9 and restart between them changes nothing, an alert whose
publisher died before trimming its outbox is not published twice, and the webhook forwarder delivers
every alert once the receiving server is back."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from agents.alerts import AlertEngine
from infra.procs import cli_command, free_port, spawn
from streams.producer import AnalyticsProducer
from streams.settings import Settings
from tables import keys
from tests.support import WorkerProcess, eventually, read_topic

pytestmark = pytest.mark.integration

RULES = """
[defaults.daily_cost]
budget_usd = "1000"
[defaults.negative_sentiment]
threshold = 0.5
min_events = 4
window_minutes = 60
[defaults.message_volume]
floor = 5
window_minutes = 30
[orgs.spendy.daily_cost]
budget_usd = "1.00"
"""


@pytest.fixture
def alert_settings(settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return replace(settings, alert_rules=rules, alert_interval=0.3, alert_lease_seconds=2.0)


def iso(dt: datetime) -> str:
    return dt.isoformat()


def observation(event_id: str, cost: str, now: datetime) -> dict[str, Any]:
    return {"event_id": event_id, "org": "spendy", "timestamp": iso(now), "trace_id": event_id,
            "type": "generation", "model": "gpt-4o", "usage": {"input": 1, "output": 1}, "cost": cost}  # fmt: skip


def sentiment(i: int, label: str, now: datetime) -> dict[str, Any]:
    return {"event_id": f"s-{label}-{i}", "org": "sad", "timestamp": iso(now), "session_id": f"ss{i}",
            "student": "ann", "sentiment": label}  # fmt: skip


def message(i: int, ts: datetime) -> dict[str, Any]:
    return {"event_id": f"m-{i}", "org": "quiet", "timestamp": iso(ts), "session_id": f"q{i}", "student": "bo",
            "mentor_id": "m1", "role": "human"}  # fmt: skip


async def alerts(settings: Settings, idle_s: float = 1.5) -> list[dict[str, Any]]:
    return [value for _, value in await read_topic(settings, "analytics-alerts", idle_s)]


async def test_each_rule_fires_once_and_resolves_once_across_a_kill9_restart(alert_settings: Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    worker = WorkerProcess(alert_settings, "alerting").start()
    try:
        async with AnalyticsProducer.connect(
            alert_settings.kafka_bootstrap, topic_prefix=alert_settings.topic_prefix
        ) as producer:
            # Over: cost 1.20 > budget 1.00; 4 of 4 sentiments negative; 6 messages 45 minutes ago
            # (the window before the current 30 minutes) and none since.
            for e in (observation("o1", "0.60", now), observation("o2", "0.60", now)):
                await producer.send("llm-observations", e)
            for i in range(4):
                await producer.send("sentiment", sentiment(i, "negative", now))
            for i in range(6):
                await producer.send("chat-messages", message(i, now - timedelta(minutes=45)))

            async def three_firing() -> list[dict[str, Any]]:
                got = await alerts(alert_settings, idle_s=0.5)
                return got if len(got) >= 3 else []

            fired = await eventually(three_firing, timeout=60, what="three firing alerts")
            assert {(a["org"], a["rule"], a["state"]) for a in fired} == {
                ("spendy", "daily_cost", "firing"),
                ("sad", "negative_sentiment", "firing"),
                ("quiet", "message_volume", "firing"),
            }
            cost = next(a for a in fired if a["rule"] == "daily_cost")
            assert (cost["value"], cost["threshold"], cost["value_exact"]) == (1.2, 1.0, "1.2")
            assert cost["window"]["start"] == now.strftime("%Y-%m-%dT00:00:00Z")

            # kill -9 and restart: the new process takes the lease and evaluates the same state again.
            worker.kill()
            worker.start()
            await asyncio.sleep(alert_settings.alert_lease_seconds + 3.0)
            assert len(await alerts(alert_settings)) == 3, "a restart fired an alert again"

            # Back: o2 re-sent with a lower cost replaces it (0.70); 6 positive make 4 of 10 negative;
            # 5 messages now reach the floor.
            await producer.send("llm-observations", observation("o2", "0.10", now))
            for i in range(6):
                await producer.send("sentiment", sentiment(i, "positive", now))
            for i in range(6, 11):
                await producer.send("chat-messages", message(i, now))

        async def six() -> list[dict[str, Any]]:
            got = await alerts(alert_settings, idle_s=0.5)
            return got if len(got) >= 6 else []

        await eventually(six, timeout=60, what="three resolved alerts")
        await asyncio.sleep(2.0)  # and nothing more comes
        final = await alerts(alert_settings)
        counts = Counter((a["org"], a["rule"], a["state"]) for a in final)
        assert counts == {
            (org, rule, state): 1
            for org, rule in (("spendy", "daily_cost"), ("sad", "negative_sentiment"), ("quiet", "message_volume"))
            for state in ("firing", "resolved")
        }, final
        resolved = {a["rule"]: a for a in final if a["state"] == "resolved"}
        assert resolved["daily_cost"]["value_exact"] == "0.7"
        # Resolved at the first evaluation that saw the share at or under 0.5: 4 of 8, 9 or 10, depending on
        # how the six positive judgements were batched.
        assert resolved["negative_sentiment"]["value"] in (0.5, 4 / 9, 0.4), resolved
        assert resolved["message_volume"]["value"] == 5.0
        assert all(a["alert_id"].endswith("|1|" + a["state"]) for a in final)
    finally:
        worker.kill()


async def test_an_alert_already_published_by_a_dead_holder_is_not_published_again(
    alert_settings: Settings, redis: Redis, topics: list[str]
) -> None:
    """The holder died after Kafka acknowledged the alert and before it trimmed the outbox."""
    event = {"alert_id": "acme|daily_cost|1|firing", "org": "acme", "rule": "daily_cost", "state": "firing"}
    other = {**event, "alert_id": "acme|message_volume|1|firing", "rule": "message_volume"}
    producer = AIOKafkaProducer(bootstrap_servers=alert_settings.kafka_bootstrap)
    await producer.start()
    await producer.send_and_wait(alert_settings.topic("analytics-alerts"), orjson.dumps(event), key=b"acme|daily_cost")
    await producer.stop()
    await redis.rpush(keys.alert_outbox("acme"), orjson.dumps(event), orjson.dumps(other))
    await redis.sadd(keys.orgs(), "acme")
    engine = AlertEngine(replace(alert_settings, alert_interval=1000.0, alert_lease_seconds=5000.0), redis)
    await engine.producer.start()
    try:
        await engine.tick()
    finally:
        await engine.producer.stop()
    ids = [a["alert_id"] for a in await alerts(alert_settings)]
    assert ids == [event["alert_id"], other["alert_id"]]
    assert await redis.llen(keys.alert_outbox("acme")) == 0


class Webhook:
    """A receiving server that can be stopped and started again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict[str, Any]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if "refuse" in body["alert_id"]:
                    self.send_response(400)  # refused for good: the forwarder must not retry it forever
                    self.end_headers()
                    self.wfile.write(b"no such channel")
                    return
                received.append({"body": body, "key": self.headers["Idempotency-Key"]})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(free_port())
    yield hook
    hook.stop()


async def test_forwarder_delivers_every_alert_once_the_webhook_is_back(
    settings: Settings, topics: list[str], webhook: Webhook, tmp_path: Path
) -> None:
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    cmd = cli_command("alerts", "forward", "--url", f"http://127.0.0.1:{webhook.port}/hook",
           "--start", "earliest", "--max-backoff", "0.5", "--timeout", "2")  # fmt: skip
    log = tmp_path / "forwarder.log"
    forwarder = spawn(cmd, log=log, env=env)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    sent: list[str] = []

    async def send(n: int, refuse: bool = False) -> None:
        for _ in range(n):
            alert_id = f"acme|daily_cost|{len(sent) + 1}|firing" + ("|refuse" if refuse else "")
            if not refuse:
                sent.append(alert_id)
            value = orjson.dumps({"alert_id": alert_id, "org": "acme", "rule": "daily_cost", "state": "firing"})
            await producer.send_and_wait(settings.topic("analytics-alerts"), value, key=b"acme|daily_cost")

    try:
        await send(3)  # the webhook is down: the forwarder retries
        await eventually(lambda: _logged(log, "not delivered", forwarder), timeout=30, what="a failed delivery attempt")
        await asyncio.sleep(2.0)
        webhook.start()
        await send(2)

        async def all_delivered() -> bool:
            return {r["body"]["alert_id"] for r in webhook.received} == set(sent)

        await eventually(all_delivered, timeout=30, what="every alert delivered")
        # In order, each once, with its id as the idempotency key.
        assert [r["body"]["alert_id"] for r in webhook.received] == sent
        assert [r["key"] for r in webhook.received] == sent
        # An alert the webhook refuses for good goes to the dead-letter topic; the next one still arrives.
        await send(1, refuse=True)
        await send(1)
        await eventually(all_delivered, timeout=30, what="the alert after a refused one delivered")
        dead = [v for _, v in await read_topic(settings, "analytics-dead-letter", idle_s=1.0)]
        assert len(dead) == 1 and dead[0]["reason"].endswith("refused the alert: 400 no such channel")
        assert dead[0]["topic"] == "analytics-alerts"
    finally:
        await producer.stop()
        forwarder.terminate()
        forwarder.wait(30)
    assert forwarder.returncode == 0, log.read_text()


async def _logged(log: Path, text: str, proc: Any) -> bool:
    assert proc.poll() is None, await asyncio.to_thread(log.read_text)
    return text in await asyncio.to_thread(log.read_text)


def test_rules_file_errors_stop_the_worker_with_the_reason(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults.daily_cost]\nbudget_usd = 'lots'\n")
    env = {**os.environ, **replace(settings, alert_rules=bad).as_env()}
    proc = spawn(cli_command("worker"), log=tmp_path / "bad.log", env=env)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.returncode == 2
    assert "budget_usd: not a decimal amount" in (tmp_path / "bad.log").read_text()


async def test_alerts_tail_prints_alerts_as_lines(settings: Settings, topics: list[str], tmp_path: Path) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    for state in ("firing", "resolved"):
        event = {"alert_id": f"acme|daily_cost|1|{state}", "org": "acme", "rule": "daily_cost", "state": state,
                 "value": 2.5, "threshold": 1.0, "window": {"start": "2026-11-22T00:00:00Z", "end": "2026-11-23T00:00:00Z"},
                 "at": "2026-11-22T10:00:00Z", "summary": "acme: over budget"}  # fmt: skip
        await producer.send_and_wait(settings.topic("analytics-alerts"), orjson.dumps(event), key=b"acme|daily_cost")
    await producer.stop()
    env = {**os.environ, **settings.as_env()}
    cmd = cli_command("alerts", "tail", "--from-beginning", "--count", "2")
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
    lines = out.decode().splitlines()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert lines == [
        "2026-11-22T10:00:00Z FIRING   acme daily_cost value=2.5 threshold=1.0 "
        "window=2026-11-22T00:00:00Z..2026-11-23T00:00:00Z  acme: over budget",
        "2026-11-22T10:00:00Z RESOLVED acme daily_cost value=2.5 threshold=1.0 "
        "window=2026-11-22T00:00:00Z..2026-11-23T00:00:00Z  acme: over budget",
    ]
