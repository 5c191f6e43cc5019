"""Dataset parsers: one function per layout (the registry, :func:`hareid.data.registry.build_dataset`,
chooses among them).

Every parser returns a :class:`~hareid.data.records.ReIDDataset` of absolute-path
:class:`~hareid.data.records.ImageRecord` s (train pids relabelled ``0..N-1``, camids 0-based).
``root`` may be the dataset folder itself or a folder holding it (e.g. ``data/`` with
``data/Market-1501-v15.09.15/`` inside).

Layouts read
------------
``market1501``
    ``bounding_box_train/``, ``bounding_box_test/``, ``query/`` (and ``images/``, the optional
    Market-1501+500k extra gallery, with ``extra_gallery=True``). Names ``<pid>_c<cam>s<seq>_<frame>_<n>.jpg``
    such as ``0002_c1s1_000451_03.jpg``. pid ``-1`` (junk) is dropped everywhere; pid ``0``
    (distractors) is kept in the gallery and dropped from train. Cameras 1..6 become 0..5.
``dukemtmcreid``
    Same layout and naming (``0001_c2_f0046182.jpg``), cameras 1..8.
``msmt17``
    ``MSMT17_V1/{train,test}/`` or ``MSMT17_V2/{mask_train_v2,mask_test_v2}/`` with
    ``list_train.txt``, ``list_val.txt``, ``list_query.txt``, ``list_gallery.txt`` (lines
    ``<relative path> <pid>``; camera = 3rd ``_`` field of the file name, 1..15). Train and val are
    merged (``combine_val=True``), as the common protocol does.
``cuhk03``
    See :mod:`hareid.data.cuhk03` (767/700 protocol, ``variant="labeled"|"detected"``).
``folder`` (your own crops)
    ``root/{train,query,gallery}/<identity>/<camera>_<anything>.<jpg|jpeg|png|bmp>``. ``<identity>`` is
    any folder name (``0042``, ``alice``); ``<camera>`` is the file name up to the first ``_``
    (``3``, ``c3``, ``cam3``, ``entrance``); names ``<camera>_<tracklet>_<anything>`` also give the
    tracklet (``extras["tracklet"]``, for ``--junk tracklet`` with one camera). Numeric identity names keep their value in query and
    gallery, other names are numbered in sorted order (the same mapping for both); identity ``-1``
    is dropped (junk), identity ``0`` is kept in the gallery only (distractors). Cameras are
    numbered 0.. over all splits, numeric names in numeric order. ``train/`` may be empty or absent
    for evaluation-only data; ``query/`` and ``gallery/`` are required.
``csv`` (a manifest)
    A CSV file with header ``path,pid,camid,split`` (``root`` = the file, or a folder holding
    ``manifest.csv``). ``path`` is absolute or relative to the CSV's folder; ``pid``/``camid`` are
    integers or names (numbered as for ``folder``); ``split`` is ``train``, ``query`` or ``gallery``;
    an optional ``tracklet`` column names each image's tracklet (``extras["tracklet"]``).
``synthetic``
    The built-in benchmark (:mod:`hareid.data.synthetic`), read as Market-1501; never written here
    (`hareid synthetic` writes it). Option: `version` (1 or 2), checked against the tree.
``tracklets``
    A folder written by ``hareid tracklets`` (``tracklets.json`` + crops): pseudo-identities from
    tracking, and the label-free time-gap protocol as query/gallery (:mod:`hareid.data.tracklets`).

Errors are :class:`~hareid.errors.DataError` with one line naming the path and the expected layout.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from hareid.data.records import SPLITS, ImageRecord, ReIDDataset, index_labels, relabel
from hareid.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "parse_csv",
    "parse_dukemtmcreid",
    "parse_folder",
    "parse_market1501",
    "parse_msmt17",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_LAYOUT = "bounding_box_train/, bounding_box_test/, query/ with images named <pid>_c<cam>..., e.g. 0002_c1s1_000451_03.jpg"


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def _find_base(root: Path, required: tuple[str, ...], prefer: tuple[str, ...] = ()) -> Path | None:
    """``root`` or a folder up to two levels below it that holds all ``required`` entries."""
    if not root.is_dir():
        return None
    if all((root / r).exists() for r in required):
        return root
    level1 = [root / p for p in prefer if (root / p).is_dir()] + sorted(
        p for p in root.iterdir() if p.is_dir())
    for cand in level1 + [c for d in level1 for c in sorted(d.iterdir()) if c.is_dir()]:
        if all((cand / r).exists() for r in required):
            return cand
    return None


# --------------------------------------------------------------------------------------- Market
def _parse_market_dir(folder: Path, split: str, max_cam: int) -> list[ImageRecord]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder missing; expected a Market-1501 layout: {_MARKET_LAYOUT}")
    records = []
    for p in _list_images(folder):
        m = _MARKET_NAME.match(p.name)
        if m is None:
            raise DataError(f"{p}: cannot read identity/camera from the file name; expected "
                            "<pid>_c<cam>..., e.g. 0002_c1s1_000451_03.jpg (move other files out)")
        pid, cam = int(m.group(1)), int(m.group(2))
        if not 1 <= cam <= max_cam:
            raise DataError(f"{p}: camera c{cam} outside 1..{max_cam} for this dataset; "
                            "check the dataset name or the file name")
        if pid == -1 or (pid == 0 and split == "train"):
            continue  # junk; distractors carry no identity for training
        records.append(ImageRecord(str(p), pid, cam - 1, split))
    return records


def _parse_market_like(root: Path, name: str, max_cam: int, prefer: tuple[str, ...],
                       extra_gallery: bool = False) -> ReIDDataset:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found; expected {_MARKET_LAYOUT}")
    base = _find_base(root, ("bounding_box_train", "bounding_box_test", "query"), prefer)
    if base is None:
        missing = [d for d in ("bounding_box_train", "bounding_box_test", "query")
                   if not (root / d).is_dir()]
        raise DataError(f"{root}: not a {name} folder (missing {', '.join(missing)}); "
                        f"expected {_MARKET_LAYOUT}")
    base = base.resolve()
    train = relabel(_parse_market_dir(base / "bounding_box_train", "train", max_cam))
    query = _parse_market_dir(base / "query", "query", max_cam)
    gallery = _parse_market_dir(base / "bounding_box_test", "gallery", max_cam)
    if extra_gallery:
        gallery += _parse_market_dir(base / "images", "gallery", max_cam)
    return ReIDDataset(name, base, train, query, gallery)


def parse_market1501(root: str | os.PathLike, extra_gallery: bool = False) -> ReIDDataset:
    """Market-1501 (``extra_gallery=True`` adds the ``images/`` 500k distractor folder)."""
    return _parse_market_like(Path(root), "market1501", 6,
                              ("Market-1501-v15.09.15", "market1501", "Market-1501"), extra_gallery)


def parse_dukemtmcreid(root: str | os.PathLike) -> ReIDDataset:
    """DukeMTMC-reID (Market naming, 8 cameras)."""
    return _parse_market_like(Path(root), "dukemtmcreid", 8, ("DukeMTMC-reID", "dukemtmcreid"))


# --------------------------------------------------------------------------------------- MSMT17
_MSMT_VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
_MSMT_LAYOUT = ("MSMT17_V1/{train,test}/ or MSMT17_V2/{mask_train_v2,mask_test_v2}/ with "
                "list_train.txt, list_val.txt, list_query.txt, list_gallery.txt")


def _msmt_base(root: Path) -> tuple[Path, Path, Path] | None:
    cands = [root] + [root / v for v in _MSMT_VERSIONS] + [root / "msmt17" / v for v in _MSMT_VERSIONS]
    for base in cands:
        for train_dir, test_dir in _MSMT_VERSIONS.values():
            if (base / train_dir).is_dir() and (base / "list_train.txt").is_file():
                return base, base / train_dir, base / test_dir
    return None


def _parse_msmt_list(list_path: Path, img_dir: Path, split: str) -> list[ImageRecord]:
    if not list_path.is_file():
        raise DataError(f"{list_path}: list file missing; expected {_MSMT_LAYOUT}")
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder missing; expected {_MSMT_LAYOUT}")
    records = []
    with open(list_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                rel, pid = parts[0], int(parts[1])
                cam = int(Path(rel).name.split("_")[2])
            except (IndexError, ValueError):
                raise DataError(f"{list_path}:{lineno}: cannot parse {line.strip()!r}; expected "
                                "'<pid>/<pid>_<n>_<cam>_<...>.jpg <pid>' lines") from None
            path = img_dir / rel
            if not path.is_file():
                raise DataError(f"{path}: listed in {list_path.name} line {lineno} but missing; "
                                f"expected {_MSMT_LAYOUT}")
            records.append(ImageRecord(str(path), pid, cam - 1, split))
    return records


def parse_msmt17(root: str | os.PathLike, combine_val: bool = True) -> ReIDDataset:
    """MSMT17 V1 or V2; train+val merged when ``combine_val`` (the common protocol)."""
    root = Path(root).expanduser()
    found = _msmt_base(root) if root.is_dir() else None
    if found is None:
        raise DataError(f"{root}: not an MSMT17 folder; expected {_MSMT_LAYOUT}")
    base, train_dir, test_dir = (p.resolve() for p in found)
    train = _parse_msmt_list(base / "list_train.txt", train_dir, "train")
    if combine_val:
        train += _parse_msmt_list(base / "list_val.txt", train_dir, "train")
    query = _parse_msmt_list(base / "list_query.txt", test_dir, "query")
    gallery = _parse_msmt_list(base / "list_gallery.txt", test_dir, "gallery")
    return ReIDDataset("msmt17", base, relabel(train), query, gallery)


# ------------------------------------------------------------------------- folder / CSV (own data)
_FOLDER_LAYOUT = "root/{train,query,gallery}/<identity>/<camera>_<anything>.jpg"


def _finish_custom(name: str, root: Path, rows: list[tuple[str, Any, Any, str]]) -> ReIDDataset:
    """Turn ``(path, pid_label, cam_label, split)`` rows into a dataset (numbering as documented)."""
    rows = [r for r in rows if str(r[1]).strip() != "-1"]  # junk
    rows = [r for r in rows if not (r[3] != "gallery" and _is_zero(r[1]))]  # distractors: gallery only
    cams = index_labels(r[2] for r in rows)
    test_labels = [r[1] for r in rows if r[3] != "train"]
    if all(_is_int_str(v) for v in test_labels):
        test_map = {v: int(v) for v in test_labels}
    else:  # names: number them 1.. in sorted order (0 stays reserved for distractors)
        test_map = {v: i + 1 for v, i in index_labels(test_labels).items()}
    train_map = index_labels(r[1] for r in rows if r[3] == "train")
    out: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for path, pid, cam, split in rows:
        pid_i = train_map[pid] if split == "train" else test_map[pid]
        out[split].append(ImageRecord(path, pid_i, cams[cam], split))
    return ReIDDataset(name, root, out["train"], out["query"], out["gallery"])


def _is_int_str(v: Any) -> bool:
    return re.fullmatch(r"-?\d+", str(v).strip()) is not None


def _is_zero(v: Any) -> bool:
    return _is_int_str(v) and int(v) == 0


def parse_folder(root: str | os.PathLike) -> ReIDDataset:
    """Your own crops in ``root/{train,query,gallery}/<identity>/<camera>_<anything>.jpg``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected {_FOLDER_LAYOUT}")
    root = root.resolve()
    for split in ("query", "gallery"):
        if not (root / split).is_dir():
            raise DataError(f"{root / split}: folder missing; expected {_FOLDER_LAYOUT}")
    rows: list[tuple[str, Any, Any, str]] = []
    tracklets: dict[str, str] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        for id_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for img in _list_images(id_dir):
                cam, sep, rest = img.stem.partition("_")
                if not sep or not cam:
                    raise DataError(f"{img}: no camera in the file name; expected "
                                    f"<camera>_<anything>{img.suffix} (layout {_FOLDER_LAYOUT})")
                rows.append((str(img), id_dir.name, _cam_label(cam), split))
                track, sep2, _ = rest.partition("_")
                if sep2 and track:  # <camera>_<tracklet>_<anything>: the tracklet junk group
                    tracklets[str(img)] = f"{id_dir.name}/{cam}/{track}"
    ds = _finish_custom("folder", root, rows)
    ds.extras["tracklet"] = tracklets
    return ds


def _cam_label(cam: str) -> str:
    """``c3``/``cam3``/``3`` -> ``"3"`` so numeric cameras sort numerically; names stay names."""
    m = re.fullmatch(r"(?:cam|c)?(\d+)", cam, flags=re.IGNORECASE)
    return str(int(m.group(1))) if m else cam


def parse_csv(root: str | os.PathLike) -> ReIDDataset:
    """A ``path,pid,camid,split`` manifest (``root`` = the CSV, or a folder with ``manifest.csv``)."""
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; expected a CSV with header path,pid,camid,split")
    path = path.resolve()
    rows: list[tuple[str, Any, Any, str]] = []
    tracklets: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if not {"path", "pid", "camid", "split"} <= set(header):
            raise DataError(f"{path}: header {header} lacks path,pid,camid,split; "
                            "expected a first line 'path,pid,camid,split'")
        for lineno, row in enumerate(reader, 2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            split = row["split"].lower()
            if split not in SPLITS or not row["path"] or not row["pid"] or not row["camid"]:
                raise DataError(f"{path}:{lineno}: bad row {row}; expected path,pid,camid,split "
                                "with split in train/query/gallery")
            img = Path(row["path"]).expanduser()
            img = img if img.is_absolute() else path.parent / img
            if not img.is_file():
                raise DataError(f"{img}: image listed in {path.name} line {lineno} not found; "
                                "paths are absolute or relative to the CSV's folder")
            rows.append((str(img), row["pid"], _cam_label(row["camid"]), split))
            if row.get("tracklet"):
                tracklets[str(img)] = row["tracklet"]
    if not any(r[3] == "query" for r in rows) or not any(r[3] == "gallery" for r in rows):
        raise DataError(f"{path}: no query or no gallery rows; every manifest needs both splits")
    ds = _finish_custom("csv", path, rows)
    ds.extras["tracklet"] = tracklets
    return ds
