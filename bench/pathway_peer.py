"""The Pathway peer: Pathway's idiomatic incremental dataflow for the same aggregates of the four input topics.

Input: Pathway's own Kafka connector (`pw.io.kafka.read`, librdkafka, streaming mode), one reader per topic
with `format="json"` and a schema, so the JSON is parsed in Pathway's Rust engine; every topic is read from
the beginning (`auto.offset.reset=earliest`, consumer group `<BENCH_APP_ID>-<topic>`).

Computes, incrementally (every aggregate is a `groupby().reduce()` the engine keeps up to date as batches
arrive; no windows close, so a late event still counts in its own hour or day, as in our service):
  - per org and UTC hour: messages, and distinct sessions (`count_distinct` of session_id);
  - per org and UTC day: messages by role, sentiment events by label, and LLM observations: cost summed as
    integer nano-dollars (the `cost` string parsed as a float and rounded to nanos, 0 when absent; exact for
    up to 9 decimals at the traffic's magnitudes) and input/output tokens (`usage.input`, `usage.output`);
  - per org and student: human messages (the set our service's top students read; the top N is a read of it);
  - per org and UTC day: chat-history records.
Timestamps are parsed as RFC 3339 with an offset (or `Z`) and bucketed in UTC.
With BENCH_DEDUP=1, each topic is first reduced to one row per event_id, the one of the lowest Kafka offset
(`argmin` over the connector's metadata offset: every copy of an event shares its key, so its partition, and
the lowest offset is the first sent), before the aggregates: exact duplicates and later re-sends of an id
are dropped, as our service drops them.

Measure: a progress table (a `reduce` over every aggregate and the raw per-topic counts, so the engine must
have brought every aggregate up to date for a time before the row for that time is delivered) is watched
with `pw.io.subscribe`; when the raw count reaches BENCH_EVENTS, "<records> <seconds>" goes to BENCH_RESULT
and the process exits (`os._exit`: a streaming Pathway run never returns). Pathway hands records to the
engine a batch at a time (one autocommit interval, BENCH_COMMIT_MS, default 100 ms; Pathway's default is
1500), stamped with the wall-clock ms of the commit, and delivers the subscription's callbacks in bursts
behind the engine, so the first record's arrival is not observable from Python: the clock starts one
commit interval before the engine time of the first batch that held records (when its records may have
started arriving; at most that interval early) and stops at the wall clock of the callback that sees the
last record's time complete. BENCH_SUMMARY (optional) gets the totals as JSON (bench/peers_check.py).

What it does NOT do, compared with our service: it keeps its state in memory only (no persistence configured:
Pathway's persistence is off), so it does not survive a restart (a restart re-reads every topic from the
beginning); it publishes no changefeed and writes nowhere (the aggregates stay in the engine, read by the
progress table only); it does not resume from committed offsets (auto-commit is off; a run starts from the
beginning) and is not exact under redelivery across a restart (with dedup on it is exact within one run
only, its seen-ids being in memory; with dedup off a redelivered record counts twice); it validates nothing
beyond the schema's types (no range checks, no dead letters), and it prices no observation from a price
table (a missing cost is 0).

Run as `python -m bench.pathway_peer` (needs the `bench` extra) with the environment BENCH_BOOTSTRAP,
BENCH_TOPICS (the four input topics, comma-separated, full names), BENCH_EVENTS, BENCH_RESULT, BENCH_APP_ID,
BENCH_DEDUP (1/0), BENCH_THREADS (Pathway worker threads, default 1), and optionally BENCH_COMMIT_MS,
BENCH_SUMMARY.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from time import time as wall_clock
from typing import Any, cast

N = int(os.environ.get("BENCH_EVENTS", "0"))
RESULT = Path(os.environ.get("BENCH_RESULT", "/tmp/pathway-peer.result"))
SUMMARY = os.environ.get("BENCH_SUMMARY")
DEDUP = os.environ.get("BENCH_DEDUP", "0") == "1"
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
COMMIT_MS = int(os.environ.get("BENCH_COMMIT_MS", "100"))
os.environ["PATHWAY_THREADS"] = str(THREADS)  # read by the engine when the run starts

import pathway as pw  # noqa: E402 - after PATHWAY_THREADS

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%#z"  # RFC 3339: optional fraction, `Z` or an offset
# pw.reducers.count is the one reducer Pathway leaves unannotated.
count = cast(Callable[[], pw.ColumnExpression], pw.reducers.count)
HOUR = pw.Duration(hours=1)
DAY = pw.Duration(days=1)


class ChatMessage(pw.Schema):
    event_id: str
    org: str
    timestamp: str
    session_id: str
    student: str
    role: str


class Sentiment(pw.Schema):
    event_id: str
    org: str
    timestamp: str
    sentiment: str


class Observation(pw.Schema):
    event_id: str
    org: str
    timestamp: str
    cost: str | None = pw.column_definition(default_value=None)
    tokens_in: int
    tokens_out: int


class History(pw.Schema):
    event_id: str
    org: str
    timestamp: str


def read(bootstrap: str, topic: str, schema: type[pw.Schema], app_id: str, **paths: str) -> pw.Table[Any]:
    """One topic, from the beginning, as a table of the schema's columns (and the offset, with dedup)."""
    settings = {
        "bootstrap.servers": bootstrap,
        "group.id": f"{app_id}-{topic}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
    }
    table: pw.Table[Any] = pw.io.kafka.read(
        settings,
        topic=topic,
        format="json",
        schema=schema,
        json_field_paths=paths or None,
        autocommit_duration_ms=COMMIT_MS,
        with_metadata=DEDUP,
        name=topic,
    )
    if DEDUP:
        table = table.with_columns(offset=pw.this._metadata["offset"].as_int(unwrap=True)).without(pw.this._metadata)
    return table


def prepared(table: pw.Table[Any]) -> pw.Table[Any]:
    """The first copy of each event_id (with dedup: the lowest offset; all copies share a key, so a
    partition), with its UTC hour and day."""
    if DEDUP:
        first = table.groupby(pw.this.event_id).reduce(row=pw.reducers.argmin(pw.this.offset))
        table = table.ix(first.row).without(pw.this.offset)
    at = pw.this.timestamp.dt.strptime(TIMESTAMP_FORMAT, contains_timezone=True)
    out: pw.Table[Any] = table.with_columns(hour=at.dt.floor(HOUR), day=at.dt.floor(DAY))
    return out


def total(table: pw.Table[Any], name: str, expression: Any = None) -> pw.Table[Any]:
    """One row (name, n): a column's sum over the table (its row count without one)."""
    n = count() if expression is None else pw.reducers.sum(expression)
    out: pw.Table[Any] = table.reduce(name=name, n=n)
    return out


def main() -> None:
    bootstrap = os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092")
    app_id = os.environ.get("BENCH_APP_ID", "pathway-peer")
    topics = os.environ["BENCH_TOPICS"].split(",")

    def topic(name: str) -> str:
        return next(t for t in topics if t.endswith(name))

    raw_messages = read(bootstrap, topic("chat-messages"), ChatMessage, app_id)
    raw_sentiment = read(bootstrap, topic("sentiment"), Sentiment, app_id)
    raw_observations = read(
        bootstrap, topic("llm-observations"), Observation, app_id, tokens_in="/usage/input", tokens_out="/usage/output"
    )
    raw_history = read(bootstrap, topic("chat-history"), History, app_id)
    raws = (raw_messages, raw_sentiment, raw_observations, raw_history)
    messages, sentiment, observations, history = (prepared(t) for t in raws)

    # The aggregates.
    hourly = messages.groupby(pw.this.org, pw.this.hour).reduce(
        pw.this.org,
        pw.this.hour,
        messages=count(),
        sessions=pw.reducers.count_distinct(pw.this.session_id),
    )
    by_role = messages.groupby(pw.this.org, pw.this.day, pw.this.role).reduce(
        pw.this.org, pw.this.day, pw.this.role, messages=count()
    )
    by_label = sentiment.groupby(pw.this.org, pw.this.day, pw.this.sentiment).reduce(
        pw.this.org, pw.this.day, pw.this.sentiment, events=count()
    )
    nanos = pw.cast(int, pw.coalesce(pw.this.cost, "0").str.parse_float() * 1e9 + 0.5)
    llm = (
        observations.with_columns(cost_nanos=nanos)
        .groupby(pw.this.org, pw.this.day)
        .reduce(
            pw.this.org,
            pw.this.day,
            observations=count(),
            cost_nanos=pw.reducers.sum(pw.this.cost_nanos),
            tokens_in=pw.reducers.sum(pw.this.tokens_in),
            tokens_out=pw.reducers.sum(pw.this.tokens_out),
        )
    )
    students = (
        messages.filter(pw.this.role == "human")
        .groupby(pw.this.org, pw.this.student)
        .reduce(pw.this.org, pw.this.student, messages=count())
    )
    records = history.groupby(pw.this.org, pw.this.day).reduce(pw.this.org, pw.this.day, records=count())

    # The progress table: the raw counts and a total over every aggregate, so a time's row is delivered only
    # once each aggregate is up to date for that time.
    progress = (
        pw.Table.concat_reindex(
            *(total(t, "raw") for t in raws),
            *(total(t, "kept") for t in (messages, sentiment, observations, history)),
            total(hourly, "messages", pw.this.messages),
            total(hourly, "session_hours", pw.this.sessions),
            total(by_role, "by_role", pw.this.messages),
            total(by_label, "sentiment", pw.this.events),
            total(llm, "observations", pw.this.observations),
            total(llm, "cost_nanos", pw.this.cost_nanos),
            total(llm, "tokens_in", pw.this.tokens_in),
            total(llm, "tokens_out", pw.this.tokens_out),
            total(students, "human", pw.this.messages),
            total(records, "history", pw.this.records),
        )
        .groupby(pw.this.name)
        .reduce(pw.this.name, n=pw.reducers.sum(pw.this.n))
    )

    state: dict[str, int] = {}
    lock = threading.Lock()
    first: list[int] = []  # the engine time (epoch ms) of the first batch with records

    def on_change(key: Any, row: dict[str, Any], time: int, is_addition: bool) -> None:
        if is_addition:
            with lock:
                state[row["name"]] = row["n"]

    def on_time_end(time: int) -> None:
        # Called for each engine time once every change of that time is delivered; deliveries may come in
        # bursts behind the engine, so the clock is the engine's: a time is the epoch ms of its batch's commit.
        with lock:
            raw = state.get("raw", 0)
            if not first and raw > 0:
                first.append(time)
            if raw < N:
                return
            # Its records were read within the commit interval before the first batch's time.
            seconds = wall_clock() - (first[0] - COMMIT_MS) / 1000
            RESULT.write_text(f"{raw} {seconds}")
            if SUMMARY:
                kept = state.get("kept", 0)
                fields: tuple[str, ...] = ("messages", "session_hours", "by_role", "human", "sentiment", "observations")
                fields += ("cost_nanos", "tokens_in", "tokens_out", "history")
                summary = {"processed": raw, "dropped": raw - kept, **{k: state.get(k, 0) for k in fields}}
                Path(SUMMARY).write_text(json.dumps(summary))
            os._exit(0)

    pw.io.subscribe(progress, on_change=on_change, on_time_end=on_time_end)
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)


if __name__ == "__main__":
    main()
