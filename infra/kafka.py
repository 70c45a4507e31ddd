"""A single-node Apache Kafka broker (KRaft) run from the jars that `infra/broker/pom.xml` fetches.

What `bin/kafka-storage.sh format` and `bin/kafka-server-start.sh` do, without a tarball:
`java -cp <jars> kafka.tools.StorageTool format ...` once, then `java -cp <jars> kafka.Kafka`.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from infra.exceptions import InfraError
from infra.procs import ROOT, LocalServer, free_port, spawn, wait_until

POM = ROOT / "infra" / "broker" / "pom.xml"
LOG4J = ROOT / "infra" / "broker" / "log4j2.properties"
LIB = ROOT / ".cache" / "kafka" / "lib"
READY_LINE = "Kafka Server started"


def ensure_jars() -> Path:
    """Fetch the broker jars from Maven Central on first use; later calls are instant."""
    if any(LIB.glob("kafka_2.13-*.jar")):
        return LIB
    mvn = shutil.which("mvn")
    if mvn is None:
        raise InfraError(
            "Maven (mvn) is needed to fetch Kafka's jars from Maven Central; install it (apt-get install maven)"
        )
    if shutil.which("java") is None:
        raise InfraError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
    result = subprocess.run([mvn, "-q", "-B", "-f", str(POM), "package"], capture_output=True, text=True)
    if result.returncode != 0 or not any(LIB.glob("kafka_2.13-*.jar")):
        raise InfraError(f"fetching Kafka's jars with Maven failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return LIB


def _cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints: a UUID in URL-safe base64 without padding, never one that
    starts with '-' (as Kafka's own Uuid.randomUuid avoids): the storage tool would read it as an option and
    fail (1 start in 64 did)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class KafkaBroker(LocalServer):
    """One broker+controller on loopback; its data survives `stop()` and a later `start()`.

    Alone (the default) it is its own quorum. In a `KafkaCluster` it is node `node_id` of the static
    controller quorum `voters`, formatted with the cluster's id, and the internal topics are replicated."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 6
    heap: str = "768m"
    node_id: int = 1
    voters: str | None = None  # `id@host:port,...`; None: this node alone
    cluster_id: str | None = None  # the storage's cluster id; None: a new one at the first start
    replication: int = 1  # of the internal topics, and topics' default
    min_insync: int = 1
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    name = "kafka"
    stop_timeout = 60.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> Path:
        logs = self.data_dir / "logs"
        rf, isr = str(self.replication), str(self.min_insync)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            "default.replication.factor": rf,
            "min.insync.replicas": isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": isr,
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": isr,
            # A lone broker has nobody to wait for; this makes group joins (and tests) quick.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "-1",
            # A restarted broker takes its partitions' leadership back soon (the failover tests restart one).
            "leader.imbalance.check.interval.seconds": "10",
            # A broker that stops heartbeating is fenced, and its partitions get new leaders, after 3 s
            # instead of 9 (Kafka's default): the pause in applying when a leader dies (docs/operations.md).
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise InfraError("Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)")
        return [
            java,
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{ensure_jars()}/*",
            main,
            *args,
        ]

    def launch(self) -> None:
        """Format the storage on the first start, then start the broker (`wait_ready` waits for it)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self.cluster_id = self.cluster_id or _cluster_id()
            result = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(config)),
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise InfraError(f"formatting Kafka's storage failed:\n{result.stdout}\n{result.stderr}")
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.proc = spawn(self._java("kafka.Kafka", str(config)), log=self.log_file, pid_file=self.pid_file)

    def wait_ready(self, timeout: float = 90.0) -> None:
        def ready() -> bool:
            with open(self.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                return READY_LINE.encode() in fh.read()

        try:
            wait_until(ready, proc=self.proc, what=f"Kafka on {self.bootstrap}", log=self.log_file, timeout=timeout)
        except InfraError:
            self.stop()
            raise

    def start(self, timeout: float = 90.0) -> None:
        self.launch()
        self.wait_ready(timeout)


@dataclass
class KafkaCluster:
    """Three brokers (each also a controller of the static KRaft quorum) on loopback: topics replicated three
    times with two in sync needed for a write (`acks=all`), so any one broker can die and come back."""

    data_dir: Path
    size: int = 3
    partitions: int = 6
    heap: str = "512m"
    base_port: int = 0  # brokers on base, base+2, ... and their controllers one above; 0: free ports
    brokers: list[KafkaBroker] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.base_port:
            ports = [(self.base_port + 2 * i, self.base_port + 2 * i + 1) for i in range(self.size)]
        else:
            ports = [(free_port(), free_port()) for _ in range(self.size)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        ids_file = self.data_dir / "cluster-id"
        if not ids_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            ids_file.write_text(_cluster_id())
        cluster_id = ids_file.read_text().strip()  # the same across restarts: the brokers' storage says it
        self.brokers = [
            KafkaBroker(
                self.data_dir / f"kafka-{i + 1}",
                port=p,
                controller_port=c,
                partitions=self.partitions,
                heap=self.heap,
                node_id=i + 1,
                voters=voters,
                cluster_id=cluster_id,
                replication=min(3, self.size),
                min_insync=min(2, self.size),
            )
            for i, (p, c) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers)

    def start(self, timeout: float = 120.0) -> None:
        """All at once: a controller quorum forms only once a majority is up."""
        for b in self.brokers:
            b.launch()
        for b in self.brokers:
            b.wait_ready(timeout)

    def stop(self) -> None:
        for b in self.brokers:
            b.stop()
