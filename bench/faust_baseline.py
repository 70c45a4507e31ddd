"""The textbook Faust baseline: the same chat-message aggregates as windowed Faust tables, per event.

One agent iterates the stream event by event; state is Faust tables on RocksDB with changelogs:
the session table (session -> start hour), and tumbling hourly and daily windows (event time, from the
record timestamp) of sessions started, messages per session bucket, and human messages per student.

Run by bench/run.py as `python -m bench.faust_baseline worker -l warn` with the environment:
  BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_EVENTS (stop counting after this many), BENCH_RESULT (a file where
  "<events> <seconds from the first to the last event>" is written), BENCH_DATADIR, BENCH_APP_ID.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust
import orjson

app = faust.App(
    os.environ.get("BENCH_APP_ID", "faust-baseline"),
    broker=f"kafka://{os.environ.get('BENCH_BOOTSTRAP', '127.0.0.1:9092')}",
    store="rocksdb://",
    datadir=os.environ.get("BENCH_DATADIR", "/tmp/faust-baseline"),
    value_serializer="raw",
    key_serializer="raw",
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
    topic_partitions=int(os.environ.get("BENCH_PARTITIONS", "6")),
    logging_config=None,
)
topic = app.topic(os.environ.get("BENCH_TOPIC", "chat-messages"), value_serializer="raw")

JSON: Any = faust.Schema(key_serializer="json", value_serializer="json")
sessions = app.Table("sessions", schema=JSON)
hourly = (
    app.Table("hourly", default=int, schema=JSON)
    .tumbling(timedelta(hours=1), expires=timedelta(days=90))
    .relative_to_stream()
)
daily = (
    app.Table("daily", default=int, schema=JSON)
    .tumbling(timedelta(days=1), expires=timedelta(days=400))
    .relative_to_stream()
)
human = (
    app.Table("human", default=int, schema=JSON)
    .tumbling(timedelta(days=1), expires=timedelta(days=400))
    .relative_to_stream()
)

N = int(os.environ.get("BENCH_EVENTS", "0"))
RESULT = Path(os.environ.get("BENCH_RESULT", "/tmp/faust-baseline.result"))
_seen = 0
_first = 0.0


@app.agent(topic)
async def count(stream: Any) -> None:
    global _seen, _first
    async for value in stream:
        e = orjson.loads(value)
        if _first == 0.0:
            _first = time.perf_counter()
        session_key = f"{e['org']}|{e['session_id']}"
        if sessions.get(session_key) is None:
            sessions[session_key] = e["mentor_id"]
            hourly[f"{e['org']}|sessions"] += 1
            daily[f"{e['org']}|sessions"] += 1
        hourly[f"{e['org']}|messages"] += 1
        daily[f"{e['org']}|messages"] += 1
        if e["role"] == "human":
            human[f"{e['org']}|{e['student']}"] += 1
        _seen += 1
        if _seen == N:
            RESULT.write_text(f"{N} {time.perf_counter() - _first}")  # noqa: ASYNC240 - once, at the end


if __name__ == "__main__":
    app.main()
