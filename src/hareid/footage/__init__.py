"""Your own footage: video, frames or MOT sequences -> person tracklets (no labels needed).

* :mod:`~hareid.footage.readers` - video files (OpenCV), frame folders, MOTChallenge sequences.
* :mod:`~hareid.footage.detect` - people on a static camera: MOG2 background subtraction (default)
  or OpenCV's HOG detector; no downloaded weights.
* :mod:`~hareid.footage.track` - IoU + constant-velocity association (Hungarian), merge/split
  handling, filters.
* :mod:`~hareid.footage.extract` - :func:`extract_tracklets`: the whole pipeline, writing a
  ``tracklets`` dataset folder (crops, masks, JSON, summary, contact sheet).
* :mod:`~hareid.footage.masks` - foreground masks of real crops.
* :mod:`~hareid.footage.protocol` - the label-free re-identification protocol and baselines.

OpenCV is an optional extra: ``pip install 'hareid[video]'``.
"""

from hareid.footage.extract import ExtractConfig, extract_tracklets, summary_table
from hareid.footage.readers import open_footage

__all__ = ["ExtractConfig", "extract_tracklets", "open_footage", "summary_table"]
