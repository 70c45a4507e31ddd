"""Settings, read once from the environment (prefix `AIA_`) with defaults and strict casting.

Nothing else in the project reads `os.environ` for configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import get_type_hints

from streams.exceptions import SettingsError

PREFIX = "AIA_"
ENGINES = ("faust", "kafka")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    # One server (redis://host:port/db) or a Redis Cluster (redis+cluster://host:port,host:port,...).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # How many replicas a batch's writes must reach before its progress is recorded and its offsets
    # committed (Redis's WAIT), and how long to wait for them; -1: one on a cluster, none on one server.
    redis_wait_replicas: int = -1
    redis_wait_timeout_ms: int = 2000
    # Prepended to every topic name, so tests (or tenants sharing a cluster) stay apart.
    topic_prefix: str = ""
    topic_partitions: int = 6
    topic_replication: int = 1
    app_id: str = "ai-analytics"  # the consumer group (both engines) and the Faust app's id
    # Which engine a worker runs: "faust" (Faust agents, agents/faust/) or "kafka" (an aiokafka getmany loop).
    engine: str = "kafka"
    # Events per batch and how long a partial batch waits before it is applied anyway.
    batch_size: int = 40000
    batch_within: float = 0.2
    # A batch is applied in parts of about this many events, each planned while Redis applies the one
    # before (0: in one part, nothing overlapped).
    apply_chunk: int = 10000
    # No apply script of an org does more than this many Redis operations, the changefeed marks it writes
    # counted (`OrgWrite.operations()`): readers wait behind a script while it runs. A batch's parts are cut by
    # the operations each topic's events planned lately, and a write planned over the bound anyway is planned
    # again on fewer events (agents/pipeline.py). About 2 µs each on the backfill, so ~3 ms a script at most
    # when Redis has its core (`python -m bench.script_time`); 0: no limit.
    apply_script_ops: int = 1500
    # How long the group waits for a worker that died without leaving before moving its partitions.
    session_timeout: float = 30.0
    heartbeat_interval: float = 3.0
    hourly_retention_days: int = 90
    # Daily (and weekly) aggregates are small: kept without expiry unless a number of days is set.
    daily_retention_days: int = 0
    dedup_window_days: int = 7
    # Each LLM observation, and its trace, is listed by the observations and traces endpoints for this many
    # days of event time (the newest of them: today and the days before); the observations hash keeps its
    # entries for the longer of this and the dedup window.
    observation_retention_days: int = 7
    # Transcripts: each chat message's content kept for this many days after its conversation's latest
    # message arrived, for the transcripts and message-details endpoints; 0 (the default): message content is
    # never stored.
    transcript_days: int = 0
    # Chat history (conversations and their records) kept for this many days after the record's insertion
    # (or the first message, without a record); 0: kept forever. More than the dedup window when set.
    history_retention_days: int = 0
    # Events stamped further than this in the future are dead letters (clock skew allowance).
    max_future_seconds: int = 300
    # How long the dead-letter topic keeps a record (its raw value may name a student an erasure must
    # forget): the topic's retention.ms, set when the topics are created or checked.
    dead_letter_retention_days: int = 14
    # The key of erased students' tombstone digests (tables/erase.Tombstones); empty: a random one made
    # once and kept in Redis. Every worker, API and CLI of a deployment must agree on it.
    erasure_secret: str = ""
    price_table: Path | None = None
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # API server processes (uvicorn workers) sharing the port; 0: one per core.
    api_processes: int = 0
    # Alert rules (TOML; None: the shipped agents/alerts.toml), how often they are evaluated (0: never),
    # and how long a dead evaluator's lease keeps another worker from taking over.
    alert_rules: Path | None = None
    alert_interval: float = 5.0
    alert_lease_seconds: float = 15.0
    log_level: str = "info"
    trace_batches: int = 0  # 1: the worker logs every batch's size and time

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _cast(f.name, raw, hints[f.name])
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in (
            "topic_partitions",
            "topic_replication",
            "batch_size",
            "hourly_retention_days",
            "dedup_window_days",
            "observation_retention_days",
            "dead_letter_retention_days",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1, got {getattr(self, name)}")
        if self.alert_interval < 0 or self.alert_lease_seconds <= self.alert_interval:
            raise SettingsError(
                f"{PREFIX}ALERT_LEASE_SECONDS ({self.alert_lease_seconds}) must exceed {PREFIX}ALERT_INTERVAL "
                f"({self.alert_interval}), which must not be negative"
            )
        if self.transcript_days < 0:
            raise SettingsError(
                f"{PREFIX}TRANSCRIPT_DAYS must be 0 (content never stored) or more, got {self.transcript_days}"
            )
        if self.daily_retention_days < 0:
            raise SettingsError(
                f"{PREFIX}DAILY_RETENTION_DAYS must be 0 (keep forever) or more, got {self.daily_retention_days}"
            )
        if self.history_retention_days and self.history_retention_days <= self.dedup_window_days:
            raise SettingsError(
                f"{PREFIX}HISTORY_RETENTION_DAYS must be 0 (keep forever) or more than {PREFIX}DEDUP_WINDOW_DAYS "
                f"({self.dedup_window_days}), got {self.history_retention_days}"
            )
        if self.engine not in ENGINES:
            raise SettingsError(f"{PREFIX}ENGINE must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.api_processes < 0:
            raise SettingsError(f"{PREFIX}API_PROCESSES must be 0 (one per core) or more, got {self.api_processes}")
        if self.apply_chunk < 0:
            raise SettingsError(f"{PREFIX}APPLY_CHUNK must be 0 (one part) or more, got {self.apply_chunk}")
        if self.apply_script_ops < 0:
            raise SettingsError(f"{PREFIX}APPLY_SCRIPT_OPS must be 0 (no limit) or more, got {self.apply_script_ops}")
        if self.redis_wait_replicas < -1 or self.redis_wait_timeout_ms < 1:
            raise SettingsError(
                f"{PREFIX}REDIS_WAIT_REPLICAS must be -1 (automatic) or more and {PREFIX}REDIS_WAIT_TIMEOUT_MS "
                f"at least 1, got {self.redis_wait_replicas} and {self.redis_wait_timeout_ms}"
            )
        if self.batch_within <= 0:
            raise SettingsError(f"{PREFIX}BATCH_WITHIN must be positive, got {self.batch_within}")

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def as_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[PREFIX + f.name.upper()] = str(value)
        return out


def _cast(name: str, raw: str, hint: object) -> object:
    key = PREFIX + name.upper()
    try:
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is Path:
            return Path(raw)
        if hint == (Path | None):
            return Path(raw) if raw else None
        return raw
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a valid {getattr(hint, '__name__', hint)}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
