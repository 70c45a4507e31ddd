"""A `redis-server` on loopback, installed from Debian's packages when the machine lacks it."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.exceptions import InfraError
from infra.procs import LocalServer, apt_install, spawn, wait_until


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
