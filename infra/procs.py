"""Child-process helpers shared by the Kafka and Redis launchers: free ports, waiting, stopping."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from infra.exceptions import InfraError

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair(offset: int, low: int = 20000, high: int = 30000) -> int:
    """A free port p in [low, high) with p + offset free too (a Redis Cluster node's bus port is p + 10000)."""
    for _ in range(200):
        port = random.randrange(low, high)
        if all(_bindable(p) for p in (port, port + offset)):
            return port
    raise InfraError(f"no free pair of ports {offset} apart in [{low}, {high})")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    ready: Callable[[], bool],
    *,
    proc: subprocess.Popen[bytes] | None,
    what: str,
    log: Path,
    timeout: float,
) -> None:
    """Poll `ready` until it is true; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"{what} exited with code {proc.returncode}; last lines of {log}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise InfraError(f"{what} not ready after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")


def worker_command(log_level: str) -> list[str]:
    """`ai-analytics worker` with this interpreter: how the stack, the tests and the benchmarks start one."""
    return cli_command("worker", "-l", log_level)


def cli_command(*args: str) -> list[str]:
    """`ai-analytics ARGS...` run as `python -m cli` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "cli", *args]


def spawn(
    args: list[str], *, log: Path, pid_file: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in the project's folder and its own session (so a terminal's Ctrl-C reaches only the
    supervisor, which stops children in order), its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )  # fmt: skip
    if pid_file is not None:
        pid_file.write_text(str(proc.pid))
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout: float = 30.0, pid_file: Path | None = None) -> None:
    """SIGTERM, wait, then SIGKILL: a clean stop leaves no process behind."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if pid_file is not None:
        pid_file.unlink(missing_ok=True)


def stop_pid_file(pid_file: Path, *, timeout: float = 30.0) -> bool:
    """Stop a process known only by its pid file (one started by another `stack up`)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    return True


class LocalServer:
    """What the Kafka and Redis launchers share: a child process, its log and pid files, stop and kill."""

    data_dir: Path
    proc: subprocess.Popen[bytes] | None
    name: str = "server"
    stop_timeout: float = 30.0

    @property
    def log_file(self) -> Path:
        return self.data_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / f"{self.name}.pid"

    def stop(self) -> None:
        stop_process(self.proc, timeout=self.stop_timeout, pid_file=self.pid_file)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for fault tests: no chance to flush or leave cleanly."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log_tail(self) -> str:
        return tail(self.log_file)


def apt_install(package: str, binary: str) -> str:
    """Path of `binary`; runs `apt-get install <package>` when it is missing and we are root."""
    found = shutil.which(binary)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise InfraError(f"{binary} is missing; install it (apt-get install {package}) and run again")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", package]):
        result = subprocess.run(args, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise InfraError(f"{' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if found is None:
        raise InfraError(f"apt-get installed {package} but {binary} is not on PATH")
    return found
