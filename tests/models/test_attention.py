"""Attention modules and region helpers: hand-computed cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hareid.models.layers.attention import (
    SOFT_MASKS,
    ChannelAttn,
    HardAttn,
    HarmAttn,
    SoftAttn,
    SpatialAttn,
    affine_grid,
    sample_regions,
    translations_to_boxes,
    translations_to_theta,
)
from hareid.models.layers.blocks import (
    AvgPool3x3,
    ConvBlock,
    InceptionA,
    InceptionB,
    channels_last_grad,
)


def _identity_bn(block: ConvBlock) -> None:
    """BN that passes values through unchanged in eval mode."""
    block.bn.eps = 0.0
    block.bn.reset_running_stats()
    torch.nn.init.ones_(block.bn.weight)
    torch.nn.init.zeros_(block.bn.bias)


def test_channel_attn_hand_computed() -> None:
    ca = ChannelAttn(16, reduction=16).eval()
    for b in (ca.conv1, ca.conv2):
        _identity_bn(b)
    with torch.no_grad():
        ca.conv1.conv.weight.fill_(1 / 16)  # mean of the 16 squeezed values
        ca.conv1.conv.bias.zero_()
        ca.conv2.conv.weight.copy_(torch.arange(1.0, 17.0).view(16, 1, 1, 1))  # channel i: (i+1) * z
        ca.conv2.conv.bias.fill_(-3.0)
    x = torch.full((2, 16, 5, 3), 2.0)  # squeeze -> 2 everywhere; excitation: relu((i+1)*2 - 3)
    out = ca(x)
    assert out.shape == (2, 16, 1, 1)
    expected = torch.clamp(torch.arange(1.0, 17.0) * 2 - 3, min=0)  # [0, 1, 3, 5, ...]
    torch.testing.assert_close(out[:, :, 0, 0], expected.expand(2, 16))


def test_channel_attn_rejects_bad_reduction() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ChannelAttn(20, reduction=16)


def test_spatial_attn_hand_computed_odd_size() -> None:
    """Centre-tap 3x3/2 conv + align_corners resize reproduce a linear ramp exactly, at 5x7."""
    sa = SpatialAttn().eval()
    for b in (sa.conv1, sa.conv2):
        _identity_bn(b)
    with torch.no_grad():
        sa.conv1.conv.weight.zero_()
        sa.conv1.conv.weight[0, 0, 1, 1] = 1.0
        sa.conv1.conv.bias.zero_()
        sa.conv2.conv.weight.fill_(2.0)
        sa.conv2.conv.bias.fill_(-1.0)
    i = torch.arange(5.0).view(5, 1)
    j = torch.arange(7.0).view(1, 7)
    ramp = 1 + 0.5 * i + 0.25 * j  # (5, 7), >= 1
    # channels average to the ramp: (ramp - 1, ramp, ramp + 1)
    x = torch.stack([ramp - 1, ramp, ramp + 1]).unsqueeze(0)  # (1, 3, 5, 7)
    out = sa(x)
    assert out.shape == (1, 1, 5, 7)  # own size, not 2 * ceil(size / 2) = 6 x 8
    torch.testing.assert_close(out[0, 0], 2 * ramp - 1)


def test_soft_attn_mask_shape_and_range() -> None:
    sa = SoftAttn(32).eval()
    m = sa(torch.randn(2, 32, 9, 5))
    assert m.shape == (2, 32, 9, 5)
    assert m.min() >= 0.5 and m.max() < 1  # sigmoid(ReLU(.))


@pytest.mark.parametrize("mask", ["relu", "sigmoid"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_soft_attn_rank1_conv_equals_explicit_map(train: bool, channels_last: bool, mask: str) -> None:
    """The 1x1 ConvBlock on the rank-1 map s * c, computed as s * (W c) + b, equals building the map
    and convolving it: forward (train: batch-statistics BN; eval: folded BN) and every gradient."""
    torch.manual_seed(3)
    sa = SoftAttn(32, mask=mask)
    with torch.no_grad():  # non-trivial BN running statistics / affine parameters
        bn = sa.conv.bn
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    sa.train(train)
    x = torch.randn(3, 32, 9, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    twin = copy.deepcopy(sa)
    x2 = x.clone().requires_grad_()
    x.requires_grad_()
    got = sa(x)
    ref = torch.sigmoid(twin.conv(twin.spatial(x2) * twin.channel(x2)))  # explicit (B, C, H, W) map
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    w = torch.randn_like(ref)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(sa.named_parameters(), twin.parameters()):
        if train and name.endswith("conv.bias"):  # a bias right before batch-statistics BN: grad is 0 up to rounding
            assert p.grad.abs().max() < 1e-3 and q.grad.abs().max() < 1e-3, name
            continue
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def _soft_pair(mask: str) -> tuple[SoftAttn, SoftAttn]:
    """A ``mask`` variant and a "sigmoid" one with the same (non-trivial) weights, both in eval mode."""
    torch.manual_seed(0)
    ref = SoftAttn(32, mask="sigmoid")
    for mod in ref.modules():  # running statistics that put the pre-activation on both sides of 0
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.05, 0.2)
    other = SoftAttn(32, mask=mask)
    missing, unexpected = other.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and set(missing) <= {"log_temperature"}
    return other.eval(), ref.eval()


def test_soft_mask_relu_is_sigmoid_variant_floored_at_half() -> None:
    """Same weights: sigmoid(ReLU(z)) == max(sigmoid(z), 0.5) elementwise."""
    relu, full = _soft_pair("relu")
    x = torch.randn(4, 32, 9, 5)
    with torch.no_grad():
        a, b = relu(x), full(x)
    assert b.min() < 0.3 and b.max() > 0.7  # the full-range variant uses both sides of 0.5
    torch.testing.assert_close(a, b.clamp(min=0.5))


def test_soft_mask_temperature_divides_the_logit() -> None:
    temp, full = _soft_pair("temperature")
    x = torch.randn(2, 32, 6, 4)
    with torch.no_grad():
        torch.testing.assert_close(temp(x), full(x))  # initial temperature 1
        temp.log_temperature.fill_(math.log(2.0))
        torch.testing.assert_close(temp(x), torch.sigmoid(torch.logit(full(x).double()) / 2).float())


@pytest.mark.parametrize("mask", SOFT_MASKS)
def test_soft_mask_variants_range_and_gradient(mask: str) -> None:
    torch.manual_seed(1)
    sa = SoftAttn(32, mask=mask).train()
    x = torch.randn(3, 32, 9, 5, requires_grad=True)
    m = sa(x)
    channels = 1 if mask == "spatial" else 32
    assert m.shape == (3, channels, 9, 5)
    lo = 0.5 if mask == "relu" else 0.0
    assert m.min() >= lo and m.max() < 1 and (mask == "relu" or m.min() < 0.5)
    (x * m).square().mean().backward()  # what the network does with the mask
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = {n: p.grad for n, p in sa.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), grads.keys()
    # the last layer before the sigmoid learns in every variant
    last = "where.conv.weight" if mask == "spatial" else "conv.conv.weight"
    assert grads[last].abs().sum() > 0
    if mask == "temperature":
        assert grads["log_temperature"].abs() > 0


def test_soft_mask_unknown_name() -> None:
    with pytest.raises(ValueError, match="soft_mask must be one of"):
        SoftAttn(32, mask="tanh")


def test_initial_hard_attention_boxes_are_horizontal_stripes() -> None:
    ha = HardAttn(64, num_regions=4)
    t = ha(torch.randn(3, 64, 10, 4))  # weights are zero: output is independent of x
    assert t.shape == (3, 4, 2)
    boxes = translations_to_boxes(t, (160, 64))
    expected = torch.tensor([[0, 0, 64, 40], [0, 40, 64, 80], [0, 80, 64, 120], [0, 120, 64, 160]], dtype=torch.float)
    torch.testing.assert_close(boxes, expected.expand(3, 4, 4), atol=1e-4, rtol=0)


def test_hard_attn_stripes_for_other_region_counts() -> None:
    t = HardAttn(16, num_regions=3)(torch.randn(1, 16, 4, 4))
    boxes = translations_to_boxes(t, (90, 30))
    torch.testing.assert_close(boxes[0, :, 1], torch.tensor([0.0, 30.0, 60.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(boxes[0, :, 3], torch.tensor([30.0, 60.0, 90.0]), atol=1e-4, rtol=0)


def test_hard_attn_full_precision_under_autocast() -> None:
    ha = HardAttn(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t = ha(torch.randn(2, 16, 4, 4).bfloat16())
    assert t.dtype == torch.float32


def test_translations_to_theta_values() -> None:
    t = torch.tensor([[[0.1, -0.5], [0.2, 0.5]]])  # (1, 2, 2)
    theta = translations_to_theta(t, scale_h=0.5)
    expected = torch.tensor([[[[1, 0, 0.1], [0, 0.5, -0.5]], [[1, 0, 0.2], [0, 0.5, 0.5]]]])
    torch.testing.assert_close(theta, expected)
    assert translations_to_theta(t).shape == (1, 2, 2, 3)  # default scale 1/T


def test_affine_grid_matches_torch_affine_grid() -> None:
    theta = translations_to_theta(torch.rand(2, 3, 2) * 2 - 1)  # (2, 3, 2, 3)
    grid = affine_grid(theta, (5, 7)).view(2, 3, 5, 7, 2)
    for r in range(3):
        ref = F.affine_grid(theta[:, r], [2, 1, 5, 7], align_corners=False)
        torch.testing.assert_close(grid[:, r], ref, atol=1e-6, rtol=0)


def test_sampling_known_image_gives_known_crop() -> None:
    x = torch.arange(32.0).view(1, 1, 8, 4)
    # two stripes (scale 1/2); region 1 shifted right by one pixel (2/4 normalised per pixel)
    t = torch.tensor([[[0.0, -0.5], [0.5, 0.5]]])
    out = sample_regions(x, translations_to_theta(t), (4, 4), mode="direct")  # (2, 1, 4, 4)
    torch.testing.assert_close(out[0, 0], x[0, 0, :4])  # top half, exactly
    shifted = torch.zeros(4, 4)
    shifted[:, :3] = x[0, 0, 4:, 1:]  # bottom half, one column to the left, zero padding on the right
    torch.testing.assert_close(out[1, 0], shifted)
    boxes = translations_to_boxes(t, (8, 4))
    torch.testing.assert_close(boxes[0], torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 4.0, 5.0, 8.0]]))


@pytest.mark.parametrize("mode", ["direct", "torchreid"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_sampling_equals_per_region_loop(mode: str, channels_last: bool) -> None:
    x = torch.randn(2, 6, 11, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.rand(2, 4, 2) * 1.6 - 0.8
    theta = translations_to_theta(t)
    out = sample_regions(x, theta, (5, 6), mode=mode)
    assert out.shape == (8, 6, 5, 6)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for r in range(4):
        size = [2, 6, 5, 6] if mode == "direct" else list(x.shape)
        grid = F.affine_grid(theta[:, r], size, align_corners=False)
        ref = F.grid_sample(x, grid, align_corners=False)
        if mode == "torchreid":
            ref = F.interpolate(ref, size=(5, 6), mode="bilinear", align_corners=True)
        torch.testing.assert_close(out.view(2, 4, 6, 5, 6)[:, r], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["direct", "torchreid"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_sampling_gradients_equal_per_region_loop(mode: str, channels_last: bool) -> None:
    """The re-layout (and its gradient-layout helpers) change no gradient value, for x and theta."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, 11, 7).contiguous(memory_format=fmt).requires_grad_()
    t = (torch.rand(2, 4, 2) * 1.6 - 0.8).requires_grad_()
    g = torch.randn(8, 6, 5, 6)
    gx, gt = torch.autograd.grad(sample_regions(x, translations_to_theta(t), (5, 6), mode=mode), (x, t), g)
    assert gx.is_contiguous(memory_format=fmt)  # the gradient comes back in x's own layout
    theta = translations_to_theta(t)
    refs = []
    for r in range(4):
        size = [2, 6, 5, 6] if mode == "direct" else list(x.shape)
        ref = F.grid_sample(x, F.affine_grid(theta[:, r], size, align_corners=False), align_corners=False)
        if mode == "torchreid":
            ref = F.interpolate(ref, size=(5, 6), mode="bilinear", align_corners=True)
        refs.append(ref)
    rx, rt = torch.autograd.grad(torch.stack(refs, 1), (x, t), g.view(2, 4, 6, 5, 6))
    torch.testing.assert_close(gx, rx, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gt, rt, atol=1e-5, rtol=1e-5)


def test_sample_regions_keeps_dtype_and_rejects_bad_mode() -> None:
    x = torch.randn(1, 2, 8, 8).bfloat16()
    theta = translations_to_theta(torch.zeros(1, 2, 2))
    assert sample_regions(x, theta, (4, 8)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="direct"):
        sample_regions(x, theta, (4, 8), mode="nearest")


def test_harm_attn_on_any_feature_map() -> None:
    ha = HarmAttn(48, num_regions=2)
    x = torch.randn(2, 48, 7, 3, requires_grad=True)
    mask, t = ha(x)
    assert mask.shape == x.shape and t.shape == (2, 2, 2)
    (mask.sum() + t.sum()).backward()
    assert x.grad is not None and ha.hard.fc.weight.grad.abs().sum() > 0
    assert HarmAttn(48, hard=False)(x)[1] is None


@pytest.mark.parametrize(("block", "factor"), [(InceptionA, 1), (InceptionB, 2)])
@pytest.mark.parametrize("size", [(9, 5), (10, 4)])
def test_inception_shapes(block, factor: int, size: tuple[int, int]) -> None:
    out = block(16, 64)(torch.randn(2, 16, *size))
    assert out.shape == (2, 64, math.ceil(size[0] / factor), math.ceil(size[1] / factor))


@pytest.mark.parametrize("size", [(9, 5), (10, 4)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool3x3_equals_avg_pool2d(size: tuple[int, int], channels_last: bool) -> None:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 5, *size).contiguous(memory_format=fmt).requires_grad_()
    out = AvgPool3x3(5)(x)
    ref = torch.nn.AvgPool2d(3, stride=1, padding=1)(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16: within bf16 rounding of the fp32 result
        torch.testing.assert_close(AvgPool3x3(5)(x).float(), ref, atol=0.02, rtol=0.02)


def test_conv_block_eval_folds_bn_exactly() -> None:
    """Eval mode folds BN into the conv (no separate BN pass); values equal conv -> BN -> ReLU."""
    torch.manual_seed(0)
    block = ConvBlock(4, 6, 3, s=2, p=1)
    with torch.no_grad():
        block.bn.running_mean.uniform_(-0.5, 0.5)
        block.bn.running_var.uniform_(0.5, 2.0)
        block.bn.weight.uniform_(-1.5, 1.5)  # negative scales too
        block.bn.bias.uniform_(-0.3, 0.3)
    x = torch.randn(3, 4, 9, 7)
    block.eval()
    ref = F.relu(block.bn(block.conv(x)))
    torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)
    xg = x.clone().requires_grad_()  # still differentiable (e.g. gradients w.r.t. the input in eval)
    block(xg).sum().backward()
    assert xg.grad is not None and block.bn.weight.grad is not None
    block.train()
    out = block(x)  # train mode: batch statistics, not the folded running ones
    torch.testing.assert_close(out, F.relu(F.batch_norm(block.conv(x), None, None, block.bn.weight, block.bn.bias,
                                                        training=True)), atol=1e-5, rtol=1e-5)
    block.bn = torch.nn.Identity()  # what export's BN folding leaves behind
    torch.testing.assert_close(block.eval()(x), F.relu(block.conv(x)))


def test_channels_last_grad_is_identity_with_channels_last_gradient() -> None:
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = channels_last_grad(x)
    assert torch.equal(y, x)
    (g,) = torch.autograd.grad(y.mean(dim=(2, 3)).sum(), x)  # mean's own backward gives NCHW
    assert g.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(g, torch.full_like(x, 1 / 20))
    with torch.no_grad():
        assert channels_last_grad(x) is x  # nothing recorded without autograd
    flat = torch.randn(2, 3, 4, 5, requires_grad=True)
    assert channels_last_grad(flat) is flat  # NCHW tensors are left alone
