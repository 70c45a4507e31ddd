"""The peer: Quix Streams' idiomatic app for the same chat-message aggregates as bench/faust_baseline.py.

Sessions started and messages per org in hourly and daily tumbling windows (event time), and human messages
per student per day: the input is keyed by session, so a stateful step marks each session's first message,
and `group_by` re-keys by org (and by student) through repartition topics, as Quix's documentation does it.
State is Quix's RocksDB with changelog topics; at-least-once, its default.

Run by bench/run.py as `python -m bench.quix_peer` (needs the `bench` extra: `pip install -e ".[bench]"`)
with the environment BENCH_BOOTSTRAP, BENCH_TOPIC, BENCH_EVENTS (the events in the topic), BENCH_RESULT (a
file where "<events> <seconds from the first event in to the last aggregate out>" is written),
BENCH_DATADIR, BENCH_APP_ID.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from quixstreams import Application, State

from streams.schemas import parse_timestamp

# Windows accept late events for as long as ours do: a 90-day backfill arrives out of event-time order
# (Quix skips an event whose window has closed).
GRACE = timedelta(days=91)

N = int(os.environ.get("BENCH_EVENTS", "0"))
RESULT = Path(os.environ.get("BENCH_RESULT", "/tmp/quix-peer.result"))
# Every branch must have seen its share: each message twice (hour, day), each human message once.
TARGET = {"hour": N, "day": N, "human": (N + 1) // 2}
_seen = dict.fromkeys(TARGET, 0)
_first = 0.0


def main() -> None:
    app = Application(
        broker_address=os.environ.get("BENCH_BOOTSTRAP", "127.0.0.1:9092"),
        consumer_group=os.environ.get("BENCH_APP_ID", "quix-peer"),
        auto_offset_reset="earliest",
        state_dir=os.environ.get("BENCH_DATADIR", "/tmp/quix-peer"),
        loglevel="WARNING",
    )
    topic = app.topic(
        os.environ.get("BENCH_TOPIC", "chat-messages"),
        value_deserializer="json",
        key_deserializer="str",
        timestamp_extractor=lambda value, _headers, _ts, _type: parse_timestamp(value["timestamp"]),
    )

    def first_of_session(value: dict[str, Any], state: State[Any, Any]) -> dict[str, Any]:
        global _first
        if _first == 0.0:
            _first = time.perf_counter()
        value["new_session"] = state.get("started") is None
        if value["new_session"]:
            state.set("started", value["timestamp"])
        return value

    def counted(branch: str) -> Any:
        def tick(_value: Any) -> None:
            _seen[branch] += 1
            if all(_seen[b] >= n for b, n in TARGET.items()):
                RESULT.write_text(f"{N} {time.perf_counter() - _first}")
                app.stop()

        return tick

    sdf = app.dataframe(topic).apply(first_of_session, stateful=True)
    by_org = sdf.group_by("org")
    per_org = by_org.apply(lambda v: {"sessions": int(v["new_session"]), "messages": 1})
    for name, size, grace in (
        ("hour", timedelta(hours=1), GRACE),
        ("day", timedelta(days=1), GRACE),
    ):
        (
            per_org.tumbling_window(size, grace_ms=grace, name=f"{name}ly")
            .reduce(lambda acc, v: {k: acc[k] + v[k] for k in acc}, lambda v: dict(v))
            .current()
            .update(counted(name))
        )
    humans = sdf.filter(lambda v: v["role"] == "human").group_by("student")
    (
        humans.tumbling_window(timedelta(days=1), grace_ms=GRACE, name="human_daily")
        .count()
        .current()
        .update(counted("human"))
    )
    app.run()


if __name__ == "__main__":
    main()
