"""The alert engine: evaluates the rules every few seconds and publishes each crossing once.

- One worker at a time evaluates (a lease in Redis with a TTL); another takes over when it dies.
- A rule's state (ok or firing, and its crossing number) lives in Redis. A crossing changes the state
  and appends the alert to the org's outbox in one Lua step, so a restart or a second worker never
  decides the same crossing again.
- The outbox is drained to `analytics-alerts` and trimmed only after Kafka acknowledged. A worker that
  dies between the two leaves the alert in the outbox; the next lease holder first reads the recent
  alerts back from the topic and skips those already there (by `alert_id`), so each crossing is
  published once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from agents.rules import Reading, RuleSet, Verdict, alert_event, evaluate, transition
from streams import clients
from streams.settings import Settings
from streams.topics import ALERTS
from tables import connections, generations, keys, queries
from tables.aggregates import llm_cost, sentiment, sessions
from tables.buckets import MINUTE_MS, Grain
from tables.changefeed import UNLOCK_LUA
from tables.scripts import Script, load

log = logging.getLogger(__name__)

TRANSITION_LUA = load("agents", "alert_transition")  # agents/lua/alert_transition.lua
LEASE_LUA = load("agents", "alert_lease")

RECENT_ALERTS = 2000  # per partition, read back when a worker takes the lease


class AlertEngine:
    def __init__(self, settings: Settings, redis: Redis | None = None) -> None:
        self.settings = settings
        self.rules = RuleSet.load(settings.alert_rules)  # a bad rules file stops the worker at start
        self.redis: Redis = redis or connections.connect(settings.redis_url)
        self.topic = settings.topic(ALERTS)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leading = False
        self.published: set[str] = set()
        self._published_order: deque[str] = deque()
        self._transition = Script(self.redis, TRANSITION_LUA)
        self._lease = Script(self.redis, LEASE_LUA)
        self.producer = clients.producer(settings.kafka_bootstrap, client_id=f"{settings.app_id}-alerts")

    async def run(self, stop: asyncio.Event) -> None:
        await self.producer.start()
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except (RedisError, KafkaError, OSError) as exc:
                    log.warning("alert evaluation failed, retrying: %r", exc)
                    self.leading = False  # re-read the topic before publishing again
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.alert_interval)
        finally:
            with contextlib.suppress(RedisError):
                if self.leading:  # hand over at once instead of after the TTL
                    await Script(self.redis, UNLOCK_LUA).run([keys.alert_lease()], [self.holder])
            await self.producer.stop()

    async def tick(self, now_ms: int | None = None) -> None:
        ttl_ms = int(self.settings.alert_lease_seconds * 1000)
        if not int(await self._lease.run([keys.alert_lease()], [self.holder, ttl_ms])):
            if self.leading:
                log.info("alert lease lost to another worker")
            self.leading = False
            return
        if not self.leading:
            await self._load_published()
            self.leading = True
            log.info("evaluating alert rules (lease %s)", self.holder)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        orgs = await queries.list_orgs(self.redis)
        await self.evaluate(orgs, now_ms)
        await self.drain(orgs)

    async def evaluate(self, orgs: list[str], now_ms: int) -> None:
        plans = {org: self.rules.for_org(org) for org in orgs}
        now_min = now_ms // MINUTE_MS
        spans = {
            org: 2 * max((p.get("window_minutes", 1) for p in rules.values()), default=0)
            for org, rules in plans.items()
        }
        fields = [sessions.MESSAGES, sentiment.SENTIMENT, sentiment.sentiment_field("negative")]
        gen = await generations.current(self.redis)  # the rules read the generation served
        async with self.redis.pipeline(transaction=False) as pipe:
            for org, span in spans.items():
                pipe.hgetall(keys.alert_state(org))
                pipe.hget(keys.bucket(gen, org, Grain.DAY, Grain.DAY.index(now_ms)), llm_cost.COST)
                for m in range(now_min - span + 1, now_min + 1):
                    pipe.hmget(keys.bucket(gen, org, Grain.MINUTE, m), fields)
            replies = iter(await pipe.execute())
        for org, span in spans.items():
            states = {k.decode(): v.decode() for k, v in next(replies).items()}
            cost = int(next(replies) or 0)
            minutes = {}
            for m in range(now_min - span + 1, now_min + 1):
                vals = next(replies)
                if any(vals):
                    minutes[m] = (int(vals[0] or 0), int(vals[1] or 0), int(vals[2] or 0))
            reading = Reading(now_ms, cost, minutes)
            for rule, params in plans[org].items():
                await self._decide(org, rule, evaluate(org, rule, params, reading), states.get(rule), now_ms)

    async def _decide(self, org: str, rule: str, verdict: Verdict, raw_state: str | None, now_ms: int) -> None:
        state: dict[str, Any] = orjson.loads(raw_state) if raw_state else {"state": "ok", "crossing": 0}
        new = transition(state["state"], verdict)
        if new is None:
            return
        crossing = state["crossing"] + (1 if new == "firing" else 0)
        event = alert_event(org, verdict, new, crossing, now_ms)
        new_state = orjson.dumps({"state": new, "crossing": crossing, "since": event["at"]})
        ok = await self._transition.run(
            [keys.alert_state(org), keys.alert_outbox(org)], [rule, raw_state or "", new_state, orjson.dumps(event)]
        )
        if int(ok):
            log.warning("alert %s: %s", event["state"], event["summary"])

    async def drain(self, orgs: list[str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for org in orgs:
                pipe.lrange(keys.alert_outbox(org), 0, -1)
            outboxes = await pipe.execute()
        for org, items in zip(orgs, outboxes, strict=True):
            if not items:
                continue
            futures = []
            sent = []
            for raw in items:
                event = orjson.loads(raw)
                if event["alert_id"] in self.published:
                    continue  # already on the topic (a previous holder died before trimming)
                key = f"{event['org']}|{event['rule']}".encode()
                futures.append(await self.producer.send(self.topic, key=key, value=raw))
                sent.append(event["alert_id"])
            await asyncio.gather(*futures)
            for alert_id in sent:
                self._remember(alert_id)
            await self.redis.ltrim(keys.alert_outbox(org), len(items), -1)  # only this holder appends

    def _remember(self, alert_id: str) -> None:
        self.published.add(alert_id)
        self._published_order.append(alert_id)
        if len(self._published_order) > 50_000:
            self.published.discard(self._published_order.popleft())

    async def _load_published(self) -> None:
        """The alert ids already on the topic (its recent tail): what a previous holder published."""
        self.published.clear()
        self._published_order.clear()
        for alert_id in await recent_alert_ids(self.settings.kafka_bootstrap, self.topic):
            self._remember(alert_id)


async def recent_alert_ids(bootstrap: str, topic: str, per_partition: int = RECENT_ALERTS) -> list[str]:
    consumer, tps = await clients.whole_topic(bootstrap, topic, "earliest")
    try:
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - per_partition))
        ids: list[str] = []
        pending = {tp for tp in tps if ends[tp] > max(begins[tp], ends[tp] - per_partition)}
        while pending:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                ids += [alert_id for r in records if (alert_id := _alert_id(r.value))]
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return ids
    finally:
        await consumer.stop()


def _alert_id(value: bytes | None) -> str | None:
    try:
        event = orjson.loads(value or b"")
        return str(event["alert_id"]) if isinstance(event, dict) and "alert_id" in event else None
    except orjson.JSONDecodeError:
        return None  # not ours: someone else wrote to the topic
