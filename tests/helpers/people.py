"""A tiny gallery of people cut from footage, for the grouped search page and the footage view.

Two cameras watch the synthetic street of ``tests.helpers.footage``: ``east`` is a video (MJPG .avi), ``west``
a folder of frames, 60 s later. Every 5th frame, each visible figure's box is cropped; a
figure's crops on one camera form one tracklet (``"east/A"``...). Times are absolute unix
seconds. Three plain images (no tracklet, no time) sit beside them on camera ``archive``, and one
crop says it came from a video the server is not given (``hidden.avi``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hareid.index import FaissIndex
from hareid.serve import create_app, open_gallery
from hareid.serve.footage import FootageAccess
from tests.helpers.footage import FPS, frames, make_frames, make_video
from tests.helpers.serve import embedder_for
from tests.helpers.tiny import Tiny

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
CAMERAS = {"east": 0.0, "west": 60.0}  # camera -> clock offset (s)
N_FRAMES = 100


@dataclass
class People:
    folder: Path
    index_dir: Path
    video: Path  # east
    frames_dir: Path  # west
    hidden: Path  # a video not given with --footage
    meta: list[dict] = field(default_factory=list)  # one per indexed item, in id order


def build_people(tiny: Tiny, folder: Path) -> People:
    """Write the footage, cut and embed the crops, index them (once per folder)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    p = People(folder, folder / "idx", folder / "east.avi", folder / "west", folder / "hidden.avi")
    make_video(p.video, N_FRAMES)
    make_frames(p.frames_dir, N_FRAMES)
    shutil.copy(p.video, p.hidden)
    crops = folder / "crops"
    for cam, offset in CAMERAS.items():
        (crops / cam).mkdir(parents=True, exist_ok=True)
        source = p.video if cam == "east" else p.frames_dir
        for f, (img, boxes) in enumerate(frames(N_FRAMES)):
            if f % 5:
                continue
            for name, (x1, y1, x2, y2) in sorted(boxes.items()):
                path = crops / cam / f"{name}_{f:03d}.jpg"
                cv2.imwrite(str(path), img[y1:y2, x1:x2])
                p.meta.append({"path": str(path.resolve()), "camera": cam,
                               "time": T0 + offset + f / FPS, "source": str(source.resolve()),
                               "tracklet": f"{cam}/{name}", "frame": f,
                               "box": (float(x1), float(y1), float(x2), float(y2))})
    (crops / "archive").mkdir()
    for src in tiny.images("gallery")[:3]:
        path = crops / "archive" / src.name
        shutil.copy(src, path)
        p.meta.append({"path": str(path.resolve()), "camera": "archive", "time": None,
                       "source": "folder", "tracklet": "", "frame": -1, "box": None})
    hidden = dict(p.meta[0], path=str((crops / "east" / "hidden.jpg").resolve()),
                  source=str(p.hidden.resolve()), tracklet="east/hidden")
    shutil.copy(p.meta[0]["path"], hidden["path"])
    p.meta.append(hidden)
    emb = embedder_for(tiny)
    x = emb.embed([m["path"] for m in p.meta])
    index = FaissIndex(emb.dim, path=p.index_dir)
    col = {k: [m[k] for m in p.meta] for k in p.meta[0]}
    index.add(x, col["path"], None, col["camera"], col["time"], col["source"],
              tracklets=col["tracklet"], frames=col["frame"], boxes=col["box"])
    index.set_setting("root", str(crops.resolve()))
    index.close()
    return p


def people_app(tiny: Tiny, people: People, uploads: Path):
    """The app over the people gallery; footage: the east video and the west frame folder."""
    emb = embedder_for(tiny)
    gallery = open_gallery(people.index_dir, emb, uploads=uploads, images=people.folder / "crops")
    return create_app(emb, gallery, footage=FootageAccess([people.video, people.frames_dir]))


def frame_of(people: People, camera: str, frame: int) -> np.ndarray:
    """The BGR frame as the server reads it (the video decoded, or the frame file)."""
    import cv2

    if camera == "west":
        return cv2.imread(str(people.frames_dir / f"{frame + 1:06d}.png"))
    cap = cv2.VideoCapture(str(people.video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
    ok, img = cap.read()
    cap.release()
    assert ok
    return img
