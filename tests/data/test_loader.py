"""Transforms, ImageDataset (decoding, bad images) and build_loaders."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from hareid.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    ImageRecord,
    ReIDDataset,
    build_loaders,
    build_transforms,
    read_image,
)
from hareid.errors import DataError


def _img(path: Path, color=(200, 10, 60), size=(30, 70)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_transforms_shapes_and_normalisation():
    train_tf, eval_tf = build_transforms(64, 32, flip=0.5, pad=4, erasing=0.0, color_jitter=0.2)
    pil = Image.new("RGB", (20, 50), (255, 0, 0))
    for tf in (train_tf, eval_tf):
        for inp in (pil, torch.full((3, 50, 20), 128, dtype=torch.uint8)):
            out = tf(inp)
            assert out.shape == (3, 64, 32) and out.dtype == torch.float32
    x = eval_tf(pil)
    expect = torch.tensor([(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
                           (0 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]])
    assert torch.allclose(x[:2, 30, 16], expect, atol=1e-3)
    names = [type(t).__name__ for t in build_transforms(64, 32, flip=0.0, pad=0, erasing=0.0)[0].transforms]
    assert "RandomHorizontalFlip" not in names and "RandomCrop" not in names
    assert "RandomErasing" not in names and "ColorJitter" not in str(names)
    names = [type(t).__name__ for t in build_transforms(64, 32, erasing=1.0)[0].transforms]
    assert names[-1].startswith("RandomErasing") and "Pad" in names


def test_random_train_transform_is_seeded():
    train_tf, _ = build_transforms(64, 32, erasing=0.5, color_jitter=0.3)
    img = torch.randint(0, 255, (3, 80, 40), dtype=torch.uint8)
    torch.manual_seed(1)
    a = train_tf(img)
    torch.manual_seed(1)
    assert torch.equal(a, train_tf(img))


@pytest.mark.parametrize("decoder", ["torchvision", "pil"])
def test_image_dataset_items(tmp_path, decoder):
    recs = [ImageRecord(_img(tmp_path / "a.jpg"), 0, 1, "query"),
            ImageRecord(_img(tmp_path / "b.png", (0, 255, 0)), 3, 0, "query")]
    _, eval_tf = build_transforms(32, 16)
    ds = ImageDataset(recs, eval_tf, decoder=decoder)
    img, pid, camid, path = ds[1]
    assert type(img) is torch.Tensor and img.shape == (3, 32, 16)
    assert (pid, camid, path) == (3, 0, recs[1].path)
    assert img[1].mean() > 1.5 and img[0].mean() < -1.5  # green


def test_corrupt_image_error_and_skip(tmp_path):
    good = [ImageRecord(_img(tmp_path / f"{i}.jpg"), i // 2, 0, "train") for i in range(4)]
    bad_path = tmp_path / "bad.jpg"
    bad_path.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    bad = ImageRecord(str(bad_path), 1, 1, "train")
    _, eval_tf = build_transforms(32, 16)
    with pytest.raises(DataError) as e:
        ImageDataset([*good, bad], eval_tf)[4]
    assert "bad.jpg" in str(e.value) and "skip_bad_images" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"missing\.jpg"):
        read_image(str(tmp_path / "missing.jpg"))
    ds = ImageDataset([*good, bad], eval_tf, skip_bad_images=True)
    with pytest.warns(RuntimeWarning, match=r"bad\.jpg"):
        _, pid, _, path = ds[4]
    assert pid == 1 and path in (good[2].path, good[3].path)  # same identity substituted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per path: no second warning
        assert ds[4][1] == 1


def test_build_loaders_pk_batches(tmp_path):
    train = [ImageRecord(_img(tmp_path / f"t{p}_{i}.jpg", (p * 40, i * 60, 0)), p, i % 2, "train")
             for p in range(4) for i in range(4)]
    query = [ImageRecord(_img(tmp_path / "q.jpg"), 9, 0, "query")]
    gallery = [ImageRecord(_img(tmp_path / f"g{i}.jpg"), 9, 1, "gallery") for i in range(3)]
    ds = ReIDDataset("toy", tmp_path, train, query, gallery)
    tl, _, gl = build_loaders(ds, 32, 16, batch_size=4, num_instances=2, workers=0, seed=0)
    assert tl.pin_memory == torch.cuda.is_available() and not tl.persistent_workers
    tl.sampler.set_epoch(0)
    batches = list(tl)
    assert len(batches) == len(tl.sampler) // 4 == 4
    imgs, pids, _, _ = batches[0]
    assert imgs.shape == (4, 3, 32, 16) and pids[0] == pids[1] and pids[2] == pids[3] != pids[0]
    g = next(iter(gl))
    assert g[0].shape == (3, 3, 32, 16) and g[1].tolist() == [9, 9, 9]
    tl2, _, _ = build_loaders(ds, 32, 16, batch_size=4, num_instances=2, workers=1)
    assert tl2.persistent_workers and next(iter(tl2))[0].shape == (4, 3, 32, 16)
