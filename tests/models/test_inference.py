"""hareid.models.inference: the model's own wiring with its blocks fused (fp32 / bf16, eager / compiled)
against model.eval(). The parity cases are generated from the model registry: an option without
cases fails :func:`test_every_option_has_parity_cases`."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hareid.models import build_model, list_models, model_entry
from hareid.models.core import EmbeddingHead, GlobalPool
from hareid.models.inference import optimize_for_inference, sample_stripes
from hareid.models.layers.attention import (
    REGION_SAMPLING_MODES,
    SOFT_MASKS,
    FusedHarmAttn,
    HarmAttn,
    RegionSampler,
    StripeSampler,
    sample_regions,
    translations_to_theta,
)
from hareid.models.layers.blocks import BoxPoolAct, ConvAct, ConvBlock, PoolProject, fuse_blocks
from tests.helpers.toys import trained_like

FP32_ATOL = 1e-4  # unit-norm branch embeddings, fp32 graph vs model.eval()
BF16_ATOL = 3e-2  # bf16 keeps ~3 significant digits; same band as bf16 autocast on the original
BF16_COS = 0.99


@pytest.fixture(scope="module")
def hacnn() -> nn.Module:
    torch.manual_seed(0)
    return trained_like(build_model("hacnn", num_classes=11))


def _ref(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ----------------------------------------------------------------------------- equal to eager
@pytest.mark.parametrize("size", [(160, 64), (161, 75), (256, 128)])
def test_fp32_equals_eager_any_size(hacnn: nn.Module, size: tuple[int, int]) -> None:
    x = torch.randn(3, 3, *size)
    net = optimize_for_inference(hacnn, dtype=torch.float32)
    out = net(x)
    assert out.dtype == torch.float32 and out.shape == (3, 1024)
    torch.testing.assert_close(out, _ref(hacnn, x), atol=FP32_ATOL, rtol=0)


def test_bf16_close_to_eager_and_to_autocast(hacnn: nn.Module) -> None:
    x = torch.randn(4, 3, 160, 64)
    ref = _ref(hacnn, x)
    out = optimize_for_inference(hacnn, dtype=torch.bfloat16)(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(F.cosine_similarity(out, ref).min()) >= BF16_COS
    assert float((out - ref).abs().max()) <= BF16_ATOL
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto = hacnn(x)
    # the bf16 graph is at least as close to fp32 as autocast on the original model (x1.5 slack)
    assert float((out - ref).abs().max()) <= 1.5 * float((auto - ref).abs().max()) + 1e-3


#: Options that take one of a few names: every name is a parity case.
CHOICES: dict[str, tuple] = {"soft_mask": SOFT_MASKS, "region_sampling": REGION_SAMPLING_MODES}
#: Non-default values of the numeric / tuple options (booleans are flipped, choices enumerated).
VALUES: dict[str, list] = {"num_regions": [3], "feature_dim": [64], "reduction": [8], "channels": [(64, 128, 192)],
                          "local_expand": [1]}


def _option_cases(default: object, name: str) -> list:
    """The non-default values of option ``name`` a parity test runs (empty: not covered)."""
    if name in CHOICES:
        return [v for v in CHOICES[name] if v != default]
    if isinstance(default, bool):
        return [not default]
    return VALUES.get(name, [])


def _cases(model: str) -> list[tuple[str, object]]:
    entry = model_entry(model)
    return [(k, v) for k, d in entry.options.items() for v in _option_cases(d, k)]


def test_every_option_has_parity_cases() -> None:
    """Each option of each registered model has parity cases; a new option must add some here."""
    for name in list_models():
        for option, default in model_entry(name).options.items():
            assert _option_cases(default, option), f"{name}: option {option!r} has no parity case in tests/models/test_inference.py"


@pytest.mark.parametrize(("option", "value"), _cases("hacnn"), ids=lambda v: str(v))
def test_every_option_equals_eager(option: str, value: object) -> None:
    """fp32 inference form == model.eval() for every non-default value of every hacnn option."""
    torch.manual_seed(0)
    model = trained_like(build_model("hacnn", num_classes=5, **{option: value}))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("log_temperature"):
                p.fill_(0.7)  # a temperature that is not 1
    x = torch.randn(2, 3, 96, 48)
    net = optimize_for_inference(model, dtype=torch.float32)
    out = net(x)
    assert out.shape == (2, model.embed_dim)
    torch.testing.assert_close(out, _ref(model, x), atol=FP32_ATOL, rtol=0)


@pytest.mark.parametrize("mask", SOFT_MASKS)
def test_bf16_every_soft_mask(mask: str) -> None:
    model = trained_like(build_model("hacnn", num_classes=5, soft_mask=mask))
    x = torch.randn(2, 3, 160, 64)
    out = optimize_for_inference(model, dtype=torch.bfloat16)(x)
    assert float(F.cosine_similarity(out, _ref(model, x)).min()) >= BF16_COS


def test_one_wiring(hacnn: nn.Module) -> None:
    """The inference graph is the model's own class (its ``_run``), with every block swapped for its
    fused form: no training block is left, and forward_attention still works."""
    net = optimize_for_inference(hacnn, dtype=torch.float32)
    graph = net.graph
    assert type(graph) is type(hacnn)
    training_forms = (ConvBlock, PoolProject, HarmAttn, EmbeddingHead, nn.BatchNorm2d, nn.BatchNorm1d)
    assert not [n for n, m in graph.named_modules() if isinstance(m, training_forms)]
    assert isinstance(graph.sampler, StripeSampler) and graph.pool.float32
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        ref, got = hacnn.forward_attention(x), graph.forward_attention(x.contiguous(memory_format=torch.channels_last))
    for key in ("soft", "translations"):
        for a, b in zip(ref[key], got[key], strict=True):
            torch.testing.assert_close(b.float(), a.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if n != "hacnn"])
def test_other_backbones(name: str) -> None:
    model = trained_like(build_model(name, num_classes=5))
    x = torch.randn(2, 3, 128, 64)
    torch.testing.assert_close(optimize_for_inference(model)(x), _ref(model, x), atol=FP32_ATOL, rtol=0)
    low = optimize_for_inference(model, dtype=torch.bfloat16)(x)
    assert float(F.cosine_similarity(low, _ref(model, x)).min()) >= BF16_COS


# ----------------------------------------------------------------------------- the rewritten blocks
def _cl(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def test_blocks_equal_their_fused_forms(hacnn: nn.Module) -> None:
    """Each block's fuse() form on its own (fp32): ConvBlock, both InceptionA pooling orders (via
    PoolProject -> BoxPoolAct), InceptionB, the pool and the heads."""
    model = copy.deepcopy(hacnn)
    a1, b1 = model.stages[0]  # InceptionA(32, 128): pool first (in_c == out_c // 4)
    a2 = model.stages[1][0]  # InceptionA(128, 256): project first (64 < 128)
    cases = [(model.stem, 3, (21, 11)), (a1, 32, (20, 12)), (a2, 128, (10, 6)), (b1, 128, (21, 11))]
    for block, c, hw in cases:
        x = _cl(2, c, *hw)
        with torch.no_grad():
            ref = block(x)
            fused = block.fuse(torch.float32) if isinstance(block, ConvBlock) else fuse_blocks(copy.deepcopy(block))
            torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
    assert isinstance(model.stem.fuse(), ConvAct) and isinstance(a1.streams[3].fuse(torch.float32), BoxPoolAct)
    y = _cl(3, 384, 5, 3)
    with torch.no_grad():
        torch.testing.assert_close(GlobalPool().fuse()(y.bfloat16()), y.mean(dim=(2, 3)), atol=2e-2, rtol=0)
        head = model.fc_global
        assert isinstance(head, EmbeddingHead)
        v = torch.randn(4, 384)
        torch.testing.assert_close(head.fuse()(v), head(v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask", SOFT_MASKS)
@pytest.mark.parametrize("hard", [True, False])
def test_harm_attn_equals_its_fused_form(mask: str, hard: bool) -> None:
    torch.manual_seed(0)
    attn = trained_like(HarmAttn(64, num_regions=3, hard=hard, soft_mask=mask))
    with torch.no_grad():
        for n, p in attn.named_parameters():
            if n.endswith("log_temperature"):
                p.fill_(-0.4)
    fused = attn.fuse(torch.float32)
    assert isinstance(fused, FusedHarmAttn)
    y = _cl(2, 64, 20, 8)
    with torch.no_grad():
        out, mask_ref, t = attn.attend(y)
        out2, mask2, t2 = fused.attend(y.clone())
    torch.testing.assert_close(out2, out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mask2.expand_as(mask_ref) if mask == "spatial" else mask2, mask_ref, atol=1e-5, rtol=1e-5)
    assert (t is None) == (t2 is None) == (not hard)
    if hard:
        torch.testing.assert_close(t2, t, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", REGION_SAMPLING_MODES)
def test_sampler_equals_its_fused_form(mode: str) -> None:
    x = _cl(2, 8, 21, 11)
    t = torch.rand(2, 4, 2) * 1.6 - 0.8
    ref = RegionSampler()(x, t, (7, 5), mode)
    fused = RegionSampler().fuse()
    assert isinstance(fused, StripeSampler)
    torch.testing.assert_close(fused(x, t, (7, 5), mode), ref, atol=1e-5, rtol=1e-5)
    low = fused(x.bfloat16(), t, (7, 5), mode)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize(("src_hw", "out_hw"), [((80, 32), (24, 28)), ((21, 11), (7, 5))])
def test_separable_sampling_equals_grid_sample(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
    """Two matrix products == grid_sample (bilinear, zero padding) for axis-aligned regions, including
    regions pushed partly off the map (large translations)."""
    x = torch.randn(3, 5, *src_hw).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([-0.95, -0.3, 0.0, 0.4, 0.99, 1.0])[torch.randint(0, 6, (3, 4, 2))]  # (B, T, 2)
    ref = sample_regions(x, translations_to_theta(t, 0.25), out_hw)
    got = sample_stripes(x, t, 0.25, out_hw)
    assert got.shape == ref.shape == (12, 5, *out_hw) and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    low = sample_stripes(x.bfloat16(), t, 0.25, out_hw)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)


def test_separable_sampling_gradients_equal_grid_sample() -> None:
    """Training samples bf16 maps by two matrix products: the gradients for the map and for the
    translations (what teaches hard attention) equal grid_sample's, computed in float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 20, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    t = (torch.rand(2, 4, 2, dtype=torch.float64) * 1.4 - 0.7)
    grad = torch.randn(8, 6, 5, 7, dtype=torch.float64)

    def grads(fn):
        xg, tg = x.clone().requires_grad_(), t.clone().requires_grad_()
        fn(xg, tg).backward(grad)
        return xg.grad, tg.grad

    ref = grads(lambda a, b: sample_regions(a, translations_to_theta(b, 0.25), (5, 7)))
    got = grads(lambda a, b: sample_stripes(a, b, 0.25, (5, 7)))
    # (the separable form computes its interpolation weights in float32)
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], ref[1], atol=1e-4, rtol=1e-4)
    assert ref[1].abs().sum() > 0  # the translations do get a gradient
    xb = x.float().bfloat16().requires_grad_()
    RegionSampler()(xb, t.float(), (5, 7)).float().backward(grad.float())  # the bf16 training path
    torch.testing.assert_close(xb.grad.float(), ref[0].float(), atol=0.05, rtol=0.02)


# ----------------------------------------------------------------------------- contract
def test_input_model_untouched_and_frozen_copy(hacnn: nn.Module) -> None:
    model = copy.deepcopy(hacnn).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = optimize_for_inference(model, dtype=torch.bfloat16)
    assert model.training and all(p.requires_grad for p in model.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(b.dtype == torch.bfloat16 for n, b in net.named_buffers() if n.endswith("weight") and b.dim() == 4)
    assert not list(net.parameters()) or not any(p.requires_grad for p in net.parameters())


def test_bad_input_and_dtype(hacnn: nn.Module) -> None:
    net = optimize_for_inference(hacnn)
    with pytest.raises(ValueError, match="3 colour channels"):
        net(torch.randn(2, 1, 160, 64))
    with pytest.raises(ValueError, match="H >= "):
        net(torch.randn(2, 3, 16, 64))
    with pytest.raises(ValueError, match="dtype"):
        optimize_for_inference(hacnn, dtype=torch.int8)
    assert optimize_for_inference(hacnn, dtype="auto").dtype in (torch.float32, torch.bfloat16)


def test_other_modules_get_the_generic_form() -> None:
    """Not a HarmNet: BN folded, autocast in the dtype, float32 out; the module is not modified."""
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten())
    trained_like(seq)
    x = torch.randn(2, 3, 8, 8)
    net = optimize_for_inference(seq)
    torch.testing.assert_close(net(x), seq(x), atol=1e-5, rtol=0)
    assert isinstance(seq[1], nn.BatchNorm2d)
    low = optimize_for_inference(seq, dtype=torch.bfloat16)(x)
    assert low.dtype == torch.float32 and float(F.cosine_similarity(low, seq(x)).min().detach()) > 0.99


def test_batch_independent(hacnn: nn.Module) -> None:
    """Eval-mode embeddings do not depend on the batch an image is in (what padding relies on)."""
    net = optimize_for_inference(hacnn, dtype=torch.bfloat16)
    x = torch.randn(5, 3, 160, 64)
    whole = net(x)
    parts = torch.cat([net(x[:2]), net(x[2:])])
    torch.testing.assert_close(whole, parts, atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_follows_the_model_device(hacnn: nn.Module, dtype: torch.dtype) -> None:
    model = copy.deepcopy(hacnn).cuda()
    x = torch.randn(3, 3, 160, 64)
    net = optimize_for_inference(model, dtype=dtype)
    out = net(x.cuda())
    assert out.device.type == "cuda" and out.dtype == torch.float32
    ref = _ref(hacnn, x)
    assert float(F.cosine_similarity(out.cpu(), ref).min()) >= BF16_COS
    with pytest.raises(ValueError, match="move one of them"):
        net(x)


# ----------------------------------------------------------------------------- compiled
@pytest.mark.slow
def test_compiled_bf16_matches_eager_and_pads_ragged_batches(hacnn: nn.Module) -> None:
    net = optimize_for_inference(hacnn, dtype=torch.bfloat16, compile=True, compile_batch=4)
    x = torch.randn(7, 3, 160, 64)  # one full batch of 4 + a padded batch of 3
    out = net(x)
    assert out.shape == (7, 1024) and net.compile_batch == 4
    ref = _ref(hacnn, x)
    assert float(F.cosine_similarity(out, ref).min()) >= BF16_COS
    assert float((out - ref).abs().max()) <= BF16_ATOL
