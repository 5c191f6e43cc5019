"""Query x gallery distance matrices, computed in chunks of query rows so memory stays bounded.

Peak memory = the output (num_q * num_g * 4 bytes, float32) + the features + one chunk
(``chunk_size * num_g * 4`` bytes of GEMM result). Market-1501 (3368 x 15913): 214 MB output +
~16 MiB chunk. 100k x 100k would need a 40 GB output: pass ``out=`` a ``np.memmap`` on disk, or
(better) do not materialise it and use :class:`hareid.index.GalleryIndex` for top-k search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("euclidean", "cosine")
_CHUNK_BYTES = 16 * 2**20


def _as_tensor(x: Any) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to("cpu", torch.float32)


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
    chunk_size: query rows per GEMM (default: ~16 MiB of output per chunk).
    out: optional preallocated (Q, G) float32 array (e.g. a ``np.memmap``) to write into.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    q, g = _as_tensor(qf), _as_tensor(gf)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D), got {tuple(q.shape)}, {tuple(g.shape)}")
    num_q, num_g = q.shape[0], g.shape[0]
    if out is None:
        out = np.empty((num_q, num_g), dtype=np.float32)
    elif out.shape != (num_q, num_g) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 of shape {(num_q, num_g)}, got {out.dtype} {out.shape}")
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // max(1, 4 * num_g))
    if metric == "cosine":
        q, g = F.normalize(q, dim=1), F.normalize(g, dim=1)
        g_sq = None
    else:
        g_sq = g.pow(2).sum(1)  # (G,)
    gt = g.t()  # (D, G)
    for r0 in range(0, num_q, chunk_size):
        qc = q[r0:r0 + chunk_size]  # (c, D)
        if metric == "cosine":
            block = torch.mm(qc, gt).neg_().add_(1.0)  # (c, G)
        else:
            block = torch.addmm(g_sq.unsqueeze(0), qc, gt, alpha=-2.0)  # (c, G)
            block.add_(qc.pow(2).sum(1, keepdim=True)).clamp_(min=0.0)
        out[r0:r0 + chunk_size] = block.numpy()
    return out


def distance_memory_bytes(num_q: int, num_g: int, dim: int, chunk_size: int | None = None) -> int:
    """Peak bytes of :func:`pairwise_distance` (output + float32 features + one chunk)."""
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_BYTES // max(1, 4 * num_g))
    return 4 * (num_q * num_g + (num_q + num_g) * dim + min(chunk_size, num_q) * num_g + num_g)


__all__ = ["METRICS", "distance_memory_bytes", "pairwise_distance"]
