"""Data: dataset parsers -> :class:`ImageRecord` lists, P x K sampler, transforms, loaders, and the
built-in synthetic benchmark (:mod:`hareid.data.synthetic`).

Typical use::

    ds = build_dataset("market1501", "data/")        # prints the statistics table
    train, query, gallery = build_loaders(ds, 160, 64, batch_size=32, num_instances=4, workers=2)
    for epoch in range(n):
        train.sampler.set_epoch(epoch)
        for images, pids, camids, paths in train: ...
"""

from hareid.data.datasets import (
    parse_csv,
    parse_dukemtmcreid,
    parse_folder,
    parse_market1501,
    parse_msmt17,
)
from hareid.data.loader import DEFAULT_DECODER, ImageDataset, build_loaders, read_image
from hareid.data.records import ImageRecord, ReIDDataset, relabel
from hareid.data.registry import (
    DATASETS,
    build_dataset,
    check_images,
    detect_dataset,
    list_datasets,
    list_images,
    open_dataset,
)
from hareid.data.sampler import IdentitySampler
from hareid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASETS",
    "DEFAULT_DECODER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IdentitySampler",
    "ImageDataset",
    "ImageRecord",
    "ReIDDataset",
    "build_dataset",
    "build_loaders",
    "build_transforms",
    "check_images",
    "detect_dataset",
    "list_datasets",
    "list_images",
    "open_dataset",
    "parse_csv",
    "parse_dukemtmcreid",
    "parse_folder",
    "parse_market1501",
    "parse_msmt17",
    "read_image",
    "relabel",
]
