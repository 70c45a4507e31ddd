"""Consumers of `analytics-alerts`: `tail` prints alerts as they come, the `Forwarder` POSTs them to a webhook.

The forwarder reads in its own consumer group and commits an alert's offset only once the webhook
accepted it (2xx). While the webhook is down or failing (connection errors, timeouts, 408, 425, 429,
5xx) it retries with backoff, holding its place, so nothing is lost and order is kept; a stopped
forwarder resumes from its last commit. An alert the webhook refuses for good (another 4xx) goes to
`analytics-dead-letter` with the answer as the reason, and the forwarder moves on.
Each POST carries `Idempotency-Key: <alert_id>`: a retry after a lost answer may deliver twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer, ConsumerRecord

from streams import clients
from streams.deadletter import DeadLetter, Record
from streams.settings import Settings
from streams.topics import ALERTS, DEAD_LETTER

log = logging.getLogger(__name__)

RETRYABLE = {408, 425, 429}


def format_alert(event: dict[str, Any]) -> str:
    window = event.get("window") or {}
    return (
        f"{event.get('at')} {str(event.get('state', '?')).upper():8} {event.get('org')} {event.get('rule')} "
        f"value={event.get('value')} threshold={event.get('threshold')} "
        f"window={window.get('start')}..{window.get('end')}  {event.get('summary', '')}"
    )


async def tail(settings: Settings, from_beginning: bool, as_json: bool, count: int, stop: asyncio.Event) -> int:
    topic = settings.topic(ALERTS)
    consumer, tps = await clients.whole_topic(
        settings.kafka_bootstrap, topic, "earliest" if from_beginning else "latest"
    )
    printed = 0
    try:
        if not tps:
            print(f"ai-analytics: no topic {topic} (start a worker, or run `ai-analytics topics`)", file=sys.stderr)
            return 1
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            records = sorted((r for rs in batch.values() for r in rs), key=lambda r: r.timestamp)
            for r in records:
                try:
                    event = orjson.loads(r.value or b"")
                    line = r.value.decode() if as_json and r.value else format_alert(event)
                except (orjson.JSONDecodeError, AttributeError):
                    line = f"(not an alert record at {r.partition}@{r.offset}: {r.value!r})"
                print(line, flush=True)
                printed += 1
                if count and printed >= count:
                    return 0
        return 0
    finally:
        await consumer.stop()


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        url: str,
        *,
        group: str,
        start: str = "latest",
        timeout: float = 10.0,
        max_backoff: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.url = url
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.group = group
        self.start = start
        self.delivered = 0
        self.producer: AIOKafkaProducer | None = None  # for refused alerts; clients are made inside the loop

    async def run(self, stop: asyncio.Event) -> None:
        consumer = clients.group_consumer(
            self.settings.kafka_bootstrap,
            self.group,
            self.settings.topic(ALERTS),
            auto_offset_reset=self.start,
            # Waiting for a webhook is how this consumer works, not a sign that it hangs.
            max_poll_interval_ms=7 * 24 * 3600 * 1000,
        )
        self.producer = clients.producer(self.settings.kafka_bootstrap, client_id=f"{self.group}-dead-letters")
        await consumer.start()
        await self.producer.start()
        log.info("forwarding %s to %s", self.settings.topic(ALERTS), self.url)
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=500)
                    for tp, records in batch.items():
                        for r in records:
                            if not await self.deliver(client, r, stop):
                                return  # stopped while retrying: not committed, sent again on restart
                            await consumer.commit({tp: r.offset + 1})
        finally:
            await consumer.stop()
            await self.producer.stop()

    async def deliver(
        self, client: httpx.AsyncClient, record: ConsumerRecord[bytes, bytes], stop: asyncio.Event
    ) -> bool:
        """POST until accepted (True) or refused for good (dead-lettered, True); False when stopped first."""
        body = record.value or b""
        try:
            alert_id = str(orjson.loads(body).get("alert_id", ""))
        except (orjson.JSONDecodeError, AttributeError):
            alert_id = ""
        headers = {**self.headers, "Idempotency-Key": alert_id or f"{record.partition}-{record.offset}"}
        backoff, attempt, first_failure = 0.5, 0, time.monotonic()
        while not stop.is_set():
            attempt += 1
            try:
                resp = await client.post(self.url, content=body, headers=headers)
                if 200 <= resp.status_code < 300:
                    self.delivered += 1
                    if attempt > 1:
                        log.info("alert %s delivered after %d attempts", alert_id, attempt)
                    return True
                if resp.status_code < 500 and resp.status_code not in RETRYABLE:
                    await self._refused(
                        record, f"webhook {self.url} refused the alert: {resp.status_code} {resp.text[:200]}"
                    )
                    return True
                problem = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == 1 or attempt % 10 == 0:
                log.warning(
                    "alert %s not delivered (%s), attempt %d, failing for %.0fs; retrying",
                    alert_id,
                    problem,
                    attempt,
                    time.monotonic() - first_failure,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)
            backoff = min(backoff * 2, self.max_backoff)
        return False

    async def _refused(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        log.error("%s; sent to the dead-letter topic", reason)
        dead = DeadLetter(Record(ALERTS, record.partition, record.offset, record.key, record.value), reason)
        assert self.producer is not None  # started by run()
        await self.producer.send_and_wait(
            self.settings.topic(DEAD_LETTER), key=dead.key(), value=dead.value(int(time.time() * 1000))
        )
