"""DDP helpers: process-group setup from ``torchrun`` environment, rank queries, gathers, sharding.

Every helper works unchanged in a single process (``WORLD_SIZE`` unset or 1): gathers return their
input, barriers return at once. ``init_distributed`` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` as ``torchrun --nproc_per_node N`` (single or multi-node) sets
them, and picks ``nccl`` on CUDA and ``gloo`` on CPU.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

__all__ = [
    "DistInfo",
    "all_gather_object",
    "all_gather_tensor",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "gather_feature_set",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "shard_indices",
    "shard_loader",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global ``rank``, ``world_size``, ``local_rank``, ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Join the process group described by the torchrun environment (no-op for one process).

    ``backend`` defaults to ``nccl`` when this process uses CUDA, else ``gloo``. On CUDA the process
    is pinned to ``cuda:LOCAL_RANK``. Calling it again returns the existing group's info.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world <= 1 or not dist.is_available():
        return DistInfo(local_rank=local_rank)
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if not dist.is_initialized():
        backend = backend or ("nccl" if use_cuda else "gloo")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend())


def cleanup_distributed() -> None:
    """Leave the process group: barrier, free unreachable DDP wrappers, destroy the group.

    Call it once at the end of a torchrun script. Collecting garbage first matters: a DDP reducer
    freed only at interpreter exit, after the group is gone, can abort the process (gloo).
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order (``[obj]`` in one process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor (first dimensions may differ) in rank order, on ``t``'s device."""
    if not is_distributed():
        return [t]
    dev = _comm_device()
    x = t.detach().to(dev).contiguous()
    sizes = [int(s) for s in all_gather_object(int(x.shape[0]))]
    pad = max(sizes)
    if x.shape[0] < pad:
        x = torch.cat([x, x.new_zeros((pad - x.shape[0], *x.shape[1:]))])
    bufs = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(bufs, x)
    return [b[:n].to(t.device) for b, n in zip(bufs, sizes)]


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None) -> list[int]:
    """Strided shard ``rank, rank + W, ...`` of ``range(n)``: no padding, no duplicates."""
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    return list(range(rank, n, world_size))


def shard_loader(loader: DataLoader, rank: int | None = None, world_size: int | None = None) -> DataLoader:
    """A sequential loader over this rank's strided shard of an evaluation ``loader``'s dataset."""
    world_size = get_world_size() if world_size is None else world_size
    if world_size <= 1:
        return loader
    idx = shard_indices(len(loader.dataset), rank, world_size)  # type: ignore[arg-type]
    return DataLoader(
        Subset(loader.dataset, idx),
        batch_size=loader.batch_size or 1,
        shuffle=False,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
    )


def gather_feature_set(fs: Any, total: int | None = None) -> Any:
    """Reassemble a :class:`hareid.evaluate.FeatureSet` extracted on strided shards, in dataset order.

    Each rank passes the FeatureSet of its :func:`shard_loader` shard; every rank gets the full set
    (same type, built with :func:`dataclasses.replace` when it is a dataclass).
    """
    if not is_distributed():
        return fs
    world = dist.get_world_size()
    feats = all_gather_tensor(fs.features)
    meta = all_gather_object((np.asarray(fs.pids), np.asarray(fs.camids), list(fs.paths)))
    n = sum(f.shape[0] for f in feats) if total is None else total
    order = torch.cat([torch.arange(r, n, world) for r in range(world)])
    if order.numel() != sum(f.shape[0] for f in feats):
        raise ValueError(f"gathered {sum(f.shape[0] for f in feats)} features for {n} items")
    features = torch.empty((n, *feats[0].shape[1:]), dtype=feats[0].dtype)
    features[order] = torch.cat([f.cpu() for f in feats])
    o = order.numpy()
    pids = np.empty(n, dtype=meta[0][0].dtype)
    camids = np.empty(n, dtype=meta[0][1].dtype)
    pids[o] = np.concatenate([m[0] for m in meta])
    camids[o] = np.concatenate([m[1] for m in meta])
    paths: list[str] = [""] * n
    for i, p in zip(o.tolist(), [p for m in meta for p in m[2]]):
        paths[i] = p
    kw = {"features": features, "pids": pids, "camids": camids, "paths": paths}
    if dataclasses.is_dataclass(fs):
        return dataclasses.replace(fs, **kw)
    return type(fs)(**kw)
