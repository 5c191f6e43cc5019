"""The layers every hareid model is built from (the ``timm.layers`` of this package).

* :mod:`~hareid.models.layers.attention` - harmonious attention, readable beside the paper
  (:class:`SoftAttn`, :class:`HardAttn`, :class:`HarmAttn`, the region sampler).
* :mod:`~hareid.models.layers.blocks` - convolution blocks of HA-CNN (:class:`ConvBlock`, Inception
  A/B) with their inference forms beside them (``fuse()``, walked once by :func:`fuse_blocks`).
"""

from hareid.models.layers.attention import (
    SOFT_MASKS,
    ChannelAttn,
    HardAttn,
    HarmAttn,
    RegionSampler,
    SoftAttn,
    SpatialAttn,
    sample_regions,
    translations_to_boxes,
    translations_to_theta,
)
from hareid.models.layers.blocks import ConvBlock, InceptionA, InceptionB, fuse_blocks

__all__ = ["SOFT_MASKS", "ChannelAttn", "ConvBlock", "HardAttn", "HarmAttn", "InceptionA", "InceptionB",
           "RegionSampler", "SoftAttn", "SpatialAttn", "fuse_blocks", "sample_regions", "translations_to_boxes",
           "translations_to_theta"]
