"""Appearance features for a tracker: OpenCV frames + boxes -> hareid.Embedder -> (N, D) rows.

    pip install 'hareid[video]'          # OpenCV for this example; hareid itself does not need it
    python examples/embed_opencv.py runs/demo/checkpoints/best.pt video.avi [--det det.txt]

Boxes come from a MOTChallenge ``det.txt`` (frame, id, x, y, w, h, ...) when given, else from a
background subtractor (OpenCV MOG2, for a static camera). Each frame's boxes are embedded in one call
(``embed_boxes``, BGR frames as OpenCV reads them); every box is matched to its most similar box of
the previous frame by cosine similarity, the association cue a DeepSORT-style tracker adds to motion.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from hareid import Embedder


def mot_boxes(path: str) -> dict[int, np.ndarray]:
    """``{frame (1-based): (N, 4) xyxy}`` from a MOTChallenge detection file."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    out: dict[int, list] = defaultdict(list)
    for frame, _id, x, y, w, h, *_ in rows:
        out[int(frame)].append([x, y, x + w, y + h])
    return {f: np.asarray(b) for f, b in out.items()}


def moving_boxes(fgbg, frame: np.ndarray, min_area: int = 400) -> np.ndarray:
    """Boxes of moving blobs (xyxy) from a background subtractor."""
    import cv2

    mask = fgbg.apply(frame)
    mask = cv2.morphologyEx((mask == 255).astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    _n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
    boxes = [[x, y, x + w, y + h] for x, y, w, h, area in stats[1:] if area >= min_area and h > w]
    return np.asarray(boxes, dtype=float).reshape(-1, 4)


def main(argv: list[str] | None = None) -> list[tuple[int, int, np.ndarray]]:
    """Returns ``[(frame, number of boxes, best match in the previous frame per box)]``."""
    import cv2

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("video")
    p.add_argument("--det", default=None, help="MOTChallenge det.txt (else: background subtraction)")
    p.add_argument("--frames", type=int, default=100, help="frames to read")
    args = p.parse_args(argv)

    embedder = Embedder(args.checkpoint, dtype="auto")  # bf16 where the CPU has it
    dets = mot_boxes(args.det) if args.det else None
    fgbg = cv2.createBackgroundSubtractorMOG2(history=200, detectShadows=True)
    cap = cv2.VideoCapture(args.video)
    prev: np.ndarray | None = None
    log = []
    for index in range(1, args.frames + 1):
        ok, frame = cap.read()  # BGR, uint8
        if not ok:
            break
        boxes = dets.get(index, np.zeros((0, 4))) if dets is not None else moving_boxes(fgbg, frame)
        feats = embedder.embed_boxes(frame, boxes, bgr=True)  # (N, D), unit rows
        match = (feats @ prev.T).argmax(1) if prev is not None and len(prev) and len(feats) else np.zeros(0, int)
        log.append((index, len(boxes), match))
        if len(feats):
            print(f"frame {index}: {len(boxes)} boxes -> features {feats.shape}; previous-frame match {match.tolist()}")
        prev = feats
    cap.release()
    return log


if __name__ == "__main__":
    main()
