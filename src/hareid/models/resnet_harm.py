"""ResNet backbones with harmonious attention: the HA-CNN wiring around torchvision ResNets.

``stem = conv1 + bn1 + relu + maxpool + layer1`` (stride 4), stages ``layer2..layer4`` (stride 2
each) with a :class:`~hareid.models.layers.attention.HarmAttn` after each; the local branch uses small bottleneck
blocks ``1x1 -> 3x3/2 -> 1x1`` on the regions. Weights are randomly initialised (``weights=None``):
hareid never downloads anything. Same output contract as ``hacnn``.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision import models as tvm

from hareid.models.core import HarmNet, halve
from hareid.models.layers.blocks import conv_chain
from hareid.models.registry import register_model

__all__ = ["ResNetHarm", "resnet18_harm", "resnet50_harm"]


def resnet_region_size(h: int, w: int, num_regions: int) -> tuple[int, int]:
    """Stage-1 regions: one of ``T`` stripes of the stride-4 stem output, at its natural size."""
    h0, w0 = halve(h, 2), halve(w, 2)
    return (2 * h0 + num_regions) // (2 * num_regions), w0


class ResNetHarm(HarmNet):
    """A torchvision ResNet (``arch`` = ``"resnet18"`` / ``"resnet50"``) with HarmAttn after layers 2-4."""

    def __init__(self, num_classes: int, arch: str = "resnet18", **options) -> None:
        net = getattr(tvm, arch)(weights=None)
        c0 = net.layer1[-1].conv2.out_channels if arch in ("resnet18", "resnet34") else net.layer1[-1].conv3.out_channels
        widths = (c0, 2 * c0, 4 * c0, 8 * c0)
        super().__init__(
            stem=nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1),
            stages=[net.layer2, net.layer3, net.layer4],
            local_stages=[conv_chain(widths[s], [(widths[s + 1] // 4, 1, 1), (widths[s + 1] // 4, 3, 2),
                                                 (widths[s + 1], 1, 1)]) for s in range(3)],
            channels=widths,
            num_classes=num_classes,
            input_halvings=5,
            region_size=resnet_region_size,
            **options,
        )


resnet18_harm = register_model("resnet18_harm", input_size=(256, 128))(partial(ResNetHarm, arch="resnet18"))
resnet50_harm = register_model("resnet50_harm", input_size=(256, 128))(partial(ResNetHarm, arch="resnet50"))
