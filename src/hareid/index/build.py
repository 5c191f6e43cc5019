"""Embed a gallery into an index: sharded over processes or machines, resumable, with progress.

``index_gallery(CKPT, ROOT, OUT)`` lists the gallery (a dataset split, a folder of images or a CSV
of paths with metadata), skips the paths OUT already holds, and embeds the rest. Under
``torchrun`` every rank runs the same call: the remaining images are dealt out in rounds of
``world_size x batch_size``; each rank embeds its share of a round, rank 0 gathers the round (in
gallery order) and commits it to the index in one transaction. A run stopped at any point resumes
from its last committed round. Only rank 0 opens the index, so one writer serves both backends
(a milvus-lite file cannot be opened by two processes).
"""

from __future__ import annotations

import csv
import inspect
import math
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from hareid.errors import DataError
from hareid.fileio import ensure_disjoint
from hareid.progress import progress as progress_bar

__all__ = ["GalleryRecord", "footage_records", "gallery_records", "index_gallery"]

_FRAME = re.compile(r"c\d+s\d+_(\d+)")  # Market-1501 style names: 0002_c1s1_000451_03.jpg


@dataclass(frozen=True)
class GalleryRecord:
    """One gallery image to index and its metadata."""

    path: str
    camera: str = ""
    time: float | None = None
    source: str = ""
    pid: int = -1
    tracklet: str = ""  # footage: the global tracklet key "<camera>/<nnnn>"
    frame: int = -1  # footage: the frame index in ``source``
    box: tuple[float, float, float, float] | None = None  # footage: x1, y1, x2, y2 in frame pixels


def footage_records(root: str | os.PathLike) -> list[GalleryRecord]:
    """Every crop of a tracklets folder (``hareid tracklets``) as footage: camera = the source's
    camera name, time = absolute unix seconds (the source's start time + the frame's time),
    source = the video file or frame folder, frame, box and tracklet key; pid = the given identity
    (MOT ground truth) or -1. Folders written before cameras had start times get start 0."""
    from hareid.data.tracklets import load_tracklets_meta

    root_p = Path(root).expanduser().resolve()
    meta = load_tracklets_meta(root_p)
    sources = {s["name"]: s for s in meta.get("sources", [])}
    out = []
    for t in meta["tracklets"]:
        src = sources.get(t["source"], {})
        camera = t.get("camera", t["source"])
        key = t.get("key", f"{camera}/{int(t.get('index', 0)):04d}")
        start = float(src.get("start_time", 0.0))
        pid = int(t["identity"]) if t.get("identity") is not None else -1
        for c in t["crops"]:
            p = root_p / c["file"]
            abs_time = c.get("abs_time", start + float(c["time"]))
            box = tuple(float(v) for v in c["box"])
            out.append(GalleryRecord(str(p), c.get("camera", camera), float(abs_time),
                                     c.get("source_path", src.get("frames_path", src.get("path", ""))),
                                     pid, c.get("tracklet", key), int(c["frame"]), box))  # type: ignore[arg-type]
    if not out:
        raise DataError(f"{root_p / 'tracklets.json'}: lists no crops; write the folder again with "
                        "hareid tracklets")
    return out


def _frame_time(path: str) -> float | None:
    m = _FRAME.search(Path(path).name)
    return float(m.group(1)) if m else None


def _from_csv(meta: Path, root: Path | None) -> list[GalleryRecord]:
    base = root if root is not None and root.is_dir() else meta.parent
    out = []
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(f"{meta}: needs a header with a 'path' column (optional: camera, time, "
                            "source, pid)")
        for line, row in enumerate(reader, 2):
            p = Path(row["path"])
            p = p if p.is_absolute() else base / p
            try:
                t = float(row["time"]) if row.get("time") not in (None, "") else None
                pid = int(row["pid"]) if row.get("pid") not in (None, "") else -1
                if t is not None and not math.isfinite(t):
                    raise ValueError(f"time {row['time']!r} is not finite")
            except ValueError as e:
                raise DataError(f"{meta}:{line}: {e}; time must be a number of seconds and pid "
                                "an integer") from None
            out.append(GalleryRecord(str(p.resolve()), row.get("camera") or "", t,
                                     row.get("source") or meta.stem, pid))
    return out


def gallery_records(root: str | os.PathLike, dataset: str | None = None, split: str = "gallery",
                    meta: str | os.PathLike | None = None) -> list[GalleryRecord]:
    """What to index, sorted by path (the same list on every rank).

    - a tracklets folder (``hareid tracklets``): every crop, as footage (:func:`footage_records`;
      the evaluation protocol's query/gallery split is for ``hareid eval`` only);
    - ``meta``: a CSV with a ``path`` column (relative to ROOT) and optional ``camera``, ``time``
      (seconds), ``source``, ``pid``;
    - a dataset layout (detected or ``dataset``): its ``split``; camera = the 0-based camid,
      pid = the identity, time = the frame index of Market-1501-style names, source = the split;
    - any other folder: every image below it; camera = the first sub-folder (``ROOT/cam1/x.jpg``),
      time = the file's modification time (unix seconds), source = ``"folder"``.
    """
    from hareid.data import detect_dataset, list_images, open_dataset
    from hareid.data.tracklets import is_tracklets_folder

    root_p = Path(root)
    if meta is not None:
        recs = _from_csv(Path(meta), root_p)
    elif not root_p.exists():
        raise DataError(f"{root}: gallery folder not found; pass a folder of images or a dataset")
    elif dataset in (None, "tracklets") and is_tracklets_folder(root_p):
        recs = footage_records(root_p)
    elif dataset is None and root_p.is_dir() and detect_dataset(root_p) is None:
        paths = [p for p in list_images(root_p)  # hidden folders (e.g. .hareid-index/uploads) skipped
                 if not any(part.startswith(".") for part in Path(p).relative_to(root_p).parts)]
        if not paths:
            raise DataError(f"{root}: neither a known dataset layout nor a folder with images")
        recs = []
        for p in paths:
            rel = Path(p).relative_to(root_p)
            cam = rel.parts[0] if len(rel.parts) > 1 else ""
            recs.append(GalleryRecord(str(Path(p).resolve()), cam, os.path.getmtime(p), "folder"))
    else:
        records = getattr(open_dataset(root_p, dataset), split)
        recs = [GalleryRecord(str(Path(r.path).resolve()), str(r.camid), _frame_time(r.path), split,
                              int(r.pid)) for r in records]
    recs.sort(key=lambda r: r.path)
    return recs


def _add(index: Any, feats: Any, recs: Sequence[GalleryRecord]) -> None:
    """``index.add`` with the footage fields (tracklet, frame, box) when the index takes them."""
    kw: dict[str, Any] = {}
    if any(r.tracklet or r.frame >= 0 or r.box is not None for r in recs):
        params = inspect.signature(index.add).parameters
        for name, values in (("tracklets", [r.tracklet for r in recs]),
                             ("frames", [r.frame for r in recs]), ("boxes", [r.box for r in recs])):
            if name in params:
                kw[name] = values
    index.add(feats, [r.path for r in recs], [r.pid for r in recs], [r.camera for r in recs],
              [r.time for r in recs], [r.source for r in recs], **kw)


class _Images(Dataset):
    """Decoded, normalised images; an unreadable file gives ``ok = 0`` instead of an error."""

    def __init__(self, paths: Sequence[str], preprocess: Any, size: tuple[int, int]):
        self.paths, self.preprocess, self.size = list(paths), preprocess, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            return self.preprocess(self.paths[i]), 1
        except (DataError, OSError, ValueError, RuntimeError):
            return torch.zeros(3, *self.size), 0


def _agree(records: Sequence[GalleryRecord]) -> None:
    """Every rank must list the same gallery (same shared folder, same files)."""
    from hareid import distributed as hdist

    crc = zlib.crc32("\n".join(r.path for r in records).encode())
    mine = torch.tensor([len(records), crc], dtype=torch.int64)
    everyone = hdist.all_gather_tensor(mine)
    if any(not torch.equal(t.cpu(), mine) for t in everyone):
        raise DataError("ranks list different galleries (counts/checksums "
                        f"{[t.tolist() for t in everyone]}); the gallery must be the same folder "
                        "on every machine and must not change while indexing")


def index_gallery(checkpoint: str | os.PathLike, root: str | os.PathLike,
                  out: str | os.PathLike, *, dataset: str | None = None, split: str = "gallery",
                  meta: str | os.PathLike | None = None, kind: str = "flat", nlist: int = 1024,
                  nprobe: int | None = None, pq_m: int = 64, collection: str | None = None,
                  token: str | None = None, batch_size: int = 64, workers: int = 2,
                  progress: bool = True, embedder: Any = None, dtype: Any = "auto",
                  calibration: Any = None, per_tracklet: bool = False) -> dict[str, Any] | None:
    """Index ``root`` into ``out`` (FAISS folder, milvus-lite ``.db`` or Milvus URI); resumable.

    ``dtype`` / ``calibration``: the embedding precision, as :class:`hareid.Embedder` (``"auto"``:
    :func:`hareid.runtime.auto_dtype`; ``"int8"`` calibrates on ``calibration``, default ``root``).
    ``per_tracklet`` (a tracklets folder): one vector per tracklet, the mean of its crops' unit
    embeddings, stored with the tracklet's middle crop (its path, time, frame and box).

    Returns (on rank 0; ``None`` elsewhere) ``{"location", "total", "added", "skipped",
    "unreadable": [paths], "index": describe()}``.
    """
    from hareid import distributed as hdist
    from hareid.index import open_index
    from hareid.index.embedder import load_embedder
    from hareid.index.milvus_store import is_milvus_uri

    if not is_milvus_uri(str(out)):  # the index may live inside the gallery, never hold or be it
        ensure_disjoint(out, [root, meta, checkpoint], inside_ok=True)
    dist = hdist.init_distributed()
    rank, world = dist.rank, dist.world_size
    records = gallery_records(root, dataset, split, meta)
    if per_tracklet:
        if not any(r.tracklet for r in records):
            raise DataError(f"{root}: --per-tracklet needs a tracklets folder (written by hareid "
                            "tracklets); index single images without it")
        if world > 1:
            raise DataError("--per-tracklet runs in one process; run it without torchrun")
    if world > 1:
        _agree(records)
    if embedder is None:
        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
        if dtype == "int8":
            device, calibration = "cpu", calibration or root
        embedder = load_embedder(checkpoint, device=device, dtype=dtype, calibration=calibration)
    index = None
    todo_mask = torch.ones(len(records), dtype=torch.uint8)
    if rank == 0:
        index = open_index(out, embedder.dim, create=True, kind=kind, nlist=nlist, nprobe=nprobe,
                           pq_m=pq_m, collection=collection, token=token)
        folder = (Path(root) if Path(root).is_dir() else Path(meta or root).parent).resolve()
        stored = index.get_setting("root")
        if stored is None:  # the folder the paths are relative to (serve re-roots them; never trusts it)
            index.set_setting("root", str(folder))
        done = index.indexed_paths()
        if isinstance(stored, str) and stored and Path(stored) != folder:  # a moved or copied gallery
            done = done | {str(folder / Path(p).relative_to(stored)) for p in done if Path(p).is_relative_to(stored)}
        todo_mask = torch.tensor([r.path not in done for r in records], dtype=torch.uint8)
    if world > 1:
        todo_mask = hdist.all_gather_tensor(todo_mask)[0]
    if per_tracklet:
        try:
            res = _index_tracklets(index, embedder, records, batch_size, workers, progress)
            described = index.describe()
        finally:
            index.close()
        return {"location": str(out), **res, "index": described}
    todo = [r for r, m in zip(records, todo_mask.tolist()) if m]
    per_round = world * batch_size
    rounds = math.ceil(len(todo) / per_round)
    mine = [r.path for k in range(rounds) for r in todo[k * per_round : (k + 1) * per_round][rank::world]]
    loader = DataLoader(_Images(mine, embedder.preprocess, embedder.input_size), batch_size=batch_size,
                        num_workers=workers if len(mine) > batch_size else 0)
    batches = iter(loader)
    added, unreadable = 0, []
    bar = progress_bar(total=len(todo), desc="index", unit="img", enabled=progress and rank == 0)
    try:
        for k in range(rounds):
            x, ok = next(batches, (torch.zeros(0, 3, *embedder.input_size), torch.zeros(0)))
            feats = torch.from_numpy(embedder.embed(x)) if len(x) else torch.zeros(0, embedder.dim)
            ok = ok.to(torch.uint8)
            if world > 1:
                all_feats, all_ok = hdist.all_gather_tensor(feats), hdist.all_gather_tensor(ok)
            else:
                all_feats, all_ok = [feats], [ok]
            chunk = todo[k * per_round : (k + 1) * per_round]
            if rank == 0:
                f = torch.empty(len(chunk), embedder.dim)
                good = torch.empty(len(chunk), dtype=torch.bool)
                for q in range(world):  # rank q embedded positions q, q + world, ... of the round
                    f[q::world], good[q::world] = all_feats[q].cpu(), all_ok[q].cpu().bool()
                keep = [r for r, g in zip(chunk, good.tolist()) if g]
                unreadable += [r.path for r, g in zip(chunk, good.tolist()) if not g]
                if keep:
                    _add(index, f[good].numpy(), keep)
                    added += len(keep)
            bar.update(len(chunk))
        described = index.describe() if index is not None else None
    finally:
        bar.close()
        if index is not None:
            index.close()
    hdist.barrier()
    if rank != 0:
        return None
    return {"location": str(out), "total": len(records), "added": added,
            "skipped": len(records) - len(todo), "unreadable": unreadable, "index": described}


def _index_tracklets(index: Any, embedder: Any, records: Sequence[GalleryRecord], batch_size: int,
                     workers: int, progress: bool) -> dict[str, Any]:
    """One mean vector per tracklet (see :func:`index_gallery`); tracklets whose middle crop is
    already indexed are skipped; unreadable crops leave the mean (a tracklet with none is listed)."""
    import numpy as np

    from hareid.index.base import mean_unit

    groups: dict[str, list[GalleryRecord]] = {}
    for r in records:
        groups.setdefault(r.tracklet, []).append(r)
    done = index.indexed_paths()
    reps = {k: sorted(g, key=lambda r: r.frame)[len(g) // 2] for k, g in groups.items()}
    todo = [k for k in groups if reps[k].path not in done]
    crops = [r for k in todo for r in groups[k]]
    loader = DataLoader(_Images([r.path for r in crops], embedder.preprocess, embedder.input_size),
                        batch_size=batch_size, num_workers=workers if len(crops) > batch_size else 0)
    feats, oks = [], []
    with progress_bar(total=len(crops), desc="index (crops)", unit="img", enabled=progress) as bar:
        for x, ok in loader:
            feats.append(embedder.embed(x))
            oks.append(ok.numpy().astype(bool))
            bar.update(len(x))
    f = np.concatenate(feats) if feats else np.zeros((0, embedder.dim), np.float32)
    good = np.concatenate(oks) if oks else np.zeros(0, bool)
    keys = [r.tracklet for r in crops]
    vec_keys, vecs = mean_unit(f[good], [k for k, g in zip(keys, good) if g])
    unreadable = [r.path for r, g in zip(crops, good) if not g]
    have = dict(zip(vec_keys, range(len(vec_keys))))
    ready = [k for k in todo if k in have]
    for i in range(0, len(ready), batch_size):
        chunk = ready[i:i + batch_size]
        _add(index, vecs[[have[k] for k in chunk]], [reps[k] for k in chunk])
    return {"total": len(groups), "added": len(ready), "skipped": len(groups) - len(todo),
            "unreadable": unreadable, "tracklets_without_crops": [k for k in todo if k not in have]}
