"""Feature extraction and the full evaluate(): batch-size independence, flip TTA, distances."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hareid.evaluate import EvalResult, evaluate, extract_features
from hareid.evaluate.distance import distance_memory_bytes, pairwise_distance


class TinyNet(nn.Module):
    """Conv + BN + pool + linear; eval output L2-normalised (like hareid models)."""

    def __init__(self, dim=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten(), nn.Linear(64, dim))

    def forward(self, x):
        return nn.functional.normalize(self.body(x), dim=1)


class Images(Dataset):
    def __init__(self, n, ids, cams, seed):
        g = torch.Generator().manual_seed(seed)
        self.pids = torch.randint(0, ids, (n,), generator=g)
        self.cams = torch.randint(0, cams, (n,), generator=g)
        proto = torch.randn(ids, 3, 16, 8, generator=g)
        self.x = proto[self.pids] + 0.5 * torch.randn(n, 3, 16, 8, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.pids[i]), int(self.cams[i]), f"img_{i}.jpg"


def _model():
    torch.manual_seed(0)
    m = TinyNet()
    with torch.no_grad():  # non-trivial running stats, so eval mode matters
        m.body[1].running_mean.uniform_(-0.5, 0.5)
        m.body[1].running_var.uniform_(0.5, 2.0)
    return m


def test_features_independent_of_batch_size_and_keep_labels():
    data, model = Images(23, 5, 3, seed=1), _model()
    model.train()
    sets = [extract_features(model, DataLoader(data, batch_size=bs), progress=False)
            for bs in (1, 4, 23)]
    assert model.training  # mode restored
    for fs in sets[1:]:
        torch.testing.assert_close(fs.features, sets[0].features, atol=1e-5, rtol=1e-5)
    fs = sets[0]
    assert fs.features.shape == (23, 16) and fs.features.dtype == torch.float32
    assert fs.features.device.type == "cpu"
    assert fs.pids.tolist() == data.pids.tolist() and fs.camids.tolist() == data.cams.tolist()
    assert fs.paths == [f"img_{i}.jpg" for i in range(23)]


def test_flip_is_mean_of_image_and_mirror():
    data, model = Images(6, 3, 2, seed=2), _model()
    fs = extract_features(model, DataLoader(data, batch_size=4), flip=True, progress=False)
    model.eval()
    with torch.no_grad():
        ref = (model(data.x) + model(torch.flip(data.x, dims=[3]))) / 2
    torch.testing.assert_close(fs.features, ref, atol=1e-5, rtol=1e-5)
    assert (fs.features.norm(dim=1) <= 1 + 1e-5).all()  # mean of unit vectors, not re-normalised


def test_autocast_bf16_close_to_fp32():
    data, model = Images(8, 3, 2, seed=3), _model()
    a = extract_features(model, DataLoader(data, batch_size=8), progress=False)
    b = extract_features(model, DataLoader(data, batch_size=8), dtype=torch.bfloat16,
                         progress=False)
    assert b.features.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(a.features, b.features).min() > 0.98


def test_pairwise_distance_chunked_equals_direct():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 12)).astype(np.float32), rng.normal(size=(53, 12)).astype(np.float32)
    direct = ((q[:, None] - g[None]) ** 2).sum(-1)
    for chunk in (None, 1, 5, 100):
        np.testing.assert_allclose(pairwise_distance(q, g, chunk_size=chunk), direct, rtol=1e-4,
                                   atol=1e-4)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = pairwise_distance(torch.from_numpy(q), torch.from_numpy(g), "cosine", chunk_size=7)
    assert cos.dtype == np.float32
    np.testing.assert_allclose(cos, 1 - qn @ gn.T, atol=1e-5)
    out = np.empty((37, 53), np.float32)
    assert pairwise_distance(q, g, out=out) is out
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(q, g, "manhattan")
    # Market-1501 size: 204 MiB output (written in place) + features + the augmented gallery
    assert distance_memory_bytes(3368, 15913, 1024) < 345 * 2**20


@pytest.mark.parametrize("rerank", [False, True])
def test_evaluate_end_to_end(rerank):
    model = _model()
    q = DataLoader(Images(12, 4, 2, seed=4), batch_size=5)
    g = DataLoader(Images(40, 4, 3, seed=5), batch_size=16)
    res = evaluate(model, q, g, metric="cosine", rerank=rerank, progress=False,
                   rerank_kwargs={"k1": 5, "k2": 2})
    assert isinstance(res, EvalResult)
    assert res.distmat.shape == (12, 40) and len(res.query) == 12 and len(res.gallery) == 40
    d = json.loads(res.to_json())
    assert {"rank1", "rank5", "rank10", "mAP", "mINP", "num_valid", "cmc"} <= set(d)
    assert 0 <= d["mAP"] <= 1 and d["rerank"] is rerank and len(d["cmc"]) == 40
    assert "rank-1" in res.table()


@pytest.mark.parametrize("rerank", [False, True])
def test_evaluate_streams_without_keeping_the_matrix(monkeypatch, rerank):
    """Above the size threshold evaluate() streams: same metrics, no (Q, G) matrix kept, ranked
    lists instead (what ranked-list pictures need)."""
    import hareid.evaluate.streaming as streaming

    model = _model()
    q = DataLoader(Images(12, 4, 2, seed=4), batch_size=5)
    g = DataLoader(Images(40, 4, 3, seed=5), batch_size=16)
    kw = {"rerank": rerank, "progress": False, "rerank_kwargs": {"k1": 5, "k2": 2}}
    full = evaluate(model, q, g, **kw)
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 0)
    streamed = evaluate(model, q, g, **kw)
    assert streamed.distmat is None and full.distmat is not None
    assert streamed.to_dict() == full.to_dict()
    for qi in (0, 7):
        row = streamed.distance_row(qi)
        top = np.argsort(full.distance_row(qi), kind="stable")[:10]
        np.testing.assert_array_equal(np.argsort(row, kind="stable")[:10], top)
        np.testing.assert_array_equal(row[top], full.distmat[qi, top])
