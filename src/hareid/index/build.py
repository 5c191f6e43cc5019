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
from hareid.progress import progress as progress_bar

__all__ = ["GalleryRecord", "gallery_records", "index_gallery"]

_FRAME = re.compile(r"c\d+s\d+_(\d+)")  # Market-1501 style names: 0002_c1s1_000451_03.jpg


@dataclass(frozen=True)
class GalleryRecord:
    """One gallery image to index and its metadata."""

    path: str
    camera: str = ""
    time: float | None = None
    source: str = ""
    pid: int = -1


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

    - ``meta``: a CSV with a ``path`` column (relative to ROOT) and optional ``camera``, ``time``
      (seconds), ``source``, ``pid``;
    - a dataset layout (detected or ``dataset``): its ``split``; camera = the 0-based camid,
      pid = the identity, time = the frame index of Market-1501-style names, source = the split;
    - any other folder: every image below it; camera = the first sub-folder (``ROOT/cam1/x.jpg``),
      time = the file's modification time (unix seconds), source = ``"folder"``.
    """
    from hareid.data import detect_dataset, list_images, open_dataset

    root_p = Path(root)
    if meta is not None:
        recs = _from_csv(Path(meta), root_p)
    elif not root_p.exists():
        raise DataError(f"{root}: gallery folder not found; pass a folder of images or a dataset")
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
                  progress: bool = True, embedder: Any = None) -> dict[str, Any] | None:
    """Index ``root`` into ``out`` (FAISS folder, milvus-lite ``.db`` or Milvus URI); resumable.

    Returns (on rank 0; ``None`` elsewhere) ``{"location", "total", "added", "skipped",
    "unreadable": [paths], "index": describe()}``.
    """
    from hareid import distributed as hdist
    from hareid.index import open_index
    from hareid.index.embedder import load_embedder

    dist = hdist.init_distributed()
    rank, world = dist.rank, dist.world_size
    records = gallery_records(root, dataset, split, meta)
    if world > 1:
        _agree(records)
    if embedder is None:
        device = f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu"
        embedder = load_embedder(checkpoint, device=device)
    index = None
    todo_mask = torch.ones(len(records), dtype=torch.uint8)
    if rank == 0:
        index = open_index(out, embedder.dim, create=True, kind=kind, nlist=nlist, nprobe=nprobe,
                           pq_m=pq_m, collection=collection, token=token)
        if index.get_setting("root") is None:  # the folder `hareid serve` may serve images from
            folder = Path(root) if Path(root).is_dir() else Path(meta or root).parent
            index.set_setting("root", str(folder.resolve()))
        done = index.indexed_paths()
        todo_mask = torch.tensor([r.path not in done for r in records], dtype=torch.uint8)
    if world > 1:
        todo_mask = hdist.all_gather_tensor(todo_mask)[0]
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
                    index.add(f[good].numpy(), [r.path for r in keep], [r.pid for r in keep],
                              [r.camera for r in keep], [r.time for r in keep],
                              [r.source for r in keep])
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
