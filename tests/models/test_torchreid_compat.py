"""torchreid HACNN checkpoints load into hareid and give the same embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from hareid.errors import CheckpointError
from hareid.models.torchreid_compat import load_torchreid_hacnn, map_torchreid_keys
from tests.helpers.peer import peer_hacnn


@pytest.fixture(scope="module")
def peer_model() -> torch.nn.Module:
    torch.manual_seed(1)
    model = peer_hacnn().HACNN(num_classes=11, use_gpu=False)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # make BN and hard attention non-trivial, so a wrong mapping shows
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.3)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("bn.weight") or name.endswith("bn.bias") or "hard_attn.fc.weight" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _save_torchreid_style(model: torch.nn.Module, path) -> None:
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # DataParallel-prefixed
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    torch.save({"state_dict": sd, "epoch": 60, "rank1": np.float64(0.905), "optimizer": opt.state_dict()}, path)


def test_embeddings_equal_torchreid(peer_model, tmp_path) -> None:
    path = tmp_path / "model.pth.tar-60"
    _save_torchreid_style(peer_model, path)
    with pytest.raises(Exception):  # noqa: B017 - a bare weights_only load refuses the numpy scalar
        torch.load(path, weights_only=True)
    model = load_torchreid_hacnn(path)
    assert not model.training and model.region_sampling == "torchreid"
    x = torch.randn(4, 3, 160, 64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = peer_model(x)
        out = model(x)
    assert out.shape == ref.shape == (4, 1024)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    # the fast mode is a different (close, not equal) sampler
    model.region_sampling = "direct"
    with torch.no_grad():
        assert not torch.allclose(model(x), ref, atol=1e-6)


def test_new_num_classes_keeps_everything_but_classifiers(peer_model) -> None:
    model = load_torchreid_hacnn(peer_model.state_dict(), num_classes=5)
    assert model.classifier_global.out_features == 5 == model.classifier_local.out_features
    torch.testing.assert_close(model.fc_local[0].weight, peer_model.fc_local[0].weight)


def test_missing_and_unexpected_keys_are_named(peer_model) -> None:
    sd = dict(peer_model.state_dict())
    del sd["ha2.hard_attn.fc.bias"]
    with pytest.raises(CheckpointError, match=r"attn\.1\.hard\.fc\.bias"):
        load_torchreid_hacnn(sd)
    sd = dict(peer_model.state_dict())
    sd["extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"extra_head\.weight"):
        load_torchreid_hacnn(sd)
    sd = dict(peer_model.state_dict())
    sd["ha1.hard_attn.fc.weight"] = torch.zeros(8, 3)
    with pytest.raises(CheckpointError, match="shape"):
        load_torchreid_hacnn(sd)


def test_key_map_is_total(peer_model) -> None:
    """Every torchreid key maps to a distinct hareid key, and together they cover hareid's HACNN."""
    from hareid.models.hacnn import HACNN

    mapped = map_torchreid_keys(peer_model.state_dict())
    assert len(mapped) == len(peer_model.state_dict())
    assert set(mapped) == set(HACNN(11, region_sampling="torchreid").state_dict())
