"""The one record type every parser produces, and the dataset that holds them.

* :class:`ImageRecord` ``(path, pid, camid, split, mask)``: ``split`` is ``"train"``, ``"query"`` or
  ``"gallery"``; train pids are relabelled ``0..N-1``; camera ids are 0-based. Query/gallery pids
  keep the dataset's own numbering (``0`` = distractor in Market-style galleries). ``mask`` is the
  path of the image's person (foreground) mask where the dataset has one (the synthetic sets, the
  tracklets layout), else ``None``.
* :class:`ReIDDataset`: ``.name, .root, .train, .query, .gallery, .num_train_pids,
  .num_train_cams, .summary()``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["SPLITS", "ImageRecord", "ReIDDataset", "relabel"]

SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class ImageRecord:
    """One image: absolute ``path``, identity ``pid``, 0-based camera ``camid``, ``split``, and the
    path of its person mask (``None`` without one; 8-bit, > 127 = person, any size: it is resized
    with the image)."""

    path: str
    pid: int
    camid: int
    split: str
    mask: str | None = None


def relabel(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Map pids to ``0..N-1`` in ascending order of the original pid (stable, deterministic)."""
    records = list(records)
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [replace(r, pid=mapping[r.pid]) for r in records]


def index_labels(labels: Iterable[Hashable]) -> dict[Hashable, int]:
    """0-based ids for arbitrary labels: numeric labels in numeric order, else sorted as strings."""
    uniq = set(labels)
    try:
        ordered = sorted(uniq, key=lambda v: (0, int(v), "") if _is_int(v) else (1, 0, str(v)))
    except TypeError:  # pragma: no cover - mixed unorderable labels
        ordered = sorted(uniq, key=str)
    return {v: i for i, v in enumerate(ordered)}


def _is_int(v: Any) -> bool:
    try:
        int(v)
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class ReIDDataset:
    """Train / query / gallery records of one dataset (see module docstring for conventions)."""

    name: str
    root: Path
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    @property
    def num_train_imgs(self) -> int:
        return len(self.train)

    @property
    def has_masks(self) -> bool:
        """Whether every training image has a person mask (what the attention loss needs)."""
        return bool(self.train) and all(r.mask is not None for r in self.train)

    def stats(self) -> dict[str, tuple[int, int, int]]:
        """``{split: (identities, images, cameras)}``."""
        return {s: _stats(getattr(self, s)) for s in SPLITS}

    def summary(self) -> str:
        """The statistics table (identities / images / cameras per subset)."""
        rows = self.stats()
        lines = [
            f"Dataset {self.name}  ({self.root})",
            "  subset   | # ids | # images | # cameras",
            "  ---------+-------+----------+----------",
        ]
        for split in SPLITS:
            ids, imgs, cams = rows[split]
            lines.append(f"  {split:<8} | {ids:5d} | {imgs:8d} | {cams:9d}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        t, q, g = (self.stats()[s] for s in SPLITS)
        return (f"ReIDDataset({self.name!r}, train={t[1]} imgs/{t[0]} ids, "
                f"query={q[1]}, gallery={g[1]})")


def _stats(records: Sequence[ImageRecord]) -> tuple[int, int, int]:
    return len({r.pid for r in records}), len(records), len({r.camid for r in records})
