"""Consumers of `analytics-alerts`: `ai-analytics alerts tail` prints them, `alerts forward` POSTs them.

The forwarder reads in its own consumer group and commits an alert's offset only once the webhook
accepted it (2xx). While the webhook is down or failing (connection errors, timeouts, 408, 425, 429,
5xx) it retries with backoff, holding its place, so nothing is lost and order is kept; a stopped
forwarder resumes from its last commit. An alert the webhook refuses for good (another 4xx) goes to
`analytics-dead-letter` with the answer as the reason, and the forwarder moves on.
Each POST carries `Idempotency-Key: <alert_id>`: a retry after a lost answer may deliver twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streams.deadletter import DeadLetter, Record
from streams.names import ALERTS, DEAD_LETTER
from streams.settings import Settings

log = logging.getLogger(__name__)

RETRYABLE = {408, 425, 429}


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser("alerts", help="alerts: print them as they come, or forward them to a webhook")
    kinds = alerts.add_subparsers(dest="action", required=True)
    tail = kinds.add_parser("tail", help="print alerts as they come (Ctrl-C stops)")
    tail.add_argument("--from-beginning", action="store_true", help="print the topic's earlier alerts first")
    tail.add_argument("--json", action="store_true", help="print each alert as its JSON record")
    tail.add_argument("--count", type=int, default=0, help="exit after this many alerts (0: run until stopped)")
    fwd = kinds.add_parser("forward", help="POST each alert to a webhook, with retries")
    fwd.add_argument("--url", required=True, help="the webhook URL")
    fwd.add_argument("--group", default="", help="consumer group (default: <AIA_APP_ID>-alert-forwarder)")
    fwd.add_argument(
        "--start", choices=("latest", "earliest"), default="latest", help="where a new group starts (default: latest)"
    )
    fwd.add_argument("--timeout", type=float, default=10.0, help="seconds per POST")
    fwd.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between retries, seconds")
    fwd.add_argument("--header", action="append", default=[], help="extra header 'Name: value' (repeatable)")


def run_alerts(args: argparse.Namespace, settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] %(levelname)s %(message)s")
    if args.action == "tail":
        return asyncio.run(_until_signal(lambda stop: tail(settings, args.from_beginning, args.json, args.count, stop)))
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"ai-analytics: --header {h!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers[name.strip()] = value.strip()
    forwarder = Forwarder(
        settings,
        args.url,
        group=args.group or f"{settings.app_id}-alert-forwarder",
        start=args.start,
        timeout=args.timeout,
        max_backoff=args.max_backoff,
        headers=headers,
    )
    return asyncio.run(_until_signal(forwarder.run))


async def _until_signal(run: Callable[[asyncio.Event], Awaitable[int | None]]) -> int:
    """Run until done or until SIGTERM/SIGINT sets the stop event it is handed; its exit code (or 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run(stop) or 0


def format_alert(event: dict[str, Any]) -> str:
    window = event.get("window") or {}
    return (
        f"{event.get('at')} {str(event.get('state', '?')).upper():8} {event.get('org')} {event.get('rule')} "
        f"value={event.get('value')} threshold={event.get('threshold')} "
        f"window={window.get('start')}..{window.get('end')}  {event.get('summary', '')}"
    )


async def whole_topic(bootstrap: str, topic: str, start: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer, in no group, holding every partition of the topic (none if it does not exist),
    each read from `start` ("earliest" or "latest").

    Positions come from `auto_offset_reset`, not from seeks: a metadata update right after the start can
    hand the consumer its partitions again, which resets them (and would undo a seek)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset=start
    )
    await consumer.start()
    for _ in range(50):  # the partitions arrive with the topic's metadata
        if consumer.assignment():
            break
        await asyncio.sleep(0.1)
    return consumer, sorted(consumer.assignment())


async def tail(settings: Settings, from_beginning: bool, as_json: bool, count: int, stop: asyncio.Event) -> int:
    topic = settings.topic(ALERTS)
    consumer, tps = await whole_topic(settings.kafka_bootstrap, topic, "earliest" if from_beginning else "latest")
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
        consumer = AIOKafkaConsumer(
            self.settings.topic(ALERTS),
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset=self.start,
            # Waiting for a webhook is how this consumer works, not a sign that it hangs.
            max_poll_interval_ms=7 * 24 * 3600 * 1000,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap, acks="all")
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
