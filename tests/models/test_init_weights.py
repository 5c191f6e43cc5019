"""``model.init=PATH``: start from hareid, torchreid or torchvision weights, non-strict, with a report."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import torchvision

from hareid.checkpoint import save_checkpoint
from hareid.errors import CheckpointError
from hareid.models import build_model
from hareid.models.weights import load_init_weights
from tests.helpers.peer import peer_hacnn


def test_torchreid_weights_new_classifiers(tmp_path: Path) -> None:
    """A torchreid HACNN (11 identities) into hareid's HACNN for 5: everything but the classifiers
    loads (values equal after the key map); the classifiers are reported and keep their fresh init."""
    torch.manual_seed(1)
    peer = peer_hacnn().HACNN(num_classes=11, use_gpu=False)
    path = tmp_path / "peer.pth"
    torch.save({"state_dict": peer.state_dict(), "epoch": 60}, path)
    model = build_model("hacnn", num_classes=5)
    fresh = model.classifier_global.weight.clone()
    report = load_init_weights(model, path)
    assert report.source == "torchreid" and report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sorted(k.split(":")[0] for k in report.skipped) == [
        "classifier_global.bias", "classifier_global.weight", "classifier_local.bias", "classifier_local.weight"]
    assert not report.unused and not [k for k in report.missing if not k.endswith("num_batches_tracked")]
    torch.testing.assert_close(model.stem.conv.weight, peer.conv.conv.weight)
    torch.testing.assert_close(model.attn[2].hard.fc.bias, peer.ha3.hard_attn.fc.bias)
    torch.testing.assert_close(model.classifier_global.weight, fresh)  # re-initialised, not copied
    assert "classifier_global.weight: file (11, 512) vs model (5, 512)" in report.summary()


def test_torchvision_resnet_backbone(tmp_path: Path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(tv.layer3[0].conv1.weight)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(tv.state_dict(), path)
    model = build_model("resnet18_harm", num_classes=4)
    report = load_init_weights(model, path)
    assert report.source == "torchvision" and report.unused == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(model.stem[0].weight, tv.conv1.weight)
    torch.testing.assert_close(model.stages[1][0].conv1.weight, tv.layer3[0].conv1.weight)
    assert any(k.startswith("attn.") for k in report.missing)  # attention and heads start fresh


def test_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hacnn.pt"
    save_checkpoint({"state_dict": build_model("hacnn", num_classes=3).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"does not fit model ResNetHarm \(only \d+ of the file's \d+ "
                                              r"tensors match; e\.g\. .*\); pass weights of the same"):
        load_init_weights(build_model("resnet18_harm", num_classes=3), path)


def test_trainer_records_where_the_weights_came_from(tmp_path: Path) -> None:
    """A run started with model.init writes init.json (path, sha256, tensors loaded) and keeps the
    source in its checkpoints; the classifiers for the new number of identities start fresh."""
    from torch.utils.data import DataLoader, TensorDataset

    from hareid.checkpoint import load_checkpoint
    from hareid.config import load_config
    from hareid.engine import Trainer

    small = {"feature_dim": 32, "channels": (32, 64, 96)}
    src = build_model("hacnn", num_classes=6, **small)
    path = tmp_path / "src.pt"
    save_checkpoint({"state_dict": src.state_dict(), "model": {"name": "hacnn", "num_classes": 6, **small}}, path)
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "train.epochs=1", "train.amp=none",
                             "train.progress=false", "train.device=cpu", f"model.init={path}",
                             "model.feature_dim=32", "model.channels=[32,64,96]"])
    x, pids = torch.randn(8, 3, 48, 24), torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    train = DataLoader(TensorDataset(x, pids), batch_size=4)
    tr = Trainer(cfg, loaders=(train, None, None), num_classes=3)
    tr.setup()
    assert sorted(k.split(":")[0] for k in tr.init_report.skipped) == [
        "classifier_global.bias", "classifier_global.weight", "classifier_local.bias", "classifier_local.weight"]
    torch.testing.assert_close(tr.model.stem.conv.weight, src.stem.conv.weight)
    tr.fit()
    info = json.loads((tmp_path / "run" / "init.json").read_text())
    assert info["path"] == str(path) and info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(info["loaded"]) > 100 and info["source"] == "hareid"
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["init"]["sha256"] == info["sha256"]


def test_finetune_starts_where_the_source_model_is(tmp_path: Path) -> None:
    """Fine-tuning from a trained checkpoint starts above chance at epoch 0: before any step, the run's
    evaluation equals the source model's on the same images, well above a random start. (Data: person-
    like prototypes per identity plus noise, so a few dozen steps learn it; the claim on the synthetic
    benchmark is measured in the README.)"""
    from torch.utils.data import DataLoader, TensorDataset

    from hareid.config import load_config
    from hareid.engine import Trainer
    from hareid.evaluate import evaluate

    g = torch.Generator().manual_seed(0)
    protos = torch.randn(6, 3, 48, 24, generator=g)

    def split(n: int, cams: list[int]) -> TensorDataset:
        pids = torch.arange(6).repeat_interleave(n)
        x = protos[pids] + 0.8 * torch.randn(len(pids), 3, 48, 24, generator=g)
        cam = torch.tensor(cams * (len(pids) // len(cams)))
        return TensorDataset(x, pids, cam, torch.arange(len(pids)))

    def loaders(train: TensorDataset) -> tuple:
        collate = lambda b: (torch.stack([x for x, *_ in b]), [int(p) for _, p, *_ in b],  # noqa: E731
                             [int(c) for *_, c, _ in b], [str(int(i)) for *_, i in b])
        return (DataLoader(train, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(0),
                           collate_fn=collate),
                DataLoader(split(2, [0, 1]), batch_size=32, collate_fn=collate),
                DataLoader(split(4, [1, 0]), batch_size=32, collate_fn=collate))

    def cfg(out: str, *extra: str):
        return load_config(None, [f"output_dir={tmp_path / out}", "train.amp=none", "train.progress=false",
                                  "train.device=cpu", "model.feature_dim=64", "model.channels=[32,64,96]",
                                  "optim.lr=3e-3", "optim.scheduler=none", "train.eval_every=0", *extra])

    torch.manual_seed(0)
    src = Trainer(cfg("src", "train.epochs=6"), loaders=loaders(split(8, [0, 1])), num_classes=6)
    src.fit()
    q, gal = loaders(split(1, [0]))[1:]
    source = evaluate(src.model.eval(), q, gal, progress=False).rank
    start = {}
    for name, init in (("init", f"model.init={tmp_path / 'src' / 'checkpoints' / 'last.pt'}"), ("scratch", "")):
        tr = Trainer(cfg(name, "train.epochs=1", *([init] if init else [])), loaders=(*loaders(split(8, [0, 1]))[:1], q, gal),
                     num_classes=4)  # another number of identities: new classifiers
        tr.setup()
        start[name] = evaluate(tr.model.eval(), q, gal, progress=False).rank
    assert start["init"].mAP == pytest.approx(source.mAP, abs=1e-6)  # the source's weights, exactly
    chance = 1 / 6
    assert start["init"].rank(1) > max(2 * chance, start["scratch"].rank(1))
    assert start["init"].mAP > start["scratch"].mAP + 0.2
