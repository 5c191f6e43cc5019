"""Model registry and the property suite every registered model passes."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from hareid.models import build_model, list_models
from hareid.models.core import HarmNet
from hareid.models.hacnn import hacnn_region_size

MODELS = list_models()
SIZES = [(256, 128), (161, 75)]  # the common ReID size and an odd one


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> HarmNet:
    torch.manual_seed(0)
    return build_model(request.param, num_classes=7, return_features=True)


# ----------------------------------------------------------------------------- registry
def test_registry_lists_models() -> None:
    assert {"hacnn", "resnet18_harm", "resnet50_harm", "mobilenetv2_harm"} <= set(MODELS)


def test_unknown_model_and_option_raise() -> None:
    with pytest.raises(ValueError, match="hacnn"):
        build_model("nope", num_classes=3)
    with pytest.raises(ValueError, match="num_regions"):
        build_model("hacnn", num_classes=3, num_region=4)
    with pytest.raises(ValueError, match="region_sampling"):
        build_model("hacnn", num_classes=3, region_sampling="bicubic")


def test_every_builder_option_is_reachable() -> None:
    """The registry lists each model's options from its builder's signature, and build_model
    accepts every one of them (passing the default explicitly builds the same network)."""
    from hareid.models import model_entry

    for name in MODELS:
        entry = model_entry(name)
        assert {"num_regions", "soft_attn", "hard_attn", "region_sampling"} <= set(entry.options)
        ref = {k: tuple(v.shape) for k, v in build_model(name, num_classes=3).state_dict().items()}
        for opt, default in entry.options.items():
            got = build_model(name, num_classes=3, **{opt: default}).state_dict()
            assert {k: tuple(v.shape) for k, v in got.items()} == ref, (name, opt)
    assert model_entry("hacnn").options["channels"] == (128, 256, 384)
    narrow = build_model("hacnn", num_classes=3, channels=(64, 128, 192))
    assert narrow.fc_global[0].in_features == 192
    assert "arch" not in model_entry("resnet18_harm").options  # fixed by the entry, not an option
    assert model_entry("hacnn").input_size == (160, 64) and model_entry("resnet50_harm").input_size == (256, 128)


# ----------------------------------------------------------------------------- property suite
@pytest.mark.parametrize("size", SIZES)
def test_train_forward_backward_reaches_hard_attention(model: HarmNet, size: tuple[int, int]) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert [z.shape for z in out["logits"]] == [(2, 7), (2, 7)]
    assert [f.shape for f in out["features"]] == [(2, 512), (2, 512)]
    loss = sum(F.cross_entropy(z, torch.tensor([0, 1])) for z in out["logits"])
    loss.backward()
    hard = [m.hard.fc.weight.grad for m in model.attn if m.hard is not None]
    assert len(hard) == 3
    assert all(g is not None and g.abs().sum() > 0 for g in hard)  # the regions can move
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("size", SIZES)
def test_eval_embedding_norms(model: HarmNet, size: tuple[int, int]) -> None:
    model.eval()
    with torch.no_grad():
        emb = model(torch.randn(3, 3, *size))
    assert emb.shape == (3, model.embed_dim) == (3, 1024)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.full((3,), math.sqrt(2)))
    torch.testing.assert_close(emb[:, :512].norm(dim=1), torch.ones(3))


def test_forward_attention(model: HarmNet) -> None:
    model.eval()
    with torch.no_grad():
        att = model.forward_attention(torch.randn(2, 3, 256, 128))
    assert len(att["soft"]) == 3 and len(att["translations"]) == 3
    assert all(t.shape == (2, 4, 2) for t in att["translations"])
    assert all(m.dim() == 4 and m.shape[0] == 2 and m.min() >= 0.5 and m.max() <= 1 for m in att["soft"])


def test_bf16_autocast_forward_finite_and_close(model: HarmNet) -> None:
    model.eval()
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            emb = model(x)
    assert torch.isfinite(emb).all()
    assert F.cosine_similarity(emb, ref).min() > 0.98


def test_trace_and_onnx_export(model: HarmNet, tmp_path) -> None:
    model.eval()
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        ref = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # jit.trace is deprecated but still exported
            traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), ref, atol=1e-5, rtol=0)
    ort = pytest.importorskip("onnxruntime")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False, input_names=["images"])
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.randn(2, 1, 160, 64), "3 colour channels"),
        (torch.randn(3, 160, 64), "4-D"),
        (torch.zeros(2, 3, 160, 64, dtype=torch.uint8), "floating-point"),
        (torch.randn(2, 3, 16, 64), "H >= "),
    ],
)
def test_bad_input_raises_value_error(model: HarmNet, bad: torch.Tensor, match: str) -> None:
    model.eval()
    with pytest.raises(ValueError, match=match):
        model(bad)


# ----------------------------------------------------------------------------- hacnn specifics
def test_hacnn_region_sizes_and_size_rule() -> None:
    m = build_model("hacnn", num_classes=3)
    assert hacnn_region_size(160, 64, 4) == (24, 28)  # the paper's local input size
    assert m.region_sizes(160, 64) == [(24, 28), (12, 14), (6, 7)]
    assert m.region_sizes(256, 128) == [(38, 56), (19, 28), (10, 14)]
    mh, mw = m.min_input_size()
    assert m.input_size_ok(mh, mw) and not m.input_size_ok(mh - 1, mw) and not m.input_size_ok(mh, mw - 1)
    m.eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, mh, mw)).shape == (1, 1024)  # the smallest accepted size runs
    with pytest.raises(ValueError, match=f"H >= {mh} and W >= {mw}"):
        m(torch.randn(1, 3, mh - 1, mw))


@pytest.mark.parametrize(
    "options",
    [
        {"soft_attn": False},
        {"hard_attn": False},
        {"cross_attn": False},
        {"local_branch": False},
        {"region_sampling": "torchreid"},
        {"num_regions": 3, "feature_dim": 64},
        {"channels_last": False},
        {"soft_mask": "sigmoid"},
        {"soft_mask": "temperature"},
        {"soft_mask": "spatial"},
    ],
)
def test_hacnn_options(options: dict) -> None:
    m = build_model("hacnn", num_classes=5, return_features=True, **options)
    x = torch.randn(2, 3, 96, 48)
    out = m.train()(x)
    n_branch = 1 if options.get("local_branch") is False else 2
    assert len(out["logits"]) == n_branch == len(out["features"])
    sum(z.sum() for z in out["logits"]).backward()
    with torch.no_grad():
        emb = m.eval()(x)
        att = m.forward_attention(x)
    assert emb.shape == (2, m.embed_dim) == (2, n_branch * options.get("feature_dim", 512))
    if options.get("hard_attn") is False:  # fixed stripes
        assert all(torch.equal(t, m.stripes.expand(2, -1, -1)) for t in att["translations"])
        assert all(a.hard is None for a in m.attn)
    if options.get("cross_attn") is False:
        assert len(att["translations"]) == 1
    if options.get("soft_attn") is False:
        assert att["soft"] == []
    if "soft_mask" in options:  # the option reaches every stage
        assert all(a.soft.mask == options["soft_mask"] for a in m.attn)
        assert len(att["soft"]) == 3 and all(float(s.min()) > 0 and float(s.max()) < 1 for s in att["soft"])


def test_train_mode_without_features() -> None:
    m = build_model("hacnn", num_classes=4).train()
    assert set(m(torch.randn(2, 3, 160, 64))) == {"logits"}


def test_batched_local_branch_equals_per_region_loop_in_eval() -> None:
    """One (B*T) call == T separate calls with the same BN statistics (eval): batching only changes
    which samples train-mode BN pools over, nothing else."""
    m = build_model("hacnn", num_classes=3).eval()
    for mod in m.modules():  # non-trivial running statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    x = torch.randn(8, 32, 24, 28)  # (B*T, C, h, w): B = 2 images, T = 4 regions
    with torch.no_grad():
        batched = m.local[0](x)
        per = torch.cat([m.local[0](x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(batched, per, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("soft_mask", ["relu", "spatial"])
def test_train_gradients_stay_channels_last(soft_mask: str) -> None:
    """Performance property: every ConvBlock output gets its gradient with channels innermost.

    Means, grid_sample and broadcast products produce NCHW gradients; mixed with the channels_last
    ones they send ReLU backward and gradient sums down PyTorch's slow strided paths (~20x slower
    ReLU backward in bf16). ``channels_last_grad`` / the channels_last soft mask prevent that.
    """
    from hareid.models.layers.blocks import ConvBlock

    m = build_model("hacnn", num_classes=3, soft_mask=soft_mask).train()
    bad: list[str] = []

    def watch(name: str):
        def hook(module, inputs, out) -> None:
            if out.requires_grad and out.shape[2] * out.shape[3] > 1 and out.shape[1] > 1:
                out.register_hook(lambda g: bad.append(f"{name} {tuple(g.stride())}") if g.stride(1) != 1 else None)
        return hook

    for name, mod in m.named_modules():
        if isinstance(mod, ConvBlock):
            mod.register_forward_hook(watch(name))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(2, 3, 96, 48))
    sum(z.float().sum() for z in out["logits"]).backward()
    assert not bad, bad


def test_follows_input_dtype_bfloat16_model() -> None:
    m = build_model("hacnn", num_classes=3).eval().bfloat16()
    with torch.no_grad():
        emb = m(torch.randn(2, 3, 160, 64, dtype=torch.bfloat16))
    assert emb.dtype == torch.float32 and torch.isfinite(emb).all()


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    m = build_model("hacnn", num_classes=3).eval()
    x = torch.randn(2, 3, 160, 64)
    with torch.no_grad():
        ref = m(x)
        out = torch.compile(m)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_soft_mask_reaches_the_model_from_the_config() -> None:
    from hareid.config import load_config

    cfg = load_config("hacnn_synthetic", ["model.soft_mask=temperature"])
    m = build_model(cfg.model.name, num_classes=3, **cfg.model.options)
    assert [a.soft.mask for a in m.attn] == ["temperature"] * 3
    assert build_model("hacnn", num_classes=3).attn[0].soft.mask == "relu"  # default: the released mask
    with pytest.raises(ValueError, match="soft_mask must be one of"):
        build_model("hacnn", num_classes=3, soft_mask="tanh")
