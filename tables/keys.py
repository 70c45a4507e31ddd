"""The keys every part shares, and the one place an org's key is made (`org_key`).

Here: the generations, the org's bucket hashes of counters (each aggregate family names its own fields),
its offsets, observations, UUID mapping, meta and conversation store (what the planner reads before a
batch), the global keys (orgs, time zones, progress, alerts, API keys, erasures), the changefeed's marks
and its record keys. A family's own keys and fields are in its module (tables/aggregates/), built with
`org_key`. An org's keys carry the hash tag `{org}` so they share one Redis Cluster slot: a batch's writes
for an org run as one atomic script, and multi-key reads work on a cluster.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any

import orjson

from tables import ids
from tables.buckets import Grain

NS = "aia"

# --- generations ----------------------------------------------------------------------------------------
# Everything computed from the events lives in a generation: generation 0 is `aia:{org}:...`, generation n
# `aia:g<n>:{org}:...`. `ai-analytics rebuild` computes generation n+1 from the topics while n serves, then
# switches (agents/rebuild.py). Every key of a generation is built for one given explicitly (`gen`, the
# first argument): the one an API request read once (api/ops.py), the one a batch was planned for, the one a
# rebuild or a maintenance run works on. What is not computed from the events (API keys, orgs, time zones,
# erased students, alert state, progress) is outside them.


def generation_prefix(n: int) -> str:
    """The start of every key of generation n (for dropping it)."""
    return f"{NS}:{{" if n == 0 else f"{NS}:g{n}:{{"


def generations() -> str:
    """Hash: `current` (the generation served), `building` (one being rebuilt, or absent), `v` (bumped by
    every change: each apply is guarded on it), and the rebuild's `until` offsets and `started_ms`. Global."""
    return f"{NS}:generations"


def rebuild_progress(n: int) -> str:
    """Hash `topic:partition` -> the last offset a rebuild into generation n applied. Global."""
    return f"{NS}:rebuild:g{n}"


def org_key(gen: int, org: str, rest: str) -> str:
    """An org's key of generation `gen`: `aia:{org}:<rest>` (`aia:g<n>:{org}:<rest>`). Every key computed
    from the events is made here, by this module or by its family's module (tables/aggregates/)."""
    return f"{generation_prefix(gen)}{org}}}:{rest}"


_GRAIN_CODE = {Grain.MINUTE: "min", Grain.HOUR: "h", Grain.DAY: "d", Grain.WEEK: "wk", Grain.HALF: "hh"}


def bucket(gen: int, org: str, grain: Grain, index: int) -> str:
    """Hash of an org's counters in one bucket: `aia:{org}:h:2026112210`, `:hh:202611221030` (a half hour),
    `:d:20261122`, `:min:<epoch minute>`.

    Minute buckets are kept a few hours: what the alert rules read."""
    return org_key(gen, org, f"{_GRAIN_CODE[grain]}:{grain.label(index)}")


def progress(group: str) -> str:
    """Hash `topic:partition` -> the last offset whose batch is wholly applied, per consumer group.

    Written after the batch's org scripts, so in Redis's append-only file it comes after them: if Redis
    restarts having lost its last writes, this is behind Kafka's committed offset too, and the worker
    reads again from here (the applied events are recognised by their ids). Global, not org-tagged."""
    return f"{NS}:progress:{group}"


def quarantined() -> str:
    """Hash topic -> records the workers dead-lettered because processing their batch failed on them (not
    by validation): `aia_records_quarantined` in /metrics. Global."""
    return f"{NS}:quarantined"


def engine_stats(group: str) -> str:
    """Hash of a Faust-engine worker group's delivery counters (gaps, refetched, out of order, ...). Global."""
    return f"{NS}:engine:{group}"


def alert_state(org: str) -> str:
    """Hash `rule` -> JSON of the rule's state for this org (ok or firing, crossing number). Outside the
    generations: a rebuild does not fire an alert again."""
    return f"{NS}:alerts:{{{org}}}"


def alert_outbox(org: str) -> str:
    """List of alert events decided but not yet published (written in the same step as the state)."""
    return f"{NS}:alerts:{{{org}}}:outbox"


def alert_lease() -> str:
    """Which worker evaluates the rules and publishes alerts (a lease with a TTL). Global."""
    return f"{NS}:alerts:lease"


def offsets(gen: int, org: str) -> str:
    """Hash `topic:partition` -> the last offset whose event of this org is applied."""
    return org_key(gen, org, "offsets")


def offset_field(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def observations(gen: int, org: str) -> str:
    """Hash `observation_field(event_id)` -> an applied observation's contribution and version
    (tables/aggregates/llm_cost.py, `AppliedObservation`: cost, tokens, time, offset, model, session,
    arrival day), whatever its event day, so a version re-sent with another timestamp replaces it. Entries
    older than the dedup window (by arrival) are pruned by the worker."""
    return org_key(gen, org, "ob")


def observation_index(gen: int, org: str) -> str:
    """Sorted set: each listed observation's event id -> the time of its applied version (ms), for the
    observations endpoint; pruned past the observation retention (tables/traces.py)."""
    return org_key(gen, org, "obi")


def trace_index(gen: int, org: str) -> str:
    """Sorted set: each listed trace's id -> the earliest time of its observations (ms, `ZADD LT`)."""
    return org_key(gen, org, "tri")


def trace_sessions(gen: int, org: str) -> str:
    """Sorted set of `traces.trace_session(trace, session)`, all scored 0: the sessions a trace's observations
    name, found by the trace's prefix (`ZRANGE BYLEX`)."""
    return org_key(gen, org, "trs")


def observations_before(gen: int, org: str) -> str:
    """The observations hash as kept before `observations`: fields the event ids as sent, values JSON. The
    state read moves each entry it meets to `observations` (tables/lua/read.lua); the pruning empties it
    within the dedup window, and Redis drops it then."""
    return org_key(gen, org, "obs")


def observation_field(event_id: str) -> bytes:
    """The observations hash's field of an event id: a UUID in its canonical spelling as its 16 bytes, any
    other id as its UTF-8, followed by 0xFF when that is 16 bytes long too (0xFF is never in UTF-8, so no
    two ids share a field; another spelling of a UUID is another id, as it always was)."""
    packed = ids.uuid_bytes(event_id)
    if packed is not None:
        return packed
    raw = event_id.encode()
    return raw + b"\xff" if len(raw) == 16 else raw


def uuids(gen: int, org: str) -> str:
    """Hash served UUID -> `mentor|id` for the mentor ids that are not UUIDs (tables/ids.py). (Conversations
    need none: they are addressed by the digest of the id they are served under.)"""
    return org_key(gen, org, "uuids")


def meta(gen: int, org: str) -> str:
    """Hash: newest event time applied, last apply time, per-topic counts, and `DATA_VERSION`."""
    return org_key(gen, org, "meta")


# Conversations are addressed by a 64-bit digest of the id they are served under (`conversation_digest`
# in tables/conversations.py): their states in buckets of hashes (small hashes stay compact listpacks),
# their index entries as integers (small sets stay compact intsets).
CONVERSATION_BUCKETS = 512


def conversation_bucket(gen: int, org: str, digest: int) -> str:
    """Hash: field `conversation_field(digest)` -> a conversation's state (`ConversationState.pack`: where
    its session starts, its counts, its latest sentiment and record, its cost by hour, its kept id, the
    digests of the events it counted), for the conversations whose digest falls in this bucket."""
    return org_key(gen, org, f"cv:{digest % CONVERSATION_BUCKETS}")


def conversation_field(digest: int) -> bytes:
    """A conversation's field in its bucket: its digest's 8 bytes."""
    return (digest % 2**64).to_bytes(8, "big")


def conversation_buckets(gen: int, org: str) -> str:
    """The pattern of every conversation bucket of the org (for scans)."""
    return org_key(gen, org, "cv:*")


def orgs() -> str:
    """Set of known orgs (registered, or seen in an applied event). Not org-tagged: global."""
    return f"{NS}:orgs"


def time_zones() -> str:
    """Hash org -> its default IANA time zone (`ai-analytics orgs tz`); an org not in it answers in UTC. Global."""
    return f"{NS}:orgs:tz"


def replication_marker(org: str) -> str:
    """A counter each batch's replication check bumps on the org's primary before WAIT (tables/connections.py).
    Outside the generations."""
    return f"{NS}:w:{{{org}}}"


def org_generations(org: str) -> str:
    """Hash: `v`, the org's copy of the generations' version (`generations`), written by a rebuild to every
    known org when it starts or switches. Each apply is guarded on it: a check within the org's own slot,
    as a Redis Cluster needs. Outside the generations."""
    return f"{NS}:gens:{{{org}}}"


def erasures(org: str) -> str:
    """Hash of an org's erased students: `tombstone(org, student, secret)` -> JSON {at, by}, and `v`, bumped by every
    erasure (each batch's apply is guarded on it, so none planned before an erasure can write after it).
    Outside the generations: a rebuild meets the same tombstones."""
    return f"{NS}:erased:{{{org}}}"


ERASURES_VERSION = "v"
# In an org's `meta`: bumped by every apply that writes the org, so an answer cached for one version is
# known to be stale at the next (api/cache.py).
DATA_VERSION = "version"


def changefeed_marks(org: str) -> str:
    """Hash: the org's counters changed since they were last published to analytics-aggregates
    (`counter_mark`) -> the apply that last changed them, and `#`, the org's count of applies that marked
    any. Written by the apply script with the change itself; a publication clears a mark only if no apply
    re-marked it meanwhile (tables/changefeed.py). Outside the generations."""
    return f"{NS}:cf:{{{org}}}"


def changefeed_lock(org: str) -> str:
    """String: who is publishing the org's marked counters (token, with an expiry): one at a time."""
    return f"{NS}:cf:{{{org}}}:lock"


MARK_SEQUENCE = "#"  # the field of `changefeed_marks` that counts the org's marking applies


def counter_mark(key: str, member: str, kind: str) -> str:
    """The field of `changefeed_marks` naming a published counter: `h<bucket key>\0<field>` for a hash
    counter, `z<set key>` for a top-students set. A key holds no NUL (an org has none, the rest is ours),
    so a field that does (a username may) is read back whole (`parse_counter_mark`)."""
    return f"h{key}\0{member}" if kind == "h" else f"z{key}"


def parse_counter_mark(mark: str) -> tuple[str, str, str]:
    """(key, field or "", kind) of a `counter_mark`."""
    if mark.startswith("h"):
        key, _, member = mark[1:].partition("\0")
        return key, member, "h"
    return mark[1:], "", "z"


@lru_cache(maxsize=65536)
def published_kind(key: str) -> str | None:
    """ "h" when the fields of this hash are published (an hourly or daily bucket), "z" when this sorted set
    is (a daily or weekly top-students set), None for every other key (`describe_counter`)."""
    if describe_counter(key, MARK_SEQUENCE, "h") is not None:
        return "h"
    if describe_counter(key, "", "z") is not None:
        return "z"
    return None


def publishing(org: str) -> str:
    """Sorted set of the changefeed publications under way for an org (token -> when it began, by Redis's
    clock): an erasure waits for those that began before it, so none lands after its Kafka tombstones
    (tables/erase.py). Outside the generations."""
    return f"{NS}:publishing:{{{org}}}"


ERASED_DROPPED = "dropped|erased"  # a `meta` field: events of erased students dropped by the workers


@lru_cache(maxsize=65536)
def tombstone(org: str, student: str, secret: bytes) -> str:
    """The erased-students field of a student: a digest keyed with the deployment's secret
    (`erasure_secret`), so the tombstone keeps no username and nobody without the secret can tell
    whether a guessed username was erased."""
    return hmac.new(secret, f"{org}\0{student}".encode(), hashlib.sha256).hexdigest()[:32]


@lru_cache(maxsize=65536)
def legacy_tombstone(org: str, student: str) -> str:
    """The unkeyed digest tombstones had before the secret: still honoured, never written."""
    return hashlib.sha256(f"{org}\0{student}".encode()).hexdigest()[:32]


def erasure_secret() -> str:
    """String: the deployment's tombstone secret (hex), made once by the first process that needs it when
    `AIA_ERASURE_SECRET` is not set (tables/erase.Tombstones). Global."""
    return f"{NS}:erasure-secret"


def org_of(key: str) -> str:
    """The org of an org-tagged key (for tests and tooling)."""
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


def api_keys() -> str:
    """Hash sha256(token) -> key record (global; tagged `{apikeys}` with `api_key_ids`, so one transaction
    writes both on a Redis Cluster too)."""
    return f"{NS}:keys:{{apikeys}}"


def api_key_ids() -> str:
    """Hash key id -> sha256(token), for listing and revoking."""
    return f"{NS}:keys:{{apikeys}}:ids"


def describe_counter(key: str, member: str, kind: str) -> tuple[str, dict[str, str]] | None:
    """(the analytics-aggregates record key, its parts) of a bucket counter, or None for other keys.

    Record keys read `org|metric|grain|bucket`, e.g. `acme|messages|d|20261122`; a top-students set is one
    record, `acme|top_students|d|20261122` (`top_students|m|<mentor>` for a mentor's set), whose value
    holds every student's count that day.
    """
    if not key.startswith(f"{NS}:") or "{" not in key or key.startswith(f"{NS}:alerts:"):
        return None
    org = org_of(key)
    rest = key[key.index("}") + 2 :]
    grain, _, bucket = rest.partition(":")
    if kind == "h" and grain in ("h", "d"):
        return f"{org}|{member}|{grain}|{bucket}", {"org": org, "metric": member, "grain": grain, "bucket": bucket}
    if kind == "z" and grain == "top":
        day, _, mentor = bucket.partition("|m|")
        if day == "all" or day.startswith("m") or len(day) in (10, 12):
            return None  # the all-time, monthly, hourly and half-hourly sets are served, not published
        metric = TOP_STUDENTS if not mentor else f"{TOP_STUDENTS}|m|{mentor}"
        grain, day = ("w", day[1:]) if day.startswith("w") else ("d", day)
        return f"{org}|{metric}|{grain}|{day}", {"org": org, "metric": metric, "grain": grain, "bucket": day}
    return None


TOP_STUDENTS = "top_students"  # the metric of a top-students set's record (`top_students|m|<mentor>`: a mentor's)


def parse_record_key(record_key: bytes | str) -> tuple[str, str, str, str]:
    """(org, metric, grain, bucket) of an analytics-aggregates record key: the inverse of `describe_counter`.

    Exact whatever the metric holds (a student, mentor or model name may contain `|`): an org has no `|`
    (streams/schemas.ORG_RE), a grain and a bucket have none, so the org ends at the first `|`, the bucket
    starts after the last and the grain after the one before it; the metric is what lies between."""
    text = record_key.decode() if isinstance(record_key, bytes) else record_key
    org, _, rest = text.partition("|")
    metric, grain, bucket = rest.rsplit("|", 2)
    return org, metric, grain, bucket


def counter_record(key: str, member: str, kind: str, value: Any, applied_at_ms: int) -> tuple[bytes, bytes] | None:
    """The analytics-aggregates record (key, JSON value) of a counter (`kind` "h") or a top-students set
    (`kind` "z", value: student -> count) holding `value`; None for keys that are not published."""
    described = describe_counter(key, member, kind)
    if described is None:
        return None
    record_key, fields = described
    return record_key.encode(), orjson.dumps({**fields, "value": value, "applied_at_ms": applied_at_ms})
