"""Footage readers: a video file, a folder of frames, or a MOTChallenge sequence -> frames.

Every reader is a :class:`FrameSource`: ``name`` (used in crop names), ``fps``, ``num_frames``
(``None`` when a video does not say), and iteration over :class:`Frame` s ``(index, time, image)``
with ``image`` an ``HxWx3 uint8`` BGR array (OpenCV's order). A MOT sequence also carries its
given boxes (:attr:`MOTSequence.boxes`), used instead of a detector. Footage is only ever read.

OpenCV (``pip install 'hareid[video]'``) decodes video and frames; it is imported lazily so that
the rest of hareid works without it.
"""

from __future__ import annotations

import configparser
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hareid.errors import DataError

__all__ = [
    "VIDEO_EXTENSIONS",
    "Frame",
    "FrameFolder",
    "FrameSource",
    "GivenBox",
    "MOTSequence",
    "VideoFile",
    "container_creation_time",
    "import_cv2",
    "iso_time",
    "open_footage",
    "parse_mot_file",
    "parse_start_time",
    "set_start_time",
]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".mpg", ".mpeg", ".webm", ".m4v", ".wmv", ".ts")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTRA = "pip install 'hareid[video]'"


def import_cv2() -> Any:
    """``cv2``, or a one-line error naming the extra that installs it."""
    try:
        import cv2
    except ImportError as e:
        raise DataError(f"reading footage needs OpenCV, which is not installed; {VIDEO_EXTRA} "
                        "(opencv-python-headless)") from e
    return cv2


@dataclass(frozen=True)
class Frame:
    """One decoded frame: 0-based ``index`` in its source, ``time`` in seconds, BGR ``image``."""

    index: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8, BGR


@dataclass(frozen=True)
class GivenBox:
    """A box from a MOT file: ``track`` id (-1 for plain detections), ``box`` x1, y1, x2, y2 px."""

    track: int
    box: tuple[float, float, float, float]
    score: float = 1.0


@dataclass
class FrameSource:
    """Base class: a named sequence of frames (see module docstring)."""

    path: Path
    name: str
    fps: float
    start: int = 0  # first frame index read (inclusive)
    stop: int | None = None  # last frame index read (exclusive); None = to the end
    boxes: dict[int, list[GivenBox]] | None = field(default=None, repr=False)
    box_kind: str = "detect"  # "detect" (no boxes given), "det" or "gt"
    start_time: float = 0.0  # absolute time of frame 0, unix seconds (0 when unknown)
    start_time_from: str = "unknown (0)"  # where start_time came from (see set_start_time)

    @property
    def num_frames(self) -> int | None:  # pragma: no cover - overridden
        return None

    def frames(self, start: int | None = None, stop: int | None = None,
               step: int = 1) -> Iterator[Frame]:  # pragma: no cover - overridden
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def _range(self, start: int | None, stop: int | None) -> tuple[int, int | None]:
        lo = self.start if start is None else max(start, self.start)
        hi = self.stop if stop is None else (stop if self.stop is None else min(stop, self.stop))
        n = self.num_frames
        if n is not None:
            hi = n if hi is None else min(hi, n)
        return lo, hi

    @property
    def frames_path(self) -> Path:
        """Where frame ``i`` is read from: the video file, or the folder of frame images."""
        return self.path

    def describe(self) -> dict[str, Any]:
        """JSON-able description (written to tracklets.json); ``name`` is the camera."""
        return {"name": self.name, "camera": self.name, "path": str(self.path),
                "frames_path": str(self.frames_path), "fps": self.fps, "start": self.start,
                "stop": self.stop, "num_frames": self.num_frames, "boxes": self.box_kind,
                "start_time": self.start_time, "start_time_iso": iso_time(self.start_time),
                "start_time_from": self.start_time_from}


def _source_name(path: Path) -> str:
    name = path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-") or "footage"


# ------------------------------------------------------------------------------------------ video
class VideoFile(FrameSource):
    """A video file decoded with OpenCV (FFmpeg backend)."""

    def __init__(self, path: Path, fps: float | None = None, start: int = 0,
                 stop: int | None = None) -> None:
        cv2 = import_cv2()
        check_video_header(path)
        cap = cv2.VideoCapture(str(path))
        try:
            if cap.isOpened():  # the size the container declares, before any frame is decoded
                w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
                _check_pixels(path, w, h)
            ok, _ = cap.read() if cap.isOpened() else (False, None)
            if not ok:
                raise DataError(
                    f"{path}: cannot decode this video (OpenCV {cv2.__version__}, FFmpeg backend: "
                    f"{_has_ffmpeg(cv2)}); the file may be damaged or use a codec this OpenCV lacks: "
                    f"reinstall with {VIDEO_EXTRA} (opencv-python-headless ships FFmpeg) or convert "
                    "it: ffmpeg -i IN -c:v libx264 out.mp4")
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            rate = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        finally:
            cap.release()
        super().__init__(path, _source_name(path), float(fps or rate or 25.0), start, stop)
        self._count = count if count > 0 else None

    @property
    def num_frames(self) -> int | None:
        return self._count

    def frames(self, start: int | None = None, stop: int | None = None,
               step: int = 1) -> Iterator[Frame]:
        cv2 = import_cv2()
        lo, hi = self._range(start, stop)
        cap = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while hi is None or i < hi:
                if i < lo or (i - lo) % step:
                    if not cap.grab():
                        break
                else:
                    ok, img = cap.read()
                    if not ok:
                        break
                    yield Frame(i, i / self.fps, img)
                i += 1
        finally:
            cap.release()


#: Largest frame (width x height) hareid decodes: more than 8K video (7680x4320 = 33 Mpx).
MAX_FRAME_PIXELS = 96_000_000


def _check_pixels(path: Path, w: int, h: int) -> None:
    if w * h > MAX_FRAME_PIXELS:
        raise DataError(f"{path}: declares {w}x{h} pixels per frame, more than hareid decodes "
                        f"({MAX_FRAME_PIXELS}); scale it down first: ffmpeg -i IN -vf scale=1920:-2 out.mp4")


def _sniff_video(head: bytes) -> str | None:
    """The container a file's first bytes announce (AVI, MP4/MOV, Matroska/WebM, MPEG, ASF), else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mp4"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "matroska"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):
        return "mpeg"
    if (head[:1] == b"G" and head[188:189] == b"G") or (head[4:5] == b"G" and head[196:197] == b"G"):
        return "mpegts"
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":
        return "asf"
    return None


def _avi_size(f: Any) -> tuple[int, int] | None:
    """Width and height from an AVI's main header (``avih``), read without decoding."""
    f.seek(0)
    data = f.read(1 << 16)
    at = data.find(b"avih")
    if at < 0 or len(data) < at + 48:
        return None
    w, h = struct.unpack_from("<II", data, at + 8 + 32)
    return w, abs(h)


def check_video_header(path: Path) -> None:
    """Refuse, from its first bytes, a file that is not a video container (an image renamed .avi),
    and an AVI that declares frames larger than :data:`MAX_FRAME_PIXELS`; nothing is decoded."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            kind = _sniff_video(head)
            size = _avi_size(f) if kind == "avi" else None
    except OSError as e:
        raise DataError(f"{path}: cannot read this video ({e.strerror})") from None
    if kind is None:
        raise DataError(f"{path}: cannot decode this video: no AVI, MP4/MOV, Matroska/WebM, MPEG or ASF "
                        "header (an image or another file renamed?); pass a real video (decoded with "
                        f"{VIDEO_EXTRA}), a folder of frames or a MOT sequence folder")
    if size is not None:
        _check_pixels(path, *size)


def _has_ffmpeg(cv2: Any) -> str:
    info = cv2.getBuildInformation()
    m = re.search(r"FFMPEG:\s*(\w+)", info)
    return m.group(1) if m else "unknown"


# ----------------------------------------------------------------------------------- frame folder
def _natural_key(p: Path) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def _list_frames(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS
                   and not p.name.startswith(".")), key=_natural_key)


class FrameFolder(FrameSource):
    """A folder of frame images, in natural sort order (``frame2.png`` before ``frame10.png``)."""

    def __init__(self, path: Path, fps: float | None = None, start: int = 0, stop: int | None = None,
                 name: str | None = None, files: list[Path] | None = None) -> None:
        files = _list_frames(path) if files is None else files
        if not files:
            raise DataError(f"{path}: no frame images ({', '.join(FRAME_EXTENSIONS)}) in this folder; "
                            "pass a video file, a folder of frames or a MOT sequence (img1/ + det/det.txt)")
        super().__init__(path, name or _source_name(path), float(fps or 25.0), start, stop)
        self.files = files

    @property
    def num_frames(self) -> int:
        return len(self.files)

    @property
    def frames_path(self) -> Path:
        return self.files[0].parent

    def frames(self, start: int | None = None, stop: int | None = None,
               step: int = 1) -> Iterator[Frame]:
        cv2 = import_cv2()
        lo, hi = self._range(start, stop)
        from hareid.data.loader import image_size

        for i in range(lo, hi if hi is not None else len(self.files), step):
            image_size(str(self.files[i]), MAX_FRAME_PIXELS)  # header first: a small file can declare a huge frame
            img = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if img is None:
                raise DataError(f"{self.files[i]}: unreadable frame image; replace or remove it")
            yield Frame(i, i / self.fps, img)


# ------------------------------------------------------------------------------------ MOTChallenge
def parse_mot_file(path: Path, kind: str) -> dict[int, list[GivenBox]]:
    """``det.txt`` / ``gt.txt`` -> ``{frame index (0-based): [GivenBox]}``.

    Lines are ``frame, id, left, top, width, height, conf[, ...]`` with 1-based frames. In ``gt``
    files with 8+ columns, only rows marked active (column 7 = 1) of class 1 (pedestrian) are kept.
    A malformed line raises a DataError naming the file and line.
    """
    out: dict[int, list[GivenBox]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = [p for p in re.split(r"[,\s]+", text) if p]
            try:
                if len(parts) < 6:
                    raise ValueError("fewer than 6 fields")
                vals = [float(p) for p in parts]
                frame, track = int(vals[0]), int(vals[1])
                x, y, w, h = vals[2:6]
                if frame < 1 or w <= 0 or h <= 0 or not np.isfinite(vals).all():
                    raise ValueError("frame < 1 or box without area")
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: malformed line {text[:60]!r} ({e}); expected "
                                "'frame, id, left, top, width, height, conf, ...' with frame >= 1") from None
            conf = vals[6] if len(vals) > 6 else 1.0
            if kind == "gt" and len(vals) >= 8 and (conf == 0 or int(vals[7]) != 1):
                continue  # ignored region or not a pedestrian
            out.setdefault(frame - 1, []).append(
                GivenBox(track if kind == "gt" else -1, (x, y, x + w, y + h),
                         1.0 if kind == "gt" else conf))
    if not out:
        raise DataError(f"{path}: no boxes in this file; expected MOTChallenge lines "
                        "'frame, id, left, top, width, height, conf, ...'")
    return out


class MOTSequence(FrameFolder):
    """A MOTChallenge sequence: ``img1/`` frames, ``seqinfo.ini``, ``det/det.txt`` or ``gt/gt.txt``.

    ``boxes="auto"`` uses ground truth when present (identities given), else the detections;
    ``"det"``/``"gt"`` force one; ``"detect"`` ignores both and detects.
    """

    def __init__(self, path: Path, boxes: str = "auto", fps: float | None = None, start: int = 0,
                 stop: int | None = None) -> None:
        info = _read_seqinfo(path / "seqinfo.ini")
        img_dir = path / info.get("imdir", "img1")
        rate = fps or _float(info.get("framerate")) or 25.0
        super().__init__(img_dir, rate, start, stop, name=_source_name(path))
        self.path = path
        gt, det = path / "gt" / "gt.txt", path / "det" / "det.txt"
        if boxes == "auto":
            boxes = "gt" if gt.is_file() else "det" if det.is_file() else "detect"
        if boxes in ("gt", "det"):
            file = gt if boxes == "gt" else det
            if not file.is_file():
                raise DataError(f"{file}: not found; this MOT sequence has no {boxes} boxes "
                                "(use --boxes auto or detect)")
            self.boxes = parse_mot_file(file, boxes)
        elif boxes != "detect":
            raise DataError(f"unknown --boxes {boxes!r}; choose auto, gt, det or detect")
        self.box_kind = boxes


def _read_seqinfo(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    cp = configparser.ConfigParser()
    try:
        cp.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise DataError(f"{path}: unreadable seqinfo.ini ({str(e).splitlines()[0]})") from None
    return {k.lower(): v for k, v in (cp["Sequence"].items() if cp.has_section("Sequence") else [])}


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


def is_mot_sequence(path: Path) -> bool:
    return path.is_dir() and (path / "img1").is_dir() and (
        (path / "det" / "det.txt").is_file() or (path / "gt" / "gt.txt").is_file()
        or (path / "seqinfo.ini").is_file())


# ------------------------------------------------------------------------------------------- open
def open_footage(path: str | os.PathLike, fps: float | None = None, start: int = 0,
                 stop: int | None = None, boxes: str = "auto") -> FrameSource:
    """A :class:`FrameSource` for a video file, a frames folder or a MOT sequence folder.

    ``start``/``stop`` restrict the frames read (0-based, ``stop`` exclusive); ``fps`` overrides the
    frame rate (videos and ``seqinfo.ini`` carry their own; a frames folder defaults to 25).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder; pass a video file, a folder of frames or a "
                        "MOT sequence folder")
    if start < 0 or (stop is not None and stop <= start):
        raise DataError(f"{p}: empty frame range start={start} stop={stop}")
    if p.is_file():
        if p.suffix.lower() not in VIDEO_EXTENSIONS:
            raise DataError(f"{p}: not a video file (extensions {', '.join(VIDEO_EXTENSIONS)}); pass a "
                            "video, a folder of frames or a MOT sequence folder")
        return VideoFile(p, fps, start, stop)
    if is_mot_sequence(p):
        return MOTSequence(p, boxes, fps, start, stop)
    if boxes in ("gt", "det"):
        raise DataError(f"{p}: --boxes {boxes} needs a MOT sequence (img1/ + {boxes}/{boxes}.txt)")
    return FrameFolder(p, fps, start, stop)


# ------------------------------------------------------------------------------- absolute time
_MP4_EPOCH = 2082844800  # seconds from 1904-01-01 (QuickTime / MP4 epoch) to 1970-01-01
_MP4_EXTENSIONS = (".mp4", ".mov", ".m4v", ".3gp")


def parse_start_time(text: str) -> float:
    """``--start-time``: ISO 8601 (``2024-05-01T08:30:00+02:00``, ``...Z``; no offset = UTC) or
    unix seconds -> unix seconds. A DataError names the value and the accepted forms."""
    from datetime import datetime, timezone

    value = str(text).strip()
    try:
        t = float(value)
    except ValueError:
        try:
            dt = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
        except ValueError:
            raise DataError(f"--start-time {text!r}: not a time; give ISO 8601 (e.g. "
                            "2024-05-01T08:30:00+02:00, or ...Z for UTC) or unix seconds") from None
        t = (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    if not np.isfinite(t):
        raise DataError(f"--start-time {text!r}: not a finite time")
    return float(t)


def iso_time(t: float) -> str:
    """Unix seconds -> ISO 8601 in UTC (``1970-01-01T00:00:00+00:00`` for 0)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat()


def container_creation_time(path: str | os.PathLike) -> float | None:
    """The creation time (unix seconds) an MP4/MOV file records in ``moov/mvhd``, or ``None``
    (another container, no ``mvhd``, a zero time, or an unreadable file). Reads box headers only."""
    p = Path(path)
    if p.suffix.lower() not in _MP4_EXTENSIONS:
        return None
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            moov = _find_box(f, 0, size, b"moov")
            if moov is None:
                return None
            mvhd = _find_box(f, moov[0], moov[1], b"mvhd")
            if mvhd is None:
                return None
            f.seek(mvhd[0])
            head = f.read(12)
            if len(head) < 8:
                return None
            ct = int.from_bytes(head[4:12], "big") if head[0] == 1 else int.from_bytes(head[4:8], "big")
    except OSError:
        return None
    return float(ct - _MP4_EPOCH) if ct > 0 else None


def _find_box(f: Any, lo: int, hi: int, kind: bytes) -> tuple[int, int] | None:
    """``(payload start, payload end)`` of the first ISO-BMFF box ``kind`` between ``lo`` and ``hi``."""
    pos = lo
    while pos + 8 <= hi:
        f.seek(pos)
        head = f.read(8)
        if len(head) < 8:
            return None
        n, typ, start = int.from_bytes(head[:4], "big"), head[4:8], pos + 8
        if n == 1:  # 64-bit size follows
            big = f.read(8)
            if len(big) < 8:
                return None
            n, start = int.from_bytes(big, "big"), pos + 16
        elif n == 0:  # to the end of the enclosing box
            n = hi - pos
        if n < start - pos:
            return None  # damaged
        if typ == kind:
            return start, min(pos + n, hi)
        pos += n
    return None


def set_start_time(src: FrameSource, given: str | None) -> FrameSource:
    """Give ``src`` its absolute start: ``given`` (``--start-time``), else the container's creation
    time (MP4/MOV ``mvhd``), else 0; ``start_time_from`` says which."""
    if given is not None:
        src.start_time, src.start_time_from = parse_start_time(given), "--start-time"
    elif (ct := container_creation_time(src.path) if src.path.is_file() else None) is not None:
        src.start_time, src.start_time_from = ct, "container creation time"
    else:
        src.start_time, src.start_time_from = 0.0, "unknown (0)"
    return src
