"""Run state that makes a run resumable and its folder its own: RNG capture, the run folder's lock
and ownership rules, and what a resume may change.

A run folder belongs to one run:

* a lock (``RUN/.lock``, ``fcntl.flock``) refuses a second process writing the same folder;
* a new run refuses a non-empty folder unless it resumes from this folder's checkpoint
  (``train.resume``), is told to overwrite, or finds only a run that died before its first
  checkpoint; the old run's files are moved to ``RUN/.previous/`` and deleted only once the new run
  has saved its first checkpoint (restored if it fails or is killed before that);
* temporary files that a killed write left behind are removed once a run owns the folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hareid.config import RUN_CONFIG_MARK
from hareid.errors import ConfigError, HareidError
from hareid.fileio import atomic_write_text, remove_stale_temp_files

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

    ``with RunFolder(path) as folder:`` locks the folder and finishes an overwrite that a killed
    process left half done; then :meth:`claim` says whether this run may write here (and removes
    leftover temporary files once it may); :meth:`saved` is called after every checkpoint write.
    Only rank 0 uses it.

    An overwrite moves the old run's entries into ``.previous/`` after listing their names in
    ``.previous/moved.json``; a process killed at any point leaves a state that the next start
    resolves without loss: before this run's first checkpoint the old run comes back whole (entries
    listed but not yet moved stay where they are), after it ``.previous/`` is deleted (renamed to
    ``.previous.discard`` first, so a half-deleted old run is never mistaken for a whole one).
    """

    LOCK = ".lock"
    PREVIOUS = ".previous"
    DISCARD = ".previous.discard"
    MANIFEST = "moved.json"
    #: What a run writes before its first checkpoint: a folder holding only these (config.yaml
    #: among them, and no checkpoint) is a run that died early, which a new run may replace.
    EARLY_FILES = frozenset({"config.yaml", "metrics.jsonl", "init.json", "tb", "checkpoints"})
    CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
    #: inputs a command writes into the run folder before training starts (``hareid adapt``'s
    #: tracklets): part of this run, never taken for another run's files or moved aside
    INPUTS = ("tracklets",)

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self._lock_fd: int | None = None
        self._saved = False

    def _contents(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name not in (self.LOCK, self.PREVIOUS, self.DISCARD, *self.INPUTS))

    def _has_checkpoint(self) -> bool:
        ckpts = self.path / "checkpoints"
        return ckpts.is_dir() and any(p.suffix in self.CHECKPOINT_SUFFIXES and not p.name.startswith(".")
                                      for p in ckpts.iterdir())

    def __enter__(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666)
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
        shutil.rmtree(self.path / self.DISCARD, ignore_errors=True)
        if (self.path / self.PREVIOUS).exists():  # an overwrite that a killed process left behind
            self._resolve_previous()
        return self

    #: Everything a run (and the commands that read it) writes at its top level; with ``EARLY_FILES``.
    RUN_ENTRIES = frozenset({*EARLY_FILES, "eval.json", "report", "adapt.json", "attention_score.json"})

    def _is_run_config(self) -> bool:
        try:
            with open(self.path / "config.yaml", encoding="utf-8", errors="replace") as f:
                return f.readline().rstrip("\n") == RUN_CONFIG_MARK
        except OSError:
            return False

    def _foreign(self, taken: list[Path]) -> list[Path]:
        """Entries that are not a hareid run's: never moved or deleted, even with ``--overwrite``.
        A config.yaml is a run's when it carries the run mark or sits beside other run files
        (metrics.jsonl, checkpoints/, ...); a lone unmarked config.yaml is the user's."""
        names = {p.name for p in taken}
        run_config = self._is_run_config() or bool(names & (self.RUN_ENTRIES - {"config.yaml"}))
        return [p for p in taken if p.name not in self.RUN_ENTRIES or (p.name == "config.yaml" and not run_config)]

    def claim(self, own_resume: bool) -> None:
        """Take the folder for this run, then remove temporary files that killed writes left here.

        ``own_resume``: this run resumes from a checkpoint in this folder. Otherwise a folder
        holding another run is refused unless overwriting, or unless that run died before its
        first checkpoint (nothing to lose but its config); either way the old files are moved aside
        until this run saves a checkpoint.
        """
        taken = self._contents()
        if taken and not own_resume:
            foreign = self._foreign(taken)
            if foreign:
                names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in foreign[:4])
                raise HareidError(
                    f"{self.path}: folder holds files that are not a hareid run ({names}); hareid never "
                    "moves or deletes them, even with --overwrite: choose another output_dir or move them out")
            died_early = ("config.yaml" in {p.name for p in taken} and not self._has_checkpoint()
                          and all(p.name in self.EARLY_FILES for p in taken))
            if not (self.overwrite or died_early):
                names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in taken[:4])
                raise HareidError(
                    f"{self.path}: folder already holds a run ({names}); resume it with train.resume=auto, "
                    "choose another output_dir, or pass --overwrite (the old run is kept until the new one "
                    "saves its first checkpoint)"
                )
            self._move_aside(taken)
        remove_stale_temp_files(self.path)

    def _move_aside(self, taken: list[Path]) -> None:
        previous = self.path / self.PREVIOUS
        previous.mkdir()
        atomic_write_text(previous / self.MANIFEST, json.dumps([p.name for p in taken]))
        for p in taken:
            p.rename(previous / p.name)

    def _resolve_previous(self) -> None:
        """Keep this run if it saved a checkpoint, else bring the overwritten run back whole."""
        previous = self.path / self.PREVIOUS
        try:
            listed = json.loads((previous / self.MANIFEST).read_text())
        except (OSError, ValueError):  # killed before the list was written: nothing was moved yet
            shutil.rmtree(previous)
            return
        not_moved = {n for n in listed if (self.path / n).exists() and not (previous / n).exists()}
        if "checkpoints" not in not_moved and self._has_checkpoint():
            self._discard_previous()
            return
        for p in self._contents():  # the files of the run that failed: no checkpoint, nothing to keep
            if p.name not in not_moved:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        for p in previous.iterdir():
            if p.name != self.MANIFEST:
                p.rename(self.path / p.name)
        shutil.rmtree(previous)

    def _discard_previous(self) -> None:
        previous, discard = self.path / self.PREVIOUS, self.path / self.DISCARD
        if previous.exists():
            shutil.rmtree(discard, ignore_errors=True)
            previous.rename(discard)  # atomic: a half-deleted old run is never taken for a whole one
            shutil.rmtree(discard, ignore_errors=True)

    def saved(self) -> None:
        """A checkpoint of this run is on disk: an overwritten run's files can go."""
        if not self._saved:
            self._saved = True
            self._discard_previous()

    def __exit__(self, *exc: Any) -> None:
        if (self.path / self.PREVIOUS).exists() and not self._saved:
            self._resolve_previous()  # failed before saving: the old run comes back
        if self._lock_fd is not None:  # the lock file stays: unlinking it would race with a waiting run
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


# ------------------------------------------------------------------------------ resume rules
#: Config keys a resumed run may change: where and how it runs, not what it learns.
RESUMABLE_KEYS = (
    "output_dir", "data.root", "data.workers", "data.test_batch_size", "data.loader_options", "data.skip_bad_images",
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
