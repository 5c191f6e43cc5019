"""CUHK03, 767/700 ("new") protocol, labelled or detected boxes.

Layout read (``root`` = the folder holding these; needs the ``cuhk03`` extra: h5py + scipy)::

    root/cuhk03_release/cuhk-03.mat                   (or root/cuhk-03.mat) MATLAB v7.3 (HDF5)
    root/cuhk03_new_protocol_config_labeled.mat       new-protocol split (scipy.io)
    root/cuhk03_new_protocol_config_detected.mat

``cuhk-03.mat`` holds cell arrays ``labeled`` and ``detected``: one cell per camera pair (5), each a
``num_pids x 10`` cell of ``H x W x 3`` uint8 images (images 1-5 from the pair's first camera,
6-10 from the second; empty cells are missing images). h5py sees every MATLAB array transposed.
Images are extracted once to ``<cache_dir>/images_<variant>/<pair>_<pid:03d>_<view>_<n:02d>.png``
(1-based, the names the split files' ``filelist`` uses); a ``.complete`` marker makes later calls
skip extraction. The split file gives ``filelist``, ``labels`` (pids), and 1-based ``train_idx``,
``query_idx``, ``gallery_idx``; the camera is the view (``1``/``2`` -> ``0``/``1``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hareid.data.records import ImageRecord, ReIDDataset, relabel
from hareid.errors import DataError

__all__ = ["extract_cuhk03_images", "parse_cuhk03"]

_LAYOUT = ("cuhk03_release/cuhk-03.mat and cuhk03_new_protocol_config_{labeled,detected}.mat "
           "(install the extra: pip install 'hareid[cuhk03]')")
VARIANTS = ("labeled", "detected")


def _find_mat(root: Path) -> Path:
    for cand in (root / "cuhk03_release" / "cuhk-03.mat", root / "cuhk-03.mat"):
        if cand.is_file():
            return cand
    raise DataError(f"{root}: cuhk-03.mat not found; expected {root}/{_LAYOUT}")


def extract_cuhk03_images(mat_path: str | os.PathLike, variant: str, out_dir: str | os.PathLike,
                          progress: bool = True) -> Path:
    """Write the ``variant`` images of ``cuhk-03.mat`` as PNGs into ``out_dir`` (cached)."""
    import h5py
    from PIL import Image

    from hareid.progress import progress as progress_bar

    out_dir = Path(out_dir)
    marker = out_dir / ".complete"
    if marker.is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        mat = h5py.File(mat_path, "r")
    except OSError as exc:
        raise DataError(f"{mat_path}: not a MATLAB v7.3 (HDF5) file ({exc}); "
                        "expected the released cuhk-03.mat") from exc
    with mat:
        if variant not in mat:
            raise DataError(f"{mat_path}: no {variant!r} cell array; expected the released cuhk-03.mat")
        pair_refs = np.asarray(mat[variant]).ravel()
        # (pair index, grid of image refs as num_pids x 10)
        pairs = [(i, np.asarray(mat[ref]).T) for i, ref in enumerate(pair_refs)]
        total = sum(g.size for _, g in pairs)
        with progress_bar(total=total, desc=f"cuhk03 {variant}", enabled=progress, unit="img") as bar:
            for pair, grid in pairs:
                for pid in range(grid.shape[0]):
                    for n in range(grid.shape[1]):
                        bar.update(1)
                        img = np.asarray(mat[grid[pid, n]])
                        if img.ndim < 3 or img.size == 0:
                            continue  # an empty cell: this image does not exist
                        img = np.ascontiguousarray(img.T)  # h5py (3, W, H) -> (H, W, 3)
                        view = 1 if n < 5 else 2
                        name = f"{pair + 1}_{pid + 1:03d}_{view}_{n + 1:02d}.png"
                        Image.fromarray(img.astype(np.uint8)).save(out_dir / name)
    marker.write_text("ok\n")
    return out_dir


def parse_cuhk03(root: str | os.PathLike, variant: str = "detected", labeled: bool | None = None,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> ReIDDataset:
    """CUHK03 767/700 protocol; ``variant`` ``"labeled"`` or ``"detected"`` (``labeled=True`` alias)."""
    from scipy.io import loadmat

    if labeled is not None:
        variant = "labeled" if labeled else "detected"
    if variant not in VARIANTS:
        raise DataError(f"cuhk03 variant {variant!r} unknown; choose 'labeled' or 'detected'")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected {root}/{_LAYOUT}")
    root = root.resolve()
    split_path = root / f"cuhk03_new_protocol_config_{variant}.mat"
    if not split_path.is_file():
        raise DataError(f"{split_path}: split file missing; expected {root}/{_LAYOUT}")
    img_dir = Path(cache_dir or root) / f"images_{variant}"
    extract_cuhk03_images(_find_mat(root), variant, img_dir, progress=progress)
    try:
        split = loadmat(split_path)
        filelist = [str(np.asarray(f).ravel()[0]) for f in split["filelist"].ravel()]
        labels = split["labels"].ravel().astype(int)
        idx = {s: split[f"{s}_idx"].ravel().astype(int) - 1 for s in ("train", "query", "gallery")}
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise DataError(f"{split_path}: unreadable split ({exc}); expected filelist, labels, "
                        "train_idx, query_idx, gallery_idx") from exc
    out: dict[str, list[ImageRecord]] = {}
    for s, ids in idx.items():
        recs = []
        for i in ids:
            name = filelist[i]
            path = img_dir / name
            if not path.is_file():
                raise DataError(f"{path}: listed in {split_path.name} but not extracted; delete "
                                f"{img_dir} to extract again from cuhk-03.mat")
            recs.append(ImageRecord(str(path), int(labels[i]), int(name.split("_")[2]) - 1, s))
        out[s] = recs
    return ReIDDataset(f"cuhk03-{variant}", root, relabel(out["train"]), out["query"],
                       out["gallery"])
