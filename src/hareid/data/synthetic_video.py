"""A synthetic multi-camera sequence with ground truth: people walking along one street, seen by
2-4 static cameras (``hareid synthetic ROOT --video``).

The world is a straight street (x in metres). Camera ``k`` sees the stretch ``[x0, x1]``
(:func:`camera_layout`): cameras 0 and 1 overlap by 3 m, camera 2 starts 8 m after camera 1 (a
disjoint view), camera 3 overlaps camera 2; odd cameras look from the other side of the street
(mirrored: people walk the other way in the picture and show their other side). Each camera
records ``frames`` frames from its own start time (``k * 3`` s after camera 0), with its own
street scene (:func:`hareid.data.synthetic_v2._scene`) and colour response (light, white balance,
contrast, saturation, sensor noise). People (identities drawn by the v2 renderer,
:func:`hareid.data.synthetic_v2._draw_person`, walking phase from the distance walked) walk the
street at 1.1-1.6 m/s in one of two directions, on a lane (depth: farther = higher in the picture
and smaller); their start times are spread so that some cross every camera and some only part.

Written per camera (``ROOT/<camera>/``), MOTChallenge style: ``img1/000001.jpg ...`` (or with
``fmt="video"`` one MJPG ``<camera>.avi``), ``seqinfo.ini`` and ``gt/gt.txt`` with lines
``frame,id,x,y,w,h,1,1,visibility``: 1-based frames, GLOBAL person ids (one person keeps its id in
every camera), the tight box of the drawn silhouette (clipped to the frame) and the share of it
not hidden by people in front. ``ROOT/cameras.json`` lists cameras (name, path, absolute start
time, street stretch, mirrored) and people. Deterministic in ``seed``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hareid.errors import HareidError
from hareid.fileio import atomic_folder

__all__ = ["VideoCamera", "Walker", "camera_layout", "make_world", "render_frame",
           "write_synthetic_video"]

FORMAT = "hareid-synthetic-video"
EPOCH = 1714550400.0  # 2024-05-01T08:00:00Z: camera 0 starts here
VIEW_WIDTH = 10.0  # metres of street a camera sees


@dataclass(frozen=True)
class VideoCamera:
    """One static camera: the street stretch ``[x0, x1]`` it sees, its start (s after camera 0)."""

    name: str
    x0: float
    x1: float
    offset: float
    mirror: bool
    scene: int  # index of the v2 street scene behind it
    brightness: float
    cast: tuple[float, float, float]
    contrast: float
    saturation: float
    noise: float


@dataclass(frozen=True)
class Walker:
    """One person: global ``id`` (from 1), where and when they start, direction, speed, lane."""

    id: int
    t0: float  # world time (s after camera 0's start) at x = ``x_start``
    x_start: float
    direction: int  # +1 walks to larger x, -1 to smaller
    speed: float  # m/s
    lane: float  # 0 = far side of the street, 1 = near side
    stride: float  # metres per walking cycle

    def x(self, t: float) -> float:
        return self.x_start + self.direction * self.speed * (t - self.t0)


def camera_layout(num_cams: int) -> list[tuple[float, float]]:
    """Street stretches ``(x0, x1)``: pairs of overlapping views, 8 m between the pairs."""
    out = []
    for k in range(num_cams):
        x0 = (k // 2) * 25.0 + (k % 2) * 7.0
        out.append((x0, x0 + VIEW_WIDTH))
    return out


@dataclass
class World:
    """Everything a frame needs: parameters, cameras, people, identities, backgrounds."""

    seed: int
    height: int
    width: int
    fps: float
    frames: int
    cameras: list[VideoCamera]
    walkers: list[Walker]
    identities: dict[int, dict[str, Any]]
    backgrounds: list[np.ndarray]  # per camera, (H, W, 3) float32 RGB, before the colour response


def make_world(seed: int = 0, num_cams: int = 3, num_people: int = 8, frames: int = 300,
               height: int = 360, width: int = 640, fps: float = 10.0,
               hard_negative_frac: float = 0.0, walkers: list[Walker] | None = None) -> World:
    """The cameras, people and backgrounds of a sequence (deterministic in ``seed``);
    ``walkers`` replaces the random people (tests)."""
    from hareid.data.synthetic_v2 import NUM_SCENES, _scene, make_cameras, make_identities

    if not 1 <= num_cams <= 8 or num_people < 1 or frames < 2 or height < 64 or width < 64 or fps <= 0:
        raise HareidError(f"synthetic video: need 1-8 cameras, 1+ people, 2+ frames, 64+ px sides and "
                          f"fps > 0 (got {num_cams} cameras, {num_people} people, {frames} frames, "
                          f"{width}x{height}, {fps} fps)")
    rng = np.random.default_rng([seed, 40])
    looks = make_cameras(seed, num_cams)
    scenes = rng.choice(NUM_SCENES, size=num_cams, replace=num_cams > NUM_SCENES)
    cams = []
    for k, ((x0, x1), look) in enumerate(zip(camera_layout(num_cams), looks)):
        cams.append(VideoCamera(f"cam{k}", x0, x1, 3.0 * k, bool(k % 2), int(scenes[k]),
                                float(np.clip(look.brightness, 0.85, 1.1)),
                                tuple(float(c) for c in look.cast), look.contrast,  # type: ignore[arg-type]
                                look.saturation, float(min(look.noise, 3.0))))
    lo, hi = min(c.x0 for c in cams) - 1.0, max(c.x1 for c in cams) + 1.0
    duration = frames / fps + 3.0 * (num_cams - 1)
    walkers_ = []
    for i in range(num_people):
        speed = float(rng.uniform(1.1, 1.6))
        direction = 1 if i % 2 == 0 else -1
        # spread starts over [-half a crossing, the end]: some cross everything, some only part
        t0 = float(rng.uniform(-0.5 * (hi - lo) / speed, duration - 2.0))
        walkers_.append(Walker(i + 1, t0, lo if direction > 0 else hi, direction, speed,
                              float(rng.uniform(0.0, 1.0)), float(rng.uniform(1.3, 1.6))))
    walkers = list(walkers) if walkers is not None else walkers_
    identities = make_identities(seed, [w.id for w in walkers], hard_negative_frac)
    backgrounds = [np.asarray(_scene(seed, c.scene, height, width), np.float32) for c in cams]
    return World(seed, height, width, fps, frames, cams, walkers, identities, backgrounds)


def _project(world: World, cam: VideoCamera, w: Walker, t: float) -> tuple[float, float, float, str] | None:
    """``(centre x, feet y, height u, view)`` in pixels of walker ``w`` at world time ``t`` in
    ``cam``, or ``None`` when out of the view (with half a person's width of margin)."""
    H, W = world.height, world.width
    x = w.x(t)
    u = H * (0.24 + 0.18 * w.lane)
    rel = (x - cam.x0) / (cam.x1 - cam.x0)
    if cam.mirror:
        rel = 1.0 - rel
    cx = rel * W
    if cx < -0.3 * u or cx > W + 0.3 * u:
        return None
    feet = H * (0.72 + 0.24 * w.lane)
    moving_right = (w.direction > 0) != cam.mirror
    return cx, feet, u, "right" if moving_right else "left"


def _person_layer(world: World, w: Walker, u: float, view: str, t: float) -> tuple[np.ndarray, float, float]:
    """The walker drawn alone: RGBA float32 ``(h, w, 4)`` (alpha 0-1) and where its canvas origin
    sits relative to (centre x, feet y)."""
    from hareid.data.synthetic_v2 import SS, _draw_person, _Pose

    ident = world.identities[w.id]
    ch, cw = math.ceil(u * 1.08) + 2, math.ceil(u * 0.9) + 2
    distance = abs(w.x(t) - w.x_start)
    phase = 2 * math.pi * distance / w.stride
    pose = _Pose(cw * SS / 2, (ch - 1) * SS, u * SS * ident.get("build_h", 1.0),
                 float(ident.get("build_w", 1.0)), view, phase)
    layer, _ = _draw_person(ident, (cw * SS, ch * SS), pose)
    arr = np.asarray(layer.resize((cw, ch), Image.Resampling.BOX), np.float32)
    arr[..., 3] /= 255.0
    return arr, -cw / 2, -(ch - 1)


def render_frame(world: World, cam_index: int, frame: int, people: bool | set[int] = True
                 ) -> tuple[np.ndarray, dict[int, tuple[tuple[int, int, int, int], float]]]:
    """Frame ``frame`` (0-based) of camera ``cam_index``: BGR ``uint8 (H, W, 3)`` and per drawn
    person ``id -> ((x1, y1, x2, y2), visibility)`` (the tight box of the silhouette in the frame,
    x2/y2 exclusive). ``people``: ``False`` draws nobody, a set draws only those ids; noise and
    light are the same either way (for checking boxes against pixels)."""
    cam = world.cameras[cam_index]
    H, W = world.height, world.width
    t = cam.offset + frame / world.fps
    img = world.backgrounds[cam_index].copy()
    drawn = []
    for w in world.walkers:
        if people is False or (isinstance(people, set) and w.id not in people):
            continue
        where = _project(world, cam, w, t)
        if where is not None:
            drawn.append((where[1], w, where))
    owner = np.zeros((H, W), np.int32)  # which person a pixel shows (0: background)
    found: dict[int, tuple[tuple[int, int, int, int], int]] = {}
    for _, w, (cx, feet, u, view) in sorted(drawn, key=lambda d: d[0]):  # far (higher) first
        arr, ox, oy = _person_layer(world, w, u, view, t)
        x, y = round(cx + ox), round(feet + oy)
        h, wd = arr.shape[:2]
        fx1, fy1, fx2, fy2 = max(0, x), max(0, y), min(W, x + wd), min(H, y + h)
        if fx1 >= fx2 or fy1 >= fy2:
            continue
        part = arr[fy1 - y:fy2 - y, fx1 - x:fx2 - x]
        a = part[..., 3:4]
        img[fy1:fy2, fx1:fx2] = img[fy1:fy2, fx1:fx2] * (1 - a) + part[..., :3] * a
        solid = part[..., 3] >= 0.5
        owner[fy1:fy2, fx1:fx2][solid] = w.id
        inside, total = int(solid.sum()), int((arr[..., 3] >= 0.5).sum())
        if total and inside >= 0.3 * total:  # at least 30 % of the person in the frame
            ys, xs = np.nonzero(solid)
            found[w.id] = ((fx1 + int(xs.min()), fy1 + int(ys.min()), fx1 + int(xs.max()) + 1,
                            fy1 + int(ys.max()) + 1), inside)
    # visibility: the share of the in-frame silhouette not covered by people in front
    boxes = {pid: (box, round(float((owner == pid).sum()) / n, 3)) for pid, (box, n) in found.items()}
    # the camera's colour response and sensor noise (same draws with or without people)
    grey = img.mean(axis=2, keepdims=True)
    img = grey + (img - grey) * cam.saturation
    img = ((img - 128) * cam.contrast + 128) * cam.brightness * np.asarray(cam.cast, np.float32)
    rng = np.random.default_rng([world.seed, 41, cam_index, frame])
    img = img + cam.noise * rng.standard_normal(img.shape, np.float32)
    rgb = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1]), boxes


def write_synthetic_video(root: str | os.PathLike, *, seed: int = 0, num_cams: int = 3,
                          num_people: int = 8, frames: int = 300, height: int = 360,
                          width: int = 640, fps: float = 10.0, fmt: str = "frames",
                          hard_negative_frac: float = 0.0, overwrite: bool = False,
                          progress: bool = True, walkers: list[Walker] | None = None) -> dict[str, Any]:
    """Write the sequence to ``root`` (see module docstring); returns ``cameras.json``'s content.

    ``fmt``: ``"frames"`` (MOT sequences, ``img1/*.jpg``) or ``"video"`` (``<camera>.avi``, MJPG).
    Written beside ``root`` and renamed into place: nothing is left behind on an error.
    """
    import cv2

    from hareid.progress import progress as progress_bar

    if fmt not in ("frames", "video"):
        raise HareidError(f"synthetic video format {fmt!r}: choose frames or video")
    out = Path(root).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise HareidError(f"{out}: already exists and is not empty; pass --overwrite or another folder")
    world = make_world(seed, num_cams, num_people, frames, height, width, fps, hard_negative_frac, walkers)
    with atomic_folder(out) as tmp:
        cams_json = []
        bar = progress_bar(total=num_cams * frames, desc="synthetic video", unit="frame", enabled=progress)
        for k, cam in enumerate(world.cameras):
            d = tmp / cam.name
            (d / "gt").mkdir(parents=True)
            writer = None
            if fmt == "video":
                writer = cv2.VideoWriter(str(d / f"{cam.name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"),
                                         fps, (width, height))
                if not writer.isOpened():
                    raise HareidError(f"{d}: OpenCV cannot write MJPG video here; use --format frames")
            else:
                (d / "img1").mkdir()
            lines = []
            seen: set[int] = set()
            for f in range(frames):
                img, boxes = render_frame(world, k, f)
                if writer is not None:
                    writer.write(img)
                elif not cv2.imwrite(str(d / "img1" / f"{f + 1:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92]):
                    raise HareidError(f"{d / 'img1'}: cannot write frames here; pick another folder")
                for pid, ((x1, y1, x2, y2), vis) in sorted(boxes.items()):
                    lines.append(f"{f + 1},{pid},{x1},{y1},{x2 - x1},{y2 - y1},1,1,{vis:g}\n")
                    seen.add(pid)
                bar.update(1)
            if writer is not None:
                writer.release()
            (d / "gt" / "gt.txt").write_text("".join(lines))
            (d / "seqinfo.ini").write_text(
                f"[Sequence]\nname={cam.name}\nimDir=img1\nframeRate={fps:g}\nseqLength={frames}\n"
                f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
            start = EPOCH + cam.offset
            rel = f"{cam.name}/{cam.name}.avi" if fmt == "video" else f"{cam.name}/img1"
            cams_json.append({**asdict(cam), "path": rel, "sequence": cam.name, "gt": f"{cam.name}/gt/gt.txt",
                              "start_time": start, "start_time_iso": datetime.fromtimestamp(start, tz=timezone.utc).isoformat(),
                              "people": sorted(seen)})
        bar.close()
        meta = {"format": FORMAT, "seed": seed, "fps": fps, "frames": frames, "height": height,
                "width": width, "fmt": fmt, "cameras": cams_json,
                "people": [{**asdict(w), "identity": world.identities[w.id].get("top")} for w in world.walkers]}
        (tmp / "cameras.json").write_text(json.dumps(meta, indent=1))
    return meta
