"""Foreground masks for real person crops, from background subtraction.

How a crop's mask is built (:func:`person_mask`): the detector's cleaned MOG2 foreground of the
frame (shadows removed, opened, closed; :meth:`BackgroundDetector.foreground`) is cut to the crop
rectangle; inside it, only the connected blobs that lie mostly within the person's own box are
kept, so that a second person near the crop's border does not count as "the person". Masks are
``uint8`` in {0, 255}, the size of the crop, stored as PNG beside the crops
(``masks/<source>/<tracklet>/<same name>.png``) and listed in ``tracklets.json``.

They are a stand-in for a person segmentation: a person standing still fades into the background
(mask too small), a carried bag or a shadow that MOG2 did not mark grey is included (mask too
large). :func:`mask_stats` reports the share of each crop covered, so a reader can judge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hareid.footage.readers import import_cv2

__all__ = ["crop_mask_pairs", "mask_stats", "person_mask", "read_mask"]


def person_mask(fg: np.ndarray, crop_box: tuple[int, int, int, int],
                person_box: np.ndarray) -> np.ndarray:
    """The mask ``(h, w) uint8`` of the crop ``crop_box`` (x1, y1, x2, y2 ints, inside the frame):
    foreground blobs with at least half their pixels inside ``person_box``."""
    cv2 = import_cv2()
    x1, y1, x2, y2 = crop_box
    sub = np.ascontiguousarray(fg[y1:y2, x1:x2])  # (h, w) {0, 255}
    n, labels, _, _ = cv2.connectedComponentsWithStats(sub, connectivity=8)
    if n <= 1:
        return sub
    px1, py1, px2, py2 = (np.asarray(person_box, np.float64) - [x1, y1, x1, y1]).tolist()
    ys, xs = np.mgrid[0:sub.shape[0], 0:sub.shape[1]]
    inside = (xs >= px1) & (xs < px2) & (ys >= py1) & (ys < py2)  # (h, w)
    total = np.bincount(labels.ravel(), minlength=n)
    within = np.bincount(labels[inside].ravel(), minlength=n)
    keep = within >= 0.5 * np.maximum(total, 1)
    keep[0] = False
    return np.where(keep[labels], 255, 0).astype(np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A stored mask as ``(h, w) bool``."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


def crop_mask_pairs(root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(crop path, mask path)`` of every crop of a tracklets folder that has a mask."""
    root = Path(root)
    meta = json.loads((root / "tracklets.json").read_text())
    return [(str(root / c["file"]), str(root / c["mask"]))
            for t in meta["tracklets"] for c in t["crops"] if c.get("mask")]


def mask_stats(root: str | os.PathLike) -> dict[str, float]:
    """Share of each crop covered by its mask: mean and quartiles, over a tracklets folder."""
    shares = [float(read_mask(m).mean()) for _, m in crop_mask_pairs(root)]
    if not shares:
        return {"crops": 0}
    q = np.percentile(shares, [25, 50, 75])
    return {"crops": len(shares), "mean": float(np.mean(shares)), "q25": float(q[0]),
            "median": float(q[1]), "q75": float(q[2])}
