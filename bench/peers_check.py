"""Try the Pathway and Bytewax peers (bench/pathway_peer.py, bench/bytewax_peer.py) by hand: start a Kafka
broker, produce the traffic model's backfill to the four input topics, run each peer with dedup off and on,
on 1 and 2 threads, and print events/s, checking each peer's totals against the same totals computed here
from the produced events.

    python -m bench.peers_check [--events 200000] [--only pathway|bytewax] [--threads 1,2] [--dedup 0,1]
    python -m bench.peers_check --serve    # start a broker, produce, print the environment, wait (Ctrl-C)
    python -m bench.peers_check --bootstrap 127.0.0.1:PORT --prefix P   # a broker --serve started (its backfill
                                        # ended earlier: the session_hours check may be off by a few)

Not part of bench/run.py (which integrates the peers itself); needs the `bench` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from bench.throughput import Message, messages
from infra.kafka import KafkaBroker
from infra.procs import ROOT, free_port
from streams.clients import ensure_topics
from streams.settings import Settings
from streams.topics import CHAT_HISTORY, CHAT_MESSAGES, INPUT_TOPICS, LLM_OBSERVATIONS, SENTIMENT


async def produce(settings: Settings, msgs: list[Message]) -> None:
    # Idempotent: a retried batch is neither doubled nor reordered, so each partition's order is the list's.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        linger_ms=20,
        max_batch_size=512 * 1024,
        acks="all",
        enable_idempotence=True,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        for topic, key, value in msgs:
            await producer.send(settings.topic(topic), value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    print(f"produced {len(msgs):,} events in {time.perf_counter() - started:.1f}s", flush=True)


def _hour(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp()) // 3600


def expected(msgs: list[Message], dedup: bool) -> dict[str, int]:
    """The totals a peer reports (its summary), computed plainly: produce order is partition order for every
    event_id (its copies share the key), so the first copy here is the first a consumer reads."""
    seen: set[tuple[str, str]] = set()
    out = dict.fromkeys(SUMMARY_FIELDS, 0)
    session_hours: set[tuple[str, int, str]] = set()
    for topic, _key, value in msgs:
        e = orjson.loads(value)
        out["processed"] += 1
        if dedup:
            if (topic, e["event_id"]) in seen:
                out["dropped"] += 1
                continue
            seen.add((topic, e["event_id"]))
        if topic == CHAT_MESSAGES:
            out["messages"] += 1
            out["human"] += e["role"] == "human"
            session_hours.add((e["org"], _hour(e["timestamp"]), e["session_id"]))
        elif topic == SENTIMENT:
            out["sentiment"] += 1
        elif topic == LLM_OBSERVATIONS:
            out["observations"] += 1
            cost = e.get("cost")
            if cost is not None:
                whole, _, frac = str(cost).partition(".")
                out["cost_nanos"] += int(whole) * 10**9 + int((frac + "0" * 9)[:9])
            out["tokens_in"] += e["usage"]["input"]
            out["tokens_out"] += e["usage"]["output"]
        elif topic == CHAT_HISTORY:
            out["history"] += 1
    out["session_hours"] = len(session_hours)
    return out


# What both peers write to BENCH_SUMMARY (a JSON object) when done: totals over their aggregates.
SUMMARY_FIELDS = ("processed", "dropped", "messages", "session_hours", "human", "sentiment", "observations",
                  "cost_nanos", "tokens_in", "tokens_out", "history")  # fmt: skip


def run_peer(
    name: str, settings: Settings, n: int, threads: int, dedup: bool, tmp: Path, msgs: list[Message]
) -> float | None:
    tag = f"{name}-t{threads}-d{int(dedup)}-{os.urandom(3).hex()}"
    result, summary, log = tmp / f"{tag}.result", tmp / f"{tag}.summary", tmp / f"{tag}.log"
    env = {
        **os.environ,
        "BENCH_BOOTSTRAP": settings.kafka_bootstrap,
        "BENCH_TOPICS": ",".join(settings.topic(t) for t in INPUT_TOPICS),
        "BENCH_EVENTS": str(n),
        "BENCH_RESULT": str(result),
        "BENCH_SUMMARY": str(summary),
        "BENCH_APP_ID": tag,
        "BENCH_DEDUP": "1" if dedup else "0",
        "BENCH_THREADS": str(threads),
    }
    started = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}_peer"], env=env, cwd=ROOT, stdout=out, stderr=out)
        try:
            proc.wait(timeout=120 + n / 500)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    wall = time.perf_counter() - started
    if not result.exists():
        print(f"{name:8} threads={threads} dedup={int(dedup)}: no result (exit {proc.returncode}); log {log}:")
        print(log.read_text(errors="replace")[-3000:])
        return None
    count, seconds = result.read_text().split()
    rate = int(count) / float(seconds)
    got = json.loads(summary.read_text()) if summary.exists() else {}
    want = expected(msgs, dedup)
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    check = "totals match" if not diff else f"MISMATCH (got, want): {diff}"
    print(
        f"{name:8} threads={threads} dedup={int(dedup)}: {rate:>9,.0f} events/s "
        f"({count} in {float(seconds):.2f}s; process {wall:.1f}s); {check}",
        flush=True,
    )
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--only", choices=("pathway", "bytewax"))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dedup", default="0,1")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    parser.add_argument("--bootstrap", help="a running broker whose topics (--prefix) hold the events already")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--serve", action="store_true")
    args = parser.parse_args()
    msgs = messages("backfill", args.events)
    with tempfile.TemporaryDirectory(prefix="peers-") as d:
        tmp = Path(d)
        broker = None
        if args.bootstrap:
            settings = Settings(kafka_bootstrap=args.bootstrap, topic_prefix=args.prefix)
        else:
            broker = KafkaBroker(
                tmp / "kafka", port=free_port(), controller_port=free_port(), partitions=args.partitions
            )
            broker.start()
            settings = Settings(
                kafka_bootstrap=broker.bootstrap,
                topic_prefix=f"p{os.urandom(2).hex()}-",
                topic_partitions=args.partitions,
            )
        try:
            if broker is not None:
                await ensure_topics(settings)
                await produce(settings, msgs)
            if args.serve:
                print(f"--bootstrap {settings.kafka_bootstrap} --prefix {settings.topic_prefix}", flush=True)
                stop = asyncio.Event()
                for sig in (signal.SIGINT, signal.SIGTERM):  # a background job ignores SIGINT: TERM stops it too
                    asyncio.get_running_loop().add_signal_handler(sig, stop.set)
                await stop.wait()
                return
            for name in ("pathway", "bytewax"):
                if args.only not in (None, name):
                    continue
                for threads in (int(t) for t in args.threads.split(",")):
                    for dedup in (x == "1" for x in args.dedup.split(",")):
                        for _ in range(args.repeat):
                            run_peer(name, settings, args.events, threads, dedup, tmp, msgs)
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
