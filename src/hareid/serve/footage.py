""""Show in footage": the frame a crop was cut from, its box drawn, and a few frames around it.

Only footage named on the server's command line is read (``hareid serve --footage PATH``,
repeatable): an item's ``source`` (the video file, frame folder or MOT sequence it was cut from)
must resolve (symlinks included) to a given file or lie under a given folder. Frames are read on
demand with OpenCV (the ``video`` extra): a video seeks to the first frame wanted, a frame folder
reads only the files wanted. What one request may cost is bounded: at most ``MAX_CONTEXT`` frames
either side, each frame at most ``Limits.max_pixels`` when decoded, and the montage at most
``MAX_MONTAGE_WIDTH`` pixels wide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hareid.errors import DataError
from hareid.index.base import Box

MAX_CONTEXT = 4  #: frames either side of the item's frame
MAX_STEP = 250  #: frames between two shown frames
MAX_MONTAGE_WIDTH = 4096  #: pixels, all frames side by side
GAP = 6


class FootageError(Exception):
    """A footage request the server refuses: ``status`` (404 / 422 / 501) and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class FootageAccess:
    """The footage a server may read: files and folders given on its command line."""

    def __init__(self, paths: Sequence[str | os.PathLike] = ()):
        self.roots: list[Path] = []
        for p in paths:
            real = Path(p).expanduser().resolve()
            if not real.exists():
                raise DataError(f"--footage {p}: no such file or folder")
            self.roots.append(real)

    def __bool__(self) -> bool:
        return bool(self.roots)

    def resolve(self, source: str) -> Path | None:
        """The real path of ``source`` when the command line allows it, else None."""
        if not source or not self.roots:
            return None
        try:
            real = Path(source).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        ok = any(real == r or (r.is_dir() and real.is_relative_to(r)) for r in self.roots)
        return real if ok else None


def _check_pixels(h: int, w: int, max_pixels: int, where: str) -> None:
    if h * w > max_pixels:
        raise FootageError(422, f"{where}: frames of {w}x{h} pixels; the limit is {max_pixels}")


def read_frames(path: Path, frames: Sequence[int], max_pixels: int) -> dict[int, np.ndarray]:
    """BGR frames ``frames`` (sorted, 0-based) of a video file, frame folder or MOT sequence;
    frames past the end are left out."""
    from hareid.footage.readers import import_cv2, open_footage

    cv2 = import_cv2()
    out: dict[int, np.ndarray] = {}
    if path.is_file():  # a video: seek once, then read forward
        cap = cv2.VideoCapture(str(path))
        try:
            if not cap.isOpened():
                raise FootageError(422, f"{path.name}: OpenCV cannot open this video")
            w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            _check_pixels(h, w, max_pixels, path.name)
            cap.set(cv2.CAP_PROP_POS_FRAMES, frames[0])
            pos = frames[0]
            for f in frames:
                while pos < f and cap.grab():
                    pos += 1
                ok, img = cap.read()
                if not ok:
                    break
                pos += 1
                out[f] = img
        finally:
            cap.release()
        return out
    try:
        src = open_footage(path)
    except DataError as e:
        raise FootageError(422, str(e).splitlines()[0]) from None
    files = getattr(src, "files", [])
    from PIL import Image

    for f in frames:
        if not 0 <= f < len(files):
            continue
        with Image.open(files[f]) as im:  # header only: the size before decoding
            _check_pixels(im.height, im.width, max_pixels, files[f].name)
        img = cv2.imread(str(files[f]), cv2.IMREAD_COLOR)
        if img is not None:
            out[f] = img
    return out


def montage(frames: dict[int, np.ndarray], centre: int, box: Box | None, width: int,
            quality: int = 85) -> bytes:
    """Frames side by side (each scaled to ``width`` px at most), the centre frame framed and its
    box drawn, frame numbers written on each; one JPEG."""
    from hareid.footage.readers import import_cv2

    cv2 = import_cv2()
    if not frames:
        raise FootageError(404, f"frame {centre} is past the end of the footage")
    width = max(16, min(width, (MAX_MONTAGE_WIDTH + GAP) // len(frames) - GAP))
    tiles = []
    for f, img in sorted(frames.items()):
        img = img.copy()
        if f == centre and box is not None:
            x1, y1, x2, y2 = (round(v) for v in box)
            thick = max(2, img.shape[1] // 240)
            cv2.rectangle(img, (x1, y1), (x2, y2), (0, 220, 255), thick)
        scale = min(1.0, width / img.shape[1])
        if scale < 1.0:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
        if f == centre:
            cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (255, 140, 40), 3)
        cv2.putText(img, f"frame {f}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3)
        cv2.putText(img, f"frame {f}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        tiles.append(img)
    h = max(t.shape[0] for t in tiles)
    canvas = np.full((h, sum(t.shape[1] for t in tiles) + GAP * (len(tiles) - 1), 3), 255, np.uint8)
    x = 0
    for t in tiles:
        canvas[: t.shape[0], x : x + t.shape[1]] = t
        x += t.shape[1] + GAP
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise FootageError(500, "could not encode the footage view")
    return buf.tobytes()


def footage_view(access: FootageAccess, source: str, frame: int, box: Box | None, *,
                 context: int = 2, step: int = 5, width: int = 480,
                 max_pixels: int = 40_000_000) -> bytes:
    """The JPEG montage of ``frame`` of ``source`` and ``context`` frames either side, ``step``
    frames apart; a :class:`FootageError` when the source is not allowed or unreadable."""
    if frame < 0:
        raise FootageError(404, "this item was not cut from footage (no frame recorded)")
    if not 0 <= context <= MAX_CONTEXT or not 1 <= step <= MAX_STEP:
        raise FootageError(422, f"context must be 0..{MAX_CONTEXT} and step 1..{MAX_STEP}")
    real = access.resolve(source)
    if real is None:
        hint = ("start the server with --footage FOLDER (repeatable) to show footage" if not access
                else "its footage is not under a --footage path of this server")
        raise FootageError(404, f"footage of this item is not available: {hint}")
    wanted = [f for f in range(frame - context * step, frame + context * step + 1, step) if f >= 0]
    return montage(read_frames(real, wanted, max_pixels), frame, box, width)
