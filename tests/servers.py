"""Helpers for tests that start real servers on loopback: free ports, readiness, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    """Start a server in its own process group, output to `log` (read it when a test fails)."""
    with open(log, "wb") as f:
        return subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, **kw
        )


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> float:
    """Poll `url` until it answers 200; return the seconds it took. Fails if the server dies."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise AssertionError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its workers too), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
