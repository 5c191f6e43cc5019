"""Label-free adaptation (hareid.footage.adapt): options, time split, clustering, batches, model
initialisation, bad input, and one end-to-end run on a synthetic video."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hareid.checkpoint import load_checkpoint
from hareid.cli import main
from hareid.errors import ConfigError
from hareid.footage.adapt import (
    TrackletSampler,
    init_model,
    merge_tracklets,
    split_overrides,
    time_split,
)
from tests.helpers.tiny import Tiny


def test_adapt_options_are_parsed_and_checked() -> None:
    rest, o = split_overrides(["train.epochs=2", "adapt.merge=true", "adapt.holdout=0.3", "adapt.min_crops=2"])
    assert rest == ["train.epochs=2"] and o.merge is True and o.holdout == 0.3 and o.min_crops == 2
    with pytest.raises(ConfigError, match=r"did you mean adapt\.merge"):
        split_overrides(["adapt.merg=true"])
    with pytest.raises(ConfigError, match=r"adapt\.min_crops='x': expected int"):
        split_overrides(["adapt.min_crops=x"])
    with pytest.raises(ConfigError, match=r"adapt.holdout=1.5: expected a share in \[0, 1\)"):
        split_overrides(["adapt.holdout=1.5"])


def test_time_split_holds_out_the_end() -> None:
    meta = {"sources": [{"name": "a", "start": 0, "stop": 100}], "tracklets": [
        {"id": "t0", "source": "a", "first_frame": 0, "last_frame": 50},
        {"id": "t1", "source": "a", "first_frame": 60, "last_frame": 85},  # straddles frame 80
        {"id": "t2", "source": "a", "first_frame": 80, "last_frame": 99},
    ]}
    assert time_split(meta, 0.2) == (["t0"], ["t2"], 1)
    assert time_split(meta, 0.0) == (["t0", "t1", "t2"], [], 0)


def test_merge_tracklets_respects_cannot_links() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    feats = np.concatenate([c + 0.05 * rng.normal(size=(3, 16)) for c in centres])  # 3 people x 3 tracklets
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    cannot = np.zeros((9, 9), bool)
    for a in range(0, 9, 3):  # tracklets 0, 3, 6 are seen together (different people)
        for b in range(0, 9, 3):
            cannot[a, b] = a != b
    labels, thr = merge_tracklets(feats, cannot, quantile=0.05)
    assert np.isfinite(thr)
    assert [len(set(labels[i:i + 3])) for i in range(0, 9, 3)] == [1, 1, 1]
    assert len(set(labels)) == 3
    cannot[0, 1] = cannot[1, 0] = True  # 0 and 1 seen together: never one identity
    labels, _ = merge_tracklets(feats, cannot, quantile=0.05)
    assert labels[0] != labels[1]
    labels, thr = merge_tracklets(feats, np.zeros((9, 9), bool))
    assert np.isnan(thr) and len(set(labels)) == 9  # no certain negatives: nothing merged


def test_tracklet_sampler_batches() -> None:
    # 6 identities, 10 crops each at times 0..9 s; 0, 1, 2 seen together; 3 right after 0 (a likely fragment)
    labels = np.repeat(np.arange(6), 10)
    times = np.tile(np.arange(10.0), 6) + np.repeat([0, 0, 0, 11, 40, 60], 10)
    co = np.zeros((6, 6), bool)
    co[np.ix_([0, 1, 2], [0, 1, 2])] = True
    np.fill_diagonal(co, False)
    spans = [[("cam", t0, t0 + 9)] for t0 in (0, 0, 0, 11, 40, 60)]
    s = TrackletSampler(labels, times, co, spans, batch_size=12, num_instances=4, seed=3, num_batches=20)
    s.set_epoch(1)
    order = list(s)
    assert len(order) == len(s) == 20 * 12
    for b in range(20):
        batch = np.array(order[b * 12:(b + 1) * 12])
        ids = labels[batch].reshape(3, 4)
        assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 3  # P distinct identities x K
        for row in batch.reshape(3, 4):  # K crops from K time slices: strictly increasing times
            assert np.all(np.diff(times[row]) > 0)
        first = ids[0, 0]
        if first in (0, 1, 2):
            assert set(ids[:, 0]) == {0, 1, 2}  # the anchor's co-occurring tracklets come first
        if first == 0:
            assert 3 not in ids[:, 0]
    s.set_epoch(1)
    assert list(s) == order  # deterministic in (seed, epoch)
    s.set_epoch(2)
    assert list(s) != order


def test_init_model_replaces_only_the_classifiers(tiny: Tiny) -> None:
    model, spec, info = init_model(tiny.checkpoint, num_classes=5)
    assert spec["num_classes"] == 5 and spec["return_features"] is True
    assert (info["height"], info["width"]) == (64, 32)
    state = load_checkpoint(tiny.checkpoint)["state_dict"]
    for k, v in model.state_dict().items():
        if k.startswith("classifier"):
            assert v.shape[0] == 5
        else:
            torch.testing.assert_close(v, state[k])


def test_foreign_checkpoint_is_refused_and_nothing_written(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "other.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(3, 3)}}, bad)
    assert main(["adapt", str(bad), str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.pt" in err[0]
    assert not (tmp_path / "run").exists()


def test_adapt_end_to_end_on_a_synthetic_video(tiny: Tiny, tmp_path: Path, capsys, monkeypatch) -> None:
    pytest.importorskip("cv2")
    import torch

    from tests.helpers.footage import make_video

    video = tmp_path / "street.avi"
    make_video(video)
    run = tmp_path / "run"
    reads: list[str] = []  # torch.load calls on the source checkpoint: adapt reads it once
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if Path(str(f)).resolve() == Path(tiny.checkpoint).resolve():
            reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    rc = main(["adapt", str(tiny.checkpoint), str(video), "--out", str(run), "--quiet",
               "train.epochs=2", "adapt.holdout=0.45", "adapt.min_crops=4", "adapt.merge=true", "data.batch_size=8",
               "data.num_instances=4", "data.workers=0", "train.progress=false", "loss.attn_weight=1"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert len(reads) == 1, f"adapt read its checkpoint {len(reads)} times"
    init = json.loads((run / "init.json").read_text())  # recorded without reading the file again
    assert init["path"] == str(Path(tiny.checkpoint).resolve()) and len(init["sha256"]) == 64
    rec = json.loads((run / "adapt.json").read_text())
    assert rec["train_tracklets"] >= 2 and rec["held_out_tracklets"] >= 1
    assert rec["validation_queries"] > 0 and rec["epoch0"] is not None
    merge = rec["merge"]  # merged tracklets were never seen in the same frame
    assert merge["enabled"] and rec["pseudo_identities"] == merge["identities"] <= rec["train_tracklets"]
    meta = json.loads((run / "tracklets" / "tracklets.json").read_text())
    frames = {t["id"]: {c["frame"] for c in t["crops"]} for t in meta["tracklets"]}
    for group in merge["groups"]:
        for i, a in enumerate(group):
            assert all(frames[a].isdisjoint(frames[b]) for b in group[i + 1:])
    assert rec["best"]["epoch"] in (1, 2)
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["model"]["num_classes"] == rec["pseudo_identities"]
    assert ckpt["config"]["data"]["name"] == "tracklets"
    assert (run / "tracklets" / "tracklets.json").is_file()
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics if "mAP" in m] == [1, 2]
    # the footage's foreground masks taught the attention: the term was computed every epoch
    assert [m["epoch"] for m in metrics if "attn_loss" in m] == [1, 2]
    assert all(0 < m["attn_loss"] < 10 for m in metrics if "attn_loss" in m)
    # every other command takes the adapted checkpoint
    assert main(["eval", str(run / "checkpoints" / "best.pt"), str(run / "tracklets"), "--workers", "0",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert "mAP" in capsys.readouterr().out


def test_adapt_on_two_cameras_trains_camera_aware(tiny: Tiny, tmp_path: Path, capsys, monkeypatch) -> None:
    """Two cameras: the loss the Trainer optimises tells a tracklet apart only from its own camera's."""
    pytest.importorskip("cv2")
    from hareid.engine import losses
    from tests.helpers.footage import FIGURES, make_video

    videos = [tmp_path / "north.avi", tmp_path / "south.avi"]
    make_video(videos[0])
    make_video(videos[1], figures=FIGURES[::-1])
    seen: list = []
    real_forward = losses.ReIDLoss.forward

    def spy(self, outputs, targets, person=None):
        seen.append(self.compete)
        return real_forward(self, outputs, targets, person)

    monkeypatch.setattr(losses.ReIDLoss, "forward", spy)
    run = tmp_path / "run"
    rc = main(["adapt", str(tiny.checkpoint), *map(str, videos), "--out", str(run), "--quiet", "train.epochs=1",
               "adapt.holdout=0", "adapt.min_crops=4", "data.batch_size=8", "data.num_instances=4",
               "data.workers=0", "train.progress=false"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rec = json.loads((run / "adapt.json").read_text())
    assert rec["camera_aware"] is True and seen and all(c is not None for c in seen)
    meta = json.loads((run / "tracklets" / "tracklets.json").read_text())
    kept = [t for t in meta["tracklets"] if len(t["crops"]) >= 4]
    cams = np.array([t["source"] for t in kept])
    assert len(set(cams)) == 2
    assert seen[0].shape == (len(kept), len(kept))
    assert (seen[0].numpy() == (cams[:, None] == cams[None, :])).all()  # no merge: a tracklet's own camera


def test_init_model_from_a_torchreid_checkpoint(tmp_path: Path) -> None:
    from hareid.models.torchreid_compat import load_torchreid_hacnn
    from tests.helpers.peer import peer_hacnn

    torch.manual_seed(0)
    peer = peer_hacnn().HACNN(num_classes=11, use_gpu=False)
    path = tmp_path / "model.pth.tar-60"
    torch.save({"state_dict": {f"module.{k}": v for k, v in peer.state_dict().items()}, "epoch": 60}, path)
    model, spec, _ = init_model(path, num_classes=4)
    assert spec["name"] == "hacnn" and spec["num_classes"] == 4 and model.return_features
    ref = load_torchreid_hacnn(path)
    for k, v in model.state_dict().items():
        if not k.startswith("classifier"):
            torch.testing.assert_close(v, ref.state_dict()[k])
    from hareid.models import build_model

    rebuilt = build_model(spec.pop("name"), **spec)  # the spec stored in checkpoints rebuilds it
    rebuilt.load_state_dict(model.state_dict())


def test_recompute_batchnorm_measures_the_target_statistics(tmp_path: Path) -> None:
    from PIL import Image

    from hareid.data.transforms import build_transforms
    from hareid.footage.adapt import recompute_batchnorm
    from hareid.models import build_model

    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    torch.manual_seed(0)
    model = build_model("hacnn", num_classes=3)
    bn = model.stem.bn if hasattr(model.stem, "bn") else next(m for m in model.stem.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d))
    recompute_batchnorm(model, paths, 64, 32, batch_size=4)
    assert not model.training
    tf = build_transforms(64, 32)[1]
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        expected = conv(x).mean(dim=(0, 2, 3))  # two equal batches: the mean of batch means
    torch.testing.assert_close(bn.running_mean, expected, atol=1e-4, rtol=1e-4)


def test_pseudo_identities_compete_only_within_a_camera() -> None:
    from hareid.footage.adapt import _PseudoIds

    spans = [[("cam0", 0, 5)], [("cam0", 2, 8)], [("cam1", 0, 4)], [("cam0", 9, 12), ("cam1", 20, 25)]]
    ids = _PseudoIds([], np.arange(4), [], [], [], np.zeros((4, 4), bool), spans, {})
    expected = np.array([[1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]], bool)  # merged id 3: both
    assert (ids.compete() == expected).all()
    one = _PseudoIds([], np.arange(2), [], [], [], np.zeros((2, 2), bool), spans[:2], {})
    assert one.compete() is None  # one camera: every tracklet competes (the usual loss)
