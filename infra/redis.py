"""`redis-server` on loopback, installed from Debian's packages when the machine lacks it: one server, or a
Redis Cluster of three primaries with two replicas each (`redis-cli --cluster create`)."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.exceptions import InfraError
from infra.procs import LocalServer, apt_install, free_port_pair, spawn, wait_until

# Small hashes and sets kept compact (listpacks, intsets), as the service's keys are shaped to be: a bucket of
# conversation states (values of a few hundred bytes), a filter index of integers (tables/keys.py). Redis
# works without them, using more memory (docs/performance.md).
COMPACT = [
    "--hash-max-listpack-entries", "256",
    "--hash-max-listpack-value", "512",
    "--set-max-intset-entries", "4096",
]  # fmt: skip


def ensure_redis_server() -> str:
    """Path of redis-server; installed from Debian's package when missing."""
    return apt_install("redis-server", "redis-server")


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer(LocalServer):
    data_dir: Path
    port: int = 6379
    appendonly: bool = True
    cluster: bool = False  # a node of a Redis Cluster (`RedisClusterNodes` creates the cluster)
    node_timeout_ms: int = 2000  # a cluster node unreachable this long is failed over
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            ensure_redis_server(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            # everysec loses at most a second on a crash; the file keeps a prefix of the writes and the
            # worker's progress hash is written after each batch, so a lost second is read again from
            # Kafka (see tables.keys.progress), never half-applied.
            "--appendfsync", "everysec",
            "--logfile", "",
            *COMPACT,
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.data_dir / "nodes.conf"),
                "--cluster-node-timeout", str(self.node_timeout_ms),
                # A replica takes over whatever its replication lag: the workers' WAIT, not the lag, decides
                # what was acknowledged (docs/semantics.md).
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        self.proc = spawn(args, log=self.log_file, pid_file=self.pid_file)
        try:
            wait_until(
                lambda: _pong(self.port),
                proc=self.proc,
                what=f"Redis on {self.port}",
                log=self.log_file,
                timeout=timeout,
            )
        except InfraError:
            self.stop()
            raise


@dataclass
class RedisClusterNodes:
    """Nine `redis-server` cluster nodes on loopback, made a Redis Cluster of three primaries with two
    replicas each: a primary lost for good leaves its promoted replica a replica of its own, so the batches'
    `WAIT 1` (docs/semantics.md) keeps being met. A node stopped or killed and started again rejoins with
    what its `nodes.conf` says (a primary that was failed over comes back as a replica). A cluster made
    before with fewer nodes gets the new ones added as replicas."""

    data_dir: Path
    primaries: int = 3
    replicas: int = 2
    base_port: int = 0  # nodes on base, base+1, ...; 0: free ports
    nodes: list[RedisServer] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        count = self.primaries * (1 + self.replicas)
        # A node's cluster bus listens 10000 above its port (so the port must be at most 55535).
        ports = [self.base_port + i if self.base_port else free_port_pair(10000) for i in range(count)]
        self.nodes = [RedisServer(self.data_dir / f"redis-{i + 1}", port=p, cluster=True) for i, p in enumerate(ports)]

    @property
    def url(self) -> str:
        """What `AIA_REDIS_URL` takes for a cluster: `redis+cluster://host:port,host:port,...`."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        if not (self.data_dir / "created").exists():
            cli = ensure_redis_cli()
            args = [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            args += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            result = subprocess.run(args, capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise InfraError(
                    f"redis-cli --cluster create failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )
            (self.data_dir / "created").write_text("")
        else:
            self._add_missing_replicas(timeout)
        self.wait_ok(timeout)

    def _add_missing_replicas(self, timeout: float) -> None:
        """Nodes the cluster does not know (it was made with fewer) join it as replicas, each of the primary
        with the fewest (`redis-cli --cluster add-node --cluster-slave`), once the cluster is ok."""
        known = cluster_nodes(self.nodes[0].port)
        missing = [n for n in self.nodes if n.port not in known]
        if not missing:
            return
        self.wait_ok(timeout, [n for n in self.nodes if n.port in known])
        cli = ensure_redis_cli()
        for node in missing:
            args = [cli, "--cluster", "add-node", f"127.0.0.1:{node.port}", f"127.0.0.1:{self.nodes[0].port}"]
            result = subprocess.run([*args, "--cluster-slave"], capture_output=True, text=True, timeout=120)
            if result.returncode != 0:
                raise InfraError(
                    f"redis-cli --cluster add-node failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
                )

    def wait_ok(self, timeout: float = 60.0, nodes: list[RedisServer] | None = None) -> None:
        """Until every running node (of `nodes`) says the cluster is ok (every slot served by a reachable
        primary)."""
        running = [n for n in nodes or self.nodes if n.proc is not None and n.proc.poll() is None]
        wait_until(
            lambda: all(cluster_info(n.port).get("cluster_state") == "ok" for n in running),
            proc=None, what="the Redis Cluster", log=running[0].log_file, timeout=timeout,
        )  # fmt: skip

    def running_primaries(self) -> list[RedisServer]:
        """The running nodes that are primaries, as each sees itself."""
        return [
            n for n in self.nodes
            if n.proc is not None and n.proc.poll() is None and cluster_nodes(n.port).get(n.port) == "master"
        ]  # fmt: skip

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def ensure_redis_cli() -> str:
    """Path of redis-cli (Debian's redis-tools, which redis-server brings)."""
    ensure_redis_server()
    return apt_install("redis-tools", "redis-cli")


def _command(port: int, *words: str) -> str:
    """One command's raw reply (RESP) from the server on `port` ("" when it does not answer)."""
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(request.encode())
            chunks = b""
            while True:
                part = sock.recv(65536)
                chunks += part
                if not part or _complete(chunks):
                    return chunks.decode(errors="replace")
    except OSError:
        return ""


def _complete(reply: bytes) -> bool:
    if reply.startswith(b"$"):
        head, _, rest = reply.partition(b"\r\n")
        size = int(head[1:])
        return size < 0 or len(rest) >= size + 2
    return reply.endswith(b"\r\n")


def cluster_info(port: int) -> dict[str, str]:
    """CLUSTER INFO of the node on `port` as a dict ({} when it does not answer)."""
    raw = _command(port, "CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line and not line.startswith("$"))


def cluster_nodes(port: int) -> dict[int, str]:
    """port -> `master` or `slave` (failed nodes included, as `master,fail`...) as the node on `port` sees them."""
    raw = _command(port, "CLUSTER", "NODES")
    out = {}
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) >= 3 and ":" in parts[1]:
            address = parts[1].split("@", 1)[0]
            flags = [f for f in parts[2].split(",") if f != "myself"]
            out[int(address.rsplit(":", 1)[1])] = ",".join(flags)
    return out
