"""Person detection on a static camera without downloaded weights.

* :class:`BackgroundDetector` (default, ``"mog2"``): OpenCV's MOG2 background model; shadows
  (MOG2 marks them grey) are dropped, the foreground is cleaned with a small opening and joined
  with a tall closing (head, torso and legs of one person become one blob), and each connected
  blob that is tall enough and person-shaped becomes a box. It also gives the foreground mask that
  :mod:`hareid.footage.masks` cuts per crop.
* :class:`HOGDetector` (``"hog"``): OpenCV's built-in HOG + linear SVM people detector (Dalal &
  Triggs; its weights ship inside OpenCV 4). Needs OpenCV 4.x: OpenCV 5 moved HOG out of the
  main package.

Why MOG2 is the default, measured on a real street video (see docs/footage.md): on a static camera
it finds small and partly occluded people that HOG's 64x128 window misses, gives tight boxes
and a person mask for free, and is ~30x faster on a CPU. Its weaknesses (people standing still
fade into the background; two people walking together form one blob) are handled by the tracker's
filters. A moving camera needs given boxes (MOT ``det.txt``) instead.

Boxes are ``(N, 4) float32`` arrays ``x1, y1, x2, y2`` in pixels of the frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import nms

from hareid.errors import DataError
from hareid.footage.readers import import_cv2

__all__ = ["DETECTORS", "BackgroundDetector", "HOGDetector", "build_detector"]


@dataclass
class BackgroundDetector:
    """MOG2 background subtraction -> person boxes + foreground mask (see module docstring).

    Sizes are fractions of the frame height so that the defaults fit any resolution:
    ``min_height`` (smallest person), ``max_height`` (largest blob kept). ``min_fill`` is the least
    share of a box covered by foreground, ``aspect`` the allowed height/width range.
    """

    history: int = 500
    var_threshold: float = 16.0
    min_height: float = 0.07
    max_height: float = 0.9
    aspect: tuple[float, float] = (1.1, 6.0)
    min_fill: float = 0.25
    warmup_frames: int = 100
    name: str = "mog2"

    def __post_init__(self) -> None:
        cv2 = import_cv2()
        self._cv2 = cv2
        self._mog = cv2.createBackgroundSubtractorMOG2(history=self.history,
                                                       varThreshold=self.var_threshold,
                                                       detectShadows=True)
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close: np.ndarray | None = None

    def warm_up(self, images: Iterable[np.ndarray]) -> None:
        """Learn the empty scene before detecting, so that people present at the start leave no
        ghosts: the per-pixel median of frames spread over the footage (a walking person is
        outvoted) seeds the model, then those frames teach it the scene's variation."""
        frames = list(images)
        if not frames:
            return
        step = max(1, len(frames) // 40)  # the median of <= 40 frames bounds memory
        median = np.median(np.stack(frames[::step]), axis=0).astype(np.uint8)  # (H, W, 3)
        for _ in range(30):
            self._mog.apply(median, learningRate=-1)
        for img in frames:
            self._mog.apply(img, learningRate=-1)

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """Cleaned foreground mask ``(H, W) uint8`` in {0, 255} of one BGR frame (updates the model)."""
        cv2 = self._cv2
        raw = self._mog.apply(image, learningRate=-1)  # 255 foreground, 127 shadow, 0 background
        fg = np.where(raw == 255, 255, 0).astype(np.uint8)
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, self._open)
        if self._close is None:  # a tall kernel: joins a person's head, torso and legs
            h = max(3, round(image.shape[0] * 0.02) | 1)
            self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, h // 2 | 1), 2 * h + 1))
        return cv2.morphologyEx(fg, cv2.MORPH_CLOSE, self._close)

    def boxes_from_mask(self, fg: np.ndarray) -> np.ndarray:
        """Person-shaped connected blobs of a foreground mask -> ``(N, 4)`` boxes."""
        cv2 = self._cv2
        frame_h = fg.shape[0]
        n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        out = []
        for x, y, w, h, area in stats[1:n]:  # (N, 5) left, top, width, height, area; 0 = background
            if not self.min_height * frame_h <= h <= self.max_height * frame_h:
                continue
            if not self.aspect[0] <= h / max(w, 1) <= self.aspect[1]:
                continue
            if area < self.min_fill * w * h:
                continue
            out.append((x, y, x + w, y + h))
        return np.asarray(out, dtype=np.float32).reshape(-1, 4)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(boxes (N, 4), foreground mask (H, W) uint8)`` for one BGR frame."""
        fg = self.foreground(image)
        return self.boxes_from_mask(fg), fg


@dataclass
class HOGDetector:
    """OpenCV's HOG people detector; ``upscale`` enlarges frames so that people smaller than the
    128-pixel window are found (slower)."""

    upscale: float = 1.6
    hit_threshold: float = 0.0
    stride: int = 8
    min_score: float = 0.3
    nms_iou: float = 0.4
    warmup_frames: int = 0
    name: str = "hog"

    def __post_init__(self) -> None:
        cv2 = import_cv2()
        if not hasattr(cv2, "HOGDescriptor"):
            raise DataError(f"detector 'hog' needs OpenCV 4.x (this is OpenCV {cv2.__version__}, which "
                            "moved HOG out): pip install 'opencv-python-headless<5', or use --detector mog2")
        self._cv2 = cv2
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def warm_up(self, images: Iterable[np.ndarray]) -> None:
        """Nothing to learn."""

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, None]:
        cv2 = self._cv2
        s = self.upscale
        img = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) if s != 1 else image
        rects, weights = self._hog.detectMultiScale(img, hitThreshold=self.hit_threshold,
                                                    winStride=(self.stride, self.stride),
                                                    padding=(8, 8), scale=1.05)
        if len(rects) == 0:
            return np.zeros((0, 4), np.float32), None
        rects = np.asarray(rects, dtype=np.float32) / s  # (N, 4) x, y, w, h
        scores = np.asarray(weights, dtype=np.float32).reshape(-1)
        keep = scores >= self.min_score
        rects, scores = rects[keep], scores[keep]
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
        # the HOG window has ~1/8 margin around the person on each side: tighten to the body
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes += np.stack([0.15 * w, 0.07 * h, -0.15 * w, -0.07 * h], axis=1)
        keep = nms(torch.from_numpy(boxes), torch.from_numpy(scores), self.nms_iou).numpy()
        return boxes[keep], None


DETECTORS = {"mog2": BackgroundDetector, "hog": HOGDetector}


def build_detector(name: str = "mog2", **kw: object) -> BackgroundDetector | HOGDetector:
    """A detector by name (``mog2`` or ``hog``) with keyword options."""
    if name not in DETECTORS:
        raise DataError(f"unknown detector {name!r}; choose {' or '.join(DETECTORS)}")
    return DETECTORS[name](**kw)  # type: ignore[arg-type]
