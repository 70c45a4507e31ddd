"""`ai-analytics stack up|down|status`: the whole local system on loopback, data under `.stack/`.

`up` starts Kafka, Redis, creates the topics, then a worker (and, where they exist, the API and a demo
producer), prints where everything is, and stays in the foreground; Ctrl-C (or `stack down` from another
terminal) stops the children in reverse order and leaves no process behind. `up --cluster` starts three
Kafka brokers (topics replicated three times, two in sync for a write) and a Redis Cluster of three
primaries with two replicas each instead, and two workers; its data is under `.stack/cluster/`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from infra.exceptions import InfraError
from infra.kafka import KafkaBroker, KafkaCluster
from infra.procs import ROOT, cli_command, port_open, spawn, stop_pid_file, stop_process, worker_command
from infra.redis import RedisClusterNodes, RedisServer
from streams.clients import ensure_topics
from streams.settings import Settings
from tables import apikeys, connections

STACK_DIR = ROOT / ".stack"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    pid_file: Path


def _ports(settings: Settings) -> tuple[int, int]:
    kafka_port = int(settings.kafka_bootstrap.rsplit(":", 1)[1])
    redis_port = urlparse(settings.redis_url).port or 6379
    return kafka_port, redis_port


def _say(msg: str) -> None:
    print(f"[stack] {msg}", flush=True)


# The cluster stack's fixed ports: brokers 9092, 9094, 9096 (controllers one above), Redis nodes 7001-7009.
CLUSTER_KAFKA_PORT = 9092
CLUSTER_REDIS_PORT = 7001


def up(settings: Settings, *, demo: bool = True, api: bool = True, cluster: bool = False) -> int:
    kafka: KafkaBroker | KafkaCluster
    redis: RedisServer | RedisClusterNodes
    if cluster:
        kafka = KafkaCluster(STACK_DIR / "cluster", partitions=settings.topic_partitions, base_port=CLUSTER_KAFKA_PORT)
        redis = RedisClusterNodes(STACK_DIR / "cluster", base_port=CLUSTER_REDIS_PORT)
        settings = replace(settings, kafka_bootstrap=kafka.bootstrap, redis_url=redis.url, topic_replication=3)
        ports = [(f"Kafka {b.node_id}", p) for b in kafka.brokers for p in (b.port, b.controller_port)]
        ports += [(f"Redis {n.port}", n.port) for n in redis.nodes]
    else:
        kafka_port, redis_port = _ports(settings)
        kafka = KafkaBroker(STACK_DIR / "kafka", port=kafka_port, controller_port=kafka_port + 1,
                            partitions=settings.topic_partitions)  # fmt: skip
        redis = RedisServer(STACK_DIR / "redis", port=redis_port, appendonly=True)
        ports = [("Kafka", kafka_port), ("Kafka controller", kafka_port + 1), ("Redis", redis_port)]
    for name, port in ports:
        if port_open(port):
            raise InfraError(f"port {port} for {name} is in use: is a stack already running? (ai-analytics stack down)")
    STACK_DIR.mkdir(exist_ok=True)
    t0 = time.monotonic()
    children: list[Child] = []
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    (STACK_DIR / "stack.pid").write_text(str(os.getpid()))
    try:
        _say("fetching Kafka (first run only) and starting it ...")
        kafka.start()
        _say(f"Kafka {kafka.bootstrap} up ({time.monotonic() - t0:.1f}s)")
        redis.start()
        _say(f"Redis {redis.url} up ({time.monotonic() - t0:.1f}s)")
        created = asyncio.run(ensure_topics(settings))
        _say(f"topics ready ({len(created)} created, {settings.topic_partitions} partitions, "
             f"replication {settings.topic_replication})")  # fmt: skip
        env = {**os.environ, **settings.as_env()}
        for n in range(2 if cluster else 1):
            children.append(_child(f"worker-{n + 1}" if cluster else "worker", worker_command(settings.log_level), env))
        dashboard = None
        if api:
            children.append(_child("api", cli_command("api"), env))
            key = asyncio.run(_demo_key(settings))
            # org-000: the largest org of the demo traffic (streams/traffic.py, docs/TRAFFIC.md)
            dashboard = f"http://{settings.api_host}:{settings.api_port}/dashboard/#org=org-000&key={key}"
        if demo:
            children.append(_child("demo", cli_command("produce", "demo", "--rate", "50"), env))
        _say(f"all started in {time.monotonic() - t0:.1f}s; logs in {STACK_DIR}/*.log")
        if cluster:
            _say(f"AIA_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} AIA_REDIS_URL={settings.redis_url}")
        if dashboard:
            _say(f"API docs:  http://{settings.api_host}:{settings.api_port}/docs")
            _say(f"dashboard: {dashboard}")
        _say("Ctrl-C (or `ai-analytics stack down`) stops everything")
        while not stopping.wait(1.0):
            for c in children:
                if c.proc.poll() is not None:
                    _say(f"{c.name} exited with code {c.proc.returncode}; see {c.log}")
                    stopping.set()
        return 0
    finally:
        _say("stopping ...")
        for c in reversed(children):
            stop_process(c.proc, timeout=30, pid_file=c.pid_file)
        kafka.stop()
        redis.stop()
        (STACK_DIR / "stack.pid").unlink(missing_ok=True)
        _say("stopped")


def _child(name: str, cmd: list[str], env: dict[str, str]) -> Child:
    log = STACK_DIR / f"{name}.log"
    pid_file = STACK_DIR / f"{name}.pid"
    proc = spawn(cmd, log=log, pid_file=pid_file, env=env)
    _say(f"{name} started (pid {proc.pid}, log {log})")
    return Child(name, proc, log, pid_file)


async def _demo_key(settings: Settings) -> str:
    """A platform_admin key for all orgs, kept in .stack/ so the printed dashboard address stays valid."""
    path = STACK_DIR / "demo-key"
    redis = connections.connect(settings.redis_url)
    try:
        if path.exists() and await apikeys.lookup(redis, path.read_text().strip()) is not None:
            return path.read_text().strip()
        token, _ = await apikeys.create(redis, apikeys.ALL_ORGS, "platform_admin", "local stack dashboard")
        path.write_text(token)
        return token
    finally:
        await redis.aclose()


def down() -> int:
    """Stop a stack started elsewhere: the supervisor first (it stops its children), then leftovers."""
    stopped = []
    if stop_pid_file(STACK_DIR / "stack.pid", timeout=90):
        stopped.append("supervisor")
    for name in ("demo", "api", "worker", "worker-1", "worker-2"):
        if stop_pid_file(STACK_DIR / f"{name}.pid"):
            stopped.append(name)
    servers = [("kafka", STACK_DIR / "kafka"), ("redis", STACK_DIR / "redis")]
    servers += [("kafka", d) for d in sorted((STACK_DIR / "cluster").glob("kafka-*"))]
    servers += [("redis", d) for d in sorted((STACK_DIR / "cluster").glob("redis-*"))]
    for name, folder in servers:
        if stop_pid_file(folder / f"{name}.pid", timeout=60):
            stopped.append(name if folder.parent == STACK_DIR else f"{name} {folder.name}")
    _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status(settings: Settings) -> int:
    kafka_port, redis_port = _ports(settings)
    checks = [("kafka", kafka_port), ("redis", redis_port), ("api", settings.api_port)]
    if (STACK_DIR / "cluster").exists():
        checks += [(f"kafka-{i + 1}", CLUSTER_KAFKA_PORT + 2 * i) for i in range(3)]
        checks += [(f"redis-{i + 1}", CLUSTER_REDIS_PORT + i) for i in range(RedisClusterNodes.primaries * 3)]
    for name, port in checks:
        _say(f"{name:8} 127.0.0.1:{port} {'up' if port_open(port) else 'down'}")
    return 0
