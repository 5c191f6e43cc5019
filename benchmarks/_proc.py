"""Process helpers shared by the benchmarks that start a server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ctrl-C the process group of ``proc`` (started with ``start_new_session=True``); SIGKILL it if
    it has not ended after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_healthy(client: Any, proc: subprocess.Popen, deadline: float,
                 log: Callable[[], str] = lambda: "", poll_s: float = 0.2) -> None:
    """Poll ``GET /healthz`` through the httpx ``client`` until it answers 200; exit with the
    server's log if ``proc`` ends or ``time.monotonic()`` passes ``deadline`` first."""
    import sys

    import httpx

    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit("server did not start" + (":\n" + log() if log() else ""))
        time.sleep(poll_s)
