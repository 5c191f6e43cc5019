"""Association of per-frame person boxes into tracklets, and the filters that keep them clean.

A tracklet is meant to hold ONE person, so the tracker is cautious rather than long-lived:

* **Association**: each live track predicts its box with a constant-velocity model (centre and
  size, smoothed); the cost of pairing a track with a detection is ``1 - IoU(prediction,
  detection)``, gated at ``iou_min``; the assignment is the Hungarian solution (``lap.lapjv``,
  else ``scipy.optimize.linear_sum_assignment``). A track unmatched for longer than ``max_gap``
  seconds ends.
* **Merges and crossings end tracks**: a detection that covers the predictions of two or more
  live tracks (two people walking into one blob), or a detection flagged ``odd`` by the scene
  geometry (its size does not fit one person at its position; see :func:`fit_scene_geometry`)
  touching a track, ends those tracks; when one track's prediction covers two or more detections
  (a blob splitting), it ends too. So a tracklet never spans a merge, where identities can swap;
  the person continues in a new tracklet. Odd detections never start a track.
* **Filters** (:func:`filter_tracklets`): fewer than ``min_frames`` boxes, or a track that never
  moves more than ``min_motion`` box heights (a false detection on a static object) is dropped.

Boxes are ``x1, y1, x2, y2`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hareid.errors import DataError

__all__ = [
    "Detection",
    "SceneGeometry",
    "TrackerConfig",
    "Tracklet",
    "associate",
    "box_iou",
    "filter_tracklets",
    "fit_scene_geometry",
    "linear_assignment",
    "tracklets_from_ids",
]


@dataclass
class Detection:
    """One box in one frame. ``key`` indexes the candidate crop written for it; ``track`` is a given
    identity (MOT ground truth) or -1; ``odd``: does not look like one whole person."""

    frame: int
    time: float
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    key: int = -1
    score: float = 1.0
    track: int = -1
    odd: bool = False
    crop_box: tuple[int, int, int, int] | None = None  # the padded rectangle cropped


@dataclass
class Tracklet:
    """Consecutive detections of (we hope) one person; ``end_reason`` says why it stopped."""

    id: int
    detections: list[Detection] = field(default_factory=list)
    end_reason: str = "lost"
    identity: int | None = None  # a given identity (MOT ground truth), else None

    @property
    def first_frame(self) -> int:
        return self.detections[0].frame

    @property
    def last_frame(self) -> int:
        return self.detections[-1].frame

    @property
    def duration(self) -> float:
        return self.detections[-1].time - self.detections[0].time

    def __len__(self) -> int:
        return len(self.detections)

    def boxes(self) -> np.ndarray:
        """``(N, 4)`` boxes."""
        return np.stack([d.box for d in self.detections]).astype(np.float32)

    def motion(self) -> float:
        """Largest displacement of the box centre from its first position, in median box heights."""
        b = self.boxes()
        c = (b[:, :2] + b[:, 2:]) / 2  # (N, 2)
        h = float(np.median(b[:, 3] - b[:, 1]))
        return float(np.linalg.norm(c - c[0], axis=1).max() / max(h, 1.0))


@dataclass
class TrackerConfig:
    """Association and filter settings (see module docstring)."""

    iou_min: float = 0.2
    max_gap: float = 0.5  # seconds
    cover: float = 0.5  # share of a box inside another that counts as "covers"
    max_hidden: float = 0.3  # seconds a track may coast unmatched inside a merged/odd blob
    velocity_smoothing: float = 0.5
    min_frames: int = 8
    min_motion: float = 0.3  # box heights
    group_width: float = 1.35  # median box width / a person's expected width above this: a group
    group_height: float = 1.3  # median box height / expected height above this: people in a line


# -------------------------------------------------------------------------------------- geometry
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a (N, 4)`` with every box in ``b (M, 4)`` -> ``(N, M)``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    return np.clip(w, 0, None) * np.clip(h, 0, None)  # (N, M)


def _coverage(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of each box of ``b`` that lies inside each box of ``a`` -> ``(N, M)``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return _intersection(a, b) / np.maximum(area_b[None, :], 1e-9)


@dataclass
class SceneGeometry:
    """Expected person height in pixels as a linear function of the foot row, ``h = a * y2 + b``
    (a static camera over a ground plane), and the median width/height ratio of a person."""

    a: float
    b: float
    aspect: float  # median width / height
    inliers: int

    def expected_height(self, y2: np.ndarray) -> np.ndarray:
        return np.maximum(self.a * np.asarray(y2, np.float64) + self.b, 1.0)

    def is_odd(self, boxes: np.ndarray, height_range: tuple[float, float] = (0.6, 1.45),
               max_width: float = 1.7) -> np.ndarray:
        """``(N,)`` bool: too tall/short for one person at that position, or too wide (two side by side)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        h_exp = self.expected_height(boxes[:, 3])
        rh = (boxes[:, 3] - boxes[:, 1]) / h_exp
        rw = (boxes[:, 2] - boxes[:, 0]) / (h_exp * self.aspect)
        return (rh < height_range[0]) | (rh > height_range[1]) | (rw > max_width)

    def to_dict(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "aspect": self.aspect, "inliers": self.inliers}


def fit_scene_geometry(boxes: np.ndarray, min_boxes: int = 30) -> SceneGeometry | None:
    """Robust line fit of box height against foot row (trimmed least squares, 4 rounds);
    ``None`` with fewer than ``min_boxes`` boxes or a fit that makes no sense (height shrinking
    towards the camera by more than the frame height)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) < min_boxes:
        return None
    y2, h = boxes[:, 3], boxes[:, 3] - boxes[:, 1]
    keep = np.ones(len(boxes), bool)
    a, b = 0.0, float(np.median(h))
    for _ in range(4):
        if keep.sum() < max(10, min_boxes // 3):
            break
        a, b = np.polyfit(y2[keep], h[keep], 1)
        res = h - (a * y2 + b)
        mad = np.median(np.abs(res[keep] - np.median(res[keep])))
        mad = max(mad, 0.02 * float(np.median(h)))  # boxes of identical height: a floor, not zero
        keep = np.abs(res) < 2.5 * 1.4826 * mad
    if a < 0:  # people do not get smaller towards the bottom of a street camera's view
        a, b = 0.0, float(np.median(h[keep]))
    aspect = float(np.median((boxes[keep, 2] - boxes[keep, 0]) / np.maximum(h[keep], 1)))
    return SceneGeometry(float(a), float(b), aspect, int(keep.sum()))


# ------------------------------------------------------------------------------------- assignment
def linear_assignment(cost: np.ndarray, max_cost: float) -> list[tuple[int, int]]:
    """Minimum-cost matching of rows to columns, pairs costing more than ``max_cost`` excluded."""
    cost = np.asarray(cost, np.float64)
    if cost.size == 0:
        return []
    try:
        import lap
    except ImportError:
        lap = None
    if lap is not None:
        _, x, _ = lap.lapjv(cost, extend_cost=True, cost_limit=max_cost)
        return [(i, int(j)) for i, j in enumerate(x) if j >= 0 and cost[i, j] <= max_cost]
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as e:
        raise DataError("tracking needs lap or scipy for the assignment: pip install 'hareid[video]'") from e
    big = max_cost + 1.0
    rows, cols = linear_sum_assignment(np.where(cost > max_cost, big, cost))
    return [(int(i), int(j)) for i, j in zip(rows, cols) if cost[i, j] <= max_cost]


# ------------------------------------------------------------------------------------- the tracker
class _Live:
    """A track being built: last box, smoothed velocity (per frame) of centre and size."""

    def __init__(self, tracklet: Tracklet, det: Detection) -> None:
        self.tracklet = tracklet
        self.velocity = np.zeros(4)  # d(cx, cy, w, h) per frame
        self.hidden_frames = 0  # consecutive frames covered by a merged or odd blob
        self.add(det, 0.0)

    def add(self, det: Detection, smoothing: float) -> None:
        if self.tracklet.detections:
            last = self.tracklet.detections[-1]
            step = max(det.frame - last.frame, 1)
            v = (_cxcywh(det.box) - _cxcywh(last.box)) / step
            self.velocity = smoothing * self.velocity + (1 - smoothing) * v
        self.tracklet.detections.append(det)

    def predict(self, frame: int) -> np.ndarray:
        last = self.tracklet.detections[-1]
        return _xyxy(_cxcywh(last.box) + self.velocity * (frame - last.frame))


def _cxcywh(b: np.ndarray) -> np.ndarray:
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]], np.float64)


def _xyxy(c: np.ndarray) -> np.ndarray:
    w, h = max(c[2], 1.0), max(c[3], 1.0)
    return np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2], np.float64)


def associate(frames: list[list[Detection]], fps: float, cfg: TrackerConfig | None = None) -> list[Tracklet]:
    """Link detections (``frames``: per processed frame, in time order) into tracklets."""
    cfg = cfg or TrackerConfig()
    max_gap_frames = max(1, round(cfg.max_gap * fps))
    max_hidden = max(1, round(cfg.max_hidden * fps))
    live: list[_Live] = []
    done: list[Tracklet] = []
    next_id = 0

    def end(track: _Live, reason: str) -> None:
        track.tracklet.end_reason = reason
        done.append(track.tracklet)

    for dets in frames:
        if not dets:
            continue
        frame = dets[0].frame
        still = []
        for t in live:  # tracks unmatched for too long end
            if frame - t.tracklet.last_frame > max_gap_frames:
                end(t, "lost")
            else:
                still.append(t)
        live = still
        preds = np.stack([t.predict(frame) for t in live]) if live else np.zeros((0, 4))
        boxes = np.stack([d.box for d in dets])  # (D, 4)
        odd = np.array([d.odd for d in dets])
        ended: dict[int, str] = {}
        hidden: dict[int, str] = {}  # tracks not matched this frame because something covers them
        pairs: list[tuple[int, int]] = []
        if live:
            covers_pred = _coverage(boxes, preds) >= cfg.cover  # (D, T): detection covers prediction
            covers_det = _coverage(preds, boxes) >= cfg.cover  # (T, D): prediction covers detection
            iou = box_iou(preds, boxes)  # (T, D)
            for d in range(len(dets)):
                hit = np.flatnonzero(covers_pred[d])
                if len(hit) >= 2:  # one blob over two people: they coast through it, unmatched
                    hidden.update((int(t), "merge") for t in hit)
                    odd[d] = True  # and it neither continues nor starts a track
                elif odd[d]:  # a box that is not one whole person (occluded, grouped) touching a track
                    hidden.update((int(t), "odd_box") for t in np.flatnonzero(iou[:, d] > 0.05))
            for t in range(len(live)):
                if (covers_det[t] & ~odd).sum() >= 2:  # a blob splits into two people
                    ended[t] = "split"
            cost = 1.0 - iou
            cost[sorted(set(ended) | set(hidden)), :] = np.inf
            cost[:, odd] = np.inf
            pairs = linear_assignment(np.where(np.isfinite(cost), cost, 1e6), 1.0 - cfg.iou_min)
            for t, d in pairs:  # out of an occlusion: only an unambiguous match continues the track
                if live[t].hidden_frames:
                    others = np.delete(iou[t], d)
                    if others.size and others.max() >= 0.5 * iou[t, d]:
                        ended[t] = "ambiguous"
            pairs = [(t, d) for t, d in pairs if t not in ended]
        matched_dets = set()
        for t, d in pairs:
            live[t].add(dets[d], cfg.velocity_smoothing)
            live[t].hidden_frames = 0
            matched_dets.add(d)
        keep = []
        for i, t in enumerate(live):
            if i in hidden and i not in ended:
                t.hidden_frames += 1
                if t.hidden_frames > max_hidden:  # covered too long: who comes out is uncertain
                    ended[i] = hidden[i]
            if i in ended:
                end(t, ended[i])
            else:
                keep.append(t)
        live = keep
        for d, det in enumerate(dets):
            if d not in matched_dets and not odd[d]:
                live.append(_Live(Tracklet(next_id), det))
                next_id += 1
    for t in live:
        end(t, "end")
    done.sort(key=lambda tr: (tr.first_frame, tr.id))
    return done


def tracklets_from_ids(frames: list[list[Detection]], fps: float, max_gap: float = 0.5) -> list[Tracklet]:
    """Tracklets from given identities (MOT ground truth): one per identity and visible run; a gap
    longer than ``max_gap`` seconds starts a new tracklet of the same identity."""
    by_id: dict[int, list[Detection]] = {}
    for dets in frames:
        for d in dets:
            by_id.setdefault(d.track, []).append(d)
    gap = max(1, round(max_gap * fps))
    out: list[Tracklet] = []
    for ident in sorted(by_id):
        run: list[Detection] = []
        for d in sorted(by_id[ident], key=lambda x: x.frame):
            if run and d.frame - run[-1].frame > gap:
                out.append(Tracklet(len(out), run, "gap", ident))
                run = []
            run.append(d)
        if run:
            out.append(Tracklet(len(out), run, "end", ident))
    out.sort(key=lambda tr: (tr.first_frame, tr.identity or 0))
    for i, t in enumerate(out):
        t.id = i
    return out


def filter_tracklets(tracklets: list[Tracklet], cfg: TrackerConfig | None = None,
                     given_ids: bool = False, geometry: SceneGeometry | None = None
                     ) -> tuple[list[Tracklet], dict[str, int]]:
    """Drop tracklets too short, that never move, or (with ``geometry``) whose typical box is
    too wide or too tall for one person (a pair walking together); returns the kept ones
    (renumbered 0..) and the count dropped per reason."""
    cfg = cfg or TrackerConfig()
    kept, dropped = [], {"too_short": 0, "static": 0, "group": 0}
    for t in tracklets:
        if len(t) < cfg.min_frames:
            dropped["too_short"] += 1
        elif not given_ids and t.motion() < cfg.min_motion:
            dropped["static"] += 1
        elif geometry is not None and _looks_like_group(t.boxes(), geometry, cfg):
            dropped["group"] += 1
        else:
            kept.append(t)
    for i, t in enumerate(kept):
        t.id = i
    return kept, dropped


def _looks_like_group(boxes: np.ndarray, geometry: SceneGeometry, cfg: TrackerConfig) -> bool:
    h_exp = geometry.expected_height(boxes[:, 3])
    rh = np.median((boxes[:, 3] - boxes[:, 1]) / h_exp)
    rw = np.median((boxes[:, 2] - boxes[:, 0]) / (h_exp * geometry.aspect))
    return bool(rh > cfg.group_height or rw > cfg.group_width)


def summarise(tracklets: list[Tracklet]) -> dict[str, Any]:
    """Counts for the summary: tracklets, crops, duration quantiles, why tracklets ended."""
    if not tracklets:
        return {"tracklets": 0, "crops": 0}
    dur = np.array([t.duration for t in tracklets])
    reasons: dict[str, int] = {}
    for t in tracklets:
        reasons[t.end_reason] = reasons.get(t.end_reason, 0) + 1
    return {"tracklets": len(tracklets), "crops": int(sum(len(t) for t in tracklets)),
            "duration_s_median": float(np.median(dur)), "duration_s_max": float(dur.max()),
            "ended": reasons}
