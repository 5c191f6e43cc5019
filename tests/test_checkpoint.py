"""Atomic, safe checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hareid.checkpoint import load_checkpoint, load_state_dict, save_checkpoint
from hareid.errors import CheckpointError


def test_roundtrip_keeps_numpy_scalars_and_strips_module_prefix(tmp_path):
    sd = {"module.w": torch.arange(6.0).view(2, 3)}
    path = save_checkpoint({"state_dict": sd, "epoch": 3, "rank1": np.float64(0.91)}, tmp_path / "c.pth")
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and float(ckpt["rank1"]) == pytest.approx(0.91)
    assert torch.equal(load_state_dict(path)["w"], sd["module.w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left behind


def test_safetensors_roundtrip(tmp_path):
    sd = {"a": torch.randn(3), "b": torch.ones(2, 2)}
    path = save_checkpoint(sd, tmp_path / "w.safetensors")
    out = load_state_dict(path)
    assert all(torch.equal(out[k], sd[k]) for k in sd)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_checkpoint(path)


def test_failed_write_keeps_previous_file(tmp_path):
    path = save_checkpoint({"v": 1}, tmp_path / "last.pt")
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint({"v": lambda: 0}, path)  # lambdas cannot be pickled
    assert load_checkpoint(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_is_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
