"""HA-CNN (Li, Zhu, Gong, CVPR 2018): Inception stages + harmonious attention + local branch.

Architecture (paper Table 1 / Fig. 2): stem ConvBlock(3, 32, 3, s=2); three stages
``InceptionA(c_in, c) -> InceptionB(c, c)`` with widths (128, 256, 384), each followed by
:class:`~hareid.models.layers.attention.HarmAttn`; local blocks ``InceptionB(32, 128)``, ``InceptionB(128, 256)``,
``InceptionB(256, 384)``; both branches end in Linear -> BN1d -> ReLU to 512 dimensions.

Input sizes: any ``H x W`` for which every stride-2 layer shrinks both sides (``H, W >= 9``) and the
stage-1 regions are >= 5 px per side. The regions are scaled from the paper's 24 x 28 at 160 x 64 with
T = 4: ``h1 = round(0.6 H / T)``, ``w1 = round(7 W / 16)`` (160x64 -> 24x28, 12x14, 6x7; 256x128 ->
38x56, 19x28, 10x14). With T = 4 the smallest input is 30 x 11 (``model.min_input_size()``).

Region sampling (``region_sampling``):

* ``"direct"`` (default) samples each region once, at its target size, from the stage input. It does
  what the paper describes (an affine crop at the local branch's resolution) with a quarter of the
  grid points at stage 1 and no resize pass: hareid-trained models use it.
* ``"torchreid"`` reproduces torchreid's HACNN (sample at the full source size, then
  bilinear resize with ``align_corners=True``); embeddings match torchreid's to ~1e-7. Use it for
  torchreid checkpoints: :func:`hareid.models.torchreid_compat.load_torchreid_hacnn` sets it.

BatchNorm over regions: the regions share one local-branch call, so train-mode BN statistics are
pooled over all ``B*T`` regions; torchreid normalises each region separately in training but with
one mixed running estimate at test time (1% vs 74% train/eval mismatch, see :mod:`hareid.models.core`).
"""

from __future__ import annotations

from torch import nn

from hareid.models.core import HarmNet
from hareid.models.layers.blocks import ConvBlock, InceptionA, InceptionB
from hareid.models.registry import register_model

__all__ = ["HACNN", "hacnn_region_size"]


def hacnn_region_size(h: int, w: int, num_regions: int) -> tuple[int, int]:
    """Stage-1 region size: the paper's 24 x 28 (160 x 64 input, T = 4) scaled to ``h x w`` and ``T``.

    ``(round(0.6 * h / T), round(7 * w / 16))`` in integer arithmetic (halves round up).
    """
    return (6 * h + 5 * num_regions) // (10 * num_regions), (14 * w + 16) // 32


class HACNN(HarmNet):
    """Harmonious Attention CNN; options as in :class:`hareid.models.core.HarmNet`.

    Args:
        num_classes: training identities.
        channels: stage widths (each divisible by 16 for ChannelAttn and by 4 for Inception).
        **options: ``num_regions``, ``feature_dim``, ``local_branch``, ``return_features``,
            ``soft_attn``, ``soft_mask``, ``hard_attn``, ``cross_attn``, ``region_sampling``, ``channels_last``.
    """

    def __init__(self, num_classes: int, channels: tuple[int, int, int] = (128, 256, 384), **options) -> None:
        widths = (32, *channels)
        super().__init__(
            stem=ConvBlock(3, widths[0], 3, s=2, p=1),
            stages=[nn.Sequential(InceptionA(widths[s], widths[s + 1]), InceptionB(widths[s + 1], widths[s + 1]))
                    for s in range(3)],
            local_stages=[InceptionB(widths[s], widths[s + 1]) for s in range(3)],
            channels=widths,
            num_classes=num_classes,
            input_halvings=4,
            region_size=hacnn_region_size,
            **options,
        )


register_model("hacnn", input_size=(160, 64))(HACNN)
