"""The attention (person-mask) loss and the masks that feed it.

* masks stay pixel-aligned with their images through every training transform (one test each);
* datasets carry masks where they have them (synthetic, tracklets) and the trainer says once when
  they do not;
* the loss equals a hand-computed value, its gradient moves attention mass onto a known mask, and a
  tiny HA-CNN run with the loss ends with a higher contrast lift than the same run without it.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from hareid.data.loader import ImageDataset, read_mask
from hareid.data.records import ImageRecord
from hareid.data.transforms import build_transforms
from hareid.engine.losses import AttentionMaskLoss, ReIDLoss, attention_distribution
from tests.helpers.tiny import TRAIN_OVERRIDES

H, W = 48, 24


def _pair(seed: int = 0) -> tuple[torch.Tensor, tv_tensors.Mask]:
    """An image that *is* its mask (white person on black) plus a random person-shaped blob, so any
    misalignment of one transform between image and mask shows up as disagreeing pixels."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(1, 30, 15, dtype=torch.uint8)
    y0, x0 = int(torch.randint(0, 12, (1,), generator=g)), int(torch.randint(0, 6, (1,), generator=g))
    m[:, y0:y0 + 16, x0:x0 + 7] = 1
    m[:, y0 + 2:y0 + 5, x0 + 7:x0 + 9] = 1  # an asymmetric arm: a flip of one but not the other shows
    img = (m.expand(3, -1, -1) * 255).to(torch.uint8)
    return img, tv_tensors.Mask(m)


def _check_aligned(tf, seeds=range(12), tol: float = 0.0) -> None:
    for seed in seeds:
        img, mask = _pair(seed)
        torch.manual_seed(seed)
        x, m = tf(img, mask)
        assert x.shape[-2:] == m.shape[-2:] == (H, W)
        bright = x.as_subclass(torch.Tensor).mean(0) > 0.0  # normalised: person pixels are > 0
        agree = (bright == (m.as_subclass(torch.Tensor)[0] > 0)).float().mean()
        assert agree >= 1.0 - tol, f"seed {seed}: image and mask disagree on {1 - float(agree):.3f} of pixels"


def _tf(**kw):
    base = dict(flip=0.0, pad=0, erasing=0.0, color_jitter=0.0)
    return build_transforms(H, W, **{**base, **kw})[0]


def test_mask_aligned_under_resize():
    # resize: the image is antialiased (bilinear), the mask nearest: edges may differ by a pixel row
    _check_aligned(_tf(), tol=0.08)


def test_mask_aligned_under_flip():
    tf = _tf(flip=1.0)
    _check_aligned(tf, tol=0.08)
    img, mask = _pair(3)
    _, m_flip = tf(img, mask)
    _, m_plain = _tf()(img, mask)
    assert torch.equal(m_flip, m_plain.flip(-1)) and not torch.equal(m_flip, m_plain)


def test_mask_aligned_under_pad_and_crop():
    tf = _tf(pad=10)
    _check_aligned(tf, tol=0.08)
    shifted = 0
    for seed in range(12):
        img, mask = _pair(seed)
        torch.manual_seed(seed)
        _, m = tf(img, mask)
        shifted += not torch.equal(m, _tf()(img, mask)[1])
    assert shifted > 6  # the crop does move the mask (padding is background: 0)


def test_mask_aligned_under_colour_jitter():
    _check_aligned(_tf(color_jitter=0.3), tol=0.08)  # colour never touches the mask


def test_random_erasing_clears_the_mask_where_it_erases():
    tf = _tf(erasing=1.0)
    cleared = 0
    for seed in range(12):
        img, mask = _pair(seed)
        torch.manual_seed(seed)
        x, m = tf(img, mask)
        x = x.as_subclass(torch.Tensor)
        erased = (x == 0).all(0)  # value=0 after normalisation: exactly 0 in every channel
        assert erased.any()
        assert not m[0][erased].any(), "the mask still claims a person where the image was erased"
        cleared += int(_tf()(img, mask)[1][0][erased].sum() > 0)
    assert cleared > 0  # some rectangles did cover the person


def test_augmentation_draws_do_not_depend_on_masks():
    tf = build_transforms(H, W, erasing=0.5, color_jitter=0.3)[0]
    img, mask = _pair(1)
    torch.manual_seed(5)
    alone = tf(img)
    torch.manual_seed(5)
    with_mask, _ = tf(img, mask)
    assert torch.equal(alone.as_subclass(torch.Tensor), with_mask.as_subclass(torch.Tensor))


def test_dataset_returns_aligned_masks(tmp_path):
    img, mask = _pair(2)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    Image.fromarray(mask[0].numpy() * 255).resize((60, 120), Image.NEAREST).save(tmp_path / "a_mask.png")
    rec = ImageRecord(str(tmp_path / "a.png"), 0, 0, "train", str(tmp_path / "a_mask.png"))
    ds = ImageDataset([rec], _tf(flip=1.0, pad=4), masks=True)
    x, *_, m = ds[0]
    assert m.shape == (1, H, W) and m.dtype == torch.float32 and set(m.unique().tolist()) <= {0.0, 1.0}
    assert ((x.mean(0) > 0) == (m[0] > 0)).float().mean() > 0.9
    assert len(ImageDataset([rec], _tf())[0]) == 4  # without masks: the usual 4-tuple
    with pytest.raises(Exception, match="no person mask"):
        ImageDataset([ImageRecord(rec.path, 0, 0, "train")], _tf(), masks=True)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match=r"bad\.png"):
        read_mask(str(tmp_path / "bad.png"), (W, H))


def test_synthetic_and_tracklet_records_carry_masks(tiny):
    from hareid.data import build_dataset

    ds = build_dataset("synthetic", tiny.data, verbose=False)
    assert ds.has_masks
    rec = ds.train[0]
    m = Image.open(rec.mask)
    assert m.size == Image.open(rec.path).size
    market = build_dataset("market1501", tiny.data, verbose=False)  # same tree, read as plain Market
    assert not market.has_masks


# ------------------------------------------------------------------------------------- the loss
def test_attention_distribution_is_contrast_above_the_minimum():
    soft = torch.tensor([[0.5, 0.5, 0.7, 0.9]]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    p = attention_distribution(soft, tau=0.0)
    assert torch.allclose(p, torch.tensor([[0.0, 0.0, 0.2 / 0.6, 0.4 / 0.6]]))
    flat = attention_distribution(torch.full((2, 4, 3, 3), 0.7))
    assert torch.allclose(flat, torch.full((2, 9), 1 / 9))  # no contrast: uniform


def test_kl_loss_matches_hand_computation():
    soft = torch.tensor([0.5, 0.6, 0.8, 0.5]).view(1, 1, 2, 2)
    person = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    tau = 1e-3
    d = torch.tensor([0.0, 0.1, 0.3, 0.0]) + tau
    p = d / d.sum()
    expect = 0.5 * math.log(0.5 / float(p[1])) + 0.5 * math.log(0.5 / float(p[2]))
    assert AttentionMaskLoss("kl")([soft], person).item() == pytest.approx(expect, rel=1e-5)
    mass = float(p[1] + p[2])
    assert AttentionMaskLoss("mass")([soft], person).item() == pytest.approx(-math.log(mass), abs=1e-6)


def test_person_mask_is_area_averaged_to_the_stage_grid():
    # a 4x4 person mask covering the left half at a 2x2 stage: q = (1, 0, 1, 0) exactly
    person = torch.zeros(1, 1, 4, 4)
    person[..., :2] = 1
    good = torch.tensor([0.9, 0.5, 0.9, 0.5]).view(1, 1, 2, 2)
    bad = torch.tensor([0.5, 0.9, 0.5, 0.9]).view(1, 1, 2, 2)
    loss = AttentionMaskLoss("kl")
    assert loss([good], person) < 0.01 < loss([bad], person)


def test_empty_masks_do_not_count():
    soft = torch.rand(2, 4, 3, 3, requires_grad=True)
    person = torch.zeros(2, 1, 6, 6)
    person[1, :, 2:4, 2:4] = 1
    both = AttentionMaskLoss()([soft], person)
    second = AttentionMaskLoss()([soft[1:]], person[1:])
    assert both.item() == pytest.approx(second.item(), rel=1e-6)
    zero = AttentionMaskLoss()([soft], torch.zeros(2, 1, 6, 6))
    zero.backward()
    assert zero.item() == 0.0


@pytest.mark.parametrize("form", ["kl", "mass"])
def test_gradient_moves_mass_onto_the_mask(form):
    torch.manual_seed(0)
    person = torch.zeros(4, 1, 16, 8)
    person[:, :, 2:14, 2:6] = 1  # a person in the middle, on whole cells of the 8x4 stage grid
    logits = torch.randn(4, 1, 8, 4, requires_grad=True)  # a soft mask per image, stage grid 8x4
    opt = torch.optim.SGD([logits], lr=5.0)
    loss_fn = AttentionMaskLoss(form)
    q = torch.nn.functional.adaptive_avg_pool2d(person, (8, 4)).flatten(1)

    def mass_in() -> float:
        p = attention_distribution(torch.sigmoid(logits).expand(-1, 6, -1, -1))
        return float((p * q).sum(1).mean())

    before, first = mass_in(), None
    for _ in range(150):
        opt.zero_grad()
        loss = loss_fn([torch.sigmoid(logits).expand(-1, 6, -1, -1)], person)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    share = float(q.mean())
    assert before < 0.6 and mass_in() > 0.85, (before, mass_in())
    assert loss.item() < first
    assert mass_in() / share > 2.0  # contrast lift above 2 on this toy problem


def test_reid_loss_adds_the_term_only_with_masks():
    torch.manual_seed(0)
    logits = [torch.randn(4, 5), torch.randn(4, 5)]
    soft = [torch.rand(4, 8, 6, 3), torch.rand(4, 8, 3, 2)]
    targets = torch.tensor([0, 1, 2, 3])
    person = torch.zeros(4, 1, 12, 6)
    person[..., 3:9, 1:5] = 1
    out = {"logits": logits, "soft": soft}
    base, parts = ReIDLoss(attn_weight=0.0)(out, targets, person)
    with_attn, parts2 = ReIDLoss(attn_weight=2.0)(out, targets, person)
    assert "attn" not in parts and "attn" in parts2
    assert with_attn.item() == pytest.approx(base.item() + 2.0 * parts2["attn"].item(), rel=1e-6)
    no_masks, _ = ReIDLoss(attn_weight=2.0)(out, targets, None)
    assert no_masks.item() == pytest.approx(base.item())
    with pytest.raises(ValueError, match="soft masks"):
        ReIDLoss(attn_weight=1.0)({"logits": logits, "soft": []}, targets, person)


def test_model_returns_soft_masks_in_training_when_asked():
    from hareid.models import build_model

    model = build_model("hacnn", num_classes=5).train()
    x = torch.randn(2, 3, 64, 32)
    assert "soft" not in model(x)
    model.return_attention = True
    out = model(x)
    assert [tuple(s.shape[1:]) for s in out["soft"]] == [(128, 16, 8), (256, 8, 4), (384, 4, 2)]
    model.eval()
    assert model(x).shape == (2, 1024)  # evaluation unchanged


# --------------------------------------------------------------------------------- training
def _lift(model, images, masks) -> float:
    from hareid.analysis.attention_score import score_model

    scores = score_model(model, images, masks, [{} for _ in range(len(images))])
    return sum(v["contrast_lift"] for v in scores["soft"].values()) / len(scores["soft"])


def test_tiny_run_with_the_loss_raises_the_lift(tiny, tmp_path, capsys):
    """Same tiny recipe and seed, with and without the loss: the loss's run attends to the person more."""
    from hareid.analysis.attention_score import _load_masks
    from hareid.api import load_images
    from hareid.config import load_config
    from hareid.data.synthetic import load_annotations
    from hareid.engine.trainer import Trainer

    ann = load_annotations(tiny.data)
    rels = sorted(r for r, v in ann["images"].items() if v["split"] == "query")[:24]
    images = load_images([tiny.data / r for r in rels], 64, 32)
    masks = _load_masks(tiny.data, ann, rels, (64, 32))
    lifts = {}
    for weight in (0.0, 5.0):
        cfg = load_config("hacnn_synthetic", [f"data.root={tiny.data}", f"output_dir={tmp_path / str(weight)}",
                                              *TRAIN_OVERRIDES, "train.epochs=10", "train.eval_every=-1",
                                              f"loss.attn_weight={weight}", "model.soft_mask=spatial"])
        trainer = Trainer(cfg)
        trainer.fit()
        lifts[weight] = _lift(trainer.model, images, masks)
    assert lifts[5.0] > lifts[0.0] + 0.05, lifts


def test_dataset_without_masks_trains_without_the_term(tiny, tmp_path, capsys):
    from hareid.config import load_config
    from hareid.engine.trainer import Trainer

    cfg = load_config("hacnn_synthetic", ["data.name=market1501", f"data.root={tiny.data}",
                                          f"output_dir={tmp_path}", *TRAIN_OVERRIDES, "train.eval_every=-1",
                                          "loss.attn_weight=1"])
    trainer = Trainer(cfg)
    trainer.fit()
    out = capsys.readouterr().out
    assert out.count("has no person masks") == 1
    assert trainer.loss_fn.attn_weight == 0.0
