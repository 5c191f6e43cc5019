"""Convolutional building blocks of HA-CNN (Li, Zhu, Gong, CVPR 2018, Fig. 2 and Table 1).

* :class:`ConvBlock` - Conv2d (with bias) + BatchNorm2d + ReLU, the unit every other block uses.
* :class:`InceptionA` - four parallel streams at stride 1, concatenated (output ``C_out`` channels).
* :class:`InceptionB` - three parallel streams at stride 2, concatenated (output ``C_out`` channels).

Every stride-2 layer uses ``kernel 3, padding 1``, so a side ``n`` becomes ``ceil(n / 2)``; all
streams of an :class:`InceptionB` therefore agree on their output size for odd ``n`` too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBlock", "InceptionA", "InceptionB", "conv_chain"]


class ConvBlock(nn.Module):
    """Conv2d (with bias) -> BatchNorm2d -> ReLU.

    Shapes: ``(B, in_c, H, W) -> (B, out_c, H', W')`` with ``H' = (H + 2p - k) // s + 1``.
    Sub-modules are named ``conv`` and ``bn`` so BN folding for export can find the pairs.
    """

    def __init__(self, in_c: int, out_c: int, k: int = 1, s: int = 1, p: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, k, stride=s, padding=p, bias=True)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def conv_chain(in_c: int, layers: Sequence[tuple[int, int, int]]) -> nn.Sequential:
    """A ``nn.Sequential`` of ConvBlocks from ``(out_c, kernel, stride)`` triples (padding k // 2)."""
    blocks = []
    for out_c, k, s in layers:
        blocks.append(ConvBlock(in_c, out_c, k, s=s, p=k // 2))
        in_c = out_c
    return nn.Sequential(*blocks)


class _Streams(nn.Module):
    """Parallel streams on one input, concatenated along channels: ``(B, C, H, W) -> (B, sum c_i, H', W')``."""

    streams: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([stream(x) for stream in self.streams], dim=1)


class InceptionA(_Streams):
    """Inception-A (stride 1): ``(B, in_c, H, W) -> (B, out_c, H, W)``.

    Streams (``m = out_c // 4`` channels each): ``1x1 -> 3x3`` three times, and
    ``3x3 avg-pool -> 1x1``.
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        m = out_c // 4
        streams: list[nn.Module] = [conv_chain(in_c, [(m, 1, 1), (m, 3, 1)]) for _ in range(3)]
        streams.append(nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), ConvBlock(in_c, m, 1)))
        self.streams = nn.ModuleList(streams)


class InceptionB(_Streams):
    """Inception-B (stride 2): ``(B, in_c, H, W) -> (B, out_c, ceil(H/2), ceil(W/2))``.

    Streams (``m = out_c // 4``): ``1x1 -> 3x3/2`` (m), ``1x1 -> 3x3 -> 3x3/2`` (m), and
    ``3x3/2 max-pool -> 1x1`` (2m).
    """

    def __init__(self, in_c: int, out_c: int) -> None:
        super().__init__()
        m = out_c // 4
        conv_specs = ([(m, 1, 1), (m, 3, 2)], [(m, 1, 1), (m, 3, 1), (m, 3, 2)])
        streams: list[nn.Module] = [conv_chain(in_c, spec) for spec in conv_specs]
        streams.append(nn.Sequential(nn.MaxPool2d(3, stride=2, padding=1), ConvBlock(in_c, 2 * m, 1)))
        self.streams = nn.ModuleList(streams)
