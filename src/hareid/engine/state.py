"""Run state that makes a run resumable and its folder its own: RNG capture, the run folder's lock
and ownership rules, and what a resume may change.

A run folder belongs to one run:

* a lock (``RUN/.lock``, ``fcntl.flock``) refuses a second process writing the same folder;
* a new run refuses a non-empty folder unless it resumes (``train.resume``) or is told to
  overwrite; an overwritten run's files are moved to ``RUN/.previous/`` and deleted only once the
  new run has saved its first checkpoint (restored if it fails before that);
* temporary files that a killed write left behind are removed when a run starts.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.errors import ConfigError, HareidError
from hareid.fileio import remove_stale_temp_files

__all__ = ["RunFolder", "check_resume_config", "get_rng_state", "samplers", "set_rng_state"]


# ------------------------------------------------------------------------------------------ RNG
def get_rng_state(loader: Any = None) -> dict[str, Any]:
    """torch (cpu + cuda), numpy, python and ``loader.generator`` RNG states as tensors/ints."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_state[0]), "state": torch.tensor(py_state[1], dtype=torch.int64)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        state["loader"] = gen.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], loader: Any = None) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    gen = getattr(loader, "generator", None)
    if "loader" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["loader"].cpu())


def samplers(loader: Any) -> list[Any]:
    """The distinct samplers of a DataLoader (sampler, batch sampler, the batch sampler's sampler)."""
    out: list[Any] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if obj is not None and all(obj is not o for o in out):
            out.append(obj)
    return out


# ------------------------------------------------------------------------------------ run folder
class RunFolder:
    """The lock and ownership rules of one run folder (see the module docstring).

    ``with RunFolder(path) as folder:`` locks the folder and recovers it (leftover temporary files,
    an overwrite that never saved a checkpoint); then :meth:`claim` says whether this run may write
    here; :meth:`saved` is called after every checkpoint write. Only rank 0 uses it.
    """

    LOCK = ".lock"
    PREVIOUS = ".previous"

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._lock_fd: int | None = None
        self._has_checkpoint = False

    def _contents(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name not in (self.LOCK, self.PREVIOUS))

    def __enter__(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise HareidError(f"{self.path}: cannot write the run folder ({e.strerror}); "
                              "choose another output_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise HareidError(f"{self.path}: another hareid run (pid {owner}) is writing this folder; "
                              "wait for it to finish or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        remove_stale_temp_files(self.path)
        if (self.path / self.PREVIOUS).exists():  # an overwriting run died before its first checkpoint
            self._bring_back_previous()
        return self

    def claim(self, resuming: bool) -> None:
        """Take the folder for this run: refuse a folder holding another run unless resuming or
        overwriting (then move the old files aside until this run saves a checkpoint)."""
        taken = self._contents()
        if resuming or not taken:
            return
        if not self.overwrite:
            names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in taken[:4])
            raise HareidError(
                f"{self.path}: folder already holds a run ({names}); resume it with train.resume=auto, "
                "choose another output_dir, or pass --overwrite (the old run is kept until the new one "
                "saves its first checkpoint)"
            )
        previous = self.path / self.PREVIOUS
        previous.mkdir()
        for p in taken:
            p.rename(previous / p.name)

    def _bring_back_previous(self) -> None:
        for p in self._contents():  # files of the run that failed: no checkpoint, nothing to keep
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        previous = self.path / self.PREVIOUS
        for p in previous.iterdir():
            p.rename(self.path / p.name)
        previous.rmdir()

    def saved(self) -> None:
        """A checkpoint of this run is on disk: an overwritten run's files can go."""
        if not self._has_checkpoint:
            self._has_checkpoint = True
            shutil.rmtree(self.path / self.PREVIOUS, ignore_errors=True)

    def __exit__(self, *exc: Any) -> None:
        if (self.path / self.PREVIOUS).exists() and not self._has_checkpoint:
            self._bring_back_previous()  # failed before saving: the old run comes back
        if self._lock_fd is not None:  # the lock file stays: unlinking it would race with a waiting run
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


# ------------------------------------------------------------------------------ resume rules
#: Config keys a resumed run may change: where and how it runs, not what it learns.
RESUMABLE_KEYS = (
    "output_dir", "data.root", "data.workers", "data.test_batch_size", "data.loader_options",
    "train.resume", "train.device", "train.progress", "train.tensorboard", "train.eval_every",
    "train.compile", "train.epochs", "eval.",
)


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and k != "options":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_config(saved: Mapping[str, Any], new: Mapping[str, Any], source: str) -> None:
    """Refuse a resume whose config changes what the run learns (``optim.*``, ``model.*``, ...).

    ``train.epochs`` may grow only with a schedule that does not depend on it (none, step,
    multistep): a cosine schedule is laid out for the original length.
    """
    old, cur = _flat(saved), _flat(new)
    changed = [k for k in sorted(set(old) | set(cur))
               if old.get(k) != cur.get(k) and not any(k == a or (a.endswith(".") and k.startswith(a))
                                                      for a in RESUMABLE_KEYS)]
    if changed:
        shown = ", ".join(f"{k}={cur.get(k)!r} (run: {old.get(k)!r})" for k in changed[:3])
        raise ConfigError(f"{source}: a resumed run keeps its settings, but {shown} changed; drop these "
                          "overrides, or start a new run from its weights with model.init=CHECKPOINT")
    if old.get("train.epochs") != cur.get("train.epochs") and cur.get("optim.scheduler") == "cosine":
        raise ConfigError(
            f"{source}: train.epochs={cur.get('train.epochs')} differs from the run's {old.get('train.epochs')}, "
            "but its cosine schedule is laid out for the original length; keep train.epochs, or start a new "
            "run from its weights with model.init=CHECKPOINT"
        )
