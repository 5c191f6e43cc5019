"""What a run tells: ``metrics.jsonl``, TensorBoard scalars, progress bars and messages (rank 0 only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hareid.errors import ConfigError
from hareid.fileio import atomic_write_text
from hareid.progress import progress

__all__ = ["RunLogger"]


class RunLogger:
    """One run's log. Every method is a no-op on ranks other than 0 (``is_main=False``).

    ``metrics.jsonl`` holds one JSON object per line: per epoch ``{"epoch", "iteration", "loss",
    "acc", "lr", "images_per_s"}``, per evaluation ``{"epoch", "rank1", "rank5", "mAP", "mINP"}``.
    """

    def __init__(self, run_dir: str | Path, is_main: bool = True, tensorboard: bool = False,
                 show_progress: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.is_main, self.show_progress = is_main, show_progress
        self._writer: Any = None
        if tensorboard and is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("train.tensorboard=true needs `pip install tensorboard`") from e
            self._writer = SummaryWriter(str(Path(run_dir) / "tb"))

    def record(self, rec: Mapping[str, Any], scalars_prefix: str | None = None, step: int | None = None) -> None:
        """Append ``rec`` to metrics.jsonl; with ``scalars_prefix`` also send its numbers to TensorBoard."""
        if not self.is_main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(rec)) + "\n")
        if scalars_prefix is not None:
            for k, v in rec.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.scalar(f"{scalars_prefix}/{k}", v, step if step is not None else rec.get("epoch", 0))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def trim(self, upto_epoch: int) -> None:
        """On resume, drop the records of epochs after the checkpoint (they will be written again)."""
        if not self.is_main or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if int(json.loads(line).get("epoch", 0)) <= upto_epoch:
                    keep.append(line)
            except (ValueError, AttributeError):
                continue
        atomic_write_text(self.path, "".join(x + "\n" for x in keep))

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        """The per-epoch progress bar (off on other ranks, when disabled, and off a terminal)."""
        return progress(total=total, initial=initial, desc=desc, leave=True,
                        enabled=self.show_progress and self.is_main)

    def say(self, msg: str) -> None:
        """One line on stderr, from rank 0 only (without breaking a progress bar)."""
        if self.is_main:
            tqdm.write(msg, file=sys.stderr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
