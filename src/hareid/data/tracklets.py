"""The ``tracklets`` layout (written by ``hareid tracklets``) as a dataset, with the label-free
time-gap protocol as its query/gallery split.

Layout: ``ROOT/tracklets.json`` (``"format": "hareid-tracklets"``) listing per tracklet its crops
(``crops/<source>/<nnnn>/<source>_<nnnn>_<frame>.jpg``), frames, times and boxes.

* **train**: every crop; identity = its tracklet (a pseudo-identity; relabelled ``0..N-1``), camera =
  its source.
* **query / gallery** (the time-gap protocol, see docs/evaluation.md): a tracklet that spans at
  least ``gap + 2 * min_part`` seconds is cut into three: its first ``part`` seconds give query
  crops, its last ``part`` seconds give gallery crops (the positives), the middle (``>= gap`` s)
  is dropped. Every tracklet adds gallery crops (its last part, or spread over its life when it is
  too short to query): the negatives. At most ``per_part`` crops are taken from a part, evenly in
  time. Identity = the tracklet (or the given identity, e.g. MOT ground truth); the camera slot
  holds a *junk group*, one per tracklet part (query part ``2k``, gallery part ``2k + 1``), so the
  unchanged Market-1501 rule (same identity and same camera = junk) keeps a query's positives at
  least ``gap`` seconds away and never pairs crops of one part. With given identities, the other
  tracklets of the same person are positives too.

``extras`` carries what the stricter protocol variants need (:mod:`hareid.footage.protocol`):
``crop_meta`` (path -> tracklet key, frame, time, box), ``tracklet_frames`` (key -> (source, set
of frames)) and ``protocol`` (the settings).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from hareid.data.records import ImageRecord, ReIDDataset
from hareid.errors import DataError

__all__ = ["TRACKLETS_FORMAT", "is_tracklets_folder", "load_tracklets_meta", "parse_tracklets",
           "split_tracklet"]

TRACKLETS_FORMAT = "hareid-tracklets"


def is_tracklets_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` holds a ``tracklets.json`` written by ``hareid tracklets``."""
    path = Path(root) / "tracklets.json"
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return TRACKLETS_FORMAT in head


def load_tracklets_meta(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``tracklets.json`` of a tracklets folder (DataError naming the file when bad)."""
    path = Path(root).expanduser() / "tracklets.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; a tracklets folder is written by `hareid tracklets FOOTAGE --out DIR`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({str(e).splitlines()[0]}); write it again with hareid tracklets") from None
    if not isinstance(meta, dict) or meta.get("format") != TRACKLETS_FORMAT or "tracklets" not in meta:
        raise DataError(f"{path}: not a hareid tracklets file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def _even(items: list[Any], k: int) -> list[Any]:
    """At most ``k`` items, evenly spread (first and last included)."""
    if len(items) <= k:
        return list(items)
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def split_tracklet(times: list[float], gap: float, min_part: float, part: float
                   ) -> tuple[list[int], list[int]] | None:
    """Indices of the query part and the gallery part of one tracklet, or ``None`` when it spans
    less than ``gap + 2 * min_part`` seconds. Parts are the first and last ``min(part, (span -
    gap) / 2)`` seconds, so every query crop is at least ``gap`` seconds from every gallery crop."""
    t = np.asarray(times, np.float64)
    span = float(t.max() - t.min()) if len(t) else 0.0
    if span < gap + 2 * min_part:
        return None
    length = min(part, (span - gap) / 2)
    q = np.flatnonzero(t <= t.min() + length)
    g = np.flatnonzero(t >= t.max() - length)
    return q.tolist(), g.tolist()


def parse_tracklets(root: str | os.PathLike, gap: float = 2.0, min_part: float = 0.5,
                    part: float = 1.0, per_part: int = 4,
                    tracklets: Collection[str] | None = None) -> ReIDDataset:
    """Read a tracklets folder (see module docstring for the splits and the protocol);
    ``tracklets``: only these tracklet ids (e.g. a held-out part)."""
    root = Path(root).expanduser().resolve()
    meta = load_tracklets_meta(root)
    if gap < 0 or min_part <= 0 or part < min_part or per_part < 1:
        raise DataError(f"{root}: bad protocol settings gap={gap} min_part={min_part} part={part} "
                        f"per_part={per_part}; need gap >= 0, part >= min_part > 0, per_part >= 1")
    sources = {s["name"]: i for i, s in enumerate(meta.get("sources", []))}
    train: list[ImageRecord] = []
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    crop_meta: dict[str, dict[str, Any]] = {}
    tracklet_frames: dict[str, tuple[str, frozenset[int]]] = {}
    identities = [t.get("identity") for t in meta["tracklets"]]
    labelled = bool(identities) and all(i is not None for i in identities)
    for k, t in enumerate(meta["tracklets"]):
        crops = sorted(t["crops"], key=lambda c: c["time"])
        if not crops or (tracklets is not None and str(t["id"]) not in tracklets):
            continue
        key = str(t["id"])
        cam = sources.setdefault(t["source"], len(sources))
        paths, masks = [], []
        for c in crops:
            p = root / c["file"]
            masks.append(str(root / c["mask"]) if c.get("mask") else None)
            if not p.is_file():
                raise DataError(f"{p}: crop listed in tracklets.json is missing; write the folder again "
                                "with hareid tracklets")
            paths.append(str(p))
            crop_meta[str(p)] = {"tracklet": key, "frame": int(c["frame"]), "time": float(c["time"]),
                                 "box": c["box"], "source": t["source"]}
        tracklet_frames[key] = (t["source"], frozenset(int(c["frame"]) for c in crops))
        train += [ImageRecord(p, k, cam, "train", m) for p, m in zip(paths, masks)]
        pid = int(t["identity"]) if labelled else k + 1  # pids from 1: 0 stays "distractor"
        split = split_tracklet([c["time"] for c in crops], gap, min_part, part)
        if split is None:
            gallery += [ImageRecord(paths[i], pid, 2 * k + 1, "gallery")
                        for i in _even(list(range(len(paths))), per_part)]
            continue
        q_idx, g_idx = split
        query += [ImageRecord(paths[i], pid, 2 * k, "query") for i in _even(q_idx, per_part)]
        gallery += [ImageRecord(paths[i], pid, 2 * k + 1, "gallery") for i in _even(g_idx, per_part)]
    if not train:
        if tracklets is not None:
            raise DataError(f"{root}: none of the {len(tracklets)} requested tracklets has crops")
        raise DataError(f"{root}: tracklets.json lists no crops; write the folder again with hareid tracklets")
    from hareid.data.records import relabel

    ds = ReIDDataset("tracklets", root, relabel(train), query, gallery)
    ds.extras.update(crop_meta=crop_meta, tracklet_frames=tracklet_frames, labelled=labelled,
                     protocol={"gap": gap, "min_part": min_part, "part": part, "per_part": per_part})
    if not query:
        longest = max((c[-1]["time"] - c[0]["time"]) for c in
                      (sorted(t["crops"], key=lambda c: c["time"]) for t in meta["tracklets"]
                       if t["crops"] and (tracklets is None or str(t["id"]) in tracklets)))
        raise DataError(f"{root}: no tracklet spans the {gap + 2 * min_part:g} s the time-gap protocol needs "
                        f"(gap {gap:g} s + two parts of {min_part:g} s; longest: {longest:.1f} s); "
                        "use longer footage or a smaller gap (build_dataset(..., gap=1.0))")
    return ds
