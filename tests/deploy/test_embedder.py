"""``hareid.Embedder``: backends against each other and against evaluation's features; inputs; errors."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hareid import Embedder
from hareid.api import load_model
from hareid.deploy.embedder import BACKEND_ATOL
from hareid.errors import DataError, HareidError
from tests.helpers.tiny import Tiny


@pytest.fixture(scope="module")
def emb(tiny: Tiny) -> Embedder:
    return Embedder(tiny.checkpoint, device="cpu", batch_size=4, dtype=None)  # float32


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_rows_are_unit_float32_and_batching_changes_nothing(emb: Embedder, tiny: Tiny) -> None:
    paths = tiny.images("query")[:7]
    a = emb.embed(paths)
    assert a.shape == (7, emb.dim) and a.dtype == np.float32 and emb.dim == 1024
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    big = Embedder(tiny.checkpoint, device="cpu", batch_size=64, dtype=None).embed(paths)
    np.testing.assert_allclose(a, big, atol=1e-5)
    assert emb.input_size == (64, 32)  # the checkpoint's training size


def test_equals_eval_features_normalised(emb: Embedder, tiny: Tiny) -> None:
    """The same images through `hareid eval`'s path (dataset loader + extract_features) give the
    Embedder's rows up to the row normalisation: one preprocessing, one forward."""
    from hareid.data import build_dataset
    from hareid.data.loader import build_eval_loaders
    from hareid.evaluate import extract_features

    model, info = load_model(tiny.checkpoint)
    ds = build_dataset("synthetic", tiny.data, verbose=False)
    q_loader, _ = build_eval_loaders(ds, info["height"], info["width"], batch_size=5, workers=0)
    fs = extract_features(model, q_loader, progress=False)
    ref = torch.nn.functional.normalize(fs.features, dim=1).numpy()
    np.testing.assert_allclose(emb.embed(fs.paths), ref, atol=1e-5)


def test_input_kinds_agree(emb: Embedder, tiny: Tiny) -> None:
    path = tiny.images("gallery")[0]
    rgb = _rgb(path)
    ref = emb.embed([path])
    np.testing.assert_allclose(emb.embed([rgb]), ref, atol=1e-5)  # numpy RGB uint8
    np.testing.assert_allclose(emb.embed([rgb[:, :, ::-1].copy()], bgr=True), ref, atol=1e-5)  # OpenCV order
    np.testing.assert_allclose(emb.embed([Image.fromarray(rgb)]), ref, atol=1e-5)  # PIL
    np.testing.assert_allclose(emb.embed(rgb), ref, atol=1e-5)  # one array, not a list
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 7, np.uint8)], axis=2)
    np.testing.assert_allclose(emb.embed([rgba]), ref, atol=1e-5)  # alpha dropped
    np.testing.assert_allclose(emb.embed([rgb.astype(np.float32) / 255]), ref, atol=2e-3)  # floats in [0, 1]
    gray = rgb.mean(axis=2).astype(np.uint8)
    g3 = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_allclose(emb.embed([gray]), emb.embed([g3]), atol=1e-5)  # grayscale replicated
    batch = emb.preprocess([path])
    np.testing.assert_allclose(emb.embed(batch), ref, atol=1e-5)  # a ready tensor


def test_embed_boxes_crops_and_clips(emb: Embedder, tiny: Tiny) -> None:
    rgb = _rgb(tiny.images("gallery")[1])
    h, w = rgb.shape[:2]
    frame = np.zeros((h + 40, w + 50, 3), np.uint8)
    frame[20:20 + h, 30:30 + w] = rgb
    got = emb.embed_boxes(frame[:, :, ::-1], [[30, 20, 30 + w, 20 + h], [-10, -5, 30 + w, 20 + h]], bgr=True)
    np.testing.assert_allclose(got[0], emb.embed([rgb])[0], atol=1e-5)
    np.testing.assert_allclose(got[1], emb.embed([frame[0:20 + h, 0:30 + w]])[0], atol=1e-5)  # clipped at 0
    assert emb.embed_boxes(frame, np.zeros((0, 4))).shape == (0, emb.dim)


@pytest.mark.parametrize(("call", "match"), [
    (lambda e, f: e.embed_boxes(f, [[0, 0, 10, 10], [5, 5, 5, 20]]), "box 1: .* has no area"),
    (lambda e, f: e.embed_boxes(f, [[200, 200, 300, 300]]), "box 0: .* has no area inside the 32x64 frame"),
    (lambda e, f: e.embed([f[:0]]), "image 0: empty crop"),
    (lambda e, f: e.embed([f[:, :, :2]]), r"image 0: expected an H x W x 3 array"),
    (lambda e, f: e.embed([f.astype(np.float32)]), r"image 0: float array with values in \[0, 255\]"),
    (lambda e, f: e.embed([f.astype(np.int32)]), "unsupported array dtype int32"),
    (lambda e, f: e.embed([f, 3]), "image 1: expected a numpy array"),
])
def test_bad_input_one_line(emb: Embedder, call, match: str) -> None:
    frame = np.full((64, 32, 3), 255, np.uint8)
    frame[0, 0] = 0
    with pytest.raises(DataError, match=match) as err:
        call(emb, frame)
    assert "\n" not in str(err.value)


def test_backends_agree(tiny: Tiny, tmp_path: Path) -> None:
    """Eager, TorchScript and ONNX Runtime give the same rows (BACKEND_ATOL); the exports carry the
    input size and normalisation, so the Embedder needs nothing but the file."""
    pytest.importorskip("onnxruntime")
    from hareid.cli import main

    onnx_path, ts_path = tmp_path / "m.onnx", tmp_path / "m.ts"
    assert main(["export", str(tiny.checkpoint), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert main(["export", str(tiny.checkpoint), "--format", "torchscript", "--out", str(ts_path)]) == 0
    crops = [_rgb(p) for p in tiny.images("query")[:5]]
    eager = Embedder(tiny.checkpoint, device="cpu", dtype="fp32").embed(crops)
    for path, backend in ((onnx_path, "onnx"), (ts_path, "torchscript")):
        e = Embedder(path, batch_size=2)
        assert e.backend == backend and e.input_size == (64, 32) and e.dim == 1024
        np.testing.assert_allclose(e.embed(crops), eager, atol=BACKEND_ATOL)
    with pytest.raises(HareidError, match=r"takes 64x32 inputs \(the size it was exported at\)"):
        Embedder(onnx_path, input_size=(128, 64))


def test_onnx_files_run_without_busy_waiting_threads(tiny: Tiny, tmp_path: Path, monkeypatch) -> None:
    """The Embedder runs an ONNX file in hareid's session: torch's thread count, and ONNX Runtime's
    threads do not spin between calls (they would take the cores from the PyTorch work around them)."""
    pytest.importorskip("onnxruntime")
    import hareid.deploy.embedder as embedder_module
    from hareid.cli import main
    from hareid.deploy.export import ort_session

    made = []
    monkeypatch.setattr(embedder_module, "ort_session", lambda *a, **k: made.append(ort_session(*a, **k)) or made[-1])
    path = tmp_path / "m.onnx"
    assert main(["export", str(tiny.checkpoint), "--format", "onnx", "--out", str(path)]) == 0
    Embedder(path).embed([_rgb(tiny.images("query")[0])])
    (sess,) = made
    opts = sess.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == torch.get_num_threads()


def test_module_with_info_and_lower_precision(tiny: Tiny) -> None:
    model, info = load_model(tiny.checkpoint)
    crops = [_rgb(p) for p in tiny.images("query")[:4]]
    fp32 = Embedder(model, info=info, dtype=None).embed(crops)
    bf16 = Embedder(model, info=info, dtype=torch.bfloat16).embed(crops)
    np.testing.assert_allclose(bf16, fp32, atol=0.05)  # bf16: ~3 significant digits
    assert float(np.abs(bf16 - fp32).max()) > 0  # it really ran in bf16
    with pytest.raises(HareidError, match="batch_size must be >= 1"):
        Embedder(model, info=info, batch_size=0)


def test_opencv_example_feeds_frames_and_boxes(tiny: Tiny, tmp_path: Path) -> None:
    """examples/embed_opencv.py on a small synthetic video: two figures walking across a static
    background; each frame's moving blobs are embedded and matched to the previous frame's."""
    cv2 = pytest.importorskip("cv2")
    import importlib.util

    path = tmp_path / "walk.avi"
    h, w = 160, 160
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (h, w, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for t in range(30):
        frame = background.copy()
        for x0, y0, colour in ((5 + 3 * t, 10, (30, 30, 200)), (135 - 3 * t, 90, (200, 160, 20))):
            frame[y0:y0 + 60, x0:x0 + 22] = colour  # a 60 x 22 "person" (two lanes: they never touch)
            frame[y0:y0 + 15, x0 + 6:x0 + 16] = (150, 190, 230)  # a head
        writer.write(frame)
    writer.release()
    spec = importlib.util.spec_from_file_location("embed_opencv", Path(__file__).parents[2] / "examples" / "embed_opencv.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    log = example.main([str(tiny.checkpoint), str(path), "--frames", "30"])
    assert len(log) == 30
    pairs = [m for (_, n0, _), (_, n, m) in itertools.pairwise(log) if n0 == n == 2]  # both frames: two boxes
    assert len(pairs) >= 10
    assert all(sorted(m.tolist()) == [0, 1] for m in pairs)  # each figure matches itself, one to one


def test_preprocess_keeps_no_state_across_threads(emb: Embedder) -> None:
    """preprocess(bgr=...) is a pure function of its arguments: concurrent BGR and RGB calls (as the
    server's thread pool makes them) each get their own channel order."""
    from concurrent.futures import ThreadPoolExecutor

    rgb = np.zeros((40, 20, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    bgr = rgb[:, :, ::-1].copy()
    ref = emb.preprocess([rgb])
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda k: emb.preprocess([bgr], bgr=True) if k % 2 else emb.preprocess([rgb]),
                             range(40)))
    for out in outs:
        torch.testing.assert_close(out, ref)
    assert not any(name.startswith("_bgr") for name in vars(emb))


def test_default_dtype_is_the_runtime_policy(tiny: Tiny) -> None:
    """A checkpoint's Embedder runs in auto_dtype (bf16 on a CPU with native bf16, else float32);
    its rows stay close to float32's."""
    from hareid.runtime import auto_dtype

    emb = Embedder(tiny.checkpoint, device="cpu")
    assert emb.dtype == auto_dtype("cpu")
    crops = [_rgb(p) for p in tiny.images("query")[:4]]
    fp32 = Embedder(tiny.checkpoint, device="cpu", dtype="fp32")
    assert fp32.dtype == torch.float32
    np.testing.assert_allclose(emb.embed(crops), fp32.embed(crops), atol=0.05)
    with pytest.raises(HareidError, match="Embedder dtype=fp16 needs CUDA"):
        Embedder(tiny.checkpoint, device="cpu", dtype="fp16")


def test_int8_is_one_argument_away(tiny: Tiny, tmp_path: Path) -> None:
    """dtype='int8' quantises the checkpoint on calibration images (a folder here) and runs ONNX
    Runtime; `hareid export --int8` writes the same kind of file, which the Embedder reads."""
    pytest.importorskip("onnxruntime")
    from hareid.cli import main

    crops = [_rgb(p) for p in tiny.images("query")[:6]]
    ref = Embedder(tiny.checkpoint, device="cpu", dtype=None).embed(crops)
    q = Embedder(tiny.checkpoint, device="cpu", dtype="int8", calibration=tiny.data / "bounding_box_train",
                 num_calibration=32)
    assert q.dtype == "int8" and q.input_size == (64, 32)
    got = q.embed(crops)
    assert got.shape == ref.shape and float((got * ref).sum(1).min()) >= 0.95
    out = tmp_path / "m.int8.onnx"
    assert main(["export", str(tiny.checkpoint), "--int8", "--calib", str(tiny.data / "bounding_box_train"),
                 "--calib-images", "32", "--out", str(out)]) == 0
    f = Embedder(out)
    assert f.backend == "onnx" and f.input_size == (64, 32)
    assert float((f.embed(crops) * ref).sum(1).min()) >= 0.95
    with pytest.raises(HareidError, match="needs calibration images"):
        Embedder(tiny.checkpoint, device="cpu", dtype="int8")
    with pytest.raises(HareidError, match="only with dtype='int8'"):
        Embedder(tiny.checkpoint, device="cpu", dtype="bf16", calibration=tiny.data)
    assert main(["export", str(tiny.checkpoint), "--int8", "--out", str(out)]) != 0  # no --calib
