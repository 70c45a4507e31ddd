"""Connections to Redis, one server or a Redis Cluster, and waiting until what a batch wrote is replicated.

`AIA_REDIS_URL` names either one server (`redis://host:port/db`) or a cluster
(`redis+cluster://host:port,host:port,...`: any of its nodes; the others are found from them). Every
part of the service works on both: an org's keys share one hash slot (`{org}`), every script touches one
org's keys, and nothing else needs two slots at once.

On a cluster (or wherever `AIA_REDIS_WAIT_REPLICAS` is more than 0), a batch is not "applied" until its
writes are on replicas too (`wait_replicated`): a worker records its progress and commits only after that,
so a primary that fails over to its replica loses nothing a commit depends on (docs/semantics.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlparse

from redis._parsers.helpers import parse_cluster_nodes
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from streams.exceptions import SettingsError
from streams.settings import Settings
from tables import keys

CLUSTER_SCHEME = "redis+cluster"


class NotReplicated(RedisError):
    """A primary acknowledged a batch's writes but fewer replicas than required have them yet."""


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one server's URL, or a cluster's nodes."""

    url: str
    cluster_nodes: tuple[tuple[str, int], ...] = ()

    @property
    def is_cluster(self) -> bool:
        return bool(self.cluster_nodes)

    @classmethod
    def from_url(cls, url: str) -> RedisTarget:
        parsed = urlparse(url)
        if parsed.scheme != CLUSTER_SCHEME:
            return cls(url)
        nodes = []
        for part in parsed.netloc.split(","):
            host, sep, port = part.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise SettingsError(f"AIA_REDIS_URL {url!r}: each cluster node must be host:port, got {part!r}")
            nodes.append((host, int(port)))
        return cls(url, tuple(nodes))


def connect(url: str, **options: Any) -> Redis:
    """A client of the server or cluster `url` names. A cluster client is returned as `Redis`: the commands
    the service uses behave alike on both (multi-key ones stay within one org's slot)."""
    target = RedisTarget.from_url(url)
    if not target.is_cluster:
        return Redis.from_url(url, **options)
    # A dead node is found out in a second or two, not after redis-py's ten retries: an API request answers
    # 503 meanwhile, a worker retries its batch itself.
    options = {
        "socket_connect_timeout": 1.0,
        "socket_timeout": 10.0,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.1, cap=1.0), retries=3),
        **options,
    }
    cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.cluster_nodes], **options)
    return cast(Redis, cluster)


def is_cluster(redis: Redis) -> bool:
    return isinstance(redis, RedisCluster)


def wait_replicas(url: str, setting: int) -> int:
    """How many replicas a batch's writes must reach: `AIA_REDIS_WAIT_REPLICAS` (-1: one on a cluster, none
    on one server, whose append-only file is the guarantee)."""
    if setting >= 0:
        return setting
    return 1 if RedisTarget.from_url(url).is_cluster else 0


@dataclass(frozen=True)
class ClusterHealth:
    """What a Redis Cluster's nodes say of each other (`CLUSTER NODES` of the first node that answers)."""

    failed: tuple[str, ...]  # nodes flagged as failing (`fail` or `fail?`), by address
    replicas: dict[str, int]  # each primary serving slots -> its replicas not failing

    @classmethod
    def parse(cls, nodes: dict[str, dict[str, Any]]) -> ClusterHealth:
        """From redis-py's parsed `CLUSTER NODES` (address -> node_id, flags, master_id, slots, ...)."""
        failing = {a for a, n in nodes.items() if "fail" in str(n.get("flags", ""))}
        primaries = {
            str(n["node_id"]): a for a, n in nodes.items()
            if "master" in str(n.get("flags", "")) and a not in failing and n.get("slots")
        }  # fmt: skip
        replicas = dict.fromkeys(primaries.values(), 0)
        for address, n in nodes.items():
            if address not in failing and str(n.get("master_id")) in primaries:
                replicas[primaries[str(n["master_id"])]] += 1
        return cls(tuple(sorted(failing)), replicas)

    def summary(self, needed: int) -> str:
        """ "ok", or what is missing: failed nodes, and primaries with fewer than `needed` replicas (whose
        orgs' batches cannot be counted applied until one is back)."""
        short = sorted(a for a, n in self.replicas.items() if n < needed)
        if not self.failed and not short:
            return "ok"
        parts = [f"{len(self.failed)} node(s) failing: {', '.join(self.failed)}"] if self.failed else []
        if short:
            parts.append(f"fewer than {needed} replica(s), its orgs not applied until one is back: {', '.join(short)}")
        else:
            parts.append(f"every primary has at least {needed} replica(s)")
        return "degraded: " + "; ".join(parts)


async def cluster_health(redis: Redis) -> ClusterHealth | None:
    """The cluster's health as its nodes see it (None on one server), asking each known node in turn until
    one answers; ConnectionError when none does."""
    if not is_cluster(redis):
        return None
    cluster = cast(RedisCluster, redis)
    for node in cluster.get_nodes():
        try:
            raw: Any = await cluster.execute_command("CLUSTER NODES", target_nodes=node)
        except Exception:  # that node is away: the next one
            continue
        if isinstance(raw, (str, bytes)):
            raw = parse_cluster_nodes(raw)  # type: ignore[no-untyped-call]
        if isinstance(raw, dict) and len(raw) == 1 and isinstance(next(iter(raw.values())), dict):
            only = next(iter(raw.values()))
            raw = only if "node_id" not in only else raw  # {node name: parsed} or parsed itself
        return ClusterHealth.parse(raw)
    raise ConnectionError("no node of the Redis Cluster answers")


def replication(redis: Redis, settings: Settings) -> Replication:
    """The `Replication` a worker's batches and an erasure wait on (`AIA_REDIS_WAIT_REPLICAS`,
    `AIA_REDIS_WAIT_TIMEOUT_MS`)."""
    return Replication(
        redis, wait_replicas(settings.redis_url, settings.redis_wait_replicas), settings.redis_wait_timeout_ms
    )


class Replication:
    """Waits until the writes made to some orgs' keys are on `replicas` replicas (Redis's WAIT).

    WAIT counts the writes of the connection it is sent on, so each primary gets a pipeline of one small
    write to an org key it holds (an org's `:w` counter) and WAIT, on one connection: replication is in
    order, so a replica that has that write has every write the primary made before it."""

    def __init__(self, redis: Redis, replicas: int, timeout_ms: int) -> None:
        self.redis = redis
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        self._node_clients: dict[tuple[str, int], Redis] = {}

    async def wait(self, orgs: Iterable[str]) -> None:
        """Raise NotReplicated when a primary holding one of the orgs has fewer replicas with its writes."""
        if self.replicas <= 0:
            return
        by_node: dict[tuple[str, int], str] = {}
        if is_cluster(self.redis):
            cluster = cast(RedisCluster, self.redis)
            for org in orgs:
                node = cluster.get_node_from_key(keys.replication_marker(org))
                if node is None:
                    raise NotReplicated(f"no primary holds org {org!r} right now (a failover under way)")
                by_node.setdefault((str(node.host), int(node.port)), org)
        else:
            for org in orgs:
                by_node.setdefault(("", 0), org)
                break
        for address, org in by_node.items():
            client = self._client(address)
            async with client.pipeline(transaction=False) as pipe:
                pipe.incr(keys.replication_marker(org))
                pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
                _, acked = await pipe.execute()
            if int(acked) < self.replicas:
                raise NotReplicated(
                    f"the primary of org {org!r} ({address[0]}:{address[1]}) has the batch's writes on "
                    f"{acked} replica(s) after {self.timeout_ms} ms, {self.replicas} needed"
                )

    def _client(self, address: tuple[str, int]) -> Redis:
        if address == ("", 0):
            return self.redis
        client = self._node_clients.get(address)
        if client is None:
            client = self._node_clients[address] = Redis(host=address[0], port=address[1])
        return client

    async def aclose(self) -> None:
        for client in self._node_clients.values():
            await client.aclose()
        self._node_clients.clear()
