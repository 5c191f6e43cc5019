"""The harness of the reliability tests (tests/test_reliability.py and the hostile, index and serve
cases beside it): ``hareid`` in-process or as a process group, its one error line, folder snapshots,
broken files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from hareid.cli import main
from tests.helpers.tiny import TRAIN_OVERRIDES

#: A narrow HA-CNN in full precision: a 1-epoch run on the tiny set in ~1 s on one core.
FAST = [*TRAIN_OVERRIDES, "model.channels=[16,32,48]", "model.feature_dim=32", "train.amp=none"]


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """``hareid ARGV`` in-process -> (exit code, stdout, stderr); argparse refusals give their code."""
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one error line a failure prints (``hareid: error: ...``, or argparse's ``hareid CMD:
    error: ...`` after its usage line); no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error: " in ln]
    assert len(lines) == 1, err
    return lines[0]


def train(data: Path, out: Path, *extra: str) -> list[str]:
    """argv of a narrow-model training run on ``data`` into ``out`` (``--flags`` in ``extra`` go first)."""
    flags = [a for a in extra if a.startswith("--")]
    return ["train", "--config", "hacnn_synthetic", *flags, f"data.root={data}", f"output_dir={out}", *FAST,
            *(a for a in extra if not a.startswith("--"))]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file below ``folder`` (the lock file aside)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*.tmp"))


def copy_tree(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock")))


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a JPEG short: the header still reads, the pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def hareid_process(argv: list[str], **kw: object) -> subprocess.Popen:
    """``python -m hareid ARGV`` in its own process group (as a shell job, ``timeout`` or Slurm runs it)."""
    return subprocess.Popen([sys.executable, "-m", "hareid", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True, **kw)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists (written atomically) while ``proc`` still runs."""
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"process ended ({proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit greyscale PNG of ``width x height`` black pixels: a few kB on disk that would
    take width * height * 3 bytes once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
