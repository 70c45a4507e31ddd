"""`ai-analytics stack up|down|status`: the whole local system on loopback, data under `.stack/`.

`up` starts Kafka, Redis, creates the topics, then a worker (and, where they exist, the API and a demo
producer), prints where everything is, and stays in the foreground; Ctrl-C (or `stack down` from another
terminal) stops the children in reverse order and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from redis.asyncio import Redis

from infra.exceptions import InfraError
from infra.kafka import KafkaBroker
from infra.procs import ROOT, cli_command, port_open, spawn, stop_pid_file, stop_process, worker_command
from infra.redis import RedisServer
from streams.clients import ensure_topics
from streams.settings import Settings
from tables import apikeys

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


def up(settings: Settings, *, demo: bool = True, api: bool = True) -> int:
    kafka_port, redis_port = _ports(settings)
    for name, port in (("Kafka", kafka_port), ("Kafka controller", kafka_port + 1), ("Redis", redis_port)):
        if port_open(port):
            raise InfraError(f"port {port} for {name} is in use: is a stack already running? (ai-analytics stack down)")
    STACK_DIR.mkdir(exist_ok=True)
    t0 = time.monotonic()
    kafka = KafkaBroker(STACK_DIR / "kafka", port=kafka_port, controller_port=kafka_port + 1,
                        partitions=settings.topic_partitions)  # fmt: skip
    redis = RedisServer(STACK_DIR / "redis", port=redis_port, appendonly=True)
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
        _say(f"topics ready ({len(created)} created, {settings.topic_partitions} partitions each)")
        env = {**os.environ, **settings.as_env()}
        children.append(_child("worker", worker_command(settings.log_level), env))
        dashboard = None
        if api:
            children.append(_child("api", cli_command("api"), env))
            key = asyncio.run(_demo_key(settings))
            dashboard = f"http://{settings.api_host}:{settings.api_port}/dashboard/#org=acme-academy&key={key}"
        if demo:
            children.append(_child("demo", cli_command("produce", "demo", "--rate", "50"), env))
        _say(f"all started in {time.monotonic() - t0:.1f}s; logs in {STACK_DIR}/*.log")
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
    redis = Redis.from_url(settings.redis_url)
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
    for name in ("demo", "api", "worker"):
        if stop_pid_file(STACK_DIR / f"{name}.pid"):
            stopped.append(name)
    for name, sub in (("kafka", "kafka"), ("redis", "redis")):
        if stop_pid_file(STACK_DIR / sub / f"{name}.pid", timeout=60):
            stopped.append(name)
    _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def status(settings: Settings) -> int:
    kafka_port, redis_port = _ports(settings)
    for name, port in (("kafka", kafka_port), ("redis", redis_port), ("api", settings.api_port)):
        _say(f"{name:6} 127.0.0.1:{port} {'up' if port_open(port) else 'down'}")
    return 0
