"""The Bytewax peer: a Bytewax dataflow computing the same aggregates of the four input topics.

Input: Bytewax's Kafka connector (`bytewax.connectors.kafka.KafkaSource`, confluent-kafka), every partition of
the four topics from the beginning (the source assigns partitions to workers itself, with no consumer group:
BENCH_APP_ID names the dataflow, and nothing is committed). A `flat_map_batch` parses each batch of records (orjson; the
timestamp as RFC 3339 with `Z` or an offset, to the UTC epoch hour and day) and keys it by org; one
`stateful_batch` step keyed by org keeps each org's aggregates in Python dicts and updates them batch by
batch (no windows close, so a late event still counts in its own hour or day, as in our service):
  - per org and UTC hour: messages, and distinct sessions (a set of session ids per hour);
  - per org and UTC day: messages by role, sentiment events by label, and LLM observations: cost summed as
    integer nano-dollars (the decimal `cost` string parsed exactly, 0 when absent) and input/output tokens;
  - per org and student: human messages (the set our service's top students read; the top N is a read of it);
  - per org and UTC day: chat-history records.
With BENCH_DEDUP=1 the org's step first drops a record whose event_id it has seen on the same topic (a set
per topic in the org's state): the first copy read is kept, and every copy of an event shares its key, so its
partition, so the first read is the first sent.

BENCH_THREADS is the number of Bytewax processes (one worker each, `cluster_main` on loopback ports,
exchanging keyed records over TCP): Python's GIL makes a second worker thread in one process no faster.
This module's process is only their parent: it forks them, and they count what their org steps have applied
(and their totals) into shared memory; when the count reaches BENCH_EVENTS it writes "<records> <seconds>"
(from the first batch any worker read to the last record an org step applied) to BENCH_RESULT, and the
totals as JSON to BENCH_SUMMARY (optional; bench/peers_check.py), and kills them (the source tails the
topics: the dataflow never ends by itself).

What it does NOT do, compared with our service: its state is in memory only (no recovery configured: no
snapshots, nothing persisted), so it does not survive a restart (a restart re-reads every topic from the
beginning); it publishes no changefeed and writes nowhere (each org step emits only how many records it
applied); it commits no offsets and is not exact under redelivery across a restart (with dedup on it is
exact within one run only, its seen-ids being in memory; with dedup off a redelivered record counts twice);
it validates nothing (a record it cannot parse stops the worker, no dead letters), and it prices no
observation from a price table (a missing cost is 0).

Run as `python -m bench.bytewax_peer` (needs the `bench` extra) with the environment BENCH_BOOTSTRAP,
BENCH_TOPICS (the four input topics, comma-separated, full names), BENCH_EVENTS, BENCH_RESULT, BENCH_APP_ID,
BENCH_DEDUP (1/0), BENCH_THREADS (processes, default 1), and optionally BENCH_BATCH (records per Kafka
batch, default 1000: the connector's default) and BENCH_SUMMARY.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from multiprocessing.sharedctypes import RawArray
from pathlib import Path
from typing import Any, cast

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaError, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import cluster_main as _cluster_main
from bytewax.testing import run_main as _run_main

N = int(os.environ.get("BENCH_EVENTS", "0"))
RESULT = Path(os.environ.get("BENCH_RESULT", "/tmp/bytewax-peer.result"))
SUMMARY = os.environ.get("BENCH_SUMMARY")
DEDUP = os.environ.get("BENCH_DEDUP", "0") == "1"
PROCESSES = int(os.environ.get("BENCH_THREADS", "1"))
BATCH = int(os.environ.get("BENCH_BATCH", "1000"))

CHAT, SENTIMENT, LLM, HISTORY = range(4)
KINDS = {"chat-messages": CHAT, "sentiment": SENTIMENT, "llm-observations": LLM, "chat-history": HISTORY}
# Each process's totals, in shared memory (a row of these per process); "processed" is written last.
FIELDS = ("processed", "dropped", "messages", "session_hours", "by_role", "human", "sentiment", "observations",
          "cost_nanos", "tokens_in", "tokens_out", "history")  # fmt: skip
PROCESSED, DROPPED, MESSAGES, SESSION_HOURS, BY_ROLE, HUMAN, SENTIMENTS, OBSERVATIONS = range(8)
COST, TOKENS_IN, TOKENS_OUT, HISTORIES = range(8, 12)

Parsed = tuple[Any, ...]  # (kind, event_id, hour or day, ...fields of the kind)
Record = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
# bytewax.testing leaves its two entry points unannotated.
run_main = cast(Callable[[Dataflow], None], _run_main)
cluster_main = cast(Callable[[Dataflow, list[str], int], None], _cluster_main)


def epoch_hour(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp()) // 3600


def nanos(cost: str | float | None) -> int:
    """USD (a decimal string, or a number) -> integer nano-dollars; a decimal string exactly."""
    if cost is None:
        return 0
    if isinstance(cost, str):
        whole, _, frac = cost.partition(".")
        n = abs(int(whole or "0")) * 1_000_000_000 + int((frac + "000000000")[:9])
        return -n if whole.startswith("-") else n
    return round(cost * 1_000_000_000)


def parse(kind_of: dict[str, int]) -> Any:
    def parse_batch(batch: list[Record]) -> Iterable[tuple[str, Parsed]]:
        out: list[tuple[str, Parsed]] = []
        for msg in batch:
            if isinstance(msg, KafkaError):  # not sent: the source raises on errors (raise_on_errors)
                raise RuntimeError(msg.err)
            e = orjson.loads(msg.value or b"null")
            kind = kind_of[msg.topic or ""]
            hour = epoch_hour(e["timestamp"])
            if kind == CHAT:
                row: Parsed = (CHAT, e["event_id"], hour, e["session_id"], e["student"], e["role"])
            elif kind == SENTIMENT:
                row = (SENTIMENT, e["event_id"], hour // 24, e["sentiment"])
            elif kind == LLM:
                usage = e["usage"]
                row = (LLM, e["event_id"], hour // 24, nanos(e.get("cost")), usage["input"], usage["output"])
            else:
                row = (HISTORY, e["event_id"], hour // 24)
            out.append((e["org"], row))
        return out

    return parse_batch


class OrgAggregates(StatefulBatchLogic[Parsed, int, None]):
    """One org's aggregates, updated a batch of its records at a time; emits how many it applied."""

    def __init__(self, totals: list[int]) -> None:
        self.totals = totals  # this process's, over all its orgs
        self.seen: tuple[set[str], ...] = (set(), set(), set(), set())
        self.hourly: dict[int, list[int]] = {}  # hour -> [messages, distinct sessions]
        self.sessions: dict[int, set[str]] = {}  # hour -> sessions
        self.by_role: dict[tuple[int, str], int] = {}  # (day, role) -> messages
        self.by_label: dict[tuple[int, str], int] = {}  # (day, label) -> events
        self.llm: dict[int, list[int]] = {}  # day -> [observations, cost nanos, tokens in, tokens out]
        self.students: dict[str, int] = {}  # student -> human messages
        self.history: dict[int, int] = {}  # day -> chat-history records

    def on_batch(self, values: list[Parsed]) -> tuple[Iterable[int], bool]:
        t = self.totals
        for v in values:
            kind = v[0]
            if DEDUP:
                seen = self.seen[kind]
                if v[1] in seen:
                    t[DROPPED] += 1
                    continue
                seen.add(v[1])
            if kind == CHAT:
                _, _, hour, session, student, role = v
                cell = self.hourly.get(hour)
                if cell is None:
                    cell = self.hourly[hour] = [0, 0]
                    self.sessions[hour] = set()
                cell[0] += 1
                sessions = self.sessions[hour]
                if session not in sessions:
                    sessions.add(session)
                    cell[1] += 1
                    t[SESSION_HOURS] += 1
                key = (hour // 24, role)
                self.by_role[key] = self.by_role.get(key, 0) + 1
                if role == "human":
                    self.students[student] = self.students.get(student, 0) + 1
                    t[HUMAN] += 1
                t[MESSAGES] += 1
                t[BY_ROLE] += 1
            elif kind == SENTIMENT:
                label_key = (v[2], v[3])
                self.by_label[label_key] = self.by_label.get(label_key, 0) + 1
                t[SENTIMENTS] += 1
            elif kind == LLM:
                _, _, day, cost, tokens_in, tokens_out = v
                day_cell = self.llm.get(day)
                if day_cell is None:
                    day_cell = self.llm[day] = [0, 0, 0, 0]
                day_cell[0] += 1
                day_cell[1] += cost
                day_cell[2] += tokens_in
                day_cell[3] += tokens_out
                t[OBSERVATIONS] += 1
                t[COST] += cost
                t[TOKENS_IN] += tokens_in
                t[TOKENS_OUT] += tokens_out
            else:
                self.history[v[2]] = self.history.get(v[2], 0) + 1
                t[HISTORIES] += 1
        return [len(values)], False

    def snapshot(self) -> None:
        return None  # no recovery: nothing to snapshot


def flow(
    topics: list[str], bootstrap: str, app_id: str, totals: list[int], shared: Any, times: Any, me: int
) -> Dataflow:
    """The dataflow of process `me`: its totals go to row `me` of `shared`, its first and last times to `times`."""
    width = len(FIELDS)
    base = me * width

    def publish(_step: str, _item: tuple[str, int]) -> None:
        for i in range(1, width):
            shared[base + i] = totals[i]
        times[2 * me + 1] = time.perf_counter()
        shared[base] = totals[PROCESSED] = totals[PROCESSED] + _item[1]

    def first_seen(
        batch: list[Record],
    ) -> list[Record]:
        if times[2 * me] == 0.0:
            times[2 * me] = time.perf_counter()
        return batch

    kind_of = {t: next(k for name, k in KINDS.items() if t.endswith(name)) for t in topics}
    df = Dataflow(app_id.replace(".", "-"))
    source = KafkaSource([bootstrap], topics, tail=True, batch_size=BATCH)
    records = op.input("kafka", df, source)
    records = op.flat_map_batch("clock", records, first_seen)
    keyed = op.flat_map_batch("parse", records, parse(kind_of))
    applied = op.stateful_batch("aggregate", keyed, lambda _resume: OrgAggregates(totals))
    op.inspect("applied", applied, publish)
    return df


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(me: int, addresses: list[str], shared: Any, times: Any) -> None:
    topics = os.environ["BENCH_TOPICS"].split(",")
    bootstrap = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092")
    app_id = os.environ.get("BENCH_APP_ID", "bytewax-peer")
    totals = [0] * len(FIELDS)
    df = flow(topics, bootstrap, app_id, totals, shared, times, me)
    if len(addresses) == 1:
        run_main(df)
    else:
        cluster_main(df, addresses, me)


def main() -> None:
    ctx = multiprocessing.get_context("fork")
    shared = RawArray("q", PROCESSES * len(FIELDS))
    times = RawArray("d", PROCESSES * 2)  # per process: first batch read, last record applied (perf_counter)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(PROCESSES)]
    procs = [ctx.Process(target=worker, args=(i, addresses, shared, times), daemon=True) for i in range(PROCESSES)]
    for p in procs:
        p.start()
    width = len(FIELDS)
    try:
        while True:
            if sum(shared[i * width] for i in range(PROCESSES)) >= N:
                break
            if any(p.exitcode is not None for p in procs):
                sys.exit(f"a Bytewax process ended before {N} records: exit codes {[p.exitcode for p in procs]}")
            time.sleep(0.002)
        first = min(t for t in times[0::2] if t > 0)
        last = max(times[1::2])
        totals = {f: sum(shared[i * width + k] for i in range(PROCESSES)) for k, f in enumerate(FIELDS)}
        RESULT.write_text(f"{totals['processed']} {last - first}")
        if SUMMARY:
            Path(SUMMARY).write_text(json.dumps(totals))
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.join()


if __name__ == "__main__":
    main()
