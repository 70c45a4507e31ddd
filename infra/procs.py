"""Child-process helpers shared by the Kafka and Redis launchers: free ports, waiting, stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


def spawn(
    args: list[str], *, log: Path, pid_file: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (so a terminal's Ctrl-C reaches only the supervisor,
    which stops children in order), its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )
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
