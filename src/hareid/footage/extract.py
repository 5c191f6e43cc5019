"""Footage -> tracklets folder: read, detect (or take given boxes), associate, filter, write.

:func:`extract_tracklets` runs each source in one decoding pass (after a short background warm-up):
every candidate box is cropped into a temporary folder beside the output as it is found; after
tracking and filtering, the crops of kept tracklets are renamed into place, the rest deleted, and
the finished folder is renamed to ``out`` in one step. So a failure (no person found, a bad MOT
line, Ctrl-C) leaves nothing behind, and the footage is only ever read.

Output layout (the ``tracklets`` dataset layout, read by :mod:`hareid.data.tracklets`)::

    OUT/tracklets.json                 sources (one camera each: name, path, start time and where
                                       it came from), parameters, and per tracklet (key
                                       "<camera>/<nnnn>") its crops: file, mask, frame, time (s
                                       into the source), abs_time (unix s), camera, source_path
                                       (video or frame folder), tracklet key, box, crop box
    OUT/crops/<camera>/<nnnn>/<camera>_<nnnn>_<frame>.jpg
    OUT/masks/<camera>/<nnnn>/<camera>_<nnnn>_<frame>.png   foreground masks (MOG2 only)
    OUT/summary.txt                    one line per tracklet, and totals
    OUT/contact_sheet.jpg              one row per tracklet: crops spread over its life
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import DataError, HareidError
from hareid.fileio import ensure_disjoint, umask_mode
from hareid.footage.detect import build_detector
from hareid.footage.masks import person_mask
from hareid.footage.readers import FrameSource, import_cv2, open_footage, set_start_time
from hareid.footage.track import (
    Detection,
    TrackerConfig,
    Tracklet,
    associate,
    filter_tracklets,
    fit_scene_geometry,
    summarise,
    tracklets_from_ids,
)
from hareid.progress import progress as progress_bar

__all__ = ["FORMAT", "ExtractConfig", "SourceResult", "extract_tracklets", "open_sources",
           "prepare_output"]

FORMAT = "hareid-tracklets"


@dataclass
class ExtractConfig:
    """Settings of :func:`extract_tracklets` (the ``hareid tracklets`` options)."""

    detector: str = "mog2"  # mog2 | hog (ignored where a MOT sequence gives boxes)
    boxes: str = "auto"  # MOT sequences: auto (gt, else det) | gt | det | detect
    fps: float | None = None  # override the frame rate (a frames folder defaults to 25)
    start: int = 0  # first frame (0-based)
    stop: int | None = None  # stop before this frame
    pad: float = 0.08  # crop margin on each side, as a fraction of the box height
    masks: bool | None = None  # foreground masks; None = with the mog2 detector only
    min_frames: int = 8
    min_motion: float = 0.3
    max_gap: float = 0.5
    iou_min: float = 0.2
    min_height: float = 0.07  # smallest person, fraction of the frame height (detectors)
    jpeg_quality: int = 95
    cameras: list[str] | None = None  # camera name per source, in order (default: the file stem)
    start_times: list[str] | None = None  # absolute start per source (ISO 8601 or unix seconds)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        self.tracker = TrackerConfig(iou_min=self.iou_min, max_gap=self.max_gap,
                                     min_frames=self.min_frames, min_motion=self.min_motion)


@dataclass
class SourceResult:
    """What one source gave: its description, kept tracklets, and the counts behind them."""

    source: dict[str, Any]
    tracklets: list[Tracklet]
    stats: dict[str, Any]
    crop_dir: Path  # temporary folder of candidate crops


def prepare_output(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``out`` can be written before any work is done; returns it absolute."""
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise HareidError(f"{out}: already exists and is not empty; pass --overwrite or another --out")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HareidError(f"{parent}: cannot create the output folder ({e.strerror}); pick another --out") from None
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise HareidError(f"{out}: the output folder is not writable (read-only); pick another --out")
    return out


def _clip_box(box: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.array([max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])],
                    np.float32)


def _crop_box(box: np.ndarray, pad: float, w: int, h: int) -> tuple[int, int, int, int]:
    m = pad * float(box[3] - box[1])
    x1, y1 = int(np.floor(max(0.0, box[0] - m))), int(np.floor(max(0.0, box[1] - m)))
    x2, y2 = int(np.ceil(min(float(w), box[2] + m))), int(np.ceil(min(float(h), box[3] + m)))
    return x1, y1, x2, y2


def _warmup_frames(src: FrameSource, n: int):
    lo = src.start
    hi = src.stop if src.stop is not None else src.num_frames
    span = (hi - lo) if hi is not None else 4 * n
    step = max(1, span // max(n, 1))
    return (f.image for f in src.frames(lo, lo + span, step))


def _process_source(src: FrameSource, cfg: ExtractConfig, work: Path, progress: bool) -> SourceResult:
    """One decoding pass over ``src``: candidate crops to ``work``, then tracking and filtering."""
    cv2 = import_cv2()
    given = src.boxes is not None
    want_masks = cfg.masks if cfg.masks is not None else (not given and cfg.detector == "mog2")
    detector = None
    if not given or want_masks:
        kw: dict[str, Any] = {"min_height": cfg.min_height} if (cfg.detector == "mog2" or given) else {}
        detector = build_detector("mog2" if given else cfg.detector, **kw)
        if getattr(detector, "warmup_frames", 0):
            detector.warm_up(_warmup_frames(src, detector.warmup_frames))
    if want_masks and not hasattr(detector, "foreground"):  # masks come from background subtraction
        mask_model = build_detector("mog2", min_height=cfg.min_height)
        mask_model.warm_up(_warmup_frames(src, mask_model.warmup_frames))
    else:
        mask_model = detector if want_masks else None
    work.mkdir(parents=True)
    frames: list[list[Detection]] = []
    frame_size = None
    n_boxes = 0
    lo, hi = src._range(None, None)
    total = (hi - lo) if hi is not None else None
    tic = time.perf_counter()
    for fr in progress_bar(src.frames(), total=total, desc=f"{src.name}: frames", unit="frame",
                           enabled=progress, leave=False):
        img = fr.image
        h, w = img.shape[:2]
        frame_size = (w, h)
        fg = None
        if given:
            gb = src.boxes.get(fr.index, [])  # type: ignore[union-attr]
            boxes = np.asarray([b.box for b in gb], np.float32).reshape(-1, 4)
            ids = [b.track for b in gb]
            scores = [b.score for b in gb]
            if mask_model is not None:
                fg = mask_model.foreground(img)
        else:
            boxes, fg = detector(img)  # type: ignore[misc]
            ids, scores = [-1] * len(boxes), [1.0] * len(boxes)
            if mask_model is not None and mask_model is not detector:
                fg = mask_model.foreground(img)
        dets = []
        for box, ident, score in zip(boxes, ids, scores):
            box = _clip_box(box, w, h)
            if box[2] - box[0] < 2 or box[3] - box[1] < 4:
                continue
            edge = box[0] <= 1 or box[1] <= 1 or box[2] >= w - 1 or box[3] >= h - 1
            key = n_boxes
            n_boxes += 1
            cb = _crop_box(box, cfg.pad, w, h)
            ok = cv2.imwrite(str(work / f"{key}.jpg"), img[cb[1]:cb[3], cb[0]:cb[2]],
                             [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            if not ok:
                raise HareidError(f"{work}: cannot write crops here; pick another --out")
            if fg is not None:
                cv2.imwrite(str(work / f"{key}.png"), person_mask(fg, cb, box))
            dets.append(Detection(fr.index, fr.time, box, key, float(score), int(ident), bool(edge), cb))
        frames.append(dets)
    elapsed = time.perf_counter() - tic
    n_frames = len(frames)
    if n_frames == 0:
        raise DataError(f"{src.path}: no frames in the range start={src.start} stop={src.stop}")
    all_dets = [d for ds in frames for d in ds]
    geometry = None
    if not given:  # a static camera: flag boxes that do not fit one whole person where they stand
        whole = [d for d in all_dets if not d.odd]
        geometry = fit_scene_geometry(np.stack([d.box for d in whole])) if whole else None
        if geometry is not None:
            odd = geometry.is_odd(np.stack([d.box for d in whole]))
            for d, o in zip(whole, odd):
                d.odd = bool(o)
    if given and src.box_kind == "gt":
        raw = tracklets_from_ids(frames, src.fps, cfg.max_gap)
        for t in raw:  # ground truth: a box at the border is still one person; cut-off crops out
            t.detections = [d for d in t.detections if not d.odd] or t.detections
    else:
        raw = associate(frames, src.fps, cfg.tracker)
    kept, dropped = filter_tracklets(raw, cfg.tracker, given_ids=src.box_kind == "gt",
                                    geometry=geometry)
    desc = src.describe()
    desc.update(frame_size=list(frame_size or (0, 0)), detector=None if given else cfg.detector,
                masks=bool(mask_model is not None),
                geometry=geometry.to_dict() if geometry is not None else None)
    stats = {"frames": n_frames, "boxes": n_boxes, "odd_boxes": int(sum(d.odd for d in all_dets)),
             "raw_tracklets": len(raw), "dropped": dropped, "seconds": round(elapsed, 2),
             "ms_per_frame": round(1000 * elapsed / n_frames, 2), **summarise(kept)}
    return SourceResult(desc, kept, stats, work)


def extract_tracklets(footage: Sequence[str | os.PathLike], out: str | os.PathLike,
                      cfg: ExtractConfig | None = None, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Write the tracklets of every footage path into ``out`` (see module docstring).

    Returns the summary dict (also in ``tracklets.json``). Raises :class:`DataError` when no person
    is found in any source (nothing is written then).
    """
    cfg = cfg or ExtractConfig()
    if not footage:
        raise DataError("no footage given; pass video files, frame folders or MOT sequence folders")
    ensure_disjoint(out, footage)  # footage is only read: --out may not be, hold or sit inside it
    sources = open_sources(footage, cfg)
    out = prepare_output(out, overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, umask_mode(folder=True))  # the finished folder gets the umask's permissions, not 0700
    except OSError as e:
        raise HareidError(f"{out.parent}: cannot write here ({e.strerror}); pick another --out") from None
    try:
        results = [_process_source(s, cfg, tmp / "candidates" / s.name, progress) for s in sources]
        if not any(r.tracklets for r in results):
            counts = "; ".join(f"{r.source['name']}: {r.stats['boxes']} boxes in {r.stats['frames']} "
                               f"frames, {r.stats['raw_tracklets']} tracks before filters" for r in results)
            raise DataError(f"no person found in {', '.join(str(p) for p in footage)} ({counts}); "
                            "nothing written. A moving camera needs given boxes (MOT det/det.txt); "
                            "short clips may need a lower --min-frames")
        meta = _finish(results, cfg, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


_CAMERA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def open_sources(footage: Sequence[str | os.PathLike], cfg: ExtractConfig) -> list[FrameSource]:
    """Open every footage path as one camera: its name (``cfg.cameras`` in order, else the file
    stem) and absolute start (``cfg.start_times``, else the MP4/MOV creation time, else 0).
    Unequal counts, a bad or clashing name, an unparseable time or unreadable footage raise
    one DataError before anything is written."""
    n = len(footage)
    for opt, given in (("--camera", cfg.cameras), ("--start-time", cfg.start_times)):
        if given is not None and len(given) != n:
            raise DataError(f"{len(given)} {opt} values for {n} footage sources; give one {opt} per "
                            "source, in the order of the sources")
    for name in cfg.cameras or []:
        if not _CAMERA_NAME.fullmatch(name) or len(name) > 100:
            raise DataError(f"--camera {name!r}: a camera name is 1-100 letters, digits, '.', '_' "
                            "or '-' (it names folders and files); pick another")
    sources = [open_footage(p, cfg.fps, cfg.start, cfg.stop, cfg.boxes) for p in footage]
    seen: dict[str, FrameSource] = {}
    for i, s in enumerate(sources):
        if cfg.cameras is not None:
            s.name = cfg.cameras[i]
        if s.name in seen:
            raise DataError(f"camera name {s.name!r} given to both {seen[s.name].path} and {s.path}; "
                            "each source is one camera: name them with --camera NAME per source")
        seen[s.name] = s
        set_start_time(s, cfg.start_times[i] if cfg.start_times is not None else None)
    return sources


def _finish(results: list[SourceResult], cfg: ExtractConfig, tmp: Path) -> dict[str, Any]:
    """Rename kept crops into place, delete the rest, write JSON, summary and contact sheet."""
    tracklets_json = []
    for r in results:
        name = r.source["name"]  # the camera
        start, frames_path = float(r.source["start_time"]), r.source["frames_path"]
        for t in r.tracklets:
            tid = f"{t.id:04d}"
            key = f"{name}/{tid}"  # the global tracklet key
            crops = []
            for d in t.detections:
                stem = f"{name}_{tid}_{d.frame:06d}"
                rel = Path("crops") / name / tid / f"{stem}.jpg"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(r.crop_dir / f"{d.key}.jpg", tmp / rel)
                entry: dict[str, Any] = {"file": rel.as_posix(), "frame": d.frame,
                                         "time": round(d.time, 4),
                                         "abs_time": round(start + d.time, 4), "camera": name,
                                         "source_path": frames_path, "tracklet": key,
                                         "box": [round(float(v), 1) for v in d.box],
                                         "crop_box": list(d.crop_box or ())}
                mask = r.crop_dir / f"{d.key}.png"
                if mask.is_file():
                    mrel = Path("masks") / name / tid / f"{stem}.png"
                    (tmp / mrel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(mask, tmp / mrel)
                    entry["mask"] = mrel.as_posix()
                crops.append(entry)
            tracklets_json.append({"id": f"{name}-{tid}", "key": key, "camera": name,
                                   "source": name, "index": t.id,
                                   "start_time": round(start + t.detections[0].time, 4),
                                   "end_time": round(start + t.detections[-1].time, 4),
                                   "identity": t.identity, "first_frame": t.first_frame,
                                   "last_frame": t.last_frame, "duration": round(t.duration, 3),
                                   "end_reason": t.end_reason, "crops": crops})
    shutil.rmtree(tmp / "candidates")
    from hareid import __version__

    params = {k: v for k, v in asdict(cfg).items() if k != "tracker"}
    meta = {"format": FORMAT, "version": 1, "created_by": f"hareid {__version__}", "params": params,
            "sources": [{**r.source, "stats": r.stats} for r in results], "tracklets": tracklets_json}
    (tmp / "tracklets.json").write_text(json.dumps(meta, indent=1))
    (tmp / "summary.txt").write_text(summary_table(meta) + "\n")
    from hareid.footage.sheet import contact_sheet

    contact_sheet(tmp, meta, tmp / "contact_sheet.jpg")
    return meta


def summary_table(meta: dict[str, Any], max_rows: int | None = None) -> str:
    """Totals per source, then one line per tracklet (``max_rows`` limits those lines)."""
    lines = []
    for s in meta["sources"]:
        st = s["stats"]
        if "start_time_iso" in s:
            lines.append(f"camera {s['name']}: {s['path']}, starts {s['start_time_iso']} "
                         f"(from {s['start_time_from']})")
        lines.append(f"source {s['name']}: {st['frames']} frames at {s['fps']:g} fps, boxes "
                     f"{'given (' + s['boxes'] + ')' if s['boxes'] != 'detect' else 'detected (' + str(s['detector']) + ')'}, "
                     f"{st['boxes']} boxes ({st['odd_boxes']} not one whole person), "
                     f"{st['raw_tracklets']} tracks -> {st.get('tracklets', 0)} tracklets kept "
                     f"(dropped: {', '.join(f'{k} {v}' for k, v in st['dropped'].items())}), "
                     f"{st['ms_per_frame']:.1f} ms/frame")
    rows = meta["tracklets"]
    lines += ["", f"{'tracklet':<22} {'frames':>13} {'seconds':>8} {'crops':>6} {'box h':>6}  ended by",
              "-" * 70]
    for t in rows[:max_rows]:
        h = np.median([c["box"][3] - c["box"][1] for c in t["crops"]])
        lines.append(f"{t['id']:<22} {t['first_frame']:>6}-{t['last_frame']:<6} {t['duration']:>8.1f} "
                     f"{len(t['crops']):>6} {h:>6.0f}  {t['end_reason']}")
    if max_rows is not None and len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more (summary.txt lists all)")
    n_crops = sum(len(t["crops"]) for t in rows)
    lines.append(f"total: {len(rows)} tracklets, {n_crops} crops")
    return "\n".join(lines)
