"""Image decoding, the torch :class:`ImageDataset`, and :func:`build_loaders`.

Decoder choice (``benchmarks/bench_data.py``, 128x64 JPEGs, decode + train augmentation):
``torchvision.io.decode_image`` is used by default (``DEFAULT_DECODER``) because it measured faster
than PIL on this project's CPU box; PIL stays available (``decoder="pil"``) and is the fallback for
files torchvision cannot decode (e.g. some BMPs / palette images).

Corrupt images: by default a :class:`~hareid.errors.DataError` names the file. With
``skip_bad_images=True`` the dataset warns once per bad path (per worker process) and, for training,
returns another image of the same identity (or, if it has none, the next readable image), so a
P x K batch keeps its shape; for evaluation (``substitute=False``) the image is dropped
(:func:`collate_drop_missing`), so no identity is counted twice.

Decoding is bounded: an image whose header declares more than ``MAX_IMAGE_PIXELS`` pixels is refused
before its pixels are decoded (a small file can declare a huge image).

DataLoader workers ignore SIGINT/SIGTERM: a signal sent to the whole process group (Ctrl-C,
``timeout``, Slurm) reaches the main process, which stops cleanly and shuts the workers down.
Because they ignore SIGTERM, workers still running when the interpreter exits (an iterator or a
persistent-worker loader still referenced, e.g. a ``Trainer`` held in a script's globals) would
make multiprocessing's exit handler (``terminate()`` then ``join()``) wait forever; an exit hook
registered with the first worker ends them with SIGKILL first.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import pil_to_tensor

from hareid.data.records import ImageRecord, ReIDDataset
from hareid.data.sampler import IdentitySampler
from hareid.data.transforms import build_transforms
from hareid.errors import DataError

__all__ = [
    "DECODERS",
    "DEFAULT_DECODER",
    "MAX_IMAGE_PIXELS",
    "ImageDataset",
    "build_eval_loaders",
    "build_loaders",
    "collate_drop_missing",
    "decode_pil",
    "decode_torchvision",
    "load_images",
    "read_image",
    "read_mask",
]

#: Largest image (width x height) hareid decodes: a 12000 x 8000 photo; person crops are far smaller.
MAX_IMAGE_PIXELS = 96_000_000


def decode_pil(path: str) -> Image.Image:
    """RGB PIL image."""
    with Image.open(path) as im:
        return im.convert("RGB")


def decode_torchvision(path: str) -> torch.Tensor:
    """RGB ``uint8`` tensor ``[3, H, W]`` via ``torchvision.io.decode_image`` (PIL fallback).

    torchvision >= 0.29 marks its image codecs deprecated (TorchCodec supersedes them); the warning
    is silenced here, and PIL takes over if a future torchvision drops them.
    """
    try:
        from torchvision.io import ImageReadMode, decode_image, read_file
    except ImportError:  # pragma: no cover - codecs removed from torchvision
        return pil_to_tensor(decode_pil(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # formats torchvision's libjpeg/libpng reject but PIL may read (e.g. BMP, CMYK)
    return pil_to_tensor(decode_pil(path))


DECODERS: dict[str, Callable[[str], Any]] = {"torchvision": decode_torchvision, "pil": decode_pil}
DEFAULT_DECODER = "torchvision"


def image_size(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the file's header (nothing decoded); DataError naming the file if it
    is not an image or declares more than ``max_pixels`` pixels."""
    too_big = (f"{path}: declares {{}} pixels, more than hareid decodes ({max_pixels}); resize the image "
               "or remove it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
    except Image.DecompressionBombError:  # PIL's own limit (2x Image.MAX_IMAGE_PIXELS) refused the header
        raise DataError(too_big.format(f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0)}")) from None
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {msg}); replace or delete "
                        "the file, or skip bad images (data.skip_bad_images=true; --skip-bad-images)") from exc
    if w * h > max_pixels:
        raise DataError(too_big.format(f"{w}x{h}"))
    return w, h


def read_image(path: str, decoder: str = DEFAULT_DECODER, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """Decode ``path`` (size checked first, see :func:`image_size`); any failure becomes a one-line
    DataError naming the file."""
    if decoder not in DECODERS:
        raise DataError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
    image_size(path, max_pixels)
    try:
        return DECODERS[decoder](path)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: unreadable image ({type(exc).__name__}: {msg}); replace or delete "
                        "the file, or skip bad images (data.skip_bad_images=true; --skip-bad-images)") from exc


def collate_drop_missing(batch: list[Any]) -> Any:
    """``default_collate`` of the samples that are not ``None`` (dropped bad images); ``None`` if
    the whole batch was dropped."""
    from torch.utils.data import default_collate

    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave SIGINT/SIGTERM to the main process (module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """Exit hook: SIGKILL the daemon children (DataLoader workers) still alive, since they ignore
    the SIGTERM that multiprocessing's own exit handler would send before joining them."""
    leftover = [proc for proc in multiprocessing.active_children() if proc.daemon]
    if not leftover:
        return
    if hasattr(signal, "SIGCHLD"):  # torch's handler would report the killed workers as failures
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for proc in leftover:
        proc.kill()
    for proc in leftover:
        proc.join(timeout=5)


_EXIT_HOOK: list[bool] = []


def worker_options(workers: int) -> dict[str, Any]:
    """DataLoader keywords for ``workers`` processes (signals left to the main process, exit hook)."""
    if workers > 0 and not _EXIT_HOOK:
        # registered after multiprocessing's exit handler (imported with torch): atexit runs it first
        atexit.register(_kill_leftover_workers)
        _EXIT_HOOK.append(True)
    return {"num_workers": workers, "worker_init_fn": _ignore_stop_signals if workers > 0 else None}


def read_mask(path: str, size: tuple[int, int]) -> tv_tensors.Mask:
    """Person mask ``(1, H, W)`` uint8 in {0, 1} (> 127 = person) at the image's ``size`` (W, H),
    resized with nearest neighbours if the file's size differs; DataError naming the file."""
    try:
        image_size(path)
        with Image.open(path) as im:
            m = im.convert("L")
            if m.size != size:
                m = m.resize(size, Image.NEAREST)
            t = pil_to_tensor(m)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: unreadable person mask ({type(exc).__name__}); write the dataset again, or "
                        "train without the attention loss (loss.attn_weight=0)") from exc
    return tv_tensors.Mask((t > 127).to(torch.uint8))


class ImageDataset(Dataset):
    """Records -> ``(image Tensor[3,H,W] float, pid, camid, path)``, with ``masks=True``
    ``(image, pid, camid, path, mask Tensor[1,H,W] float in {0, 1})``: the record's person mask,
    transformed with the image, pixel-aligned (see :mod:`hareid.data.transforms`).

    ``skip_bad_images``: a bad image is replaced by another of the same identity (``substitute``,
    for training) or returned as ``None`` (evaluation; batch with :func:`collate_drop_missing`).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable[..., Any] | None,
                 skip_bad_images: bool = False, decoder: str = DEFAULT_DECODER, substitute: bool = True,
                 masks: bool = False) -> None:
        if decoder not in DECODERS:
            raise DataError(f"unknown decoder {decoder!r}; choose from {', '.join(DECODERS)}")
        self.records = list(records)
        if masks:
            missing = next((r.path for r in self.records if r.mask is None), None)
            if missing is not None:
                raise DataError(f"{missing}: has no person mask; masks=True needs one for every image")
        self.masks = masks
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self.substitute = substitute
        self.decoder = decoder
        self.bad_paths: set[str] = set()
        by_pid: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(self.records):
            by_pid[r.pid].append(i)
        self._by_pid = dict(by_pid)

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, rec: ImageRecord) -> tuple[torch.Tensor, ...]:
        img = read_image(rec.path, self.decoder)
        if isinstance(img, Image.Image) and (self.masks or self.transform is None):
            img = pil_to_tensor(img)
        if not self.masks:
            out = self.transform(img) if self.transform is not None else img
            return (out.as_subclass(torch.Tensor),)
        mask = read_mask(rec.mask, (img.shape[-1], img.shape[-2]))  # type: ignore[arg-type]
        if self.transform is not None:
            img, mask = self.transform(img, mask)
        return img.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).float()

    def _item(self, rec: ImageRecord) -> tuple[Any, ...]:
        img, *mask = self._load(rec)
        return (img, rec.pid, rec.camid, rec.path, *mask)

    def _substitutes(self, index: int) -> list[int]:
        same = self._by_pid[self.records[index].pid]
        pos = same.index(index)
        order = same[pos + 1:] + same[:pos]
        n = len(self.records)
        return order + [(index + j) % n for j in range(1, n) if (index + j) % n not in same]

    def __getitem__(self, index: int) -> tuple[Any, ...] | None:
        rec = self.records[index]
        if rec.path not in self.bad_paths:
            try:
                return self._item(rec)
            except DataError as exc:
                if not self.skip_bad_images:
                    raise
                self._mark_bad(rec.path, exc)
        if not self.substitute:
            return None
        for j in self._substitutes(index):
            sub = self.records[j]
            if sub.path in self.bad_paths:
                continue
            try:
                return self._item(sub)
            except DataError as exc:
                self._mark_bad(sub.path, exc)
        raise DataError(f"{rec.path}: unreadable and no readable substitute image left in the dataset")

    def _mark_bad(self, path: str, exc: Exception) -> None:
        self.bad_paths.add(path)
        warnings.warn(f"skipping bad image: {exc}", RuntimeWarning, stacklevel=3)


def build_loaders(
    dataset: ReIDDataset,
    height: int = 160,
    width: int = 64,
    batch_size: int = 32,
    num_instances: int = 4,
    workers: int = 2,
    test_batch_size: int | None = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    skip_bad_images: bool = False,
    decoder: str = DEFAULT_DECODER,
    pin_memory: bool | None = None,
    masks: bool = False,
    **transform_kw: Any,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train_loader, query_loader, gallery_loader)``; ``masks``: training batches also carry the
    person masks (5th element, see :class:`ImageDataset`).

    Train: :class:`IdentitySampler` (P x K, ``batch_size`` per rank; call
    ``train_loader.sampler.set_epoch(epoch)`` each epoch), ``drop_last``. Query/gallery: in order,
    eval transform. ``pin_memory`` defaults to ``torch.cuda.is_available()``; workers persist
    across epochs when ``workers > 0``. ``transform_kw`` go to :func:`build_transforms`.
    """
    train_tf, eval_tf = build_transforms(height, width, **transform_kw)
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    common: dict[str, Any] = {"pin_memory": pin, "persistent_workers": workers > 0, **worker_options(workers)}
    if workers > 0:
        common["prefetch_factor"] = 4
    gen = torch.Generator().manual_seed(seed * 1000 + rank)  # distinct augmentation per rank
    sampler = IdentitySampler(dataset.train, batch_size, num_instances, seed, rank, world_size)
    train = DataLoader(ImageDataset(dataset.train, train_tf, skip_bad_images, decoder, masks=masks),
                       batch_size=batch_size, sampler=sampler, drop_last=True, generator=gen,
                       **common)
    query, gallery = _eval_loaders(dataset, eval_tf, test_batch_size or max(batch_size, 64),
                                   skip_bad_images, decoder, common)
    return train, query, gallery


def _eval_loaders(dataset: ReIDDataset, eval_tf: Callable, batch_size: int, skip_bad_images: bool,
                  decoder: str, common: dict[str, Any]) -> tuple[DataLoader, DataLoader]:
    return tuple(DataLoader(ImageDataset(records, eval_tf, skip_bad_images, decoder, substitute=False),  # type: ignore[return-value]
                            batch_size=batch_size, shuffle=False, collate_fn=collate_drop_missing, **common)
                 for records in (dataset.query, dataset.gallery))


def build_eval_loaders(
    dataset: ReIDDataset,
    height: int,
    width: int,
    batch_size: int = 128,
    workers: int = 2,
    skip_bad_images: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[DataLoader, DataLoader]:
    """``(query_loader, gallery_loader)`` in dataset order with the evaluation transform; with
    ``skip_bad_images`` unreadable images are dropped (and reported), not replaced."""
    if batch_size < 1 or workers < 0:
        raise DataError(f"batch size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    kw = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    _, eval_tf = build_transforms(height, width, **kw)
    common: dict[str, Any] = {"pin_memory": torch.cuda.is_available(), **worker_options(workers)}
    return _eval_loaders(dataset, eval_tf, batch_size, skip_bad_images, DEFAULT_DECODER, common)


def load_images(paths: Sequence[str | os.PathLike], height: int, width: int, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """Decode, resize and normalise image files into a ``(N, 3, height, width)`` batch (the
    evaluation transform; ImageNet mean/std unless given)."""
    kw = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    tf = build_transforms(height, width, **kw)[1]
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: image not found; pass existing image files")
        out.append(tf(read_image(str(p))))
    if not out:
        raise DataError("no images given")
    return torch.stack(out)
