"""hareid.deploy.quantize: int8 (ONNX Runtime) embeddings and retrieval parity with fp32 and bf16."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hareid.errors import HareidError
from hareid.models import build_model
from hareid.models.inference import optimize_for_inference
from tests.helpers.toys import trained_like

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hareid.deploy.quantize import Int8Model, load_int8, quantize_int8

SIZE = (96, 48)  # small, fast; any size the model accepts works


_trained_like = trained_like  # non-trivial BN statistics and moving regions (tests/helpers/toys.py)


def _smooth_images(n: int, gen: torch.Generator) -> torch.Tensor:
    """Distinct, natural-ish images: low-frequency colour noise upsampled to SIZE (normalised scale)."""
    low = torch.randn(n, 3, 6, 3, generator=gen)
    return F.interpolate(low, size=SIZE, mode="bicubic", align_corners=False)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = _trained_like(build_model("hacnn", num_classes=7))
    gen = torch.Generator().manual_seed(0)
    calib = _smooth_images(32, gen)
    q = quantize_int8(model, calib, num_calibration=32, batch_size=16)
    return model, q, gen


def test_int8_embeddings_close_to_fp32(setup) -> None:
    model, q, gen = setup
    x = _smooth_images(6, gen)
    out = q(x)
    with torch.no_grad():
        ref = model.eval()(x)
    assert isinstance(q, Int8Model) and q.input_size == SIZE and q.embed_dim == 1024
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(F.cosine_similarity(out, ref).min()) >= 0.99
    torch.testing.assert_close(out[:, :512].norm(dim=1), torch.ones(6), atol=1e-3, rtol=0)  # unit branches


def test_retrieval_parity_fp32_bf16_int8(setup) -> None:
    """Nearest neighbours agree across precisions on a small retrieval task: 24 gallery images, 24
    queries that are the gallery images shifted by 2 pixels with noise.

    A random-weight model spreads embeddings little, so some fp32 decisions are near-ties. Two checks:
    >= 90 % top-1 agreement and >= 80 % top-5 overlap overall, and exact agreement wherever fp32's
    margin (2nd minus 1st distance) exceeds 4 eps, eps the largest embedding error (L2): there no
    perturbation of that size can flip the order (bf16 has such queries here; int8's larger error
    leaves none on this weakly discriminative random model, so it rests on the overall agreement;
    the trained-model table is in benchmarks/int8_parity.py)."""
    model, q, _ = setup
    gen = torch.Generator().manual_seed(5)
    gallery = _smooth_images(24, gen)
    queries = torch.roll(gallery, shifts=2, dims=3) + 0.15 * torch.randn(gallery.shape, generator=gen)
    forms = {"fp32": model.eval(), "bf16": optimize_for_inference(model, dtype=torch.bfloat16), "int8": q}
    feats = {}
    for name, fn in forms.items():
        with torch.no_grad():
            feats[name] = (fn(queries).float(), fn(gallery).float())
    d_ref = torch.cdist(*feats["fp32"]).sort(dim=1)
    top_ref, margin = d_ref.indices[:, :5], d_ref.values[:, 1] - d_ref.values[:, 0]
    assert (top_ref[:, 0] == torch.arange(24)).float().mean() >= 0.9  # the task is solvable
    for name in ("bf16", "int8"):
        qf, gf = feats[name]
        eps = max((qf - feats["fp32"][0]).norm(dim=1).max().item(), (gf - feats["fp32"][1]).norm(dim=1).max().item())
        top = torch.cdist(qf, gf).topk(5, dim=1, largest=False).indices
        same = top[:, 0] == top_ref[:, 0]
        overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, top_ref)) / top.numel()
        assert same.float().mean() >= 0.9 and overlap >= 0.8, (name, same.float().mean(), overlap)
        clear = margin > 4 * eps
        assert bool(same[clear].all()), (name, eps, margin[clear & ~same])
        if name == "bf16":  # int8's eps (~0.008) exceeds this random model's margins: no clear case there
            assert int(clear.sum()) >= 4


def test_sampling_weights_stay_float(setup) -> None:
    """No quantised value feeds the region sampling weights (rows / columns matrices of the two
    sampling MatMuls per stage) except through Shape (sizes, not values): regions keep sub-pixel
    positions."""
    import onnx

    _, q, _ = setup
    graph = onnx.load_from_string(q.onnx_bytes).graph
    producer = {o: n for n in graph.node for o in n.output}
    weights = [n.input[0] for n in graph.node if n.op_type == "MatMul"]
    weights += [n.input[1] for n in graph.node if n.op_type == "GridSample"]
    assert len(weights) >= 6  # rows and columns of three stages
    for start in weights:
        stack, seen = [(start, "MatMul")], set()
        while stack:
            name, consumer = stack.pop()
            node = producer.get(name)
            if node is None or (node.name, consumer) in seen:
                continue
            seen.add((node.name, consumer))
            if node.op_type == "DequantizeLinear":
                assert consumer == "Shape", f"a quantised value reaches a sampling weight via {consumer}"
                continue
            if node.op_type != "ReduceMean":
                stack.extend((i, node.op_type) for i in node.input)


def test_save_load_and_errors(setup, tmp_path: Path) -> None:
    model, q, gen = setup
    path = q.save(tmp_path / "m.int8.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]
    again = load_int8(path)
    x = _smooth_images(3, gen)
    torch.testing.assert_close(again(x), q(x))
    with pytest.raises(ValueError, match="quantised for 96x48"):
        q(torch.randn(1, 3, 160, 64))
    with pytest.raises(ValueError, match="float image batch"):
        q(torch.zeros(1, 3, *SIZE, dtype=torch.uint8))
    with pytest.raises(HareidError, match="not found"):
        load_int8(tmp_path / "nope.onnx")
    with pytest.raises(HareidError, match="calibration"):
        quantize_int8(model, [torch.randn(2, 5)])
    with pytest.raises(HareidError, match="all be"):
        quantize_int8(model, [torch.randn(2, 3, *SIZE), torch.randn(2, 3, 160, 64)])
    with pytest.raises(HareidError, match="weight_rounding must be one of nearest, gptq"):
        quantize_int8(model, torch.randn(2, 3, *SIZE), weight_rounding="adaround")
    with pytest.raises(HareidError, match="per_channel=True"):
        quantize_int8(model, torch.randn(2, 3, *SIZE), weight_rounding="gptq", per_channel=False)


def test_missing_onnxruntime_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(HareidError, match=r"hareid\[onnx\]") as err:
        quantize_int8(build_model("hacnn", num_classes=3), torch.randn(2, 3, *SIZE))
    assert "\n" not in str(err.value)


def test_a_saved_int8_file_runs_in_the_embedder(setup, tmp_path: Path) -> None:
    """`Int8Model.save` writes a plain .onnx that `hareid.Embedder` reads like any export: input size
    and normalisation from the file, unit rows close to the float model's Embedder."""
    import numpy as np

    from hareid import Embedder

    model, q, _ = setup
    path = tmp_path / "model.int8.onnx"
    q.save(path)
    emb = Embedder(path)
    assert emb.input_size == SIZE
    crops = [np.random.default_rng(i).integers(0, 256, (120, 50, 3), dtype=np.uint8) for i in range(4)]
    ref = Embedder(model, info={"height": SIZE[0], "width": SIZE[1]}, dtype=None).embed(crops)
    got = emb.embed(crops)
    assert got.shape == ref.shape == (4, 1024)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float((got * ref).sum(1).min()) >= 0.98


def test_keep_float_leaves_named_layers_float_and_reuses_calibration(setup, tmp_path: Path) -> None:
    """keep_float patterns keep those convolutions float (no DequantizeLinear feeds them); a pattern
    matching nothing is refused; a calibration cache written once gives the same int8 model again."""
    import onnx

    from hareid.deploy.quantize import quantizable_nodes

    model, q_all, gen = setup
    names = quantizable_nodes(model, *SIZE)
    assert "/stem/Conv" in names and len(names) >= 60
    calib = _smooth_images(32, gen)
    cache = tmp_path / "ranges.json"
    kept = quantize_int8(model, calib, num_calibration=32, batch_size=16, keep_float=["/stem/*", "/local.2/*"],
                         calibration_cache=cache)
    assert cache.is_file()

    def float_convs(m: Int8Model) -> set[str]:
        graph = onnx.load_from_string(m.onnx_bytes).graph
        producer = {o: n.op_type for n in graph.node for o in n.output}
        return {n.name for n in graph.node if n.op_type == "Conv"
                and producer.get(n.input[1]) != "DequantizeLinear"}

    expected = {n for n in names if n == "/stem/Conv" or n.startswith("/local.2/")}
    assert len(expected) > 2 and float_convs(kept) == expected
    assert float_convs(q_all) == {"/stem/Conv"}  # the default KEEP_FLOAT keeps the stem float
    everything = quantize_int8(model, calib, num_calibration=32, batch_size=16, keep_float=(),
                               calibration_cache=cache)
    assert float_convs(everything) == set()
    again = quantize_int8(model, calib, num_calibration=32, batch_size=16, keep_float=["/stem/*", "/local.2/*"],
                          calibration_cache=cache)
    x = _smooth_images(4, gen)
    torch.testing.assert_close(again(x), kept(x))
    with pytest.raises(HareidError, match="matches no node"):
        quantize_int8(model, calib, num_calibration=32, keep_float=["/stem_typo/*"])


def _initializers(m: Int8Model) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(m.onnx_bytes).graph.initializer}


def test_int8_weights_in_the_file_are_the_ones_hareid_chose(setup) -> None:
    """ONNX Runtime recomputes each weight's scale and rounds the stored weights again; the file keeps
    exactly hareid's choice: by default :func:`int8_weights` (hareid's emulation of ONNX Runtime's
    rounding, which bias correction relies on), with ``weight_rounding="gptq"`` the GPTQ rounding
    computed from the calibration images' input moments, for every quantised convolution."""
    from hareid.deploy.quantize import (
        _batches,
        _input_stats,
        cpu_has_vnni,
        gptq_weights,
        int8_weights,
    )

    model, q, _ = setup
    reduce_range = not cpu_has_vnni()
    graph = optimize_for_inference(model, dtype=torch.float32).graph
    floats = {n + ".weight": b.float().numpy() for n, m in graph.named_modules()
              for k, b in m.named_buffers(recurse=False) if k == "weight" and b.dim() == 4}
    calib = _smooth_images(32, torch.Generator().manual_seed(0))  # the fixture's calibration images
    stats = _input_stats(graph, list(_batches(calib, 16, 32)), hessians=True)
    gptq = quantize_int8(model, calib, num_calibration=32, batch_size=16, weight_rounding="gptq")
    for form, inits in (("nearest", _initializers(q)), ("gptq", _initializers(gptq))):
        checked = 0
        for name, w in floats.items():
            if name + "_quantized" not in inits:
                continue  # kept float
            scale = inits[name + "_scale"].reshape(-1, 1, 1, 1)
            stored = inits[name + "_quantized"].astype(np.float64) * scale
            if form == "gptq" and "hessian" in stats[name]:
                want = gptq_weights(w.reshape(len(w), -1), stats[name]["hessian"].numpy(), reduce_range).reshape(w.shape)
                checked += 1
            else:  # nearest, and the grouped (box-pool) convolutions, which GPTQ leaves alone
                want = int8_weights(w, reduce_range=reduce_range)
                checked += form == "nearest"
            np.testing.assert_allclose(stored, want, rtol=0, atol=1e-7, err_msg=f"{form}: {name}")
        assert checked >= 45, form


def test_gptq_with_uncorrelated_inputs_is_rounding_to_nearest() -> None:
    """Hand-checkable case: with a diagonal input second moment no rounding error can be
    compensated by another weight, so GPTQ gives exactly the nearest int8 weights."""
    from hareid.deploy.quantize import gptq_weights, int8_weights

    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 27))
    hessian = np.diag(rng.uniform(0.5, 2.0, size=27))
    np.testing.assert_allclose(gptq_weights(w, hessian), int8_weights(w), rtol=0, atol=1e-12)


def test_gptq_keeps_the_grid_and_lowers_the_output_error() -> None:
    """On correlated inputs GPTQ's weights stay on ONNX Runtime's int8 grid (integers in [-127, 127],
    each row's scale unchanged, so ONNX Runtime stores them as they are) and the layer's output error
    on those inputs is well below rounding each weight to nearest."""
    from hareid.deploy.quantize import gptq_weights, int8_weights

    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 36)) + 0.1 * rng.normal(size=(4000, 36))  # correlated inputs
    w = rng.normal(size=(16, 36))
    g = gptq_weights(w, x.T @ x / len(x))
    np.testing.assert_allclose(int8_weights(g), g, rtol=0, atol=1e-12)  # on the grid, scales unchanged
    np.testing.assert_allclose(np.abs(g).max(1), np.abs(w).max(1), rtol=1e-6)

    def output_error(wq: np.ndarray) -> float:
        return float(np.mean((x @ (wq - w).T) ** 2))

    assert output_error(g) < 0.5 * output_error(int8_weights(w))


def test_bias_correction_cancels_the_mean_shift_of_int8_weights() -> None:
    """Hand-checkable case: on an input constant per channel (no padding, so every output position sees
    the channel means), the convolution with int8-rounded weights and the corrected bias gives the
    float convolution's output, while the int8 weights alone are off."""
    import io

    import onnx
    from onnx import numpy_helper

    from hareid.deploy.quantize import _correct_bias, int8_weights

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, groups=1).eval()
    buf = io.BytesIO()
    torch.onnx.export(conv, (torch.zeros(1, 6, 5, 5),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    graph = onnx.load_from_string(buf.getvalue()).graph
    node = next(n for n in graph.node if n.op_type == "Conv")
    mu = torch.rand(6) * 3
    assert _correct_bias(graph, {node.input[1]: mu}, set(), per_channel=True, reduce_range=False) == 1
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    x = mu.view(1, 6, 1, 1).expand(1, 6, 5, 5).double()
    wq = torch.from_numpy(int8_weights(conv.weight.detach().numpy()))
    exact = F.conv2d(x, conv.weight.double(), conv.bias.double())
    corrected = F.conv2d(x, wq, torch.from_numpy(inits[node.input[2]]).double())
    uncorrected = F.conv2d(x, wq, conv.bias.double())
    torch.testing.assert_close(corrected, exact, rtol=0, atol=1e-5)
    assert (uncorrected - exact).abs().max() > 1e-3


def test_bias_correction_measures_the_shift_against_the_float_weights_when_rounded_beforehand() -> None:
    """When the stored weights were already rounded (GPTQ writes its int8 choice into the graph first),
    the correction must use the original float weights: on the same constant-per-channel input the
    corrected convolution gives the float output again."""
    import io

    import onnx
    from onnx import numpy_helper

    from hareid.deploy.quantize import _correct_bias, gptq_weights

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(6, 5, 3).eval()
    buf = io.BytesIO()
    torch.onnx.export(conv, (torch.zeros(1, 6, 5, 5),), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    graph = onnx.load_from_string(buf.getvalue()).graph
    node = next(n for n in graph.node if n.op_type == "Conv")
    w = conv.weight.detach().double().numpy()
    patches = np.random.default_rng(0).normal(size=(500, 54))
    rounded = gptq_weights(w.reshape(5, -1), patches.T @ patches / 500 + 0.5).reshape(w.shape)  # correlated inputs
    init = next(t for t in graph.initializer if t.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(rounded.astype(np.float32), init.name))
    mu = torch.rand(6) * 3
    assert _correct_bias(graph, {node.input[1]: mu}, set(), per_channel=True, reduce_range=False,
                         reference={init.name: w}) == 1
    bias = torch.from_numpy(numpy_helper.to_array(next(t for t in graph.initializer if t.name == node.input[2]))).double()
    x = mu.view(1, 6, 1, 1).expand(1, 6, 5, 5).double()
    exact = F.conv2d(x, conv.weight.double(), conv.bias.double())
    torch.testing.assert_close(F.conv2d(x, torch.from_numpy(rounded), bias), exact, rtol=0, atol=1e-5)


def test_concatenated_branches_share_one_scale(setup) -> None:
    """Every quantised Concat's inputs are quantised with the Concat output's own scale and zero point,
    so concatenating int8 branches rounds nothing a second time."""
    import onnx

    _, q, _ = setup
    graph = onnx.load_from_string(q.onnx_bytes).graph
    inits = _initializers(q)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    checked = 0
    for node in graph.node:
        if node.op_type != "Concat" or not all(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                               for i in node.input):
            continue
        out_q = next(c for c in consumers[node.output[0]] if c.op_type == "QuantizeLinear")
        for i in node.input:
            dq = producer[i]
            assert float(inits[dq.input[1]]) == pytest.approx(float(inits[out_q.input[1]]), rel=1e-6)
            assert int(inits[dq.input[2]]) == int(inits[out_q.input[2]])
        checked += 1
    assert checked >= 6  # the blocks of the three stages and the local branch


def test_a_corrupt_calibration_cache_is_named(setup, tmp_path: Path) -> None:
    """A cache file that is not one quantize_int8 wrote gets a one-line error naming it and the fix."""
    model, _, gen = setup
    cache = tmp_path / "ranges.json"
    cache.write_text("{not json")
    with pytest.raises(HareidError, match=r"ranges\.json: not a calibration cache.*delete it"):
        quantize_int8(model, _smooth_images(8, gen), num_calibration=8, calibration_cache=cache)


def test_averaged_ranges_sit_inside_the_extremes_and_the_cache_knows_its_method(setup, tmp_path: Path) -> None:
    """method="averaged" averages each tensor's per-batch min / max: every range lies
    inside the minmax range of the same images, some strictly; a cache written by one method is
    refused, with its name, by the other."""
    import json

    model, _, gen = setup
    calib = _smooth_images(192, gen)  # 3 batches of AVERAGED_BATCH
    caches = {m: tmp_path / f"{m}.json" for m in ("minmax", "averaged")}
    for m, cache in caches.items():
        quantize_int8(model, calib, num_calibration=192, method=m, calibration_cache=cache)
    ranges = {m: json.loads(c.read_text())["data"] for m, c in caches.items()}
    assert ranges["minmax"].keys() == ranges["averaged"].keys()
    lo = {m: {k: v["lowest"]["data"][0] for k, v in r.items()} for m, r in ranges.items()}
    hi = {m: {k: v["highest"]["data"][0] for k, v in r.items()} for m, r in ranges.items()}
    assert all(hi["averaged"][k] <= hi["minmax"][k] + 1e-6 and lo["averaged"][k] >= lo["minmax"][k] - 1e-6 for k in hi["minmax"])
    assert sum(hi["averaged"][k] < hi["minmax"][k] - 1e-6 for k in hi["minmax"]) > len(hi["minmax"]) // 2
    with pytest.raises(HareidError, match=r"averaged\.json: calibration cache written with method 'averaged', not 'minmax'"):
        quantize_int8(model, calib[:8], num_calibration=8, calibration_cache=caches["averaged"])
