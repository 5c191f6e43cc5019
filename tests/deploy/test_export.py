"""hareid.deploy.export: folded-BN inference model, ONNX / TorchScript export checked against eager."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hareid.deploy import export as hx
from hareid.deploy.export import (
    export_model,
    export_onnx,
    export_torchscript,
    fuse_for_inference,
    optimize_for_inference,
)
from hareid.errors import HareidError
from hareid.models import build_model, list_models
from tests.helpers.toys import trained_like

ATOL = 1e-4


_trained_like = trained_like  # non-trivial BN statistics and moving regions (tests/helpers/toys.py)


def _num_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture(scope="module")
def hacnn() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(build_model("hacnn", num_classes=11))


@pytest.mark.parametrize("name", list_models())
def test_fused_equals_eager_for_every_model(name: str) -> None:
    torch.manual_seed(0)
    model = _trained_like(build_model(name, num_classes=7))
    h, w = (160, 64) if name == "hacnn" else (128, 64)  # ResNets: stride 32, keep it small
    assert model.input_size_ok(h, w)
    n_bn = _num_bn(model)
    fused = fuse_for_inference(model)
    assert _num_bn(fused) == 0 and fused.fused_bn == n_bn  # every BN folded
    assert _num_bn(model) == n_bn and model.training is False  # original untouched
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fused.parameters())
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        ref = model(x)
    with torch.inference_mode():
        got = fused(x)
    assert got.shape == ref.shape == (2, model.embed_dim)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_fuse_leaves_training_model_and_bf16_path_works(hacnn: nn.Module) -> None:
    model = build_model("hacnn", num_classes=5).train()
    fused = optimize_for_inference(model)
    assert model.training and not fused.training
    x = torch.randn(2, 3, 160, 64)
    with torch.inference_mode():
        ref = fuse_for_inference(hacnn)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fuse_for_inference(hacnn)(x)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(low, ref, dim=1)
    assert float(cos.min()) > 0.99


def test_fuse_folds_sequential_pairs() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6))
    _trained_like(seq)
    fused = fuse_for_inference(seq)
    assert fused.fused_bn == 2 and isinstance(fused[1], nn.Identity) and isinstance(fused[5], nn.Identity)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fused(x), seq(x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("hw", [(160, 64), (256, 128)])
def test_onnx_matches_eager_with_dynamic_batch(hacnn: nn.Module, tmp_path: Path, hw: tuple[int, int]) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    info = export_model(hacnn, out, fmt="onnx", height=hw[0], width=hw[1], opset=17)
    assert info["path"] == str(out) and out.is_file() and info["opset"] >= 16
    assert info["input_shape"] == [2, 3, *hw] and info["check_batch"] == 3  # exported at 2, checked at 3
    assert info["max_abs_diff"] <= ATOL and info["embed_dim"] == 1024
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temp file left behind
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.name == "images" and not isinstance(inp.shape[0], int)  # symbolic batch
    x = torch.randn(5, 3, *hw)
    got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, hacnn(x), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_onnx_static_batch(hacnn: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    info = export_model(hacnn, tmp_path / "s.onnx", height=160, width=64, dynamic_batch=False, opset=16)
    assert info["check_batch"] == 2 and info["opset"] == 16 and info["max_abs_diff"] <= ATOL


def test_torchscript_roundtrip(hacnn: nn.Module, tmp_path: Path) -> None:
    out = tmp_path / "m.ts"
    info = export_model(hacnn, out, fmt="torchscript", height=160, width=64)
    assert info["format"] == "torchscript" and info["max_abs_diff"] <= ATOL
    loaded = torch.jit.load(str(out))
    assert isinstance(loaded, torch.jit.ScriptModule)
    with torch.no_grad(), torch.jit.optimized_execution(False):
        assert loaded(torch.randn(1, 3, 160, 64)).shape == (1, 1024)  # batch 1 also works


def test_missing_onnxruntime_raises_hareid_error(hacnn: nn.Module, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(HareidError, match=r"hareid\[onnx\]") as err:
        export_model(hacnn, tmp_path / "m.onnx", fmt="onnx", height=160, width=64)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.iterdir())


def test_check_failure_raises_and_bad_arguments(hacnn: nn.Module, tmp_path: Path, monkeypatch) -> None:
    tiny = _trained_like(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    assert export_model(tiny, tmp_path / "t.ts", fmt="ts", height=8, width=8)["max_abs_diff"] <= ATOL
    real = hx._run_export
    monkeypatch.setattr(hx, "_run_export", lambda fmt, path, x: real(fmt, path, x) + 1e-3)
    with pytest.raises(HareidError, match="differs from the eager model") as err:
        export_model(tiny, tmp_path / "m.ts", fmt="torchscript", height=8, width=8)
    assert "\n" not in str(err.value)
    with pytest.raises(HareidError, match="format"):
        export_model(hacnn, tmp_path / "m.x", fmt="tflite")
    with pytest.raises(HareidError, match="opset"):
        export_onnx(hacnn, tmp_path / "m.onnx", 160, 64, opset=13)
    with pytest.raises(HareidError, match="size 8x8"):
        export_torchscript(hacnn, tmp_path / "m.ts", 8, 8)


def test_failed_export_leaves_no_file(hacnn: nn.Module, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")

    def boom(*args, **kwargs):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(hx, "_onnx_export", boom)
    with pytest.raises(HareidError, match="exporter broke"):
        export_onnx(hacnn, tmp_path / "m.onnx", 160, 64)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_compiled_matches_eager(hacnn: nn.Module) -> None:
    compiled = optimize_for_inference(hacnn, compile=True)
    x = torch.randn(2, 3, 160, 64)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), hacnn(x), atol=ATOL, rtol=0)


@pytest.mark.slow
def test_dynamo_exporter(hacnn: nn.Module, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    info = export_model(hacnn, tmp_path / "d.onnx", height=160, width=64, exporter="dynamo")
    assert info["exporter"] == "dynamo" and info["max_abs_diff"] <= ATOL
