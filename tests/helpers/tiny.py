"""One tiny synthetic set and one tiny training run, shared by the CLI, API and README tests.

Built once per test session (under pytest-xdist, once for all workers: a file lock guards it in
the session's shared temp folder). Sizes keep the run to a few seconds on one CPU core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock

#: write_synthetic arguments of the tiny set (64x32 images, 8 + 8 identities, 3 cameras).
SYNTHETIC = dict(seed=0, num_train_ids=8, num_test_ids=8, images_per_id=6, num_cams=3, height=64,
                 width=32, num_distractors=4, num_junk=2, workers=0, progress=False)
#: Overrides that shrink any recipe to the tiny set: one epoch, tiny batches, no workers.
TRAIN_OVERRIDES = ["data.height=64", "data.width=32", "train.epochs=1", "data.batch_size=8",
                   "data.num_instances=2", "data.workers=0", "data.test_batch_size=32",
                   "train.eval_every=1", "train.progress=false", "optim.warmup_epochs=0"]


@dataclass(frozen=True)
class Tiny:
    """Paths of the shared tiny set and run (treat as read-only; copy before writing into them)."""

    data: Path  # synthetic tree in Market-1501 layout (with synthetic.json, masks, annotations)
    run: Path  # run folder of `hareid train --config hacnn_synthetic` on ``data``

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / "best.pt"

    def images(self, split: str = "query") -> list[Path]:
        folder = {"query": "query", "gallery": "bounding_box_test", "train": "bounding_box_train"}[split]
        return sorted((self.data / folder).glob("*.jpg"))


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A temp folder shared by all xdist workers of this session."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def get_tiny(factory: pytest.TempPathFactory) -> Tiny:
    """Build (once) and return the tiny set and run."""
    from hareid.cli import main
    from hareid.data.synthetic import write_synthetic

    root = shared_dir(factory) / "hareid_tiny"
    root.mkdir(exist_ok=True)
    tiny = Tiny(root / "data", root / "run")
    with FileLock(str(root / "build.lock")):
        if not (tiny.run / "done").is_file():
            write_synthetic(tiny.data, **SYNTHETIC)
            rc = main(["train", "--config", "hacnn_synthetic", f"data.root={tiny.data}",
                       f"output_dir={tiny.run}", *TRAIN_OVERRIDES])
            assert rc == 0, "tiny training run failed"
            (tiny.run / "done").write_text("ok\n")
    return tiny
