"""Renderer of the synthetic benchmark, version 1: cartoon pedestrians in per-camera scenes.

Used through :func:`hareid.data.synthetic.write_synthetic` (``version=1``); the tree layout, the
annotations and the cache are shared with every version there. Kept byte-for-byte reproducible:
a v1 tree written today equals one written before versions existed.

**Identities** differ in shirt colour and pattern (solid, horizontal / vertical stripes, checks,
two-tone), sleeve length, trousers (colour, long / shorts), shoe colour, skin and hair colour, hat
(none / cap / beanie), bag (none / backpack / shoulder bag / handbag), a chest logo, and build
(height and width). About ``hard_negative_frac`` of the identities come in *hard-negative pairs*: the
second copies the first and changes one small local detail (shoe colour, bag, logo or hat); both
land in the same split. **Cameras** differ in viewpoint (mirrored and sheared), person scale and
height in the frame, illumination and colour cast, contrast, background and clutter, blur and
noise; each camera has its own background scene. **Images** vary in pose (stride and arm swing),
position, small scale changes, and partial occlusion (poles, cars, passers-by).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1
#: Defaults of the parameters whose default depends on the version.
DEFAULTS = {"hard_negative_frac": 0.3, "occlusion_p": 0.2}
SS = 2  # supersampling factor for anti-aliased drawing

# Clothing palette: deliberately small, so colours repeat across identities (patterns, accessories and
# local details must be used too). RGB.
CLOTHES = [(200, 40, 40), (40, 70, 170), (40, 130, 60), (230, 200, 50), (240, 240, 235),
           (30, 30, 35), (120, 120, 125), (140, 80, 40), (230, 120, 40), (110, 50, 140),
           (60, 160, 190), (230, 150, 170), (20, 40, 80), (150, 170, 90)]
SKIN = [(241, 194, 160), (224, 172, 130), (190, 130, 90), (141, 85, 56), (95, 60, 40)]
HAIR = [(20, 15, 10), (70, 45, 25), (140, 100, 50), (200, 170, 110), (150, 150, 150)]
SHOES = [(20, 20, 20), (240, 240, 240), (200, 30, 30), (40, 80, 200), (130, 90, 50), (230, 200, 40)]
PATTERNS = ("solid", "hstripes", "vstripes", "checks", "twotone")
LOGOS = ("circle", "square", "triangle", "bar")


# ------------------------------------------------------------------------------------- identities
def _pick(rng: np.random.Generator, seq: Sequence[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _jit(rng: np.random.Generator, c: Sequence[int], s: float = 12) -> list[int]:
    return [int(np.clip(v + rng.normal(0, s), 0, 255)) for v in c]


def _random_identity(rng: np.random.Generator) -> dict[str, Any]:
    shirt = _pick(rng, CLOTHES)
    shirt2 = _pick(rng, [c for c in CLOTHES if c != shirt])
    return {
        "shirt": _jit(rng, shirt), "shirt2": _jit(rng, shirt2),
        "pattern": _pick(rng, PATTERNS) if rng.random() < 0.55 else "solid",
        "stripe": int(rng.integers(5, 10)),
        "sleeves": "long" if rng.random() < 0.5 else "short",
        "pants": _jit(rng, _pick(rng, CLOTHES)), "shorts": bool(rng.random() < 0.25),
        "shoes": list(_pick(rng, SHOES)), "skin": list(_pick(rng, SKIN)),
        "hair": list(_pick(rng, HAIR)), "long_hair": bool(rng.random() < 0.3),
        "hat": _pick(rng, ("none", "none", "none", "cap", "beanie")),
        "hat_color": _jit(rng, _pick(rng, CLOTHES)),
        "bag": _pick(rng, ("none", "none", "backpack", "shoulder", "handbag")),
        "bag_color": _jit(rng, _pick(rng, CLOTHES)),
        "logo": _pick(rng, ("none", "none", *LOGOS)),
        "logo_color": list(_pick(rng, CLOTHES)),
        "build_w": float(rng.uniform(0.82, 1.22)), "build_h": float(rng.uniform(0.9, 1.05)),
    }


def _hard_negative(rng: np.random.Generator, base: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Copy ``base`` and change one small local detail."""
    ident = json.loads(json.dumps(base))
    detail = _pick(rng, ("shoes", "bag", "logo", "hat"))
    if detail == "shoes":
        ident["shoes"] = list(_pick(rng, [s for s in SHOES if list(s) != base["shoes"]]))
    elif detail == "bag":
        if base["bag"] == "none":
            ident["bag"] = _pick(rng, ("backpack", "shoulder", "handbag"))
        elif rng.random() < 0.5:
            ident["bag"] = "none"
        else:
            ident["bag_color"] = _jit(rng, _pick(rng, CLOTHES))
    elif detail == "logo":
        ident["logo"] = _pick(rng, [s for s in (*LOGOS, "none") if s != base["logo"]])
        if base["logo"] == "none" or ident["logo"] == "none":
            ident["logo_color"] = list(_pick(rng, CLOTHES))
    else:
        ident["hat"] = _pick(rng, [h for h in ("none", "cap", "beanie") if h != base["hat"]])
    return ident, detail


def pair_identities(rng: np.random.Generator, pids: list[int], frac: float, random_identity: Any,
                    hard_negative: Any) -> dict[int, dict[str, Any]]:
    """``random_identity(rng)`` per pid; with probability ``frac`` the next pid becomes its
    ``hard_negative(rng, ident) -> (twin, detail)`` (the two record each other and the detail)."""
    out: dict[int, dict[str, Any]] = {}
    i = 0
    while i < len(pids):
        pid = pids[i]
        out[pid] = random_identity(rng)
        if i + 1 < len(pids) and rng.random() < frac:
            twin, detail = hard_negative(rng, out[pid])
            twin.update(hard_negative_of=pid, differs_in=detail)
            out[pids[i + 1]] = twin
            out[pid].update(hard_negative_of=pids[i + 1], differs_in=detail)
            i += 1
        i += 1
    return out


def _make_identities(seed: int, pids: list[int], frac: float) -> dict[int, dict[str, Any]]:
    return pair_identities(np.random.default_rng([seed, 1]), pids, frac, _random_identity, _hard_negative)


# ---------------------------------------------------------------------------------------- cameras
@dataclass
class Camera:
    mirror: bool
    shear: float
    scale: float
    ground: float
    brightness: float
    cast: list[float]
    contrast: float
    blur: float
    noise: float
    wall: list[int]
    floor: list[int]
    clutter: int
    horizon: float


def _make_cameras(seed: int, num_cams: int) -> list[Camera]:
    rng = np.random.default_rng([seed, 2])
    cams = []
    for c in range(num_cams):
        cast = rng.uniform(0.78, 1.22, 3)
        cams.append(Camera(
            mirror=bool(c % 2), shear=float(rng.uniform(-0.2, 0.2)),
            scale=float(rng.uniform(0.74, 0.95)), ground=float(rng.uniform(0.9, 0.99)),
            brightness=float(rng.uniform(0.6, 1.3)), cast=[float(v) for v in cast / cast.mean()],
            contrast=float(rng.uniform(0.7, 1.1)), blur=float(rng.uniform(0.0, 1.1)),
            noise=float(rng.uniform(2, 9)), wall=[int(v) for v in rng.integers(50, 200, 3)],
            floor=[int(v) for v in rng.integers(60, 170, 3)], clutter=int(rng.integers(3, 14)),
            horizon=float(rng.uniform(0.45, 0.75))))
    return cams


_BG_CACHE: dict[tuple[int, int, int, int], Image.Image] = {}


def _camera_background(seed: int, cam_id: int, cam: Camera, h: int, w: int) -> Image.Image:
    """A wide per-camera scene (3x the crop width) that images crop from: consistent clutter."""
    key = (seed, cam_id, h, w)
    if key in _BG_CACHE:
        return _BG_CACHE[key]
    rng = np.random.default_rng([seed, 3, cam_id])
    bw = 3 * w
    img = Image.new("RGB", (bw, h), tuple(cam.wall))
    d = ImageDraw.Draw(img)
    hz = int(cam.horizon * h)
    d.rectangle([0, hz, bw, h], fill=tuple(cam.floor))
    for _ in range(cam.clutter):  # buildings, windows, posts, signs
        kind = rng.integers(4)
        col = tuple(int(v) for v in np.clip(np.array(cam.wall) + rng.integers(-70, 70, 3), 0, 255))
        x = int(rng.integers(0, bw))
        if kind == 0:
            ww, hh = int(rng.integers(w // 5, w)), int(rng.integers(h // 8, h // 2))
            y = int(rng.integers(0, max(1, hz - hh // 2)))
            d.rectangle([x, y, x + ww, y + hh], fill=col)
        elif kind == 1:
            d.rectangle([x, 0, x + int(rng.integers(2, 2 + w // 10)), hz + h // 10], fill=col)
        elif kind == 2:
            for j in range(int(rng.integers(2, 5))):
                d.rectangle([x + j * w // 5, hz // 4, x + j * w // 5 + w // 8, hz // 4 + h // 8],
                            fill=col)
        else:
            y = int(rng.integers(hz, h))
            d.line([0, y, bw, y + int(rng.integers(-h // 10, h // 10))], fill=col,
                   width=max(1, h // 80))
    arr = np.asarray(img).astype(np.float32)
    arr += rng.normal(0, 6, (1, bw, 3)).astype(np.float32)  # vertical texture
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    _BG_CACHE[key] = img
    return img


# ---------------------------------------------------------------------------------------- drawing
def _limb(d: ImageDraw.ImageDraw, p0: tuple[float, float], p1: tuple[float, float], w: float,
          col: tuple[int, ...]) -> None:
    (x0, y0), (x1, y1) = p0, p1
    ang = math.atan2(y1 - y0, x1 - x0)
    dx, dy = -math.sin(ang) * w / 2, math.cos(ang) * w / 2
    d.polygon([(x0 + dx, y0 + dy), (x1 + dx, y1 + dy), (x1 - dx, y1 - dy), (x0 - dx, y0 - dy)],
              fill=col)
    r = w / 2
    d.ellipse([x1 - r, y1 - r, x1 + r, y1 + r], fill=col)


def _box(points: Sequence[tuple[float, float]]) -> list[float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return [min(xs), min(ys), max(xs), max(ys)]


def draw_logo(d: ImageDraw.ImageDraw, kind: str, centre: tuple[float, float], s: float, colour: Any,
              bar: tuple[float, float]) -> list[float]:
    """A chest logo: ``kind`` circle, square or triangle of half-size ``s`` at ``centre``, anything
    else a bar widened by ``bar[0] * s`` each side and ``2 * bar[1] * s`` high; returns its box."""
    cx, cy = centre
    lb = [cx - s, cy - s, cx + s, cy + s]
    if kind == "circle":
        d.ellipse(lb, fill=colour)
    elif kind == "square":
        d.rectangle(lb, fill=colour)
    elif kind == "triangle":
        d.polygon([(cx, lb[1]), (lb[2], lb[3]), (lb[0], lb[3])], fill=colour)
    else:
        lb = [lb[0] - s * bar[0], cy - s * bar[1], lb[2] + s * bar[0], cy + s * bar[1]]
        d.rectangle(lb, fill=colour)
    return lb


def _rect(b: Sequence[float]) -> list[tuple[float, float]]:
    return [(b[0], b[1]), (b[2], b[1]), (b[2], b[3]), (b[0], b[3])]


def _draw_person(ident: dict[str, Any], size: tuple[int, int], cx: float, feet_y: float,
                 height: float, stride: float, swing: float) -> tuple[Image.Image, dict]:
    """RGBA layer with the person (alpha = silhouette) and amodal part corner lists."""
    W, H = size
    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    u = height
    bw = ident["build_w"]
    top = feet_y - u
    col = lambda c: (*[int(v) for v in c], 255)  # noqa: E731
    skin, shirt, pants, shoes = (col(ident[k]) for k in ("skin", "shirt", "pants", "shoes"))
    head_r = 0.068 * u
    head_c = (cx, top + head_r + 0.01 * u)
    sh_y, hip_y = top + 0.16 * u, top + 0.5 * u
    sh_w, waist_w = 0.25 * u * bw, 0.2 * u * bw
    leg_w, arm_w = 0.095 * u * bw, 0.06 * u * bw
    parts: dict[str, list[tuple[float, float]]] = {}

    # backpack behind the body, sticking out on one side
    if ident["bag"] == "backpack":
        b = [cx + 0.3 * sh_w, sh_y + 0.02 * u, cx + 0.3 * sh_w + 0.13 * u, sh_y + 0.27 * u]
        d.rounded_rectangle(b, radius=0.02 * u, fill=col(ident["bag_color"]))
        parts["bag"] = _rect(b)
    # legs and shoes
    ankle_y = feet_y - 0.045 * u
    leg_pts = []
    for side, phase in ((-1, stride), (1, -stride)):
        hip = (cx + side * 0.25 * waist_w, hip_y)
        ankle = (hip[0] + math.sin(phase) * (ankle_y - hip_y), ankle_y)
        knee = ((hip[0] + ankle[0]) / 2, (hip_y + ankle_y) / 2)
        if ident["shorts"]:
            _limb(d, hip, ankle, leg_w * 0.85, skin)
            _limb(d, hip, knee, leg_w, pants)
        else:
            _limb(d, hip, ankle, leg_w, pants)
        f = [ankle[0] - 0.05 * u, ankle_y - 0.01 * u, ankle[0] + 0.06 * u, feet_y]
        d.rounded_rectangle(f, radius=0.015 * u, fill=shoes)
        parts.setdefault("feet", []).extend(_rect(f))
        leg_pts += [(hip[0] - leg_w / 2, hip_y), (ankle[0] - leg_w / 2, ankle_y),
                    (ankle[0] + leg_w / 2, ankle_y), (hip[0] + leg_w / 2, hip_y)]
    parts["legs"] = leg_pts
    # torso with its pattern
    torso = [(cx - sh_w / 2, sh_y), (cx + sh_w / 2, sh_y), (cx + waist_w / 2, hip_y + 0.02 * u),
             (cx - waist_w / 2, hip_y + 0.02 * u)]
    parts["torso"] = torso
    tb = [int(v) for v in _box(torso)]
    tw, th = max(1, tb[2] - tb[0] + 1), max(1, tb[3] - tb[1] + 1)
    yy, xx = np.mgrid[0:th, 0:tw]
    period = max(2, int(ident["stripe"] * u / 160))
    sel = {"solid": np.zeros((th, tw), bool), "hstripes": (yy // period) % 2 == 1,
           "vstripes": (xx // period) % 2 == 1,
           "checks": ((yy // period) + (xx // period)) % 2 == 1,
           "twotone": yy > th * 0.45}[ident["pattern"]]
    pat = np.where(sel[..., None], np.array(ident["shirt2"]), np.array(ident["shirt"]))
    tmask = Image.new("L", (tw, th), 0)
    ImageDraw.Draw(tmask).polygon([(x - tb[0], y - tb[1]) for x, y in torso], fill=255)
    patimg = Image.fromarray(pat.astype(np.uint8)).convert("RGBA")
    layer.paste(patimg, (tb[0], tb[1]), tmask)
    d = ImageDraw.Draw(layer)
    if ident["logo"] != "none":
        lb = draw_logo(d, ident["logo"], (cx - 0.05 * sh_w, sh_y + 0.1 * u), 0.045 * u,
                       col(ident["logo_color"]), bar=(0.5, 0.45))
        parts["logo"] = _rect(lb)
    if ident["bag"] == "shoulder":
        d.line([(cx - sh_w * 0.35, sh_y), (cx + waist_w * 0.5, hip_y - 0.02 * u)],
               fill=col(ident["bag_color"]), width=max(1, int(0.018 * u)))
        b = [cx + waist_w * 0.3, hip_y - 0.07 * u, cx + waist_w * 0.3 + 0.12 * u, hip_y + 0.04 * u]
        d.rectangle(b, fill=col(ident["bag_color"]))
        parts["bag"] = _rect(b)
    # arms (sleeves)
    hand_pts = []
    for side, phase in ((-1, -swing), (1, swing)):
        shoulder = (cx + side * (sh_w / 2 - arm_w * 0.3), sh_y + arm_w * 0.5)
        length = 0.33 * u
        hand = (shoulder[0] + side * 0.03 * u + math.sin(phase) * length,
                shoulder[1] + math.cos(phase) * length)
        elbow = ((shoulder[0] + hand[0]) / 2, (shoulder[1] + hand[1]) / 2)
        if ident["sleeves"] == "long":
            _limb(d, shoulder, hand, arm_w, shirt)
        else:
            _limb(d, shoulder, hand, arm_w * 0.85, skin)
            _limb(d, shoulder, elbow, arm_w, shirt)
        d.ellipse([hand[0] - arm_w * 0.55, hand[1] - arm_w * 0.55, hand[0] + arm_w * 0.55,
                   hand[1] + arm_w * 0.55], fill=skin)
        hand_pts.append(hand)
    if ident["bag"] == "handbag":
        hx, hy = hand_pts[1]
        b = [hx - 0.05 * u, hy + 0.01 * u, hx + 0.06 * u, hy + 0.11 * u]
        d.rectangle(b, fill=col(ident["bag_color"]))
        d.line([(hx - 0.02 * u, hy + 0.01 * u), (hx, hy - 0.01 * u), (hx + 0.03 * u, hy + 0.01 * u)],
               fill=col(ident["bag_color"]), width=max(1, int(0.01 * u)))
        parts["bag"] = _rect(b)
    # neck, head, hair, hat
    _limb(d, (cx, head_c[1]), (cx, sh_y + 0.01 * u), 0.05 * u, skin)
    hb = [head_c[0] - head_r * 0.85, head_c[1] - head_r, head_c[0] + head_r * 0.85, head_c[1] + head_r]
    hair = col(ident["hair"])
    if ident["long_hair"]:
        d.rectangle([hb[0] - 0.01 * u, head_c[1], hb[2] + 0.01 * u, head_c[1] + 0.12 * u], fill=hair)
    d.ellipse(hb, fill=skin)
    d.chord([hb[0], hb[1] - 0.005 * u, hb[2], hb[3] - 0.3 * head_r], 180, 360, fill=hair)
    parts["head"] = _rect(hb)
    if ident["hat"] != "none":
        hc = col(ident["hat_color"])
        if ident["hat"] == "cap":
            hat = [hb[0] - 0.005 * u, hb[1] - 0.01 * u, hb[2] + 0.005 * u, head_c[1] + 0.1 * head_r]
            d.chord(hat, 180, 360, fill=hc)
            brim = [head_c[0], head_c[1] - 0.25 * head_r, hb[2] + 0.05 * u, head_c[1] + 0.05 * head_r]
            d.rectangle(brim, fill=hc)
            parts["hat"] = _rect(_box(_rect(hat) + _rect(brim)))
        else:
            hat = [hb[0] - 0.01 * u, hb[1] - 0.035 * u, hb[2] + 0.01 * u, head_c[1] - 0.1 * head_r]
            d.rounded_rectangle(hat, radius=0.03 * u, fill=hc)
            parts["hat"] = _rect(hat)
    return layer, parts


def _affine_points(pts: list[tuple[float, float]], shear: float, feet_y: float, mirror: bool,
                   width: float) -> list[tuple[float, float]]:
    out = []
    for x, y in pts:
        x = x - shear * (y - feet_y)
        out.append((width - x if mirror else x, y))
    return out


def _occluder(d: ImageDraw.ImageDraw, md: ImageDraw.ImageDraw, rng: np.random.Generator, W: int,
              H: int) -> None:
    """Draw one occluder on the image (``d``) and on the occluder mask (``md``)."""
    kind = int(rng.integers(3))
    col = tuple(int(v) for v in rng.integers(20, 230, 3))
    if kind == 0:  # pole
        x = rng.uniform(0.15, 0.85) * W
        w = rng.uniform(0.08, 0.16) * W
        shape = [x - w / 2, 0, x + w / 2, H]
        d.rectangle(shape, fill=col)
        md.rectangle(shape, fill=255)
    elif kind == 1:  # car / bench / bin from the bottom
        top = rng.uniform(0.62, 0.85) * H
        x0 = rng.uniform(-0.5, 0.3) * W
        shape = [x0, top, x0 + rng.uniform(0.6, 1.2) * W, H]
        d.rounded_rectangle(shape, radius=0.05 * W, fill=col)
        md.rounded_rectangle(shape, radius=0.05 * W, fill=255)
    else:  # passer-by at the side
        side = rng.choice([-1, 1])
        cx = W / 2 + side * rng.uniform(0.42, 0.6) * W
        shape = [cx - 0.22 * W, 0.15 * H, cx + 0.22 * W, H]
        d.ellipse([cx - 0.1 * W, 0.05 * H, cx + 0.1 * W, 0.2 * H], fill=col)
        md.ellipse([cx - 0.1 * W, 0.05 * H, cx + 0.1 * W, 0.2 * H], fill=255)
        d.rounded_rectangle(shape, radius=0.1 * W, fill=col)
        md.rounded_rectangle(shape, radius=0.1 * W, fill=255)


def render_image(ident: dict[str, Any] | None, cam: Camera, cam_id: int, seed: int, key: Sequence[int],
                 height: int, width: int, occlusion_p: float = 0.2,
                 junk: bool = False) -> tuple[Image.Image, Image.Image, dict[str, list[int]], float]:
    """One image: ``(rgb, mask, boxes, occluded_fraction)``; deterministic in ``(seed, key)``."""
    rng = np.random.default_rng([seed, 4, *key])
    W, H = width * SS, height * SS
    bg_full = _camera_background(seed, cam_id, cam, H, W)
    off = int(rng.integers(0, bg_full.width - W))
    canvas = bg_full.crop((off, 0, off + W, H)).convert("RGBA")
    parts: dict[str, list[tuple[float, float]]] = {}
    person_alpha = Image.new("L", (W, H), 0)
    feet_y = H * (cam.ground + rng.uniform(-0.03, 0.01))
    shear = cam.shear + rng.uniform(-0.03, 0.03)
    if ident is not None:
        ph = H * cam.scale * ident["build_h"] * rng.uniform(0.95, 1.04)
        cx = W / 2 + rng.uniform(-0.1, 0.1) * W
        stride = rng.uniform(-0.32, 0.32)
        swing = -stride * rng.uniform(0.5, 1.0)
        layer, parts = _draw_person(ident, (W, H), cx, feet_y, ph, stride, swing)
        if shear:
            layer = layer.transform((W, H), Image.Transform.AFFINE,
                                    (1, shear, -shear * feet_y, 0, 1, 0), Image.Resampling.NEAREST)
        if cam.mirror:
            layer = layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        parts = {k: _affine_points(v, shear, feet_y, cam.mirror, W) for k, v in parts.items()}
        person_alpha = layer.getchannel("A")
        canvas.alpha_composite(layer)
    occ = Image.new("L", (W, H), 0)
    if ident is not None and rng.random() < occlusion_p:
        _occluder(ImageDraw.Draw(canvas), ImageDraw.Draw(occ), rng, W, H)
    rgb = canvas.convert("RGB")
    if junk:  # a badly cropped box: mostly background / a sliver of body
        y0 = int(rng.uniform(0.0, 0.6) * H)
        rgb = rgb.crop((0, y0, W, y0 + H // 3)).resize((W, H), Image.Resampling.BILINEAR)
        person_alpha = person_alpha.crop((0, y0, W, y0 + H // 3)).resize((W, H))
        parts = {}
    rgb = rgb.resize((width, height), Image.Resampling.BOX)
    # photometric camera model: contrast, brightness, colour cast, blur, noise
    arr = np.asarray(rgb).astype(np.float32)
    arr = (arr - 128) * cam.contrast * rng.uniform(0.92, 1.08) + 128
    light = cam.brightness * rng.uniform(0.88, 1.12)
    arr = arr * light * np.asarray(cam.cast, np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    rgb = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    radius = max(0.0, cam.blur + rng.uniform(-0.2, 0.3))
    if radius > 0.15:
        rgb = rgb.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(rgb).astype(np.float32) + cam.noise * rng.standard_normal((height, width, 3), np.float32)
    rgb = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    full = np.asarray(person_alpha.resize((width, height), Image.Resampling.BOX)) >= 128
    vis = full & ~(np.asarray(occ.resize((width, height), Image.Resampling.BOX)) >= 128)
    occluded = float(1 - vis.sum() / full.sum()) if full.sum() else 0.0
    mask = Image.fromarray((vis * 255).astype(np.uint8))
    return rgb, mask, pixel_boxes(parts, height, width), round(occluded, 3)


def pixel_boxes(parts: dict[str, list[tuple[float, float]]], height: int, width: int,
                ss: int = SS) -> dict[str, list[int]]:
    """Part corner lists on the ``ss``-times supersampled canvas -> boxes ``[x1, y1, x2, y2]`` in
    pixels of the ``height x width`` image, clipped; parts entirely outside are left out."""
    boxes = {}
    for name, pts in parts.items():
        x1, y1, x2, y2 = _box(pts)
        b = [int(np.clip(math.floor(x1 / ss), 0, width)), int(np.clip(math.floor(y1 / ss), 0, height)),
             int(np.clip(math.ceil(x2 / ss), 0, width)), int(np.clip(math.ceil(y2 / ss), 0, height))]
        if b[2] > b[0] and b[3] > b[1]:
            boxes[name] = b
    return boxes


# ------------------------------------------------------------------------------ renderer interface
def make_distractors(seed: int, n: int) -> dict[int, dict[str, Any]]:
    """``n`` random identities for the distractor (pid 0) and junk (pid -1) images."""
    rng = np.random.default_rng([seed, 6])
    return {i: _random_identity(rng) for i in range(n)}


make_identities = _make_identities
make_cameras = _make_cameras


def render(ident: dict[str, Any] | None, job: Any, world: Any) -> tuple[Image.Image, Image.Image, dict, dict]:
    """One image of ``job`` (pid, index, cam, junk): ``(rgb, mask, part boxes, extra annotations)``."""
    p = world.params
    rgb, mask, boxes, occ = render_image(ident, world.cameras[job.cam], job.cam, world.seed,
                                         (job.pid + 10, job.index), p["height"], p["width"],
                                         p["occlusion_p"], junk=job.junk)
    return rgb, mask, boxes, {"occlusion": occ}
