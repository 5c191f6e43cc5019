"""Data-loading throughput: decoded + augmented images/s, torchvision.io vs PIL, 0 and 2 workers.

    python benchmarks/bench_data.py [--root DIR] [--images 3000] [--workers 0 2]

Reads Market-1501-layout JPEGs (default: a synthetic set written at 128x64, the size Market ships
in, to a temp folder), applies the full train transform (resize to 160x64, flip, pad+crop, erasing,
normalise), and prints one row per (decoder, workers). Decode-only rows isolate the decoder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hareid.data import IdentitySampler, ImageDataset, build_dataset, build_transforms
from hareid.data.loader import DECODERS
from hareid.data.synthetic import write_synthetic


def _throughput(ds: ImageDataset, sampler: IdentitySampler, workers: int, n: int, bs: int) -> float:
    loader = DataLoader(ds, batch_size=bs, sampler=sampler, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # start-up (worker spawn) not counted
    seen, t0 = 0, time.perf_counter()
    while seen < n:
        try:
            seen += next(it)[0].shape[0]
        except StopIteration:
            sampler.set_epoch(sampler.epoch + 1)
            it = iter(loader)
    return seen / (time.perf_counter() - t0)


def _decode_only(paths: list[str], decoder: str, n: int) -> float:
    fn = DECODERS[decoder]
    t0 = time.perf_counter()
    for i in range(n):
        fn(paths[i % len(paths)])
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="Market-1501-layout folder (default: synthetic)")
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    tmp = None
    if a.root is None:
        tmp = tempfile.TemporaryDirectory()
        a.root = write_synthetic(Path(tmp.name) / "syn", num_train_ids=60, num_test_ids=5,
                                 images_per_id=20, height=128, width=64, progress=False)
    data = build_dataset("market1501", a.root, verbose=False)
    train_tf, _ = build_transforms(160, 64, flip=0.5, pad=10, erasing=0.5)
    paths = [r.path for r in data.train]
    print(f"{len(data.train)} train images from {a.root}; {a.images} images per row; "
          f"torch {torch.__version__}")
    print(f"| {'decoder':<11} | {'workers':>7} | {'decode only img/s':>17} | {'decode+augment img/s':>20} |")
    print(f"|{'-' * 13}|{'-' * 9}|{'-' * 19}|{'-' * 22}|")
    for decoder in DECODERS:
        dec = _decode_only(paths, decoder, a.images)
        for w in a.workers:
            sampler = IdentitySampler(data.train, a.batch_size, 4, seed=0)
            ds = ImageDataset(data.train, train_tf, decoder=decoder)
            ips = _throughput(ds, sampler, w, a.images, a.batch_size)
            print(f"| {decoder:<11} | {w:>7} | {dec:>17.0f} | {ips:>20.0f} |", flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
