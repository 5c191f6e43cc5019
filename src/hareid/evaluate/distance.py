"""Query x gallery distances, one block of query rows per GEMM, on the features' device.

One function computes every distance value in hareid: :class:`DistanceBlocks`. Both
:func:`pairwise_distance` (the full matrix) and the streaming evaluation
(:func:`hareid.evaluate.evaluate_features`) call it on the same grid of row blocks
(:func:`block_rows`), so their values are bit-identical and ties fall the same way. That grid is
needed: a GEMM's rounding can depend on how many rows it is given (with MKL here, calls of 1-7
rows round differently from larger ones in ~90% of cells), so computing a row inside a
different block can move a value by an ulp and turn a tie into an order or back.

The GEMM folds the norms in: squared euclidean ``|q|^2 + |g|^2 - 2 q.g`` is
``[q, |q|^2, 1] . [-2g, 1, |g|^2]`` (one GEMM with K = D + 2, then a clamp at 0), cosine
``1 - cos`` is ``[q^, 1] . [-g^, 1]``: no extra passes over the output for the norms.

Peak memory of :func:`pairwise_distance` = the output (``num_q * num_g * 4`` bytes, written in
place, may be a ``np.memmap``) + the augmented gallery (``num_g * (D + 2) * 4``) beside the
caller's features; Market-1501 (3368 x 15913, 1024-d): 204 MiB + 62 MiB (+ 75 MiB of features).
Blocks are ~256 MiB of rows (:func:`block_rows`); on CUDA each block is computed on the GPU and
copied to the output.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

METRICS = ("euclidean", "cosine")
_BLOCK_BYTES = 256 * 2**20  # GEMM output per block of query rows


def as_f32(x: Any) -> np.ndarray:
    """A C-contiguous float32 numpy array from a tensor (any device) or array-like."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def block_rows(num_g: int) -> int:
    """Query rows per GEMM call (~256 MiB of float32 output): the grid shared by every caller."""
    return max(1, _BLOCK_BYTES // max(1, 4 * num_g))


def _as_tensor(x: Any, device: torch.device | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(device or t.device, torch.float32)


def features_device(*feats: Any) -> torch.device:
    """The device distances are computed on: that of the first torch tensor given, else CPU."""
    for f in feats:
        if isinstance(f, torch.Tensor):
            return f.device
    return torch.device("cpu")


class DistanceBlocks:
    """Distances between query features (Q, D) and gallery features (G, D), a block of rows at a
    time: ``blocks(r0, r1)`` -> (r1 - r0, G) float32 tensor on the features' device.

    metric: ``"euclidean"`` = squared euclidean (clamped at 0, as torchreid's
    ``euclidean_squared_distance``); ``"cosine"`` = ``1 - cos(q, g)``. ``gf`` may be a list of
    (G_i, D) parts taken as one gallery (not concatenated first). Memory: the augmented gallery
    (G x (D + 2) float32) plus one block; query rows are augmented per block from norms computed
    once, so a row's values depend only on the block it is computed in. Call it on the rows of
    :meth:`grid` for values identical to :func:`pairwise_distance`.
    """

    def __init__(self, qf: Any, gf: Any, metric: str = "euclidean",
                 device: torch.device | str | None = None):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        parts = list(gf) if isinstance(gf, (list, tuple)) else [gf]
        device = torch.device(device) if device is not None else features_device(qf, *parts)
        parts = [_as_tensor(p, device) for p in parts]
        dim = parts[0].shape[1] if parts[0].ndim == 2 else -1
        if any(p.ndim != 2 or p.shape[1] != dim for p in parts):
            raise ValueError(f"gallery features must be (G, D), got {[tuple(p.shape) for p in parts]}")
        self.metric, self.device, self.dim = metric, device, dim
        self.num_g = sum(p.shape[0] for p in parts)
        extra = 1 if metric == "cosine" else 2
        ga = torch.empty(self.num_g, dim + extra, device=device)  # (G, D + extra)
        o = 0
        for p in parts:
            n = p.shape[0]
            if metric == "cosine":  # [-g^, 1]
                torch.div(p, _norms(p).unsqueeze(1), out=ga[o:o + n, :dim]).neg_()
                ga[o:o + n, dim] = 1.0
            else:  # [-2g, 1, |g|^2]
                torch.mul(p, -2.0, out=ga[o:o + n, :dim])
                ga[o:o + n, dim] = 1.0
                ga[o:o + n, dim + 1] = p.pow(2).sum(1)
            o += n
        self._gt = ga.t()  # (D + extra, G)
        self._set_queries(qf)

    def _set_queries(self, qf: Any) -> None:
        q = _as_tensor(qf, self.device)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"features must be (Q, D) and (G, D), got {tuple(q.shape)}, "
                             f"({self.num_g}, {self.dim})")
        self._q = q
        self.num_q = q.shape[0]
        self._q_norm = _norms(q) if self.metric == "cosine" else q.pow(2).sum(1)  # (Q,)

    def with_queries(self, qf: Any) -> DistanceBlocks:
        """The same gallery (shared, not copied) against other query features."""
        other = copy.copy(self)
        other._set_queries(qf)
        return other

    def grid(self, rows: int | None = None) -> list[tuple[int, int]]:
        """The (r0, r1) row blocks; ``rows`` defaults to :func:`block_rows`."""
        rows = rows or block_rows(self.num_g)
        return [(r0, min(r0 + rows, self.num_q)) for r0 in range(0, self.num_q, rows)]

    def __call__(self, r0: int, r1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows r0..r1 -> (r1 - r0, G) float32; written into ``out`` when given."""
        q = self._q[r0:r1]  # (c, D)
        ones = q.new_ones(len(q), 1)
        if self.metric == "cosine":  # [q^, 1]
            qa = torch.cat([q / self._q_norm[r0:r1, None], ones], 1)
        else:  # [q, |q|^2, 1]
            qa = torch.cat([q, self._q_norm[r0:r1, None], ones], 1)
        block = torch.mm(qa, self._gt, out=out)  # (c, G)
        if self.metric == "euclidean":
            block.clamp_(min=0.0)
        return block


def _norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms as F.normalize uses them (at least 1e-12)."""
    return x.norm(dim=1).clamp_min(1e-12)


def pairwise_distance(
    qf: Any,
    gf: Any,
    metric: str = "euclidean",
    chunk_size: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Distances between query features (Q, D) and gallery features (G, D) -> (Q, G) float32.

    metric: ``"euclidean"`` = squared euclidean ``|q|^2 + |g|^2 - 2 q.g`` (clamped at 0, as
    torchreid's ``euclidean_squared_distance``); ``"cosine"`` = ``1 - cos(q, g)``.
    chunk_size: query rows per GEMM (default :func:`block_rows`; keep the default for values
    identical to the streaming evaluation). Computed on the features' device (CUDA tensors: on
    the GPU). out: optional preallocated (Q, G) float32 array (e.g. a ``np.memmap``) to write into.
    """
    blocks = DistanceBlocks(qf, gf, metric)
    num_q, num_g = blocks.num_q, blocks.num_g
    if out is None:
        out = np.empty((num_q, num_g), dtype=np.float32)
    elif out.shape != (num_q, num_g) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(num_q, num_g)}, got {out.dtype} {out.shape}")
    direct = blocks.device.type == "cpu" and out.flags.c_contiguous and out.flags.writeable
    for r0, r1 in blocks.grid(chunk_size):
        if direct:  # the GEMM writes straight into the output rows
            blocks(r0, r1, out=torch.from_numpy(np.asarray(out[r0:r1])))
        else:
            out[r0:r1] = blocks(r0, r1).cpu().numpy()
    return out


def distance_memory_bytes(num_q: int, num_g: int, dim: int) -> int:
    """Peak bytes of :func:`pairwise_distance` on CPU: output + features + augmented gallery."""
    return 4 * (num_q * num_g + (num_q + num_g) * dim + num_g * (dim + 2) + num_q)


__all__ = ["METRICS", "DistanceBlocks", "block_rows", "distance_memory_bytes", "features_device",
           "pairwise_distance"]
