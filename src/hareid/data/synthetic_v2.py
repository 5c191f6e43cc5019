"""Renderer of the synthetic benchmark, version 2: detector-like crops of street pedestrians.

Used through :func:`hareid.data.synthetic.write_synthetic` (``version=2``); layout, annotations,
cache and sample grid are shared with version 1 (:mod:`hareid.data.synthetic_v1`, whose drawing
primitives this module reuses). What v2 changes, and why:

* **Backgrounds carry no identity.** Every image crops a random window (random zoom, random
  mirror) of one of ``NUM_SCENES`` procedural street scenes (facades with windows and shop
  fronts, paving in perspective, trees, posts, bicycles, cars, shadows, multi-scale texture),
  picked per image, independently of camera and identity.
* **Crops look like a detector's.** The person is shifted and scaled inside the box, sometimes
  cut at the head or at the feet, the box aspect varies; other people stand partly in the crop
  (behind or in front of the person); street furniture occludes.
* **Pose and view.** Walking phase (legs and arms swing, knees bend), front / back / side views
  (each camera has a dominant walking direction); a chest logo is seen from the front only, a
  backpack mostly from the back.
* **Camera effects.** Light level, white balance, contrast and saturation per camera; focus blur,
  sensor noise, low resolution (down- and up-sampling), motion blur, JPEG quality and shadows.
* **Street clothing.** Dark coats and jackets, blue jeans and black trousers dominate; identities
  differ in small details: bag, shoes, hair, a logo, trouser cut, hat, scarf. About
  ``hard_negative_frac`` of the identities come in pairs that share everything but one of these
  details (``DETAIL_KEYS``).

Per-image annotations add ``"view"`` (front / back / left / right), ``"cut"`` (none / head / feet)
and ``"bystanders"`` (other people drawn in the crop) to ``"occlusion"``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hareid.data.synthetic_v1 import (
    _box,
    _limb,
    _pick,
    _rect,
    draw_logo,
    pair_identities,
    pixel_boxes,
)

VERSION = 2
#: Defaults of the parameters whose default depends on the version.
DEFAULTS = {"hard_negative_frac": 0.3, "occlusion_p": 0.25}
SS = 2  # supersampling factor for anti-aliased drawing
NUM_SCENES = 48  # background scenes shared by all cameras and identities
VIEWS = ("front", "back", "left", "right")
#: Identity keys each hard-negative detail changes.
DETAIL_KEYS = {"bag": ("bag", "bag_color", "bag_side"), "shoes": ("shoes",), "hair": ("hair", "hair_style"),
               "logo": ("logo", "logo_color"), "cut": ("cut",), "hat": ("hat", "hat_color"),
               "scarf": ("scarf", "scarf_color")}

Color = tuple[int, int, int]
# (colour, weight) tables: street statistics, dark and blue heavy
TOPS: list[tuple[Color, float]] = [
    ((24, 24, 27), 0.22), ((52, 54, 60), 0.12), ((30, 37, 60), 0.12), ((84, 87, 92), 0.07),
    ((128, 128, 130), 0.05), ((76, 78, 50), 0.05), ((88, 62, 42), 0.05), ((168, 138, 100), 0.06),
    ((222, 220, 212), 0.06), ((98, 30, 40), 0.04), ((175, 42, 42), 0.03), ((50, 88, 158), 0.04),
    ((48, 106, 70), 0.03), ((196, 158, 50), 0.02), ((206, 148, 158), 0.02), ((138, 166, 198), 0.02)]
BOTTOMS: list[tuple[Color, float]] = [
    ((34, 48, 82), 0.20), ((58, 82, 126), 0.18), ((106, 136, 176), 0.07), ((25, 25, 28), 0.25),
    ((88, 90, 95), 0.08), ((162, 144, 110), 0.08), ((84, 64, 50), 0.04), ((34, 40, 58), 0.05),
    ((218, 216, 210), 0.02), ((120, 40, 50), 0.03)]
SHOES: list[tuple[Color, float]] = [
    ((236, 236, 232), 0.30), ((22, 22, 24), 0.35), ((98, 66, 42), 0.12), ((120, 120, 124), 0.10),
    ((190, 40, 40), 0.05), ((40, 80, 170), 0.05), ((210, 180, 60), 0.03)]
HAIR: list[tuple[Color, float]] = [
    ((18, 14, 12), 0.45), ((52, 34, 22), 0.30), ((104, 72, 40), 0.10), ((196, 164, 110), 0.08),
    ((150, 150, 150), 0.05), ((140, 40, 50), 0.02)]
SKIN: list[tuple[Color, float]] = [
    ((238, 196, 166), 0.3), ((220, 172, 134), 0.25), ((188, 134, 96), 0.2), ((140, 90, 60), 0.15),
    ((96, 62, 42), 0.1)]
ACCENTS: list[tuple[Color, float]] = [  # bags, hats, scarves, logos: dark-heavy too, some bright
    ((24, 24, 27), 0.3), ((70, 50, 36), 0.15), ((60, 62, 68), 0.1), ((30, 37, 60), 0.08),
    ((190, 40, 40), 0.08), ((226, 224, 218), 0.08), ((40, 90, 170), 0.06), ((210, 170, 50), 0.05),
    ((60, 130, 80), 0.05), ((200, 120, 160), 0.05)]
TOP_TYPES = (("coat", 0.22), ("jacket", 0.35), ("hoodie", 0.12), ("tshirt", 0.16), ("sweater", 0.15))
CUTS = (("slim", 0.35), ("straight", 0.35), ("wide", 0.12), ("shorts", 0.1), ("skirt", 0.08))
HAIR_STYLES = (("short", 0.5), ("long", 0.3), ("bun", 0.12), ("bald", 0.08))
HATS = (("none", 0.8), ("beanie", 0.1), ("cap", 0.1))
BAGS = (("none", 0.4), ("backpack", 0.28), ("crossbody", 0.14), ("handbag", 0.1), ("tote", 0.08))
LOGOS = (("none", 0.6), ("circle", 0.1), ("square", 0.1), ("stripe", 0.1), ("triangle", 0.1))
PATTERNS = (("solid", 0.7), ("hstripes", 0.1), ("checks", 0.08), ("colorblock", 0.12))


# ------------------------------------------------------------------------------------- identities
def _w(rng: np.random.Generator, table: Sequence[tuple[Any, float]]) -> Any:
    """Weighted choice from ``(item, weight)`` pairs."""
    weights = np.array([w for _, w in table], dtype=float)
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def _jit(rng: np.random.Generator, c: Sequence[int], s: float = 7) -> list[int]:
    return [min(255, max(0, int(v + rng.normal(0, s)))) for v in c]


def _random_identity(rng: np.random.Generator) -> dict[str, Any]:
    top = _w(rng, TOP_TYPES)
    return {
        "top": top, "top_color": _jit(rng, _w(rng, TOPS), 12), "inner_color": _jit(rng, _w(rng, TOPS)),
        "open": bool(top in ("coat", "jacket") and rng.random() < 0.35),
        "pattern": _w(rng, PATTERNS), "pattern_color": _jit(rng, _w(rng, TOPS)),
        "cut": _w(rng, CUTS), "bottom_color": _jit(rng, _w(rng, BOTTOMS), 10),
        "shoes": _jit(rng, _w(rng, SHOES), 5), "skin": list(_w(rng, SKIN)),
        "hair": _jit(rng, _w(rng, HAIR), 5), "hair_style": _w(rng, HAIR_STYLES),
        "hat": _w(rng, HATS), "hat_color": _jit(rng, _w(rng, ACCENTS)),
        "bag": _w(rng, BAGS), "bag_color": _jit(rng, _w(rng, ACCENTS)), "bag_side": int(rng.choice([-1, 1])),
        "logo": _w(rng, LOGOS), "logo_color": list(_w(rng, ACCENTS[4:])),
        "scarf": bool(rng.random() < 0.12), "scarf_color": _jit(rng, _w(rng, ACCENTS)),
        "build_w": float(rng.uniform(0.86, 1.18)), "build_h": float(rng.uniform(0.92, 1.06)),
    }


def _hard_negative(rng: np.random.Generator, base: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Copy ``base`` and change one small detail (a key group of ``DETAIL_KEYS``) visibly."""
    ident = json.loads(json.dumps(base))
    detail = _pick(rng, list(DETAIL_KEYS))
    for _ in range(20):  # redraw until the detail differs
        other = _random_identity(rng)
        for k in DETAIL_KEYS[detail]:
            ident[k] = other[k]
        if detail == "bag" and base["bag"] != "none" and rng.random() < 0.4:
            ident["bag"] = "none"
        if detail == "logo" and base["logo"] == "none" and ident["logo"] == "none":
            continue
        if detail in ("hat", "scarf", "bag") and ident[detail] == base[detail] and ident[detail] in ("none", False):
            continue
        if detail == "shoes" and sum(abs(a - b) for a, b in zip(ident["shoes"], base["shoes"])) < 90:
            continue
        if any(ident[k] != base[k] for k in DETAIL_KEYS[detail]):
            break
    return ident, detail


def make_identities(seed: int, pids: list[int], frac: float) -> dict[int, dict[str, Any]]:
    """Identities of ``pids``; about ``frac`` of them in hard-negative pairs (consecutive pids)."""
    return pair_identities(np.random.default_rng([seed, 1, VERSION]), pids, frac, _random_identity, _hard_negative)


def make_distractors(seed: int, n: int) -> dict[int, dict[str, Any]]:
    """``n`` random identities for distractor (pid 0) and junk (pid -1) images."""
    rng = np.random.default_rng([seed, 6, VERSION])
    return {i: _random_identity(rng) for i in range(n)}


_CROWD: dict[int, list[dict[str, Any]]] = {}


def _crowd(seed: int) -> list[dict[str, Any]]:
    """Passers-by drawn beside the person (not annotated), the same in every worker process."""
    if seed not in _CROWD:
        rng = np.random.default_rng([seed, 7, VERSION])
        _CROWD[seed] = [_random_identity(rng) for _ in range(64)]
    return _CROWD[seed]


# ---------------------------------------------------------------------------------------- cameras
@dataclass
class Camera:
    """One camera: walking direction (view probabilities), optics and sensor."""

    views: list[float]  # P(front, back, left, right)
    scale: float  # person height in the box relative to the nominal
    brightness: float
    cast: list[float]  # white balance (RGB gains, mean 1)
    contrast: float
    saturation: float
    blur: float  # focus blur radius (px)
    noise: float  # sensor noise std (grey levels)
    lowres: float  # >1: the crop was upsampled from this many times fewer pixels per side
    motion_p: float  # probability of motion blur
    jpeg: list[int]  # JPEG quality range
    shadow_p: float  # probability of a cast shadow across the crop


def make_cameras(seed: int, num_cams: int) -> list[Camera]:
    rng = np.random.default_rng([seed, 2, VERSION])
    cams = []
    for c in range(num_cams):
        axis = ("along", "across", "diagonal")[c % 3]
        views = {"along": [0.42, 0.42, 0.08, 0.08], "across": [0.1, 0.1, 0.4, 0.4],
                 "diagonal": [0.25, 0.25, 0.25, 0.25]}[axis]
        cast = rng.uniform(0.9, 1.1, 3)
        lo = int(rng.integers(45, 80))
        cams.append(Camera(
            views=views, scale=float(rng.uniform(0.92, 1.02)), brightness=float(rng.uniform(0.8, 1.15)),
            cast=[float(v) for v in cast / cast.mean()], contrast=float(rng.uniform(0.8, 1.1)),
            saturation=float(rng.uniform(0.8, 1.1)), blur=float(rng.uniform(0.0, 0.5)),
            noise=float(rng.uniform(2, 5)), lowres=float(rng.uniform(1.0, 1.5)),
            motion_p=float(rng.uniform(0.03, 0.15)), jpeg=[lo, lo + 15], shadow_p=float(rng.uniform(0.0, 0.25))))
    return cams


# ------------------------------------------------------------------------------------- backgrounds
FACADES: list[Color] = [(150, 70, 55), (196, 180, 150), (150, 150, 148), (226, 220, 206), (96, 104, 112),
                        (200, 160, 96), (120, 92, 76), (180, 190, 196), (170, 120, 100), (90, 80, 70)]
GROUNDS: list[Color] = [(128, 128, 124), (70, 72, 74), (172, 160, 136), (150, 96, 80), (110, 108, 100)]


def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise ``(h, w)`` in about [-1, 1]: a ``cells``-wide random grid, bicubic-upsampled."""
    ch, cw = max(2, h * cells // max(h, w)), max(2, w * cells // max(h, w))
    small = Image.fromarray((rng.random((ch, cw)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1


def _scene(seed: int, idx: int, h: int, w: int) -> Image.Image:
    """Street scene ``idx``: an ``h x w`` RGB picture (facades, paving, furniture, texture)."""
    rng = np.random.default_rng([seed, 3, VERSION, idx])
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    hz = int(rng.uniform(0.3, 0.62) * h)  # where facades meet the ground
    x = -int(rng.integers(0, w // 4))
    while x < w:  # facades side by side
        fw = int(rng.uniform(0.3, 0.9) * w)
        col = tuple(_jit(rng, _pick(rng, FACADES), 14))
        d.rectangle([x, 0, x + fw, hz], fill=col)
        win = tuple(int(v) for v in rng.integers(30, 110, 3))
        ww, wh = int(rng.uniform(0.05, 0.12) * w), int(rng.uniform(0.06, 0.12) * h)
        gx, gy = ww + int(rng.uniform(0.04, 0.1) * w), wh + int(rng.uniform(0.04, 0.09) * h)
        shop = rng.random() < 0.55
        for yy in range(int(rng.integers(2, 12)), hz - (int(0.2 * h) if shop else wh), gy):
            for xx in range(x + int(rng.integers(3, 12)), x + fw - ww, gx):
                d.rectangle([xx, yy, xx + ww, yy + wh], fill=win, outline=tuple(_jit(rng, col, 25)))
                if rng.random() < 0.3:  # a reflection
                    d.rectangle([xx + 2, yy + 2, xx + ww // 3, yy + wh - 2], fill=tuple(_jit(rng, (150, 160, 170), 20)))
        if shop:  # glass front and a coloured sign
            top = hz - int(0.2 * h)
            d.rectangle([x, top + int(0.04 * h), x + fw, hz], fill=tuple(_jit(rng, (60, 70, 80), 20)))
            sign = tuple(int(v) for v in rng.integers(20, 240, 3))
            d.rectangle([x + 4, top, x + fw - 4, top + int(0.04 * h)], fill=sign)
            for _ in range(int(rng.integers(0, 6))):  # goods / people inside
                gx0 = x + int(rng.uniform(0, fw))
                d.rectangle([gx0, hz - int(rng.uniform(0.03, 0.12) * h), gx0 + int(0.04 * w), hz],
                            fill=tuple(int(v) for v in rng.integers(20, 200, 3)))
        x += fw
    if rng.random() < 0.25:  # sky above low buildings
        d.rectangle([0, 0, w, int(rng.uniform(0.03, 0.12) * h)], fill=tuple(_jit(rng, (190, 205, 220), 15)))
    ground = _pick(rng, GROUNDS)
    d.rectangle([0, hz, w, h], fill=tuple(_jit(rng, ground, 12)))
    line = tuple(_jit(rng, [int(v * 0.75) for v in ground], 6))
    n = int(rng.integers(5, 14))
    for k in range(1, n):  # paving joints in perspective
        y = hz + (h - hz) * (k / n) ** 1.6
        d.line([0, y, w, y], fill=line, width=1)
    vx = rng.uniform(0.2, 0.8) * w
    for k in range(-8, 9):
        d.line([vx + k * w * 0.06, hz, vx + k * w * 0.45, h], fill=line, width=1)
    if rng.random() < 0.4:  # road with a marking
        ry = hz + int(rng.uniform(0.0, 0.4) * (h - hz))
        d.rectangle([0, ry, w, ry + int(0.12 * h)], fill=tuple(_jit(rng, (62, 64, 66), 8)))
        for xx in range(0, w, 30):
            d.rectangle([xx, ry + int(0.05 * h), xx + 14, ry + int(0.06 * h)], fill=(210, 210, 200))
    for _ in range(int(rng.integers(2, 7))):  # furniture and trees
        kind = int(rng.integers(5))
        fx = rng.uniform(0, w)
        base = hz + rng.uniform(0.05, 0.5) * (h - hz)
        col = tuple(int(v) for v in rng.integers(25, 150, 3))
        if kind == 0:  # tree
            d.rectangle([fx - 3, base - 0.35 * h, fx + 3, base], fill=(70, 52, 36))
            for _ in range(6):
                r = rng.uniform(0.05, 0.11) * h
                cx, cy = fx + rng.normal(0, 0.05 * h), base - 0.4 * h + rng.normal(0, 0.05 * h)
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(_jit(rng, (60, 96, 50), 18)))
        elif kind == 1:  # lamp post / sign
            d.rectangle([fx - 2, base - 0.5 * h, fx + 2, base], fill=col)
            if rng.random() < 0.5:
                d.rectangle([fx - 10, base - 0.5 * h, fx + 10, base - 0.42 * h], fill=tuple(rng.integers(20, 240, 3).tolist()))
        elif kind == 2:  # parked car
            cw = rng.uniform(0.5, 0.9) * w
            d.rounded_rectangle([fx - cw / 2, base - 0.12 * h, fx + cw / 2, base], radius=8, fill=col)
            d.rectangle([fx - cw / 3, base - 0.17 * h, fx + cw / 4, base - 0.11 * h], fill=(50, 60, 70))
        elif kind == 3:  # bicycle
            for dx in (-12, 12):
                d.ellipse([fx + dx - 9, base - 18, fx + dx + 9, base], outline=col, width=2)
            d.line([fx - 12, base - 9, fx, base - 20, fx + 12, base - 9], fill=col, width=2)
        else:  # bin / bollard / planter
            d.rectangle([fx - 7, base - rng.uniform(0.05, 0.1) * h, fx + 7, base], fill=col)
    arr = np.asarray(img, dtype=np.float32)
    tex = 0.10 * _noise(rng, h, w, 8) + 0.06 * _noise(rng, h, w, 40) + 0.03 * rng.standard_normal((h, w))
    light = 1 + 0.15 * np.linspace(rng.uniform(-1, 1), rng.uniform(-1, 1), w)[None, :]
    arr = arr * (1 + tex[..., None]) * light[..., None]
    if rng.random() < 0.4:  # a large shadow
        yy, xx = np.mgrid[0:h, 0:w]
        a, b = rng.uniform(-1.5, 1.5), rng.uniform(0.2, 0.9) * h
        arr[yy > a * (xx - w / 2) + b] *= rng.uniform(0.55, 0.8)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


_SCENES: dict[tuple[int, int, int, int], Image.Image] = {}


def _background(seed: int, rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A random window (zoom 0.75-1.3, maybe mirrored) of a random scene, resized to ``h x w``."""
    idx = int(rng.integers(NUM_SCENES))
    sh, sw = int(1.4 * h), int(2.8 * w)
    key = (seed, idx, sh, sw)
    if key not in _SCENES:
        _SCENES[key] = _scene(seed, idx, sh, sw)
    zoom = rng.uniform(0.75, 1.3)
    ch, cw = int(h / zoom), int(w / zoom)
    y0, x0 = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
    flip = rng.random() < 0.5
    win = _SCENES[key].crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BILINEAR)
    return win.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else win


# ---------------------------------------------------------------------------------------- drawing
def _rgba(c: Sequence[int], shade: float = 1.0) -> tuple[int, int, int, int]:
    return (*[min(255, max(0, int(v * shade))) for v in c], 255)


@dataclass
class _Pose:
    """Where the person stands in the canvas and how: ``u`` = full height in pixels."""

    cx: float
    feet_y: float
    u: float
    width: float  # horizontal scale (build and box aspect)
    view: str
    phase: float  # walking phase, radians


class _Figure:
    """One person drawn on an RGBA layer (alpha = silhouette), part by part, back to front, with the
    amodal corner lists of the parts (``parts``). ``"left"`` is drawn as ``"right"``, then mirrored."""

    def __init__(self, ident: dict[str, Any], size: tuple[int, int], pose: _Pose) -> None:
        W, H = size
        self.ident, self.pose, self.size = ident, pose, size
        self.side = pose.view in ("left", "right")
        self.back = pose.view == "back"
        self.cx = W - pose.cx if pose.view == "left" else pose.cx
        self.layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
        self.d = ImageDraw.Draw(self.layer)
        u, bw = pose.u, pose.width
        self.u = u
        self.top = pose.feet_y - u
        self.head_r = 0.064 * u
        self.head_c = (self.cx + (0.01 * u if self.side else 0), self.top + self.head_r + 0.006 * u)
        self.sh_y, self.hip_y, self.ankle_y = self.top + 0.158 * u, self.top + 0.49 * u, pose.feet_y - 0.035 * u
        self.skin, self.top_c, self.bottom = (ident[k] for k in ("skin", "top_color", "bottom_color"))
        self.cut = ident["cut"]
        self.leg_w = {"slim": 0.078, "straight": 0.09, "wide": 0.1, "shorts": 0.088, "skirt": 0.07}[self.cut] * u * bw
        self.sh_w = (0.15 if self.side else 0.26) * u * bw
        self.waist_w = (0.14 if self.side else 0.2) * u * bw
        self.arm_w = 0.058 * u * bw
        self.hem_y = {"coat": self.top + 0.72 * u, "jacket": self.hip_y + 0.04 * u,
                      "hoodie": self.hip_y + 0.03 * u}.get(ident["top"], self.hip_y + 0.02 * u)
        self.parts: dict[str, list[tuple[float, float]]] = {}
        self.swing = math.sin(pose.phase)
        self.stride = 0.42 * self.swing
        self.far_hand: tuple[float, float] | None = None

    def draw(self) -> tuple[Image.Image, dict]:
        """``(layer, parts)``: the whole figure."""
        self._behind()
        self._legs()
        self._torso()
        self._bags_on_body()
        self._near_arms_and_hand_bags()
        self._head()
        self._shade()
        if self.pose.view == "left":
            W = self.size[0]
            self.layer = self.layer.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            self.parts = {k: [(W - x, y) for x, y in v] for k, v in self.parts.items()}
        return self.layer, self.parts

    # ---------------------------------------------------------------------- limbs
    def _bag_rect(self, b: list[float], fill: Sequence[int]) -> None:
        self.d.rounded_rectangle(b, radius=0.015 * self.u, fill=_rgba(fill))
        self.parts["bag"] = _rect(b)

    def _leg(self, hip: tuple[float, float], thigh: float, shin: float, shade: float, lift: float = 0.0) -> None:
        u, cut, leg_w = self.u, self.cut, self.leg_w
        length = self.ankle_y - self.hip_y
        knee = (hip[0] + math.sin(thigh) * length / 2, hip[1] + math.cos(thigh) * length / 2 - lift / 2)
        ankle = (knee[0] + math.sin(shin) * length / 2, knee[1] + math.cos(shin) * length / 2 - lift / 2)
        lower = _rgba(self.skin if cut in ("shorts", "skirt") else self.bottom, shade)
        upper = _rgba(self.bottom, shade)
        wide = 1.25 if cut == "wide" else 1.0
        _limb(self.d, hip, knee, leg_w, upper)
        _limb(self.d, knee, ankle, leg_w * (0.8 if cut in ("shorts", "skirt") else wide), lower)
        if cut == "shorts":
            _limb(self.d, hip, (knee[0], knee[1] - 0.02 * u), leg_w * 1.05, upper)
        fwd = 0.085 * u if self.side else 0.035 * u
        f = [ankle[0] - (0.03 * u if self.side else 0.037 * u), ankle[1] - 0.012 * u, ankle[0] + fwd, ankle[1] + 0.035 * u]
        self.d.rounded_rectangle(f, radius=0.012 * u, fill=_rgba(self.ident["shoes"], shade))
        self.parts["feet"].extend(_rect(f))
        self.parts["legs"].extend([(hip[0] - leg_w / 2, hip[1]), (knee[0] - leg_w, knee[1]), (knee[0] + leg_w, knee[1]),
                                   (ankle[0] - leg_w / 2, ankle[1]), (ankle[0] + leg_w / 2, ankle[1])])

    def _arm(self, shoulder: tuple[float, float], angle: float, shade: float) -> tuple[float, float]:
        length = 0.33 * self.u
        elbow = (shoulder[0] + math.sin(angle) * length / 2, shoulder[1] + math.cos(angle) * length / 2)
        bend = angle + (0.25 if self.side else 0.0)
        hand = (elbow[0] + math.sin(bend) * length / 2, elbow[1] + math.cos(bend) * length / 2)
        sleeve = _rgba(self.top_c, shade)
        _limb(self.d, shoulder, elbow, self.arm_w, sleeve)
        _limb(self.d, elbow, hand, self.arm_w * 0.9,
              _rgba(self.skin, shade) if self.ident["top"] == "tshirt" else sleeve)
        r = self.arm_w * 0.5
        self.d.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=_rgba(self.skin, shade))
        return hand

    # ---------------------------------------------------------------------- parts, back to front
    def _behind(self) -> None:
        """Behind the body: a backpack seen from the side, long hair seen from the front."""
        ident, u, cx, sh_y = self.ident, self.u, self.cx, self.sh_y
        if ident["bag"] == "backpack" and self.side:
            b = [cx - self.sh_w / 2 - 0.1 * u, sh_y + 0.02 * u, cx - self.sh_w / 2 + 0.02 * u, sh_y + 0.27 * u]
            self._bag_rect(b, ident["bag_color"])
        if ident["hair_style"] == "long" and self.pose.view == "front":
            hc, hr = self.head_c, self.head_r
            self.d.rectangle([hc[0] - 1.1 * hr, hc[1], hc[0] + 1.1 * hr, sh_y + 0.09 * u], fill=_rgba(ident["hair"]))

    def _legs(self) -> None:
        """Both legs (side view: the far leg and the far arm darker), a skirt over them."""
        self.parts["legs"], self.parts["feet"] = [], []
        u, cx, hip_y, phase = self.u, self.cx, self.hip_y, self.pose.phase
        if self.side:
            hip = (cx, hip_y)
            self._leg(hip, -self.stride, -self.stride - 0.45 * max(0.0, -math.cos(phase)), 0.78)  # far leg
            self.far_hand = self._arm((cx - 0.01 * u, self.sh_y + self.arm_w * 0.5), 0.75 * self.stride, 0.78)
            self._leg(hip, self.stride, self.stride - 0.45 * max(0.0, math.cos(phase)), 1.0)
        else:  # walking towards or away from the camera: the leg in swing is lifted
            for s_, ph in ((-1, self.swing), (1, -self.swing)):
                self._leg((cx + s_ * 0.26 * self.waist_w, hip_y), s_ * 0.035, s_ * 0.035, 1.0, 0.03 * u * max(0.0, ph))
        if self.cut == "skirt":
            ww = self.waist_w
            sk = [(cx - ww * 0.5, hip_y - 0.02 * u), (cx + ww * 0.5, hip_y - 0.02 * u),
                  (cx + ww * 0.75, hip_y + 0.2 * u), (cx - ww * 0.75, hip_y + 0.2 * u)]
            self.d.polygon(sk, fill=_rgba(self.bottom))
            self.parts["legs"].extend(sk)

    def _torso(self) -> None:
        """The torso: coat length, pattern, open front; a hood from the back, a logo from the front."""
        ident, u, cx, sh_y, sh_w = self.ident, self.u, self.cx, self.sh_y, self.sh_w
        waist_w, hip_y = self.waist_w, self.hip_y
        hem_w = waist_w * (1.2 if ident["top"] == "coat" else 1.02)
        torso = [(cx - sh_w / 2, sh_y), (cx + sh_w / 2, sh_y), (cx + waist_w / 2, hip_y),
                 (cx + hem_w / 2, self.hem_y), (cx - hem_w / 2, self.hem_y), (cx - waist_w / 2, hip_y)]
        self.parts["torso"] = torso
        tb = [int(v) for v in _box(torso)]
        tw, th = max(1, tb[2] - tb[0] + 1), max(1, tb[3] - tb[1] + 1)
        yy, xx = np.mgrid[0:th, 0:tw]
        period = max(2, int(0.03 * u))
        sel = {"solid": np.zeros((th, tw), bool), "hstripes": (yy // period) % 2 == 1,
               "checks": ((yy // period) + (xx // period)) % 2 == 1,
               "colorblock": yy < th * 0.3}[ident["pattern"]]
        if ident["open"] and self.pose.view == "front":
            sel = sel | (np.abs(xx - (cx - tb[0])) < 0.14 * sh_w)
            second = np.array(ident["inner_color"])
        else:
            second = np.array(ident["pattern_color"])
        pat = np.where(sel[..., None], second, np.array(self.top_c)).astype(np.uint8)
        tmask = Image.new("L", (tw, th), 0)
        ImageDraw.Draw(tmask).polygon([(x - tb[0], y - tb[1]) for x, y in torso], fill=255)
        self.layer.paste(Image.fromarray(pat).convert("RGBA"), (tb[0], tb[1]), tmask)
        self.d = d = ImageDraw.Draw(self.layer)
        if ident["top"] == "hoodie" and self.back:  # the hood
            d.chord([cx - 0.45 * sh_w, sh_y - 0.04 * u, cx + 0.45 * sh_w, sh_y + 0.08 * u], 0, 180,
                    fill=_rgba(self.top_c, 0.85))
        if ident["logo"] != "none" and self.pose.view == "front":
            lb = draw_logo(d, ident["logo"], (cx - 0.17 * sh_w, sh_y + 0.09 * u), 0.04 * u,
                           _rgba(ident["logo_color"]), bar=(0.6, 0.4))
            self.parts["logo"] = _rect(lb)

    def _bags_on_body(self) -> None:
        """A backpack (from the back; straps from the front) or a crossbody bag."""
        ident, u, cx, sh_y, sh_w, d = self.ident, self.u, self.cx, self.sh_y, self.sh_w, self.d
        bag_c = ident["bag_color"]
        if ident["bag"] == "backpack" and not self.side:
            if self.back:
                self._bag_rect([cx - 0.36 * sh_w, sh_y + 0.02 * u, cx + 0.36 * sh_w, sh_y + 0.29 * u], bag_c)
            else:  # straps only
                for s_ in (-1, 1):
                    d.line([(cx + s_ * 0.3 * sh_w, sh_y), (cx + s_ * 0.27 * sh_w, sh_y + 0.2 * u)],
                           fill=_rgba(bag_c), width=max(1, int(0.014 * u)))
                self.parts["bag"] = _rect([cx - 0.32 * sh_w, sh_y, cx + 0.32 * sh_w, sh_y + 0.2 * u])
        if ident["bag"] == "crossbody":
            s_ = ident["bag_side"]
            d.line([(cx - s_ * 0.4 * sh_w, sh_y), (cx + s_ * 0.45 * self.waist_w, self.hip_y - 0.03 * u)],
                   fill=_rgba(bag_c), width=max(1, int(0.014 * u)))
            bx = cx + s_ * 0.45 * self.waist_w
            self._bag_rect([bx - 0.05 * u, self.hip_y - 0.07 * u, bx + 0.05 * u, self.hip_y + 0.02 * u], bag_c)

    def _near_arms_and_hand_bags(self) -> None:
        """The near arm(s); a handbag in a hand or a tote on the shoulder."""
        ident, u, cx, sh_y, sh_w, side = self.ident, self.u, self.cx, self.sh_y, self.sh_w, self.side
        shoulders = [(cx + 0.01 * u, sh_y + self.arm_w * 0.5)] if side else \
            [(cx + s_ * (sh_w / 2 - self.arm_w * 0.35), sh_y + self.arm_w * 0.5) for s_ in (-1, 1)]
        hands = []
        for i, sh in enumerate(shoulders):
            angle = -0.75 * self.stride if side else (0.12 if i else -0.12) + 0.1 * self.swing * (1 if i else -1)
            hands.append(self._arm(sh, angle, 1.0))
        if self.far_hand is not None:
            hands = [self.far_hand, *hands]
        if ident["bag"] in ("handbag", "tote"):
            bag_c = ident["bag_color"]
            hx, hy = hands[-1] if ident["bag_side"] > 0 or side else hands[0]
            if ident["bag"] == "handbag":
                b = [hx - 0.045 * u, hy + 0.005 * u, hx + 0.055 * u, hy + 0.09 * u]
            else:  # tote on the shoulder, hanging at the hip
                sx = cx + (ident["bag_side"] if not side else 1) * 0.5 * sh_w
                self.d.line([(sx, sh_y), (sx, self.hip_y - 0.06 * u)], fill=_rgba(bag_c), width=max(1, int(0.012 * u)))
                b = [sx - 0.06 * u, self.hip_y - 0.08 * u, sx + 0.06 * u, self.hip_y + 0.07 * u]
            self._bag_rect(b, bag_c)

    def _head(self) -> None:
        """Neck, scarf, head, hair, hat."""
        ident, u, cx, sh_y, sh_w, d = self.ident, self.u, self.cx, self.sh_y, self.sh_w, self.d
        head_c, head_r, side, back = self.head_c, self.head_r, self.side, self.back
        _limb(d, (cx, head_c[1]), (cx, sh_y + 0.01 * u), 0.05 * u, _rgba(self.skin))
        if ident["scarf"]:
            d.rounded_rectangle([cx - 0.3 * sh_w - 0.01 * u, sh_y - 0.025 * u, cx + 0.3 * sh_w + 0.01 * u, sh_y + 0.02 * u],
                                radius=0.01 * u, fill=_rgba(ident["scarf_color"]))
            if self.pose.view == "front":
                d.rectangle([cx - 0.02 * u, sh_y, cx + 0.015 * u, sh_y + 0.1 * u], fill=_rgba(ident["scarf_color"]))
        hb = [head_c[0] - head_r * 0.84, head_c[1] - head_r, head_c[0] + head_r * 0.84, head_c[1] + head_r]
        hair = _rgba(ident["hair"])
        style = ident["hair_style"]
        if back and style != "bald":
            d.ellipse(hb, fill=hair)
            if style == "long":
                d.rectangle([hb[0] - 0.005 * u, head_c[1], hb[2] + 0.005 * u, sh_y + 0.12 * u], fill=hair)
        else:
            d.ellipse(hb, fill=_rgba(self.skin))
            if style != "bald":
                if side:  # hair on top and at the back of the head
                    d.chord([hb[0] - 0.004 * u, hb[1] - 0.004 * u, hb[2], hb[3] - 0.4 * head_r], 150, 360, fill=hair)
                    d.pieslice([hb[0] - 0.004 * u, hb[1], hb[2] - 0.6 * head_r, hb[3] - 0.2 * head_r], 90, 270, fill=hair)
                    if style == "long":
                        d.rectangle([hb[0] - 0.006 * u, head_c[1], head_c[0] - 0.2 * head_r, sh_y + 0.1 * u], fill=hair)
                else:
                    d.chord([hb[0] - 0.004 * u, hb[1] - 0.005 * u, hb[2] + 0.004 * u, hb[3] - 0.5 * head_r], 180, 360,
                            fill=hair)
        if style == "bun":
            r = 0.3 * head_r
            bx = head_c[0] - (0.7 * head_r if side else 0)
            d.ellipse([bx - r, hb[1] - 1.4 * r, bx + r, hb[1] + 0.6 * r], fill=hair)
        head_pts = _rect(hb)
        if ident["hat"] != "none":
            pts = self._hat(hb)
            self.parts["hat"] = pts
            head_pts += pts
        self.parts["head"] = head_pts

    def _hat(self, hb: list[float]) -> list[tuple[float, float]]:
        """A cap (with its brim from the side or the front) or a beanie; its corner points."""
        ident, u, d, head_c, head_r = self.ident, self.u, self.d, self.head_c, self.head_r
        hc = _rgba(ident["hat_color"])
        if ident["hat"] != "cap":
            hat = [hb[0] - 0.008 * u, hb[1] - 0.03 * u, hb[2] + 0.008 * u, head_c[1] - 0.15 * head_r]
            d.rounded_rectangle(hat, radius=0.025 * u, fill=hc)
            return _rect(hat)
        hat = [hb[0] - 0.004 * u, hb[1] - 0.008 * u, hb[2] + 0.004 * u, head_c[1] + 0.05 * head_r]
        d.chord(hat, 180, 360, fill=hc)
        pts = _rect(hat)
        if self.side:
            brim = [head_c[0], head_c[1] - 0.22 * head_r, hb[2] + 0.045 * u, head_c[1] + 0.05 * head_r]
            d.rectangle(brim, fill=hc)
            pts += _rect(brim)
        elif self.pose.view == "front":
            brim = [hb[0], head_c[1] - 0.2 * head_r, hb[2], head_c[1] + 0.12 * head_r]
            d.ellipse(brim, fill=hc)
            pts += _rect(brim)
        return pts

    def _shade(self) -> None:
        """A rounder body (darker at the sides), a little darker towards the feet, fabric texture."""
        arr = np.asarray(self.layer).astype(np.float32)
        ys, xs = np.nonzero(arr[..., 3] > 0)
        if not len(xs):
            return
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        sub = arr[y0:y1, x0:x1, :3]
        gx = (np.arange(x0, x1, dtype=np.float32) - self.cx) / max(1.0, 0.55 * self.sh_w + self.arm_w)
        gy = (np.arange(y0, y1, dtype=np.float32) - self.top) / max(1.0, self.u)
        shade = np.clip(1.06 - 0.22 * gx[None, :] ** 2, 0.72, 1.08) * (1.0 - 0.1 * np.clip(gy, 0, 1))[:, None]
        texture = 1 + 0.05 * np.sin(gy[:, None] * 90 + gx[None, :] * 7) * np.cos(gx[None, :] * 13)
        arr[y0:y1, x0:x1, :3] = np.clip(sub * (shade * texture)[..., None], 0, 255)
        self.layer = Image.fromarray(arr.astype(np.uint8), "RGBA")


def _draw_person(ident: dict[str, Any], size: tuple[int, int], pose: _Pose) -> tuple[Image.Image, dict]:
    """RGBA layer with the person (alpha = silhouette) and amodal part corner lists."""
    return _Figure(ident, size, pose).draw()


def _occluder(d: ImageDraw.ImageDraw, md: ImageDraw.ImageDraw, rng: np.random.Generator, W: int, H: int) -> None:
    """Street furniture in front of the person, drawn on the image (``d``) and the occluder mask (``md``)."""
    kind = int(rng.integers(5))
    col = tuple(_jit(rng, _pick(rng, [(60, 62, 66), (40, 70, 50), (120, 120, 118), (150, 40, 40), (30, 30, 34)]), 15))
    shapes: list[tuple[str, list[float]]] = []
    if kind == 0:  # pole with a sign
        x, w = rng.uniform(0.1, 0.9) * W, rng.uniform(0.06, 0.12) * W
        shapes.append(("rect", [x - w / 2, 0, x + w / 2, H]))
        if rng.random() < 0.5:
            y = rng.uniform(0.05, 0.4) * H
            shapes.append(("rect", [x - 0.3 * W, y, x + 0.3 * W, y + 0.12 * H]))
    elif kind == 1:  # car bonnet / bench / railing from the bottom
        top = rng.uniform(0.6, 0.85) * H
        x0 = rng.uniform(-0.6, 0.2) * W
        shapes.append(("round", [x0, top, x0 + rng.uniform(0.7, 1.4) * W, H + 10]))
    elif kind == 2:  # bin / bollard / hydrant
        x, w = rng.uniform(0.15, 0.85) * W, rng.uniform(0.2, 0.4) * W
        shapes.append(("round", [x - w / 2, rng.uniform(0.68, 0.85) * H, x + w / 2, H + 10]))
    elif kind == 3:  # bicycle in front
        y = rng.uniform(0.78, 0.92) * H
        for dx in (-0.35, 0.35):
            r = 0.11 * H
            shapes.append(("ring", [W / 2 + dx * W - r, y - r, W / 2 + dx * W + r, y + r]))
        shapes.append(("line", [W * 0.15, y, W * 0.5, y - 0.12 * H, W * 0.85, y]))
    else:  # railing
        y = rng.uniform(0.55, 0.75) * H
        shapes.append(("rect", [0, y, W, y + 0.025 * H]))
        for x in np.arange(rng.uniform(0, 0.3) * W, W, rng.uniform(0.25, 0.5) * W):
            shapes.append(("rect", [x, y, x + 0.04 * W, H]))
    lw = max(2, int(0.02 * H))
    for kind_, b in shapes:
        for draw, fill in ((d, col), (md, 255)):
            if kind_ == "rect":
                draw.rectangle(b, fill=fill)
            elif kind_ == "round":
                draw.rounded_rectangle(b, radius=0.08 * W, fill=fill)
            elif kind_ == "ring":
                draw.ellipse(b, outline=fill, width=lw)
            else:
                draw.line(b, fill=fill, width=lw)


# ----------------------------------------------------------------------------------------- images
def _motion_blur(arr: np.ndarray, length: int, vertical: bool) -> np.ndarray:
    """Average of ``length`` shifted copies (edge-padded): a linear motion-blur kernel."""
    axis = 0 if vertical else 1
    pad = [(0, 0)] * 3
    pad[axis] = (length // 2, length - 1 - length // 2)
    p = np.pad(arr, pad, mode="edge")
    n = arr.shape[axis]
    return sum(np.take(p, range(i, i + n), axis=axis) for i in range(length)) / length


def render(ident: dict[str, Any] | None, job: Any, world: Any,
           draw_target: bool = True) -> tuple[Image.Image, Image.Image, dict, dict]:
    """One image of ``job`` (pid, index, cam, junk): ``(rgb, mask, part boxes, extra annotations)``.

    Deterministic in ``(seed, pid, index)``. ``draw_target=False`` leaves the person out and
    changes nothing else (the same random draws), to check that the mask covers what was drawn.
    """
    p = world.params
    height, width = p["height"], p["width"]
    cam: Camera = world.cameras[job.cam]
    rng = np.random.default_rng([world.seed, 4, VERSION, job.pid + 10, job.index])
    W, H = width * SS, height * SS
    canvas = _background(world.seed, rng, H, W).convert("RGBA")
    occ = Image.new("L", (W, H), 0)
    od = ImageDraw.Draw(occ)
    # placement: detector-like box around the person
    view = VIEWS[int(rng.choice(4, p=cam.views))]
    build_h = ident["build_h"] if ident else 1.0
    u = H * 0.84 * cam.scale * build_h * float(np.exp(rng.normal(0, 0.07)))
    cut = str(rng.choice(["none", "head", "feet"], p=[0.9, 0.05, 0.05]))
    feet_y = H * (0.96 + rng.normal(0, 0.015))
    if cut == "feet":
        feet_y = H * rng.uniform(1.1, 1.28)
    elif cut == "head":
        feet_y = u - rng.uniform(0.06, 0.14) * H
    width_scale = (ident["build_w"] if ident else 1.0) * float(np.exp(rng.normal(0, 0.06)))
    pose = _Pose(W / 2 + rng.normal(0, 0.06) * W, feet_y, u, width_scale, view, rng.uniform(0, 2 * math.pi))
    # other people partly in the crop, behind or in front
    crowd = _crowd(world.seed)
    n_by = int(rng.choice(3, p=[0.6, 0.32, 0.08]))
    bystanders = []
    for _ in range(n_by):
        s_ = rng.choice([-1, 1])
        front = rng.random() < 0.25
        bp = _Pose(pose.cx + s_ * rng.uniform(0.5, 0.9) * W,
                   feet_y + (rng.uniform(0.03, 0.1) if front else rng.uniform(-0.08, 0.02)) * H,
                   u * (rng.uniform(1.0, 1.12) if front else rng.uniform(0.8, 1.0)),
                   float(rng.uniform(0.9, 1.15)), VIEWS[int(rng.integers(4))], rng.uniform(0, 2 * math.pi))
        bystanders.append((front, crowd[int(rng.integers(len(crowd)))], bp))
    for front, bident, bp in bystanders:
        if not front:
            canvas.alpha_composite(_draw_person(bident, (W, H), bp)[0])
    parts: dict[str, list[tuple[float, float]]] = {}
    person_alpha = Image.new("L", (W, H), 0)
    if ident is not None:
        layer, parts = _draw_person(ident, (W, H), pose)
        person_alpha = layer.getchannel("A")
        if draw_target:
            canvas.alpha_composite(layer)
    for front, bident, bp in bystanders:
        if front:
            blayer = _draw_person(bident, (W, H), bp)[0]
            canvas.alpha_composite(blayer)
            occ.paste(255, (0, 0), blayer.getchannel("A"))
    if ident is not None and rng.random() < p["occlusion_p"]:
        _occluder(ImageDraw.Draw(canvas), od, rng, W, H)
    rgb = canvas.convert("RGB")
    if job.junk:  # a badly cropped box: mostly background / a sliver of body
        y0 = int(rng.uniform(0.0, 0.6) * H)
        rgb = rgb.crop((0, y0, W, y0 + H // 3)).resize((W, H), Image.Resampling.BILINEAR)
        person_alpha = person_alpha.crop((0, y0, W, y0 + H // 3)).resize((W, H))
        occ = occ.crop((0, y0, W, y0 + H // 3)).resize((W, H))
        parts = {}
    rgb = rgb.resize((width, height), Image.Resampling.BOX)
    # camera: resolution, motion, focus, light, colour, noise
    f = cam.lowres * rng.uniform(0.85, 1.15)
    if f > 1.1:
        small = (max(8, round(width / f)), max(16, round(height / f)))
        rgb = rgb.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(rgb).astype(np.float32)
    if rng.random() < cam.motion_p:
        arr = _motion_blur(arr, int(rng.integers(2, 6)), bool(rng.random() < 0.3))
    radius = max(0.0, cam.blur + rng.uniform(-0.2, 0.3))
    if rng.random() < cam.shadow_p:  # a shadow edge across the crop
        yy, xx = np.mgrid[0:height, 0:width]
        a, b = rng.uniform(-2, 2), rng.uniform(0.1, 0.9) * height
        arr[yy > a * (xx - width / 2) + b] *= rng.uniform(0.5, 0.75)
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + (arr - grey) * cam.saturation
    arr = (arr - 128) * cam.contrast * rng.uniform(0.92, 1.08) + 128
    gain = cam.brightness * rng.uniform(0.85, 1.15)
    arr = arr * gain * np.asarray(cam.cast, np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    rgb = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if radius > 0.15:
        rgb = rgb.filter(ImageFilter.GaussianBlur(radius))
    arr = np.asarray(rgb).astype(np.float32) + cam.noise * rng.standard_normal((height, width, 3), np.float32)
    rgb = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    quality = int(rng.integers(cam.jpeg[0], cam.jpeg[1] + 1))
    # annotations: visible person = drawn and not covered by what is in front
    full = np.asarray(person_alpha.resize((width, height), Image.Resampling.BOX)) >= 128
    vis = full & ~(np.asarray(occ.resize((width, height), Image.Resampling.BOX)) >= 128)
    occluded = float(1 - vis.sum() / full.sum()) if full.sum() else 0.0
    mask = Image.fromarray((vis * 255).astype(np.uint8))
    extra = {"occlusion": round(occluded, 3), "view": view, "cut": cut, "bystanders": n_by,
             "jpeg_quality": quality}
    return rgb, mask, pixel_boxes(parts, height, width, SS), extra
