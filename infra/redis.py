"""A `redis-server` on loopback, installed from Debian's packages when the machine lacks it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from infra.exceptions import InfraError
from infra.procs import spawn, stop_process, tail, wait_until


def ensure_redis_server() -> str:
    """Path of redis-server; runs `apt-get install redis-server` when missing and we are root."""
    found = shutil.which("redis-server")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise InfraError("redis-server is missing; install it (apt-get install redis-server) and run again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "redis-server"]):
        result = subprocess.run(args, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise InfraError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise InfraError("apt-get installed redis-server but it is not on PATH")
    return found


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    data_dir: Path
    port: int = 6379
    appendonly: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

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
            # everysec loses at most a second on a machine crash; our offsets live in the
            # same file, so a lost second is replayed from Kafka, never half-applied.
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

    def stop(self) -> None:
        stop_process(self.proc, timeout=30, pid_file=self.pid_file)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log_tail(self) -> str:
        return tail(self.log_file)
