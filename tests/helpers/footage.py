"""A tiny synthetic street video for the footage tests: a static textured background and walking
figures of distinct colours, with known boxes per frame (the ground truth the tests check against).

Figures (default): A walks right, B walks left on the same row (they cross mid-way), C and D
appear later; with 100 frames at 10 fps A and B are seen in frames 0-49, C and D in 55-99.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

H, W = 240, 320
FPS = 10.0


@dataclass(frozen=True)
class Figure:
    name: str
    colour: tuple[int, int, int]  # BGR of the coat
    first: int
    last: int  # inclusive
    x0: float  # left edge at ``first``
    vx: float  # pixels per frame
    y: int  # top of the head
    height: int = 64
    width: int = 22

    def box(self, frame: int) -> tuple[int, int, int, int] | None:
        if not self.first <= frame <= self.last:
            return None
        x = round(self.x0 + self.vx * (frame - self.first))
        return x, self.y, x + self.width, self.y + self.height


FIGURES = (
    Figure("A", (40, 40, 220), 0, 49, 20, 5.0, 60),  # red coat, walks right
    Figure("B", (220, 80, 30), 0, 49, 270, -5.0, 64),  # blue coat, walks left: crosses A
    Figure("C", (40, 200, 40), 55, 99, 30, 4.0, 150),  # green, lower row
    Figure("D", (30, 200, 220), 60, 99, 280, -4.0, 40),  # yellow, upper row
)


def background(seed: int = 0) -> np.ndarray:
    """A static textured scene ``(H, W, 3) uint8`` (smooth random texture, a few stripes)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = rng.integers(90, 170, size=(H // 8, W // 8, 3)).astype(np.uint8)
    bg = cv2.resize(noise, (W, H), interpolation=cv2.INTER_CUBIC)
    bg[::40] = 200
    return bg


def draw(frame: np.ndarray, fig: Figure, box: tuple[int, int, int, int]) -> None:
    """A person-like figure filling ``box``: head, coat (the figure's colour), dark trousers."""
    import cv2

    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    cv2.circle(frame, (x1 + w // 2, y1 + h // 10), max(2, h // 10), (150, 170, 200), -1)
    cv2.rectangle(frame, (x1 + 1, y1 + h // 5), (x2 - 1, y1 + 3 * h // 5), fig.colour, -1)
    cv2.rectangle(frame, (x1 + 3, y1 + 3 * h // 5), (x2 - 3, y2 - 1), (40, 30, 30), -1)


def frames(n: int = 100, figures: tuple[Figure, ...] = FIGURES, seed: int = 0):
    """Yield ``(image BGR, {name: box})`` for ``n`` frames."""
    bg = background(seed)
    rng = np.random.default_rng(seed + 1)
    for f in range(n):
        img = bg.copy()
        boxes = {}
        for fig in figures:
            b = fig.box(f)
            if b is not None:
                draw(img, fig, b)
                boxes[fig.name] = b
        img = np.clip(img.astype(np.int16) + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8)
        yield img, boxes


def make_video(path: str | Path, n: int = 100, figures: tuple[Figure, ...] = FIGURES) -> dict[int, dict]:
    """Write the video (MJPG .avi) and return the ground truth ``{frame: {name: box}}``."""
    import cv2

    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    truth = {}
    for i, (img, boxes) in enumerate(frames(n, figures)):
        writer.write(img)
        truth[i] = boxes
    writer.release()
    return truth


def make_frames(folder: str | Path, n: int = 100, figures: tuple[Figure, ...] = FIGURES,
                ext: str = ".png") -> dict[int, dict]:
    """Write frames ``000001.png ...`` (MOT numbering) and return the ground truth."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, (img, boxes) in enumerate(frames(n, figures)):
        cv2.imwrite(str(folder / f"{i + 1:06d}{ext}"), img)
        truth[i] = boxes
    return truth


def make_mot(seq: str | Path, n: int = 100, kind: str = "gt") -> dict[int, dict]:
    """A MOTChallenge sequence: img1/, seqinfo.ini and gt/gt.txt (or det/det.txt, ids -1)."""
    seq = Path(seq)
    truth = make_frames(seq / "img1", n, ext=".jpg")
    (seq / "seqinfo.ini").write_text(f"[Sequence]\nname={seq.name}\nimDir=img1\nframeRate={FPS:g}\n"
                                     f"seqLength={n}\nimWidth={W}\nimHeight={H}\nimExt=.jpg\n")
    ids = {f.name: i + 1 for i, f in enumerate(FIGURES)}
    lines = []
    for frame, boxes in truth.items():
        for name, (x1, y1, x2, y2) in boxes.items():
            tid = ids[name] if kind == "gt" else -1
            tail = "1,1,1.0" if kind == "gt" else "0.9,-1,-1,-1"
            lines.append(f"{frame + 1},{tid},{x1},{y1},{x2 - x1},{y2 - y1},{tail}")
    (seq / kind).mkdir(exist_ok=True)
    (seq / kind / f"{kind}.txt").write_text("\n".join(lines) + "\n")
    return truth


def dominant(crop_bgr: np.ndarray) -> str:
    """Which figure's coat colour is closest to the crop's most saturated pixels."""
    px = crop_bgr.reshape(-1, 3).astype(np.float64)
    sat = px.max(1) - px.min(1)
    top = px[sat >= np.percentile(sat, 85)].mean(0)
    return min(FIGURES, key=lambda f: np.linalg.norm(top - np.array(f.colour))).name
