"""`hareid index` at scale: metadata, resume after a stop, unreadable images, torchrun shards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny import Tiny

pytest.importorskip("faiss")

from hareid.api import embed, load_model
from hareid.index import FaissIndex, open_index
from hareid.index.build import gallery_records, index_gallery
from hareid.index.embedder import load_embedder


@pytest.fixture(scope="module")
def embedder(tiny: Tiny):
    return load_embedder(tiny.checkpoint, device="cpu", dtype="fp32")  # compared with api.embed


def reference(tiny: Tiny, paths: list[str]) -> np.ndarray:
    """The API's embedding (``hareid.api.embed``), rows scaled to unit length."""
    model, info = load_model(tiny.checkpoint)
    f = embed(model, paths, info).numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_dataset_gallery_metadata_and_vectors(tiny: Tiny, embedder, tmp_path: Path) -> None:
    res = index_gallery(tiny.checkpoint, tiny.data, tmp_path / "idx", embedder=embedder,
                        workers=0, progress=False)
    recs = gallery_records(tiny.data)
    gallery = sorted(str(p.resolve()) for p in tiny.images("gallery") if not p.name.startswith("-1"))
    assert [r.path for r in recs] == gallery  # junk (-1) dropped, distractors kept
    assert res["added"] == len(gallery) and res["skipped"] == 0 and res["index"]["count"] == len(gallery)
    with FaissIndex.open(tmp_path / "idx") as index:
        items = index.items()
        assert [it.path for it in items] == gallery
        for it in items:  # 0002_c3s1_000123_00.jpg: pid 2, camid 2, frame 123
            pid, cam = Path(it.path).name.split("_")[:2]
            assert it.pid == int(pid) and it.camera == str(int(cam[1]) - 1)
            assert it.time == float(Path(it.path).name.split("_")[2]) and it.source == "gallery"
        np.testing.assert_allclose(index.vectors([it.id for it in items]),
                                   reference(tiny, gallery), atol=1e-4)
        assert index.get_setting("root") == str(tiny.data.resolve())


class StopAfter:
    """An embedder that fails on its third batch, like a run killed mid-way."""

    def __init__(self, inner, batches: int):
        self.inner, self.left = inner, batches
        self.dim, self.input_size, self.preprocess = inner.dim, inner.input_size, inner.preprocess

    def embed(self, x):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.inner.embed(x)


def test_resume_skips_indexed_images(tiny: Tiny, embedder, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    for i, p in enumerate(tiny.images("gallery")[-20:]):  # cameras as sub-folders
        (folder / f"cam{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / f"cam{i % 2}" / p.name)
    (folder / "cam0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = tmp_path / "photos.idx"
    with pytest.raises(KeyboardInterrupt):
        index_gallery(tiny.checkpoint, folder, out, batch_size=4, workers=0, progress=False,
                      embedder=StopAfter(embedder, 2))
    with FaissIndex.open(out) as index:
        assert len(index) == 8  # two committed batches
    res = index_gallery(tiny.checkpoint, folder, out, batch_size=4, workers=0, progress=False,
                        embedder=embedder)
    assert res["skipped"] == 8 and res["added"] == 12 and res["total"] == 21
    assert [Path(p).name for p in res["unreadable"]] == ["broken.jpg"]
    again = index_gallery(tiny.checkpoint, folder, out, workers=0, progress=False, embedder=embedder)
    assert again["added"] == 0 and again["skipped"] == 20  # the broken file is retried, not stored
    with FaissIndex.open(out) as index:
        items = index.items()
        assert len(items) == 20 and len({it.path for it in items}) == 20
        assert {it.camera for it in items} == {"cam0", "cam1"}
        assert all(it.camera == Path(it.path).parent.name and it.source == "folder" for it in items)
        assert all(it.time == os.path.getmtime(it.path) for it in items)
        np.testing.assert_allclose(index.vectors([it.id for it in items]),
                                   reference(tiny, [it.path for it in items]), atol=1e-4)


def test_csv_metadata_and_milvus_output(tiny: Tiny, embedder, tmp_path: Path) -> None:
    pytest.importorskip("pymilvus")
    imgs = tiny.images("query")[:5]
    meta = tmp_path / "cams.csv"
    rows = ["path,camera,time,source,pid"] + [
        f"{p.name},door {i % 2},{1000 + i},feed,{i}" for i, p in enumerate(imgs)]
    meta.write_text("\n".join(rows) + "\n")
    for p in imgs:
        shutil.copy(p, tmp_path / p.name)
    res = index_gallery(tiny.checkpoint, tmp_path, tmp_path / "g.db", meta=meta, embedder=embedder,
                        workers=0, progress=False)
    assert res["added"] == 5 and res["index"]["backend"] == "milvus"
    with open_index(tmp_path / "g.db") as index:
        got = {Path(it.path).name: it for it in index.items()}
        for i, p in enumerate(imgs):
            it = got[p.name]
            assert (it.camera, it.time, it.source, it.pid) == (f"door {i % 2}", 1000.0 + i, "feed", i)
        hits = index.search(reference(tiny, [str(imgs[3])]), k=1)[0]
        assert Path(hits.paths[0]).name == imgs[3].name


def test_torchrun_two_ranks_equal_one_process(tiny: Tiny, embedder, tmp_path: Path) -> None:
    """Two ranks (gloo, CPU) each embed half of every round; rank 0 writes the same index."""
    one = index_gallery(tiny.checkpoint, tiny.data, tmp_path / "one", embedder=embedder,
                        batch_size=4, workers=0, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "hareid", "index", str(tiny.checkpoint), str(tiny.data), "--out",
         str(tmp_path / "two"), "--batch-size", "4", "--workers", "0", "--quiet", "--dtype", "fp32"],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"index of {one['total']} images" in proc.stdout
    with FaissIndex.open(tmp_path / "one") as a, FaissIndex.open(tmp_path / "two") as b:
        ia, ib = a.items(), b.items()
        assert ia == ib  # same ids, paths and metadata, in gallery order
        np.testing.assert_allclose(a.vectors([i.id for i in ia]), b.vectors([i.id for i in ib]),
                                   atol=1e-5)
