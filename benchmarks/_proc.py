"""Process helpers shared by the benchmarks that start a server."""

from __future__ import annotations

import os
import signal
import subprocess


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
