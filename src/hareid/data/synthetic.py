"""A built-in synthetic pedestrian benchmark, deterministic from a seed, in versions.

``write_synthetic(root, version=...)`` renders pedestrians with Pillow and writes a Market-1501 tree
that :func:`hareid.data.datasets.parse_market1501` reads unchanged::

    root/bounding_box_train/0001_c3s1_000004_00.jpg      train identities 1..N
    root/bounding_box_test/ ...                          test identities N+1..N+M (gallery),
                                                         0000_* distractors, -1_* junk
    root/query/ ...                                      one image per (test identity, camera) for a
                                                         subset of the identity's cameras
    root/masks/<same folder>/<same stem>.png             foreground mask (255 = visible person)
    root/annotations.json                                see below
    root/synthetic.json                                  generation parameters (the cache key)
    root/.complete                                       written last; a tree without it is rebuilt

**Versions** differ only in the renderer (what a person, a camera and an image look like); the
plan of identities, cameras and splits, the writer, the annotations, the cache and the sample grid
are shared:

* ``1`` (:mod:`hareid.data.synthetic_v1`): cartoon pedestrians in colourful clothes, each camera
  with its own background scene. Kept byte-for-byte reproducible.
* ``2`` (:mod:`hareid.data.synthetic_v2`): detector-like crops of street pedestrians: textured
  street scenes independent of camera and identity, other people partly in the crop, detector
  misalignment (shift, scale, head or feet cut off), occluders, walking phases and front / back /
  side views, motion blur, low resolution and JPEG artefacts; street clothing statistics (dark
  coats, blue jeans) with identities that differ in small details.

Annotation file (``annotations.json``)::

    {"format": "hareid-synthetic", "version": 1 | 2, "image_size": [H, W],
     "box_format": "x1,y1,x2,y2 in pixels of the image, x2/y2 exclusive, amodal, clipped",
     "parts": ["head", "torso", "legs", "feet", "hat", "bag", "logo"],
     "images": {"bounding_box_train/0001_c3s1_000004_00.jpg": {
         "mask": "masks/bounding_box_train/0001_c3s1_000004_00.png",
         "pid": 1, "camid": 2, "split": "train",      # camid 0-based; split train/query/gallery
         "boxes": {"head": [x1, y1, x2, y2], "torso": [...], "legs": [...], "feet": [...],
                   "hat": [...], "bag": [...], "logo": [...]},   # only parts worn and in the image
         "occlusion": 0.12, ...}, ...},               # fraction of the person hidden; v2 adds
                                                      # "view", "cut", "bystanders"
     "identities": {"1": {"split": "train", ..., "hard_negative_of": 2, "differs_in": "shoes"}},
     "cameras": [{...}, ...]}                         # the renderer's camera parameters

All paths are relative to ``root``. Boxes are amodal (an occluded part keeps its full box) and
clipped to the image; a part entirely outside the image (v2: a crop that cuts the feet or the
head off) has no box. The mask shows only the visible person.

Data is generated only by :func:`write_synthetic` (``hareid synthetic``, ``hareid demo``);
:func:`load_synthetic` (``build_dataset("synthetic", root)``) only reads.
"""

from __future__ import annotations

import importlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from hareid.data.records import ReIDDataset
from hareid.errors import DataError

__all__ = ["DEFAULT_VERSION", "VERSIONS", "default_root", "load_annotations", "load_synthetic",
           "save_sample_grid", "synthetic_params", "write_synthetic"]

#: Generator versions; each has a renderer module ``hareid.data.synthetic_v<N>``.
VERSIONS = (1, 2)
#: The version ``hareid synthetic`` and ``hareid demo`` use when none is given.
DEFAULT_VERSION = 1
PARTS = ("head", "torso", "legs", "feet", "hat", "bag", "logo")
_SPLIT_DIRS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}


def renderer(version: int) -> ModuleType:
    """The renderer module of ``version``.

    A renderer provides ``VERSION``, ``DEFAULTS`` (version-specific parameter defaults),
    ``make_identities(seed, pids, frac)``, ``make_distractors(seed, n)``, ``make_cameras(seed, n)``
    (dataclasses) and ``render(ident, job, world) -> (rgb, mask, boxes, extra)`` (PIL RGB image,
    PIL L mask, part boxes in pixels, extra per-image annotations; ``extra["jpeg_quality"]``, if
    given, is the JPEG quality to save with and is not stored).
    """
    if version not in VERSIONS:
        raise DataError(f"synthetic version {version!r} does not exist; choose one of {list(VERSIONS)}")
    return importlib.import_module(f"hareid.data.synthetic_v{version}")


@dataclass
class World:
    """What every image of one tree is drawn from (shared with the worker processes)."""

    seed: int
    params: dict[str, Any]
    identities: dict[int, dict[str, Any]]
    distractors: dict[int, dict[str, Any]]
    cameras: list[Any] = field(default_factory=list)


# -------------------------------------------------------------------------------- the whole tree
@dataclass(frozen=True)
class _Job:
    pid: int
    index: int
    cam: int
    split: str
    rel: str
    junk: bool = False


_STATE: dict[str, Any] = {}


def _init_worker(state: dict[str, Any]) -> None:
    _STATE.clear()
    _STATE.update(state)


def _render_job(job: _Job) -> tuple[str, dict[str, Any]]:
    root: Path = _STATE["root"]
    world: World = _STATE["world"]
    ident = world.identities.get(job.pid) if job.pid > 0 else world.distractors.get(job.index)
    if job.junk:
        ident = world.distractors[job.index % len(world.distractors)] if world.distractors else None
    rgb, mask, boxes, extra = _STATE["render"](ident, job, world)
    quality = extra.pop("jpeg_quality", 92)
    mask_rel = f"masks/{Path(job.rel).with_suffix('.png').as_posix()}"
    rgb.save(root / job.rel, quality=quality)
    mask.save(root / mask_rel, optimize=False, compress_level=1)
    split = {"bounding_box_train": "train", "query": "query"}.get(job.rel.split("/")[0], "gallery")
    return job.rel, {"mask": mask_rel, "pid": job.pid, "camid": job.cam, "split": split,
                     "boxes": boxes, **extra}


def _plan(params: dict[str, Any], render: ModuleType) -> tuple[list[_Job], World]:
    """Identities, distractors, cameras and the list of images (pid, camera, folder): the same
    plan for every version (only the renderer's identities and cameras differ)."""
    seed, ntr, nte = params["seed"], params["num_train_ids"], params["num_test_ids"]
    n_img, ncam = params["images_per_id"], params["num_cams"]
    rng = np.random.default_rng([seed, 5])
    train_pids = list(range(1, ntr + 1))
    test_pids = list(range(ntr + 1, ntr + nte + 1))
    identities = render.make_identities(seed, train_pids, params["hard_negative_frac"])
    identities.update(render.make_identities(seed + 7919, test_pids, params["hard_negative_frac"]))
    for pid in train_pids:
        identities[pid]["split"] = "train"
    for pid in test_pids:
        identities[pid]["split"] = "test"
    distractors = render.make_distractors(seed, params["num_distractors"] + 1)
    jobs: list[_Job] = []
    for pid in train_pids + test_pids:
        n = max(2, n_img + int(rng.integers(-(n_img // 4), n_img // 4 + 1)))
        k = int(rng.integers(2, ncam + 1)) if ncam > 1 else 1
        k = max(1, min(k, n // 2))
        cams = sorted(rng.choice(ncam, k, replace=False).tolist())
        assign = [cams[i % k] for i in range(n)]
        rng.shuffle(assign)
        if pid in identities and identities[pid]["split"] == "train":
            folders = ["bounding_box_train"] * n
        else:  # one query per camera for a subset of the identity's cameras
            qcams = set(rng.choice(cams, max(1, math.ceil(k / 2)), replace=False).tolist()) if k > 1 else set()
            folders = []
            for c in assign:
                if c in qcams:
                    folders.append("query")
                    qcams.discard(c)
                else:
                    folders.append("bounding_box_test")
        for i, (c, folder) in enumerate(zip(assign, folders)):
            name = f"{pid:04d}_c{c + 1}s1_{(i + 1) * 25:06d}_00.jpg"
            jobs.append(_Job(pid, i, c, "", f"{folder}/{name}"))
    for i in range(params["num_distractors"]):
        c = int(rng.integers(ncam))
        jobs.append(_Job(0, i, c, "", f"bounding_box_test/0000_c{c + 1}s1_{(i + 1) * 25:06d}_00.jpg"))
    for i in range(params["num_junk"]):
        c = int(rng.integers(ncam))
        jobs.append(_Job(-1, i, c, "", f"bounding_box_test/-1_c{c + 1}s1_{(i + 1) * 25:06d}_00.jpg",
                         junk=True))
    world = World(seed, params, identities, distractors, render.make_cameras(seed, ncam))
    return jobs, world


def _stored_params(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, params: dict[str, Any] | None) -> bool:
    stored = _stored_params(root)
    return stored is not None and (root / ".complete").is_file() and (params is None or stored == params)


def synthetic_params(version: int = DEFAULT_VERSION, seed: int = 0, num_train_ids: int = 100,
                     num_test_ids: int = 100, images_per_id: int = 20, num_cams: int = 6,
                     height: int = 160, width: int = 64, hard_negative_frac: float | None = None,
                     occlusion_p: float | None = None, num_distractors: int = 40,
                     num_junk: int = 10) -> dict[str, Any]:
    """The generation parameters (the cache key stored in ``synthetic.json``); ``None`` takes the
    version's default."""
    defaults = renderer(version).DEFAULTS
    return {"generator_version": version, "seed": seed, "num_train_ids": num_train_ids,
            "num_test_ids": num_test_ids, "images_per_id": images_per_id, "num_cams": num_cams,
            "height": height, "width": width,
            "hard_negative_frac": defaults["hard_negative_frac"] if hard_negative_frac is None else hard_negative_frac,
            "occlusion_p": defaults["occlusion_p"] if occlusion_p is None else occlusion_p,
            "num_distractors": num_distractors, "num_junk": num_junk}


def default_root(version: int = DEFAULT_VERSION, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``hareid demo`` caches the set: ``CACHE_DIR/synthetic-v<version>[-seed<seed>]``, one
    folder per version and seed, so switching between them rewrites nothing."""
    from hareid import CACHE_DIR

    return Path(cache_dir or CACHE_DIR) / (f"synthetic-v{version}" + (f"-seed{seed}" if seed else ""))


def write_synthetic(root: str | os.PathLike, seed: int = 0, num_train_ids: int = 100,
                    num_test_ids: int = 100, images_per_id: int = 20, num_cams: int = 6,
                    height: int = 160, width: int = 64, hard_negative_frac: float | None = None,
                    occlusion_p: float | None = None, num_distractors: int = 40, num_junk: int = 10,
                    workers: int | None = None, progress: bool = True,
                    version: int = DEFAULT_VERSION) -> Path:
    """Write (or reuse) the synthetic Market-1501-layout tree of ``version`` at ``root``; returns ``root``.

    Reused when ``root/synthetic.json`` holds the same parameters (version included) and
    ``root/.complete`` exists; a stale or half-written synthetic tree is replaced. ``images_per_id``
    varies by +-25% per identity; each identity is seen by 2..``num_cams`` cameras.
    ``hard_negative_frac`` / ``occlusion_p``: ``None`` takes the version's default. ``workers``:
    processes (default: CPU count, 0 for small sets).
    """
    from hareid.progress import progress as progress_bar

    if num_train_ids < 1 or num_test_ids < 1 or images_per_id < 2 or num_cams < 2:
        raise DataError(f"{root}: synthetic set needs >=1 train and test identity, >=2 images per "
                        "identity and >=2 cameras")
    if height < 32 or width < 16:
        raise DataError(f"{root}: synthetic images must be at least 32x16 pixels, got {height}x{width}")
    render = renderer(version)
    root = Path(root).expanduser()
    params = synthetic_params(version, seed, num_train_ids, num_test_ids, images_per_id, num_cams,
                              height, width, hard_negative_frac, occlusion_p, num_distractors, num_junk)
    if _is_complete(root, params):
        return root
    if root.exists() and any(root.iterdir()) and not (root / "synthetic.json").exists():
        raise DataError(f"{root}: folder is not empty and holds no synthetic.json; give an empty or "
                        "new folder for the synthetic benchmark")
    for sub in (*_SPLIT_DIRS.values(), "masks"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for f in (".complete", "annotations.json"):
        (root / f).unlink(missing_ok=True)
    for sub in _SPLIT_DIRS.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "masks" / sub).mkdir(parents=True, exist_ok=True)
    (root / "synthetic.json").write_text(json.dumps(params, indent=1))
    jobs, world = _plan(params, render)
    state = {"root": root, "world": world, "render": render.render}
    if workers is None:
        workers = 0 if len(jobs) < 400 else min(os.cpu_count() or 1, 8)
    images: dict[str, Any] = {}
    bar = progress_bar(total=len(jobs), desc=f"synthetic v{version}", unit="img", enabled=progress)
    if workers <= 1:
        _init_worker(state)
        for job in jobs:
            rel, ann = _render_job(job)
            images[rel] = ann
            bar.update()
    else:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
            for rel, ann in pool.imap_unordered(_render_job, jobs, chunksize=32):
                images[rel] = ann
                bar.update()
    bar.close()
    ann = {"format": "hareid-synthetic", "version": version, "image_size": [height, width],
           "box_format": "x1,y1,x2,y2 in pixels of the image, x2/y2 exclusive, amodal, clipped",
           "parts": list(PARTS), "images": dict(sorted(images.items())),
           "identities": {str(k): v for k, v in sorted(world.identities.items())},
           "cameras": [asdict(c) for c in world.cameras]}
    (root / "annotations.json").write_text(json.dumps(ann, separators=(",", ":")))
    (root / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return root


def synthetic_version(root: str | os.PathLike) -> int | None:
    """The generator version of a complete synthetic tree at ``root`` (``None``: none there)."""
    root = Path(root).expanduser()
    return _stored_params(root).get("generator_version") if _is_complete(root, None) else None


def load_synthetic(root: str | os.PathLike, version: int | None = None) -> ReIDDataset:
    """The synthetic benchmark at ``root`` as a dataset. Only reads: a missing or half-written tree,
    or one of another ``version`` than asked for, is a :class:`DataError` naming the command that
    writes it."""
    from hareid.data.datasets import parse_market1501

    root = Path(root).expanduser()
    found = synthetic_version(root)
    if found is None:
        hint = f" --version {version}" if version else ""
        raise DataError(f"{root}: no complete synthetic set here; write one with `hareid synthetic {root}{hint}` "
                        "(or `hareid demo`), or set data.root to where it is")
    if version is not None and found != version:
        raise DataError(f"{root}: holds synthetic version {found}, not the {version} asked for "
                        f"(data.options.version); write version {version} to another folder with "
                        f"`hareid synthetic NEW_ROOT --version {version}` or drop the option")
    ds = parse_market1501(root)
    ds.name = "synthetic"
    ds.extras["annotations"] = str(root.resolve() / "annotations.json")
    images = load_annotations(root)["images"]
    base = root.resolve()
    for split in ("train", "query", "gallery"):  # every image carries the person mask that was drawn
        setattr(ds, split, [replace(r, mask=_mask_of(images, base, r.path)) for r in getattr(ds, split)])
    return ds


def _mask_of(images: dict[str, Any], base: Path, path: str) -> str | None:
    entry = images.get(Path(path).resolve().relative_to(base).as_posix())
    return str(base / entry["mask"]) if entry and entry.get("mask") else None


def load_annotations(root: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``annotations.json`` of a synthetic tree."""
    path = Path(root) / "annotations.json"
    if not path.is_file():
        raise DataError(f"{path}: missing; write the synthetic set first (hareid synthetic ROOT)")
    return json.loads(path.read_text())


def save_sample_grid(root: str | os.PathLike, out_path: str | os.PathLike, num_ids: int = 8,
                     per_id: int = 8, with_masks: bool = True) -> Path:
    """A PNG grid: one row per identity (hard-negative pairs first), columns across cameras, plus
    the masks and part boxes of the first row."""
    import torch
    from torchvision.utils import draw_bounding_boxes, make_grid, save_image

    root = Path(root)
    ann = load_annotations(root)
    by_pid: dict[int, list[str]] = {}
    for rel, a in ann["images"].items():
        if a["pid"] > 0:
            by_pid.setdefault(a["pid"], []).append(rel)
    idents = ann["identities"]
    pairs = [int(p) for p, v in idents.items()
             if "hard_negative_of" in v and int(p) < v["hard_negative_of"]]
    order: list[int] = []
    for p in pairs[: num_ids // 4]:
        order += [p, idents[str(p)]["hard_negative_of"]]
    order += [p for p in sorted(by_pid) if p not in order][: num_ids - len(order)]
    tiles = []
    to_t = lambda im: torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)  # noqa: E731
    for pid in order:
        rels = sorted(by_pid[pid], key=lambda r: (ann["images"][r]["camid"], r))
        seen, pick = set(), []
        for r in rels:  # one per camera first, then the rest
            if ann["images"][r]["camid"] not in seen:
                seen.add(ann["images"][r]["camid"])
                pick.append(r)
        pick += [r for r in rels if r not in pick]
        pick = (pick * per_id)[:per_id]
        tiles += [to_t(Image.open(root / r)) for r in pick]
        if with_masks and pid == order[0]:
            first = pick
    if with_masks:
        colors = ["red", "lime", "blue", "yellow", "magenta", "cyan", "orange"]
        for r in first:
            a = ann["images"][r]
            m = to_t(Image.open(root / a["mask"]))
            names = [k for k in PARTS if k in a["boxes"]]
            if names:
                boxes = torch.tensor([a["boxes"][k] for k in names], dtype=torch.float)
                boxes[:, 2:] -= 1
                m = draw_bounding_boxes(m // 2, boxes, colors=[colors[PARTS.index(k)] for k in names])
            tiles.append(m)
    grid = make_grid(torch.stack(tiles).float() / 255, nrow=per_id, padding=2, pad_value=1.0)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, out_path)
    return out_path
