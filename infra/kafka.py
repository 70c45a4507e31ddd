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
from infra.procs import ROOT, LocalServer, spawn, wait_until

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
    """One broker+controller on loopback; its data survives `stop()` and a later `start()`."""

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    partitions: int = 6
    heap: str = "768m"
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    name = "kafka"
    stop_timeout = 60.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _config(self) -> Path:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # A lone broker has nobody to wait for; this makes group joins (and tests) quick.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "-1",
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

    def start(self, timeout: float = 90.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            result = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(config)),
                capture_output=True,
                text=True,
            )
            if result.returncode != 0:
                raise InfraError(f"formatting Kafka's storage failed:\n{result.stdout}\n{result.stderr}")
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.proc = spawn(self._java("kafka.Kafka", str(config)), log=self.log_file, pid_file=self.pid_file)

        def ready() -> bool:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                return READY_LINE.encode() in fh.read()

        try:
            wait_until(ready, proc=self.proc, what=f"Kafka on {self.bootstrap}", log=self.log_file, timeout=timeout)
        except InfraError:
            self.stop()
            raise
