"""Files that lose nothing: atomic writes with the umask's permissions, and leftovers cleaned up.

Every file hareid writes (checkpoints, exports, configs, metrics, reports, indexes) goes through
:func:`atomic_path` / :func:`atomic_write_text`: the data lands in a hidden temporary file in the
target folder, is fsynced, gets the permissions a plain ``open(path, "w")`` would give under the
current umask, and is renamed onto the target. A crash leaves the old file or the new one, never a
mix; the temporary files a killed process leaves behind (``.NAME.XXXX.tmp``) are removed by
:func:`remove_stale_temp_files`, which a run calls once it owns its folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hareid.errors import HareidError

__all__ = ["atomic_path", "atomic_write_text", "ensure_disjoint", "remove_stale_temp_files", "umask_mode"]

_TMP_SUFFIX = ".tmp"
#: ``.NAME.XXXXXXXX.tmp``: the names :func:`atomic_path` gives its temporary files (mkstemp's 8 random
#: characters), so that cleaning up never touches another program's files.
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def umask_mode(folder: bool = False) -> int:
    """The permissions a plain ``open()`` (``0o666``) or ``mkdir()`` (``0o777``) gets under the umask."""
    return (0o777 if folder else 0o666) & ~_umask()


def ensure_disjoint(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], *,
                    option: str = "--out", inside_ok: bool = False) -> Path:
    """The one rule of what an output may touch: never an input. Refuse ``out`` (one line naming
    both and the fix) when it is an input (same path, symlink or hard link), holds an input (an
    overwrite would delete or move it), or lies inside an input folder (unless ``inside_ok``).
    Returns ``out`` absolute. ``None`` inputs, URIs and paths that do not exist are ignored."""
    given = Path(out).expanduser().absolute()
    real = given.resolve()
    for item in inputs:
        if item is None or str(item) == "" or "://" in str(item):
            continue
        src = Path(item).expanduser().resolve()
        if not src.exists():  # nothing there to lose (a name such as "imagenet", a file yet to come)
            continue
        same = real == src
        if not same and real.exists() and src.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(real, src)
        if same or src.is_relative_to(real):
            what = "is" if same else "holds"
            raise HareidError(f"{given}: {option} {what} the input {item}, which hareid only reads; "
                              f"pick another {option}")
        if not inside_ok and src.is_dir() and real.is_relative_to(src):
            raise HareidError(f"{given}: {option} lies inside the input folder {item}, which hareid only "
                              f"reads; pick an {option} outside it")
    return given


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


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; on success it replaces ``path`` (an existing
    folder there is removed first), on error it is deleted: ``path`` is whole or untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def remove_stale_temp_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the ``.NAME.XXXXXXXX.tmp`` files an interrupted :func:`atomic_path` write left in
    ``folder`` (and below it when ``recursive``); returns them. Only names of that exact form are
    touched, so call it on folders hareid owns (a run folder once claimed, an index folder)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob(f".*{_TMP_SUFFIX}") if recursive else root.glob(f".*{_TMP_SUFFIX}")
    removed = []
    for p in found:
        if _TMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
