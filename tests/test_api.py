"""The Python API (``hareid.api``) on the tiny training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hareid.api import (
    build_gallery_index,
    build_index_from_images,
    embed,
    evaluate_checkpoint,
    list_images,
    load_images,
    load_model,
    search_images,
)
from hareid.errors import CheckpointError, DataError
from tests.helpers.tiny import Tiny


@pytest.fixture(scope="module")
def loaded(tiny: Tiny) -> tuple[torch.nn.Module, dict]:
    return load_model(tiny.checkpoint)


def test_load_model_info(loaded, tiny: Tiny) -> None:
    model, info = loaded
    assert not model.training
    assert (info["height"], info["width"]) == (64, 32)
    assert info["model"]["name"] == "hacnn" and info["config"]["data"]["root"] == str(tiny.data)
    assert info["path"] == str(tiny.checkpoint)


def test_embed_paths_and_tensor_agree(loaded, tiny: Tiny) -> None:
    model, info = loaded
    paths = tiny.images("query")[:5]
    from_paths = embed(model, paths, info, batch_size=2)  # several batches
    batch = load_images(paths, info["height"], info["width"])
    assert batch.shape == (5, 3, 64, 32)
    from_tensor = embed(model, batch)
    assert from_paths.shape == (5, model.embed_dim) and from_paths.dtype == torch.float32
    torch.testing.assert_close(from_paths, from_tensor, atol=1e-5, rtol=0)
    # global and local parts are each L2-normalised
    half = model.embed_dim // 2
    for part in (from_paths[:, :half], from_paths[:, half:]):
        torch.testing.assert_close(part.norm(dim=1), torch.ones(5), atol=1e-4, rtol=0)
    single = embed(model, str(paths[0]), info)
    torch.testing.assert_close(single, from_paths[:1], atol=1e-5, rtol=0)
    flipped = embed(model, batch, flip=True)
    assert not torch.allclose(flipped, from_tensor)


def test_index_finds_gallery_image_first(loaded, tiny: Tiny) -> None:
    model, info = loaded
    gallery = [str(p) for p in tiny.images("gallery")]
    index = build_index_from_images(model, gallery, info)
    assert len(index) == len(gallery)
    queries = [0, len(gallery) // 2, len(gallery) - 1]
    hits = index.search(embed(model, [gallery[i] for i in queries], info), k=3)
    for i, hit in zip(queries, hits):
        assert hit.paths[0] == gallery[i] and float(hit.scores[0]) == pytest.approx(1.0, abs=1e-4)
        assert list(hit.scores) == sorted(hit.scores, reverse=True)


def test_dataset_index_save_and_search(tiny: Tiny, tmp_path: Path) -> None:
    index = build_gallery_index(tiny.checkpoint, tiny.data)
    assert len(index) > 0 and set(index.pids.tolist()) >= {0}  # distractors kept, junk dropped
    index.save(tmp_path / "idx")
    query = index.paths[3]
    (path, hits), = search_images(tiny.checkpoint, tmp_path / "idx", [query], k=4)
    assert path == query and len(hits) == 4 and hits[0][0] == query


def test_evaluate_checkpoint(tiny: Tiny) -> None:
    res = evaluate_checkpoint(tiny.checkpoint, tiny.data, workers=0)
    d = res.to_dict()
    assert 0 <= d["rank1"] <= d["rank5"] <= 1 and 0 < d["mAP"] <= 1
    assert len(res.query) == len(tiny.images("query"))


def test_list_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.jpg", "a/b/y.PNG", "a/notes.txt", "a/.hidden.jpg"):
        (tmp_path / name).write_bytes(b"")
    assert list_images(tmp_path) == [str(tmp_path / "a/b/y.PNG"), str(tmp_path / "a/x.jpg")]


def test_errors_name_the_file(loaded, tmp_path: Path) -> None:
    model, info = loaded
    with pytest.raises(DataError, match=r"nope\.jpg: image not found"):
        embed(model, [tmp_path / "nope.jpg"], info)
    with pytest.raises(DataError, match=r"expected an image batch"):
        embed(model, torch.zeros(3, 64, 32))
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"name": "hacnn", "num_classes": 3}, "state_dict": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointError, match=r"bad\.pt: weights do not fit model 'hacnn'"):
        load_model(bad)
