"""The dataset registry: :func:`build_dataset` by name, :func:`detect_dataset` from a folder's
layout, :func:`open_dataset` (either), :func:`list_images` and :func:`check_images`.

The layouts themselves are parsed by :mod:`hareid.data.datasets` (and :mod:`hareid.data.cuhk03`,
:mod:`hareid.data.synthetic`, :mod:`hareid.data.tracklets`), which know nothing of this registry.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hareid.data.datasets import (
    _MARKET_NAME,
    IMAGE_EXTENSIONS,
    _find_base,
    _msmt_base,
    parse_csv,
    parse_dukemtmcreid,
    parse_folder,
    parse_market1501,
    parse_msmt17,
)
from hareid.data.records import ImageRecord, ReIDDataset
from hareid.errors import DataError

__all__ = ["DATASETS", "build_dataset", "check_images", "detect_dataset", "list_datasets", "list_images",
           "open_dataset"]


def _build_cuhk03(root: str | os.PathLike, **kw: Any) -> ReIDDataset:
    from hareid.data.cuhk03 import parse_cuhk03

    return parse_cuhk03(root, **kw)


def _build_tracklets(root: str | os.PathLike, **kw: Any) -> ReIDDataset:
    from hareid.data.tracklets import parse_tracklets

    return parse_tracklets(root, **kw)


def _build_synthetic(root: str | os.PathLike, version: int | None = None, **kw: Any) -> ReIDDataset:
    from hareid.data.synthetic import load_synthetic

    if kw:
        raise DataError(f"{root}: the synthetic dataset takes no options but `version` ({sorted(kw)}); its "
                        "parameters are chosen when it is written (`hareid synthetic ROOT --help`)")
    return load_synthetic(root, version)


DATASETS: dict[str, Callable[..., ReIDDataset]] = {
    "market1501": parse_market1501,
    "dukemtmcreid": parse_dukemtmcreid,
    "cuhk03": _build_cuhk03,
    "msmt17": parse_msmt17,
    "folder": parse_folder,
    "csv": parse_csv,
    "synthetic": _build_synthetic,
    "tracklets": _build_tracklets,
}
_ALIASES = {"market": "market1501", "duke": "dukemtmcreid", "dukemtmc": "dukemtmcreid",
            "msmt": "msmt17", "cuhk03np": "cuhk03", "manifest": "csv"}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return list(DATASETS)


def build_dataset(name: str, root: str | os.PathLike, verbose: bool = True,
                  verify_images: bool = False, **kw: Any) -> ReIDDataset:
    """Parse dataset ``name`` at ``root``; prints the statistics table when ``verbose``.

    ``verify_images=True`` opens every image once (slow on big sets) and raises on the first
    unreadable one. Other keywords go to the parser (e.g. ``variant="labeled"`` for cuhk03).
    """
    key = re.sub(r"[-_ ]", "", name.lower())
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        near = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise DataError(f"unknown dataset {name!r}{hint}; choose from {', '.join(DATASETS)}")
    try:
        ds = DATASETS[key](root, **kw)
    except TypeError as exc:  # a wrong keyword for this parser
        raise DataError(f"dataset {key!r} at {root}: {exc}") from exc
    if not ds.query or not ds.gallery:
        raise DataError(f"{ds.root}: {key} has no query or no gallery images; check the layout")
    if verify_images:
        check_images(ds.train + ds.query + ds.gallery)
    if verbose:
        print(ds.summary())
    return ds


def check_images(records: list[ImageRecord], progress: bool = True) -> None:
    """Decode every image fully, as training and evaluation will (a truncated JPEG fails here);
    DataError naming the first unreadable one."""
    from hareid.data.loader import read_image
    from hareid.progress import progress as progress_bar

    for r in progress_bar(records, desc="checking images", enabled=progress):
        read_image(r.path)


def detect_dataset(root: str | os.PathLike) -> str | None:
    """Guess the dataset name from the folder layout at ``root`` (``None`` when unknown)."""
    root = Path(root).expanduser()
    if root.is_file():
        return "csv" if root.suffix.lower() == ".csv" else None
    if not root.is_dir():
        return None
    if (root / "synthetic.json").is_file():
        return "synthetic"
    from hareid.data.tracklets import is_tracklets_folder

    if is_tracklets_folder(root):
        return "tracklets"
    if (root / "manifest.csv").is_file():
        return "csv"
    if any((d / "cuhk-03.mat").is_file() for d in (root, root / "cuhk03_release")):
        return "cuhk03"
    if _msmt_base(root) is not None:
        return "msmt17"
    base = _find_base(root, ("bounding_box_train", "bounding_box_test", "query"))
    if base is not None:
        if "duke" in str(base).lower():
            return "dukemtmcreid"
        cams = {int(m.group(2)) for p in (base / "query").iterdir()
                if (m := _MARKET_NAME.match(p.name))}
        return "dukemtmcreid" if cams and max(cams) > 6 else "market1501"
    if (root / "query").is_dir() and (root / "gallery").is_dir():
        return "folder"
    return None


def open_dataset(root: str | os.PathLike, name: str | None = None, verbose: bool = False) -> ReIDDataset:
    """The dataset at ``root``: ``name`` if given, else the layout :func:`detect_dataset` finds;
    a :class:`DataError` naming the choices when neither works."""
    if not Path(root).exists():
        raise DataError(f"{root}: dataset folder not found; pass the folder that holds the dataset")
    name = name or detect_dataset(root)
    if name is None:
        raise DataError(f"{root}: no known dataset layout found; pass --dataset NAME "
                        f"({', '.join(DATASETS)})")
    return build_dataset(name, root, verbose=verbose)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Every image file (jpg, jpeg, png, bmp) under ``folder``, recursively, sorted."""
    root = Path(folder)
    return sorted(str(p) for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())
