"""Files that lose nothing: atomic writes with the umask's permissions, and leftovers cleaned up.

Every file hareid writes (checkpoints, exports, configs, metrics, reports, indexes) goes through
:func:`atomic_path` / :func:`atomic_write_text`: the data lands in a hidden temporary file in the
target folder, is fsynced, gets the permissions a plain ``open(path, "w")`` would give under the
current umask, and is renamed onto the target. A crash leaves the old file or the new one, never a
mix; the temporary files a killed process leaves behind (``.NAME.XXXX.tmp``) are removed by
:func:`remove_stale_temp_files`, which run folders call when a run starts.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "remove_stale_temp_files"]

_TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success fsync it, give it ``0o666 & ~umask``
    permissions and rename it onto ``path``; on error delete it. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the ``.NAME.XXXX.tmp`` files an interrupted atomic write left in ``folder``."""
    root = Path(folder)
    if not root.is_dir():
        return []
    pattern = f".*{_TMP_SUFFIX}"
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    removed = []
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
