"""Every figure of docs/BENCHMARKS.md from one run, side by side on one broker and the same events.

    python -m bench.run                     # the full run (about half an hour on 2 cores)
    python -m bench.run --quick             # small sizes, a few minutes: to check the harness

Starts its own Kafka and Redis (temporary folder, free ports; `AIA_BENCH_DIR` keeps the folder), then, for
each traffic of `--traffics` (bench/throughput.py): **backfill**, the platform traffic model's 90-day history
(streams/traffic.py, docs/TRAFFIC.md), **live**, its sessions of the last minutes, and **chat**, the earlier
chat-only events kept as one comparison line:
1. produces N events to the four input topics (a prefix per traffic);
2. ceiling: one raw aiokafka consumer of them, `getmany` + `orjson.loads`, nothing else;
3. each engine (kafka: the aiokafka loop; faust: Faust agents): one worker process from the first record
   to the last applied (the group's progress in Redis), a line of progress every 15 s, its RSS sampled as
   it runs, the CPU the worker, redis-server and the broker used meanwhile (in cores, from /proc) and the
   events per CPU-second of the whole system, Redis memory per million events after it (and, after the
   kafka engine's backfill, by kind of key: bench/memory.py); then two workers in one group on the same
   events (on 2 cores: compared as events per CPU-second);
   rebuild: `ai-analytics rebuild` of the backfill into a new generation;
4. peers, on the backfill's first `--baseline-events`: baseline, the textbook Faust way (bench/
   faust_baseline.py) and quix, Quix Streams' idiomatic app (bench/quix_peer.py), on its chat messages;
   pathway and bytewax (bench/pathway_peer.py, bench/bytewax_peer.py) on all four topics, with and without
   exact dedup, one thread and two (`pip install -e ".[bench]"`); each row says what the peer does not do;
5. freshness: a worker and the API, the live traffic at fixed rates plus probe events; the delay from a
   probe's send to its effect visible through the API (polled every 10 ms);
6. serving: the five endpoints of the largest org under 100 concurrent pollers (each polling once a
   second, as dashboards do; and the first answer of each, computed rather than read from the answer
   cache), 7-day and 90-day ranges, with 1M and 10M events of the backfill stored
   (loaded through the batch pipeline as they are made); at the largest size, the same while a worker
   applies the backfill's topics at full speed, with a reader's PING latency meanwhile and Redis's longest
   command; then the same 100 pollers without pause, for the API's saturation throughput, plainly and
   sending If-None-Match (304 until the data changes); then 1,000 pollers once a second;
7. cluster (its own three brokers and Redis Cluster, once the single ones are stopped): 1, 2 and 4
   workers on `--cluster-events` events of the backfill, 100 pollers without pause, and while a worker
   applies 2,000 chat messages/s and the API is polled, the longest time an org's answers and its applying
   stopped when its Redis primary was killed and kept down (its replica promoted), then when the leader
   broker of a partition was killed and kept down too.
Prints each figure as it comes and writes the report to docs/BENCHMARKS.md (`--out`); `--only kafka,faust`
runs just those sections (the ceiling is always measured, for the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import orjson
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis, RedisCluster

from agents.pipeline import Batch, BatchProcessor
from agents.rebuild import Rebuild
from bench import memory
from bench.cluster import Poller, Progress, kill_leader_broker, kill_primary
from bench.pipeline import ping_meanwhile
from bench.throughput import (
    ORGS,
    ceiling,
    consumed,
    cpu_s,
    event,
    pct,
    produce_messages,
    records,
    slowlog_longest,
    slowlog_start,
    start_worker,
    stream,
)
from infra.kafka import KafkaBroker, KafkaCluster
from infra.procs import ROOT, cli_command, free_port, spawn, wait_until
from infra.redis import RedisClusterNodes, RedisServer
from streams.clients import ensure_topics
from streams.deadletter import Record
from streams.settings import ENGINES, Settings
from streams.topics import INPUT_TOPICS
from tables import apikeys, connections, keys

API_PATH = "/api/ai-analytics/orgs/{org}/users/bench/"
SERVED_ORG = "org-000"  # the traffic model's largest org
# The endpoints a dashboard polls whose answers are shared per data version (api/cache.py).
ANALYTICS = (
    "average-messages-per-session",
    "conversation",
    "total-users-by-mentor",
    "sentiment-count",
    "tenant-cost",
    "top-students-by-chat-messages",
)

log = logging.getLogger(__name__)


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (section, what, figure)
    notes: list[str] = field(default_factory=list)

    def add(self, section: str, what: str, figure: str) -> None:
        self.rows.append((section, what, figure))
        print(f"{section:10} {what}: {figure}", flush=True)


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Run:
    rate: float  # events/s from the first to the last applied
    rss: list[int]  # the first worker's RSS samples (KiB), one a second
    cpu: dict[str, float]  # cores busy meanwhile: "workers", "redis", "broker"


async def run_ours(settings: Settings, n: int, workers: int, tmp: Path, others: dict[str, int] | None = None) -> Run:
    """Apply the n records of the settings' topics with `workers` workers, from the first record applied to
    the last (`consumed`: the group's progress in Redis, every record counted, copies and dead letters too);
    `others`: more processes whose CPU is reported (name -> pid). A line of progress every 15 s."""
    redis = connections.connect(settings.redis_url)
    await redis.flushall()
    procs = [start_worker(settings, f"w{i}", tmp / f"{settings.app_id}-{i}.log") for i in range(workers)]
    samples: list[int] = []
    first_at = None
    first_count = 0
    last_sample = last_said = 0.0
    last_done, moved_at = -1, time.monotonic()
    try:
        deadline = time.monotonic() + 3600
        while True:
            done = await consumed(redis, settings.app_id)
            if done and first_at is None:
                first_at, first_count = time.perf_counter(), done
                pids = {"workers": [p.pid for p in procs], **{k: [pid] for k, pid in (others or {}).items()}}
                cpu0 = {k: sum(cpu_s(pid) for pid in ps) for k, ps in pids.items()}
                last_said = time.monotonic()
            if first_at is not None and time.monotonic() - last_sample >= 1.0:  # from the first event on
                samples.append(rss_kib(procs[0].pid))
                last_sample = time.monotonic()
            if first_at is not None and time.monotonic() - last_said >= 15:
                last_said = time.monotonic()
                say_progress(done, n, time.perf_counter() - first_at, first_count)
            if done >= n:
                break
            if done != last_done:
                last_done, moved_at = done, time.monotonic()
            stalled = time.monotonic() - moved_at > 180
            if stalled or time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                what = "applied nothing for 3 minutes" if stalled else "stopped or too slow"
                raise RuntimeError(f"workers {what}: {done}/{n} applied; see {tmp}")
            await asyncio.sleep(0.05)
        assert first_at is not None
        elapsed = time.perf_counter() - first_at
        cpu = {k: (sum(cpu_s(pid) for pid in ps) - cpu0[k]) / elapsed for k, ps in pids.items()}
        return Run((n - first_count) / elapsed, samples, cpu)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            stop_process(p)
        await redis.aclose()


def say_progress(done: int, n: int, elapsed: float, first: int = 0) -> None:
    """A long run's progress line: done, rate, time left."""
    rate = (done - first) / elapsed if elapsed > 0 else 0.0
    left = (n - done) / rate if rate > 0 else float("inf")
    print(f"           ... {done:,} / {n:,} ({rate:,.0f}/s, {left:,.0f} s left)", flush=True)


def run_peer(settings: Settings, n: int, tmp: Path, name: str, env_more: dict[str, str] | None = None) -> float:
    """Events/s of a peer on the first n events: `faust-baseline` (bench/faust_baseline.py) or `quix`
    (bench/quix_peer.py) on the chat messages; `pathway` or `bytewax` (bench/pathway_peer.py,
    bench/bytewax_peer.py) on the four topics. Each a process of its own that writes its result to a file."""
    result = tmp / f"{name}.result"
    result.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_BOOTSTRAP": settings.kafka_bootstrap,
        "BENCH_TOPIC": settings.topic("chat-messages"),
        "BENCH_TOPICS": ",".join(settings.topic(t) for t in INPUT_TOPICS),
        "BENCH_EVENTS": str(n),
        "BENCH_RESULT": str(result),
        "BENCH_DATADIR": str(tmp / f"{name}-data"),
        "BENCH_APP_ID": f"{name}-{uuid.uuid4().hex[:6]}",
        "BENCH_PARTITIONS": str(settings.topic_partitions),
        **(env_more or {}),
    }
    if name in ("quix", "pathway", "bytewax"):
        command = [sys.executable, "-m", f"bench.{name}_peer"]
    else:
        command = [sys.executable, "-m", "bench.faust_baseline", "worker", "-l", "warn", "--without-web"]
    proc = spawn(command, log=tmp / f"{name}.log", env=env)
    try:
        # A crashed peer may keep running: give up at 200 events/s rather than wait forever.
        # A peer may write its result and exit at once: an exit is a failure only without a result.
        deadline = time.monotonic() + 120 + n / 200
        while not result.exists():
            if proc.poll() is not None and not result.exists():
                raise RuntimeError(f"{name} exited with {proc.returncode} and no result; see {tmp / f'{name}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} gave no result in time; see {tmp / f'{name}.log'}")
            time.sleep(0.05)
    finally:
        stop_process(proc)
    count, seconds = result.read_text().split()
    return int(count) / float(seconds)


class Api:
    """The API as a subprocess (as users run it), with an all-orgs key."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = replace(settings, api_port=free_port())
        self.processes = self.settings.api_processes or os.cpu_count() or 1
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.settings.api_port}"

    def start(self) -> None:
        env = {**os.environ, **self.settings.as_env()}
        self.proc = spawn(cli_command("api"), log=self.tmp / "api.log", env=env)
        wait_until(self._ready, proc=self.proc, what="the API", log=self.tmp / "api.log", timeout=60)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    async def key(self) -> str:
        redis = connections.connect(self.settings.redis_url)
        token, _ = await apikeys.create(redis, "*", "platform_admin", "bench")
        await redis.aclose()
        return token

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)


async def freshness(settings: Settings, api: Api, rate: int, seconds: float, tmp: Path) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, probes) of send -> visible through the API at `rate` events/s in total."""
    run = uuid.uuid4().hex[:6]
    s = replace(settings, topic_prefix=f"fresh{run}.", app_id=f"fresh-{run}", batch_within=0.05)
    await ensure_topics(s)
    worker = start_worker(s, "fresh", tmp / f"fresh-{rate}.log")
    token = await api.key()
    producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap, linger_ms=2, acks="all")
    await producer.start()
    probe_org = f"probe-{run}"
    today = datetime.now(UTC).date().isoformat()
    url = f"{api.base}{API_PATH.format(org=probe_org)}average-messages-per-session/"
    sent: list[float] = []
    seen: list[float] = []
    stop = asyncio.Event()

    async def load() -> None:
        """`rate` events a second in total, 20 of them probes (each a new session of the probe org), the rest
        the platform traffic model's live sessions."""
        live = stream("live", 10**12, seed=11)
        start = time.perf_counter()
        count, next_probe = 0, start
        while (now := time.perf_counter()) - start < seconds:
            while count < int((now - start) * rate):
                count += 1
                if time.perf_counter() >= next_probe:
                    next_probe += 0.05
                    e = _chat(f"p{run}-{len(sent)}", probe_org, f"ps{len(sent)}", "human")
                    sent.append(time.perf_counter())
                    await producer.send(s.topic("chat-messages"), orjson.dumps(e), key=e["session_id"].encode())
                else:  # the platform traffic's live sessions
                    topic, key, value = next(live)
                    await producer.send(s.topic(topic), value, key=key)
            await asyncio.sleep(0.005)
        await producer.flush()

    async def poll() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Api-Token {token}"}) as client:
            while not stop.is_set() or len(seen) < len(sent):
                r = await client.get(url, params={"start_date": today, "end_date": today})
                if r.status_code == 200 and r.json():
                    total = r.json()[0]["total_sessions"]
                    now = time.perf_counter()
                    while len(seen) < min(total, len(sent)):
                        seen.append(now)
                if stop.is_set() and time.perf_counter() - stopped_at > 30:
                    break
                await asyncio.sleep(0.01)

    # Warm up: the worker joins its group and applies a first probe before the clock starts.
    stopped_at = 0.0
    warm = _chat(f"w{run}", f"warm-{run}", "w", "human")
    await producer.send_and_wait(s.topic("chat-messages"), orjson.dumps(warm), key=b"w")
    redis = connections.connect(s.redis_url)
    for _ in range(600):
        if await redis.sismember("aia:orgs", f"warm-{run}"):
            break
        await asyncio.sleep(0.1)
    await redis.aclose()
    poller = asyncio.create_task(poll())
    await load()
    stop.set()
    stopped_at = time.perf_counter()
    await poller
    await producer.stop()
    stop_process(worker)
    delays = [(b - a) * 1000 for a, b in zip(sent, seen, strict=False)]
    return pct(delays, 50), pct(delays, 99), len(delays)


def _chat(event_id: str, org: str, session: str, role: str, ts_ms: int | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "org": org,
        "timestamp": ts_ms if ts_ms is not None else int(time.time() * 1000),
        "session_id": session,
        "student": f"student{hash(session) % 400:03d}",
        "mentor_id": f"mentor{hash(session) % 7}",
        "role": role,
        "topics": ["algebra"],
    }


async def load_store(settings: Settings, n: int) -> float:
    """Apply n events of the platform traffic's 90-day backfill straight through the batch pipeline (no
    Kafka), streamed as they are made, the changefeed's marks dropped; returns Redis MiB used."""
    redis = connections.connect(settings.redis_url)
    await redis.flushall()

    async def dead_letters(dead: list[Any]) -> None:
        pass  # the traffic's late cost upserts past the window, and the like: counted by the pipeline

    proc = BatchProcessor(settings, redis, dead_letters)
    batch: list[Record] = []
    started = last = time.perf_counter()
    for i, record in enumerate(records(stream("backfill", n), settings.topic_partitions), 1):
        batch.append(record)
        if len(batch) == 20_000:
            await proc.process(Batch.of(batch))
            batch = []
            if time.perf_counter() - last >= 15:
                last = time.perf_counter()
                say_progress(i, n, last - started)
    if batch:
        await proc.process(Batch.of(batch))
    # No publisher runs here: the changefeed's marks are dropped as if published (a worker started later
    # would otherwise publish every counter of the history first, and they are not the store's memory).
    async for key in redis.scan_iter(match=f"{keys.NS}:cf:*", count=1000):
        await redis.unlink(key)
    used = int((await redis.info("memory"))["used_memory"])
    await redis.aclose()
    return used / 2**20


async def wait_consuming(redis: Redis, group: str) -> None:
    """Until the group has applied a first record."""
    for _ in range(1200):
        if await consumed(redis, group):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{group} applied nothing in 2 minutes")


async def serving_during_backfill(
    args: argparse.Namespace, report: Report, base: Settings, api: Api, token: str, tmp: Path, size: int
) -> None:
    """The endpoints polled (100 pollers once a second, 7-day range) while a worker applies the backfill's
    events at full speed onto the stored ones; meanwhile a reader's PING (a process of its own, every 10 ms)
    and Redis's slow log: how long a reader waited behind the worker, and its longest command."""
    s = replace(base, topic_prefix="backfill.", app_id=f"during-{uuid.uuid4().hex[:6]}")
    redis = connections.connect(base.redis_url)
    await slowlog_start(redis)
    worker = start_worker(s, "during", tmp / "during-backfill.log")
    pings: list[float] = []
    stop = asyncio.Event()
    pinger = asyncio.create_task(ping_meanwhile(base.redis_url, pings, stop))
    try:
        await wait_consuming(redis, s.app_id)
        results = await serving(api, token, 7, args.serving_seconds)
        applied_meanwhile = await consumed(redis, s.app_id)
    finally:
        stop.set()
        await pinger
        stop_process(worker)
    longest = await slowlog_longest(redis)
    await redis.aclose()
    for name, (p50, p99, count, _) in results.items():
        report.add("serving", f"{size:,} events, 7-day range, {name}, while a worker applies the 90-day backfill "
                   f"at full speed: p50 / p99 ({count:,} requests)", f"{p50:,.1f} / {p99:,.1f} ms")  # fmt: skip
    report.add("serving", f"meanwhile ({applied_meanwhile:,} records applied): a reader's PING every 10 ms, p50 / "
               "p99 / p99.9 / max", " / ".join(f"{pct(pings, q):,.2f}" for q in (50, 99, 99.9, 100)) + " ms")  # fmt: skip
    report.add("serving", "meanwhile: Redis's longest command (slow log)",
               f"{longest[0][0] / 1000:,.1f} ms ({longest[0][1][:40]}...)" if longest else "none of 1 ms or more")  # fmt: skip


def serving_endpoints(days: int, org: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The endpoints the serving section polls, over the last `days` days: name -> (path under the org's
    `API_PATH`, or from the root when it starts with `/`; query)."""
    end = datetime.now(UTC).date()
    start = end - timedelta(days=days - 1)
    rng = {"start_date": start.isoformat(), "end_date": end.isoformat()}
    platform = {"platform_key": org, "date_filter": "custom", **rng}  # the /api/analytics/ family's org
    # messages/ reads each conversation listed in its days (a 400 past 5,000): the last whole day, whatever
    # the range (the largest org lists about 2,000 a day with 10M events stored).
    yesterday = (end - timedelta(days=1)).isoformat()
    one_day = {**platform, "start_date": yesterday, "end_date": yesterday}
    return {
        "average-messages-per-session": ("average-messages-per-session/", rng),
        "conversation": ("conversation/", rng),
        "total-users-by-mentor": ("total-users-by-mentor/", rng),
        "chat-history": ("chat-history/", {**rng, "page_size": 20}),
        "sentiment-count": ("sentiment-count/", {"period": "7d" if days <= 7 else "90d"}),
        "tenant-cost": ("tenant-cost/", rng),
        "top-students-by-chat-messages": ("top-students-by-chat-messages/", rng),
        "rating-summary": ("rating-summary/", rng),
        "usage-summary": ("usage-summary/", rng),
        "user-sentiment": ("user-sentiment/", rng),
        "user-metrics-pie-chart": ("user-metrics-pie-chart/", rng),
        "most-discussed-topics": ("most-discussed-topics/", rng),
        "topic-statistics": ("topic-statistics/", rng),
        "topic-overview": ("topic-overview/", {}),
        "overview-summary": ("overview-summary/", {}),
        "conversation-summary": ("conversation-summary/", {}),
        "chat-history-filter": ("chat-history-filter/", rng),
        "/api/analytics/sessions": ("/api/analytics/sessions/", platform),
        "/api/analytics/ratings": ("/api/analytics/ratings/", platform),
        "/api/analytics/time": ("/api/analytics/time/", platform),
        "/api/analytics/users": ("/api/analytics/users/", {**platform, "metric": "active_users"}),
        "/api/analytics/topics": ("/api/analytics/topics/", platform),
        "/api/analytics/topics/details": ("/api/analytics/topics/details/", platform),
        "/api/analytics/financial": ("/api/analytics/financial/", {**platform, "metric": "total_costs"}),
        "/api/analytics/messages (the last whole day)": ("/api/analytics/messages/", one_day),
        "/api/analytics/users/details": ("/api/analytics/users/details/", platform),
        "observations": ("observations/", {"limit": 20}),
        "traces": ("traces/", {"limit": 20}),
    }


async def serving(
    api: Api,
    token: str,
    days: int,
    seconds: float,
    pollers: int = 100,
    interval: float = 1.0,
    conditional: bool = False,
    only: tuple[str, ...] = (),
) -> dict[str, tuple[float, float, int, float]]:
    """Per endpoint (`only`: those), (p50 ms, p99 ms, requests, the first request's ms: on data not asked
    before, the answer computed rather than read from the answer cache). `conditional`: each poller sends
    the ETag it last got as If-None-Match (a 304 counts as an answer), as a browser's dashboard does."""
    base = f"{api.base}{API_PATH.format(org=SERVED_ORG)}"
    endpoints = serving_endpoints(days, SERVED_ORG)
    out = {}
    # aiohttp: httpx's pool managed under 100 req/s with 100 concurrent connections here, aiohttp 1,300.
    connector = aiohttp.TCPConnector(limit=pollers, force_close=False)
    headers = {"Authorization": f"Api-Token {token}"}
    async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=aiohttp.ClientTimeout(30)) as client:
        for name, (path, params) in endpoints.items():
            if only and name not in only:
                continue
            url = api.base + path if path.startswith("/") else base + path
            latencies, errors, first = await _poll(client, url, params, seconds, pollers, interval, conditional)
            if errors:
                raise RuntimeError(f"{name}: {sum(errors.values())} non-200 answers: {dict(errors)}")
            out[name] = (pct(latencies, 50), pct(latencies, 99), len(latencies), first)
    return out


async def _poll(
    client: aiohttp.ClientSession,
    url: str,
    params: dict[str, Any],
    seconds: float,
    pollers: int,
    interval: float,
    conditional: bool = False,
) -> tuple[list[float], Counter[str], float]:
    """`pollers` concurrent pollers for `seconds`, each asking once every `interval` seconds (0: again as
    soon as answered): every latency (ms), the answers other than 200 (and 304 when `conditional`) counted
    by status and the start of their body, and the latency of the request sent first."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    began = time.perf_counter()
    deadline = began + seconds
    first = [deadline, 0.0]  # the earliest request: when it was sent, its latency

    async def poller(phase: float) -> None:
        nonlocal errors
        due = began + phase
        etag = ""
        while (now := time.perf_counter()) < deadline:
            if interval:
                await asyncio.sleep(max(0.0, due - now))
                due += interval
            t0 = time.perf_counter()
            headers = {"If-None-Match": etag} if conditional and etag else None
            async with client.get(url, params=params, headers=headers) as r:
                body = await r.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if t0 < first[0]:
                first[:] = [t0, latencies[-1]]
            if r.status != 200 and not (conditional and r.status == 304):
                errors[f"{r.status} {body[:80]!r}"] += 1
            etag = r.headers.get("etag", etag)

    await asyncio.gather(*(poller(interval * i / pollers) for i in range(pollers)))
    return latencies, errors, first[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--traffics", default="backfill,live,chat", help="comma-separated: backfill, live, chat")
    parser.add_argument("--baseline-events", type=int, default=100_000)
    parser.add_argument("--serving-events", default="1000000,10000000", help="comma-separated sizes")
    parser.add_argument("--serving-seconds", type=float, default=10.0, help="per endpoint and range")
    parser.add_argument("--freshness-seconds", type=float, default=30.0)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--cluster-events", type=int, default=300_000, help="events of the cluster section")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the harness")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated sections: kafka, faust (each engine: one and two workers), rebuild, baseline, "
        "quix, pathway, bytewax (the peers need the bench extra), freshness, serving, cluster; the ceiling is "
        "always measured",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.quick:
        args.events, args.baseline_events, args.serving_events = 50_000, 20_000, "20000,60000"
        args.cluster_events = 20_000
        args.serving_seconds, args.freshness_seconds = 2.0, 8.0
    report = Report()
    began = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="aia-bench-") as d:
        tmp = Path(os.environ.get("AIA_BENCH_DIR", d))
        kafka = KafkaBroker(tmp / "kafka", port=free_port(), controller_port=free_port(), partitions=args.partitions)
        redis_server = RedisServer(tmp / "redis", port=free_port(), appendonly=True)
        kafka.start()
        redis_server.start()
        api: Api | None = None
        try:
            base = Settings(
                kafka_bootstrap=kafka.bootstrap,
                redis_url=redis_server.url,
                topic_partitions=args.partitions,
                alert_interval=0,  # the benchmark measures the pipeline; alerts have their own tests
            )
            await ensure_topics(base)
            sizes = await throughput_sections(args, report, base, tmp, {"redis": _pid(redis_server.proc),
                                                                       "broker": _pid(kafka.proc)})  # fmt: skip
            machine = await _machine(base)
            if not (wanted(args, "freshness") or wanted(args, "serving") or wanted(args, "cluster")):
                write_report(args, report, began, machine, sizes)
                return

            api = Api(base, tmp)
            api.start()
            try:  # a section that fails is a row saying so: the report of the others is still written
                for rate in (1000, 5000) if wanted(args, "freshness") else ():
                    p50, p99, probes = await freshness(base, api, rate, args.freshness_seconds, tmp)
                    report.add("freshness", f"{rate:,} events/s: send to visible in the API, p50 / p99 ({probes} probes)",
                               f"{p50:,.0f} / {p99:,.0f} ms")  # fmt: skip
                for size in (int(x) for x in args.serving_events.split(",")) if wanted(args, "serving") else ():
                    t0 = time.perf_counter()
                    mib = await load_store(base, size)
                    report.add(
                        "serving",
                        f"{size:,} events stored (loaded in {time.perf_counter() - t0:,.0f} s)",
                        f"Redis {mib:,.0f} MiB",
                    )
                    token = await api.key()
                    for days in (7, 90):
                        results = await serving(api, token, days, args.serving_seconds)
                        for name, (p50, p99, count, first) in results.items():
                            report.add("serving", f"{size:,} events, {days}-day range, {name}: p50 / p99 ({count:,} "
                                       "requests); the first, computed", f"{p50:,.1f} / {p99:,.1f} ms; {first:,.1f} ms")  # fmt: skip
                    # Saturation: 100 pollers asking again as soon as answered (client and API share the 2 cores),
                    # plainly and with If-None-Match; then 1,000 dashboards polling once a second.
                    for conditional in (False, True):
                        sat = await serving(api, token, 90, args.serving_seconds / 2, interval=0.0, conditional=conditional,
                                            only=ANALYTICS)  # fmt: skip
                        total = sum(c for _, _, c, _ in sat.values())
                        report.add("serving", f"{size:,} events, 90-day range, 100 pollers without pause"
                                   f"{', If-None-Match' if conditional else ''}: analytics endpoints ({api.processes} API "
                                   f"processes)", f"{total / (args.serving_seconds / 2 * len(sat)):,.0f} requests/s, p99 "
                                   f"{max(p99 for _, p99, _, _ in sat.values()):,.0f} ms (worst endpoint)")  # fmt: skip
                    if size == max(int(x) for x in args.serving_events.split(",")) and "backfill" in args.traffics:
                        await serving_during_backfill(args, report, base, api, token, tmp, size)
                    for conditional in (False, True):
                        many = await serving(api, token, 7, args.serving_seconds, pollers=1000, conditional=conditional,
                                             only=ANALYTICS)  # fmt: skip
                        report.add("serving", f"{size:,} events, 7-day range, 1,000 pollers once a second"
                                   f"{', If-None-Match' if conditional else ''}: p99",
                                   f"{max(p99 for _, p99, _, _ in many.values()):,.1f} ms (worst endpoint; "
                                   f"{sum(c for _, _, c, _ in many.values()):,} requests)")  # fmt: skip
            except Exception as exc:
                log.exception("the freshness or serving section failed")
                report.add("serving", "the section failed", repr(exc))
            if wanted(args, "cluster"):
                # Its own servers: the single broker and Redis stop first, so the cluster has the machine.
                api.stop()
                api = None
                kafka.stop()
                redis_server.stop()
                try:
                    await cluster_section(args, report, tmp)
                except Exception as exc:  # the sections before it are still written down
                    log.exception("the cluster section failed")
                    report.add("cluster", "the section failed", repr(exc))
            write_report(args, report, began, machine, sizes)
        finally:
            if api is not None:
                api.stop()
            kafka.stop()
            redis_server.stop()


TRAFFIC_NAMES = {
    "backfill": "platform traffic, a 90-day backfill",
    "live": "platform traffic, live",
    "chat": "chat-only events (the earlier benchmark's; a comparison line)",
}


async def throughput_sections(
    args: argparse.Namespace, report: Report, base: Settings, tmp: Path, others: dict[str, int]
) -> dict[str, float]:
    """Per traffic (`--traffics`), on its own topics: the ceiling, then each engine with one worker and two
    (the CPU split and events per CPU-second of the whole system beside each), Redis's memory after it (by
    kind of key, for the backfill); then the rebuild and the peers on the backfill. Returns each traffic's
    average event size."""
    sizes: dict[str, float] = {}
    for traffic in args.traffics.split(","):
        s = replace(base, topic_prefix=f"{traffic}.")
        await ensure_topics(s)
        counts, sizes[traffic] = await produce_messages(s, stream(traffic, args.events))
        n = sum(counts.values())
        section = traffic
        ceil = await ceiling(s, n)
        report.add(section, f"ceiling ({TRAFFIC_NAMES[traffic]}): raw aiokafka getmany + orjson.loads, {n:,} events",
                   f"{ceil:,.0f} events/s")  # fmt: skip
        one_by_engine: dict[str, float] = {}
        for engine in ENGINES if traffic != "chat" else ("kafka",):
            if not wanted(args, engine):
                continue
            settings = replace(s, engine=engine, app_id=f"one-{engine}-{uuid.uuid4().hex[:6]}")
            try:
                first = await run_ours(settings, n, 1, tmp, others)
            except RuntimeError as exc:  # a row saying so; the run goes on
                report.add(section, f"{engine} engine, one worker", f"failed: {exc}")
                continue
            one, rss = first.rate, first.rss
            one_by_engine[engine] = one
            redis = connections.connect(base.redis_url)
            used, kinds = await memory.breakdown(redis)
            await redis.aclose()
            what = f"{engine} engine, one worker"
            report.add(section, f"{what}, first to last event applied in Redis", f"{one:,.0f} events/s")
            report.add(section, f"{what}: ratio to the ceiling", f"{one / ceil:.3f}")
            report.add(section, f"{what}: CPU meanwhile, in cores: worker / Redis / broker; events per CPU-second of "
                       "the whole system", f"{_split(first.cpu)}; {_per_cpu_s(first):,.0f}")  # fmt: skip
            report.add(
                section,
                f"{what}: worker RSS while it applied them (first / max / last sample, one a second)",
                f"{rss[0] / 1024:.0f} / {max(rss) / 1024:.0f} / {rss[-1] / 1024:.0f} MiB ({len(rss)} samples)",
            )
            report.add(section, f"{what}: Redis used_memory per million events", f"{used / 2**20 / (n / 1e6):,.0f} MiB")
            if engine == "kafka" and traffic == "backfill":  # what each kind of key costs (either engine's)
                for kind, (count, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1])[:12]:
                    report.add("memory", f"backfill: `{kind}` keys ({count:,}), MEMORY USAGE per million events",
                               f"{size / 2**20 / (n / 1e6):,.1f} MiB")  # fmt: skip
            if traffic == "chat":
                continue
            settings = replace(settings, app_id=f"two-{engine}-{uuid.uuid4().hex[:6]}")
            try:
                two = await run_ours(settings, n, 2, tmp, others)
            except RuntimeError as exc:
                report.add(section, f"{engine} engine, two workers", f"failed: {exc}")
                continue
            report.add(section, f"{engine} engine, two workers in one group (2 cores: they share them with Redis and "
                       "the broker)", f"{two.rate:,.0f} events/s ({two.rate / one:.2f}x one)")  # fmt: skip
            report.add(section, f"{engine} engine, two workers: CPU in cores: workers / Redis / broker; events per "
                       "CPU-second of the whole system (and / one worker's)", f"{_split(two.cpu)}; "
                       f"{_per_cpu_s(two):,.0f} ({_per_cpu_s(two) / _per_cpu_s(first):.2f})")  # fmt: skip
        if len(one_by_engine) == 2:
            report.add(section, "faust / kafka, one worker", f"{one_by_engine['faust'] / one_by_engine['kafka']:.2f}")
        if traffic != "backfill":
            continue
        if wanted(args, "rebuild"):
            # `ai-analytics rebuild` over the same topics into a new generation, nothing else running.
            redis = connections.connect(base.redis_url)
            await redis.flushall()
            t0 = time.perf_counter()
            await Rebuild(s, redis, grace_s=0, say=lambda _line: None).run()
            took = time.perf_counter() - t0
            await redis.flushall()  # the sections after it start from generation 0
            await redis.aclose()
            report.add("rebuild", f"ai-analytics rebuild of the backfill's {n:,} events into a new generation (no "
                       "live traffic)", f"{n / took:,.0f} events/s, {took / (n / 1e6):,.0f} s per million")  # fmt: skip
        peers(args, report, s, tmp, counts, one_by_engine)
    return sizes


def peers(
    args: argparse.Namespace,
    report: Report,
    s: Settings,
    tmp: Path,
    counts: dict[str, int],
    ours: dict[str, float],
) -> None:
    """The peers on the backfill's first `--baseline-events` (the chat-only ones on its chat messages), each
    row with what it does not do."""
    nb = min(args.baseline_events, sum(counts.values()))
    nchat = min(args.baseline_events, counts["chat-messages"])
    rows: list[tuple[str, str, int, dict[str, str]]] = []
    if wanted(args, "baseline"):
        rows.append(("faust-baseline", "textbook Faust, windowed tables per chat message (chat messages only; "
                     "counts a redelivered message again, publishes no changefeed)", nchat, {}))  # fmt: skip
    if wanted(args, "quix"):
        rows.append(("quix", f"Quix Streams {version('quixstreams')}, its idiomatic app (chat messages only; state "
                     "in RocksDB, counts a redelivered message again)", nchat, {}))  # fmt: skip
    for name in ("pathway", "bytewax"):
        if not wanted(args, name):
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            report.add("peers", name.title(), 'not installed (pip install -e ".[bench]")')
            continue
        what = f"{name.title()} {installed}, the aggregates of the four topics in memory (no persistence, no "
        what += "restart, no changefeed)"
        for dedup in ("0", "1"):
            for threads in ("1", "2"):
                rows.append((name, f"{what}, {threads} thread{'s' if threads == '2' else ''}, "
                             f"{'with' if dedup == '1' else 'without'} exact dedup by event id", nb,
                             {"BENCH_DEDUP": dedup, "BENCH_THREADS": threads}))  # fmt: skip
    for name, what, count, env in rows:
        try:
            rate = run_peer(s, count, tmp, name, env)
        except Exception as exc:  # a peer that fails is a row saying so, not a lost run
            report.add("peers", f"{what}, first {count:,} events", f"failed: {exc!r}"[:200])
            continue
        report.add("peers", f"{what}, first {count:,} events", f"{rate:,.0f} events/s")
        for engine, one in ours.items():
            report.add("peers", f"{engine} engine (one worker, all four topics) / {name}", f"{one / rate:.2f}x")


def _split(cpu: dict[str, float]) -> str:
    return " / ".join(f"{cpu[k]:.2f}" for k in ("workers", "redis", "broker"))


def _per_cpu_s(run: Run) -> float:
    """Events per CPU-second of the whole system: workers, Redis and the broker."""
    return run.rate / max(1e-9, sum(run.cpu[k] for k in ("workers", "redis", "broker")))


async def cluster_section(args: argparse.Namespace, report: Report, tmp: Path) -> None:
    """Three brokers and a Redis Cluster of three primaries with two replicas each (the stack of `stack up
    --cluster`): 1, 2 and 4 workers on the same events, the analytics endpoints under 100 pollers without
    pause, and how long the API and the applying stop while a Redis primary and then the leader broker
    are killed and kept down."""
    kafka = KafkaCluster(tmp / "cluster", partitions=args.partitions)
    rnodes = RedisClusterNodes(tmp / "cluster")
    api: Api | None = None
    kafka.start()
    try:
        rnodes.start()
        base = Settings(
            kafka_bootstrap=kafka.bootstrap, redis_url=rnodes.url, topic_partitions=args.partitions,
            topic_replication=3, alert_interval=0,
        )  # fmt: skip
        await ensure_topics(base)
        counts, _ = await produce_messages(base, stream("backfill", args.cluster_events))
        n = sum(counts.values())
        for count in (1, 2, 4):
            settings = replace(base, app_id=f"cluster{count}-{uuid.uuid4().hex[:6]}")
            rate = (await run_ours(settings, n, count, tmp)).rate
            report.add(
                "cluster",
                f"{count} worker{'s' if count > 1 else ''} in one group, {n:,} events of the 90-day backfill",
                f"{rate:,.0f} events/s",
            )
        api = Api(base, tmp)
        api.start()
        token = await api.key()
        sat = await serving(api, token, 7, args.serving_seconds / 2, interval=0.0, only=ANALYTICS)
        total = sum(c for _, _, c, _ in sat.values())
        report.add("cluster", f"{n:,} events, 7-day range, 100 pollers without pause: analytics endpoints "
                   f"({api.processes} API processes)", f"{total / (args.serving_seconds / 2 * len(sat)):,.0f} "
                   f"requests/s, p99 {max(p99 for _, p99, _, _ in sat.values()):,.0f} ms (worst endpoint)")  # fmt: skip
        gaps = await failover_gaps(base, kafka, rnodes, api, token, tmp)
        for what, (api_gap, apply_gap, problems) in gaps.items():
            report.add("cluster", f"{what}: longest time an org's API answers stopped / its events stopped being "
                       "applied (a worker, 2,000 events/s)", f"{api_gap:.1f} / {apply_gap:.1f} s"
                       + (f" ({'; '.join(problems)})" if problems else ""))  # fmt: skip
    finally:
        if api is not None:
            api.stop()
        rnodes.stop()
        kafka.stop()


async def failover_gaps(
    base: Settings, kafka: KafkaCluster, rnodes: RedisClusterNodes, api: Api, token: str, tmp: Path
) -> dict[str, tuple[float, float, list[str]]]:
    """While a worker applies 2,000 events/s and the API is polled: kill -9 the Redis primary of an org and
    keep it down (its replica takes over, with the primary's other replica as its own); then kill -9 the
    broker leading a partition and keep it down too. For each: the longest time an org's answers stopped,
    and that org's events stopped being applied."""
    run = uuid.uuid4().hex[:6]
    s = replace(base, topic_prefix=f"fail{run}.", app_id=f"fail-{run}", batch_within=0.05)
    await ensure_topics(s)
    worker = start_worker(s, "failover", tmp / f"failover-{run}.log")
    redis = connections.connect(s.redis_url)
    await redis.sadd(keys.orgs(), *ORGS)  # the poller's orgs exist from the start
    poller = Poller(api.base, token, list(ORGS))
    progress = Progress(cast(RedisCluster, redis), ORGS[0])
    stop = asyncio.Event()

    async def load() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
        )
        await producer.start()
        try:
            i, started = 0, time.perf_counter()
            while not stop.is_set():
                while i < (time.perf_counter() - started) * 2000:
                    key, value = event(i, int(time.time() * 1000))
                    await producer.send(s.topic("chat-messages"), value, key=key)
                    i += 1
                await asyncio.sleep(0.01)
        finally:
            await producer.stop()

    tasks = [asyncio.create_task(t) for t in (poller.run(stop), progress.run(stop), load())]
    out = {}
    try:
        await asyncio.sleep(10)
        t0, _ = await kill_primary(cast(RedisCluster, redis), rnodes, keys.meta(0, ORGS[0]))
        await asyncio.sleep(40)
        out["Redis primary killed and kept down (40 s; its replica promoted)"] = (
            poller.longest_gap(t0, time.monotonic()),
            progress.longest_gap(t0, time.monotonic()),
            poller.problems(),
        )
        t0, _ = await kill_leader_broker(s, kafka)
        await asyncio.sleep(20)
        out["then the leader broker of a partition killed and kept down (20 s)"] = (
            poller.longest_gap(t0, time.monotonic()),
            progress.longest_gap(t0, time.monotonic()),
            poller.problems(),
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop_process(worker)
        await redis.aclose()
    return out


def wanted(args: argparse.Namespace, section: str) -> bool:
    return not args.only or section in args.only.split(",")


async def _machine(settings: Settings) -> str:
    return (
        f"{os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"{platform.platform()}; Python {platform.python_version()}; Kafka 4.1.1 (KRaft, one node); "
        f"redis-server {(await _redis_version(settings))}; aiokafka {version('aiokafka')}, "
        f"faust-streaming {version('faust-streaming')}, redis-py {version('redis')}"
    )


async def _redis_version(settings: Settings) -> str:
    redis = connections.connect(settings.redis_url)
    info = await redis.info("server")
    await redis.aclose()
    return str(info["redis_version"])


def write_report(
    args: argparse.Namespace, report: Report, began: datetime, machine: str, sizes: dict[str, float]
) -> None:
    cmd = "python -m bench.run" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{cmd}` on {began:%Y-%m-%d %H:%M} UTC; every figure below is from that one run,",
        "on one broker and one Redis that the run started itself (loopback), with the same events; the `cluster`",
        "section on three brokers and a Redis Cluster of three primaries with two replicas each, started after",
        f"the others had stopped, with {args.cluster_events:,} events of the same model's backfill.",
        "",
        f"Machine and versions: {machine}.",
        "",
        f"Events: {args.events:,} of each traffic, {args.partitions} partitions per topic: "
        + "; ".join(f"**{t}**, {TRAFFIC_NAMES[t]}, ~{size:.0f} bytes an event" for t, size in sizes.items())
        + ". The platform traffic is streams/traffic.py's model (docs/TRAFFIC.md: 20 orgs of unequal size, "
        "30,000 students, 600 mentors, UUID ids, all four topics, 1 % duplicates, late events, cost upserts); "
        "its backfill spreads sessions over the 90 days before the run, its live mode over the last minutes. "
        f"Batches of {Settings().batch_size:,} records applied in parts of {Settings().apply_chunk:,}.",
        "",
        "| section | what | figure |",
        "|---|---|---|",
        *(f"| {s} | {w} | {f} |" for s, w, f in report.rows),
        "",
        "How each figure is taken: see the docstring of `bench/run.py`. Where we miss a goal and why:",
        "`docs/performance.md`.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"written {args.out}")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 60) -> None:
    """SIGTERM to the process's group; SIGKILL if it has not ended within `grace` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s of SIGTERM: killed", proc.args, grace)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _pid(proc: subprocess.Popen[bytes] | None) -> int:
    assert proc is not None, "started above"
    return proc.pid


if __name__ == "__main__":
    asyncio.run(main())
