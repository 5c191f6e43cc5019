"""A real Milvus server for tests: the ``milvus`` PyPI package's ``milvus-server`` (an embedded
Milvus 2.3 standalone), on free ports, in a temporary folder, stopped at the end.

Every port is chosen free, the embedded etcd's too (through an etcd config file named by
``ETCD_CONFIG_PATH``: the ``milvus-server`` options leave etcd on 2379/2380), so two test runs on
one machine do not collide.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

#: ``milvus-server`` options that take a port (besides the embedded etcd's client port).
_PORT_OPTIONS = ("--proxy-port", "--proxy-internal-port", "--root-coord-port",
                 "--query-coord-port", "--query-node-port", "--index-coord-port",
                 "--index-node-port", "--data-coord-port", "--data-node-port", "--etcd-port")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def milvus_server_command() -> str | None:
    """The ``milvus-server`` executable beside this Python, or on PATH; None when not installed."""
    here = Path(sys.executable).parent / "milvus-server"
    return str(here) if here.is_file() else shutil.which("milvus-server")


@contextmanager
def milvus_server(folder: Path, timeout: float = 240) -> Iterator[str]:
    """Start ``milvus-server --data FOLDER`` and yield its URI; skip the test when the package
    (or pymilvus) is missing; stop the server (its whole process group) on exit."""
    exe = milvus_server_command()
    if exe is None:
        pytest.skip("the milvus package (an embedded Milvus server) is not installed: "
                    "pip install 'hareid[milvus-server]'")
    pymilvus = pytest.importorskip("pymilvus")
    folder.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_OPTIONS, _free_ports(len(_PORT_OPTIONS) + 1)))
    peer = _free_ports(1)[0]
    while peer in ports.values():
        peer = _free_ports(1)[0]
    etcd, client = folder / "etcd.yaml", ports["--etcd-port"]
    etcd.write_text(f"name: default\nlisten-client-urls: http://127.0.0.1:{client}\n"
                    f"advertise-client-urls: http://127.0.0.1:{client}\n"
                    f"listen-peer-urls: http://127.0.0.1:{peer}\n"
                    f"initial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
                    f"initial-cluster: default=http://127.0.0.1:{peer}\n")
    args = [exe, "--data", str(folder / "data")]
    for opt, port in ports.items():
        args += [opt, str(port)]
    log = open(folder / "milvus-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                            env={**os.environ, "ETCD_CONFIG_PATH": str(etcd)},
                            start_new_session=True)
    uri = f"http://127.0.0.1:{ports['--proxy-port']}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"milvus-server exited ({proc.returncode}); see "
                                   f"{folder / 'milvus-server.log'} and {folder / 'data/logs'}")
            try:
                client = pymilvus.MilvusClient(uri=uri, timeout=5)
                client.get_server_version()
                client.close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-server did not answer on {uri} within "
                                       f"{timeout:.0f} s") from None
                time.sleep(1)
        yield uri
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM to the server's process group (the wrapper and the Milvus binary it started),
    SIGKILL to whatever of it is left after ``grace`` seconds."""
    def alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    if alive():
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive() and time.monotonic() < deadline:
        proc.poll()  # reap the wrapper
        time.sleep(0.2)
    if alive():
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
