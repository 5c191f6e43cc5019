"""P identities x K images per batch, deterministic, DDP-aware.

Epoch definition
----------------
Every identity ``i`` with ``n_i`` images is cut into ``c_i = max(1, n_i // K)`` chunks of ``K``
images (its images shuffled; an identity with fewer than ``K`` images is topped up by sampling its
own images again). With ``P = batch_size // K`` the epoch has ``B = sum(c_i) // P`` batches in
total, rounded down to a multiple of ``world_size``; each batch holds ``P`` *distinct* identities x
``K`` images, consecutive in the index stream. Rank ``r`` gets batches ``r, r + W, r + 2W, ...``, so
ranks see disjoint batches and every rank has ``len(sampler) = (B // W) * batch_size`` indices.

The order is a pure function of ``(seed, epoch)``: call :meth:`IdentitySampler.set_epoch` each epoch
(the same value on every rank), as with ``DistributedSampler``. Use with
``DataLoader(batch_size=batch_size, sampler=sampler, drop_last=True)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from hareid.data.records import ImageRecord
from hareid.errors import DataError

__all__ = ["IdentitySampler"]


class IdentitySampler(Sampler[int]):
    """Yields dataset indices so that each ``batch_size`` block is P identities x K images."""

    def __init__(self, records: Sequence[ImageRecord] | Sequence[int], batch_size: int,
                 num_instances: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if num_instances < 1 or batch_size % num_instances:
            raise DataError(f"batch_size {batch_size} must be a multiple of num_instances "
                            f"{num_instances} (P identities x K images)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.batch_size, self.k, self.p = batch_size, num_instances, batch_size // num_instances
        self.seed, self.rank, self.world_size, self.epoch = int(seed), rank, world_size, 0
        by_pid: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            by_pid[r.pid if isinstance(r, ImageRecord) else int(r)].append(i)
        self.pids = sorted(by_pid)
        self.index_by_pid = [np.asarray(by_pid[p], dtype=np.int64) for p in self.pids]
        if len(self.pids) < self.p:
            raise DataError(f"only {len(self.pids)} training identities, fewer than P = "
                            f"{batch_size} // {num_instances} = {self.p}; lower batch_size")
        chunks = sum(max(1, len(ix) // self.k) for ix in self.index_by_pid)
        self.num_batches_total = (chunks // self.p) // world_size * world_size
        if self.num_batches_total == 0:
            raise DataError(f"too few images for one batch on each of {world_size} ranks "
                            f"(P={self.p}, K={self.k}); lower batch_size")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order (deterministic in ``(seed, epoch)``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches_total // self.world_size * self.batch_size

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        k, p = self.k, self.p
        queues: list[list[np.ndarray]] = []
        for ix in self.index_by_pid:
            ix = rng.permutation(ix)
            if len(ix) < k:
                ix = np.concatenate([ix, rng.choice(ix, k - len(ix), replace=True)])
            queues.append([ix[j * k:(j + 1) * k] for j in range(len(ix) // k)])
        batches: list[np.ndarray] = []
        live = [i for i, q in enumerate(queues) if q]
        while len(live) >= p and len(batches) < self.num_batches_total:
            # identities with more chunks left are more likely picked: keeps many ids alive longer
            left = np.asarray([len(queues[i]) for i in live], dtype=np.float64)
            chosen = rng.choice(len(live), p, replace=False, p=left / left.sum())
            batches.append(np.concatenate([queues[live[c]].pop() for c in chosen]))
            live = [i for i in live if queues[i]]
        while len(batches) < self.num_batches_total:  # top up: fresh chunks of random identities
            chosen = rng.choice(len(self.pids), p, replace=False)
            batches.append(np.concatenate([
                rng.choice(self.index_by_pid[c], k, replace=len(self.index_by_pid[c]) < k)
                for c in chosen]))
        return batches

    def __iter__(self) -> Iterator[int]:
        batches = self._all_batches()[self.rank::self.world_size]
        for b in batches:
            yield from (int(i) for i in b)
