"""Real local servers as subprocesses for tests, benchmarks and laptops: ``start_moto`` (an S3 endpoint), or any
server command with ``start`` (the tests start ``mlflow server`` so).

Each runs in its own process group and is stopped by its own pid with ``stop``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from nlray.raycluster import free_port  # noqa: F401  (re-exported: tests take it from here)

BIN = Path(sys.executable).parent


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Return once ``url`` answers (any HTTP status); raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError as e:  # URLError/HTTPError are OSErrors; an HTTP error still means it serves
            if getattr(e, "code", None):
                return
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"nothing served {url} within {timeout}s")


def start(cmd: list[str], probe_url: str, log_path: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start ``cmd`` in a new process group, logging to ``log_path``, and wait until ``probe_url`` serves."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(probe_url, proc, timeout)
    return proc


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    """A moto_server S3 endpoint on a free 127.0.0.1 port: (process, endpoint URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/", log_path)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """Stop a server we started, by its own process group (its id is the pid we launched)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
